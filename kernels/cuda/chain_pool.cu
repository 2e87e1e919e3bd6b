// The general fused epilogue (see chain_pool.hpp).
//
// Work split: block b covers chunk b % cpp of plane b / cpp (plane = n * C +
// channel), so a block never mixes channels; forward chunks are output
// elements, backward chunks are Y elements. A pool's backward chunk is a run
// of consecutive elements where windows do not overlap (each element finds its
// one window directly), else a tile of the Y plane where the windows over it
// fit shared memory, else a run again. Without a pool and with planes of a multiple of 4
// floats and aligned buffers, a thread takes 4 neighbours as one float4.
// Backward sums dbias and the multipliers' terms per thread in double in a
// fixed order, a shuffle tree per block, then a fixed-order pass over the
// blocks (epilogue_chain.cu): bitwise deterministic.
#include "kernels/cuda/chain_pool.hpp"

#include <limits>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/epilogue_chain.cuh"
#include "kernels/cuda/pool_window.cuh"
#include "kernels/fast_div.hpp"

namespace anvil::cuda {
namespace {

using detail::kThreads;

constexpr uint32_t kChunk = 2048;  // elements per block: 8 per thread

// The geometry as the kernels need it: the in-plane sizes of Y and P, plus a
// window and a stride, fit 31 bits (checked on the host), so FastDiv is exact
// on them.
struct PoolDims {
  int64_t c = 1;
  int64_t cpp = 1;  // chunks per plane
  int64_t per = 1;  // partials per channel: n * cpp
  uint32_t chunk = kChunk;
  uint32_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1};
  int32_t k[3] = {1, 1, 1}, s[3] = {1, 1, 1}, pad[3] = {0, 0, 0};
  FastDiv in_h, in_w, out_h, out_w, stride[3];  // by in[1], in[2], out[1], out[2], s[a]
  FastDiv chunks, channels;                     // by cpp and c
  uint32_t plane_in = 1, plane_out = 1;
  // How a pool's backward finds an element's windows. Tiled: a chunk is a
  // tile[0] x tile[1] x tile[2] box of the Y plane, tiles[a] of them along
  // axis a; its block stages a box[0] x box[1] x box[2] box of P's plane,
  // enough for the windows over any tile.
  PoolBackwardPath path = PoolBackwardPath::Gathered;
  uint32_t tile[3] = {1, 1, 1}, tiles[3] = {1, 1, 1}, box[3] = {1, 1, 1};
  FastDiv tile_h, tile_w, box_h, box_w;  // by tile[1], tile[2], box[1], box[2]
  float divisor = 1.f;                   // the window's volume (average)
  float inverse_divisor = 1.f;           // exact where the volume is a power of two
};

struct Chunk {
  int64_t plane, chunk;
  int64_t slot;  // the block's partial sums' index among its channel's: (plane / c) * cpp + chunk
  uint32_t e0, e1;
};

// Block indices fit 31 bits (checked on the host): FastDiv, not a 64-bit division's call.
__device__ __forceinline__ Chunk chunk_of(const PoolDims& d, uint32_t plane_size) {
  Chunk r;
  const uint32_t plane = d.chunks.div(blockIdx.x);
  r.plane = plane;
  r.chunk = int64_t(blockIdx.x) - r.plane * d.cpp;
  r.slot = int64_t(d.channels.div(plane)) * d.cpp + r.chunk;
  r.e0 = uint32_t(r.chunk) * d.chunk;
  r.e1 = min(plane_size, r.e0 + d.chunk);
  return r;
}

// The block's chunk and what its channel runs: the bias and the chain's values.
template <class Chain>
struct BlockChannel {
  Chunk r;
  int64_t ch;
  float b;
  typename Chain::Channel cm;
};

template <class Chain>
__device__ __forceinline__ BlockChannel<Chain> block_channel(const PoolDims& d, uint32_t plane_size, const float* bias,
                                                             const EpilogueChain& chain) {
  const Chunk r = chunk_of(d, plane_size);
  const int64_t ch = d.channels.mod(uint32_t(r.plane));
  return {r, ch, bias_at(bias, ch), Chain::at(chain, ch)};
}

// Y's element i, plus the addend's where there is one (a fused residual join).
__device__ __forceinline__ float sum_at(const float* __restrict__ y, const float* __restrict__ z, int64_t i) {
  const float v = __ldg(y + i);
  return z != nullptr ? v + __ldg(z + i) : v;
}

// The same for 4 elements from i, 16-byte aligned: streamed where each is read
// once (evict first), else through the read-only cache (a pool's windows may
// share rows).
template <bool kStreamed>
__device__ __forceinline__ float4 sum4_at(const float* __restrict__ y, const float* __restrict__ z, int64_t i) {
  auto load = [](const float* p) {
    const auto* v = reinterpret_cast<const float4*>(p);
    return kStreamed ? __ldcs(v) : __ldg(v);
  };
  float4 v = load(y + i);
  if (z != nullptr) {
    const float4 w = load(z + i);
    v = make_float4(v.x + w.x, v.y + w.y, v.z + w.z, v.w + w.w);
  }
  return v;
}

// The same for the 2 elements from i, 8-byte aligned, through the read-only cache.
__device__ __forceinline__ float2 sum2_at(const float* __restrict__ y, const float* __restrict__ z, int64_t i) {
  float2 v = __ldg(reinterpret_cast<const float2*>(y + i));
  if (z != nullptr) {
    const float2 w = __ldg(reinterpret_cast<const float2*>(z + i));
    v = make_float2(v.x + w.x, v.y + w.y);
  }
  return v;
}

// The codes (CodeChain) of the 4 elements from i, 4-byte aligned, as floats.
template <bool kStreamed>
__device__ __forceinline__ float4 codes4_at(const uint8_t* __restrict__ codes, int64_t i) {
  const auto* p = reinterpret_cast<const uchar4*>(codes + i);
  const uchar4 c = kStreamed ? __ldcs(p) : __ldg(p);
  return make_float4(c.x, c.y, c.z, c.w);
}

// Whether a backward reads the chain's codes, not Y.
template <class Chain>
constexpr bool kReadsCodes = std::is_same_v<Chain, CodeChain>;

// ---- no pool: P = chain(Y + bias), elementwise; kVec floats per thread step ----

template <class Chain, int kVec>
__global__ void __launch_bounds__(kThreads)
    chain_forward_kernel(const float* __restrict__ y, const float* __restrict__ z, const float* __restrict__ bias,
                         const EpilogueChain chain, float* __restrict__ p, PoolDims d) {
  const auto [r, ch, b, cm] = block_channel<Chain>(d, d.plane_in, bias, chain);
  const int64_t base = r.plane * int64_t(d.plane_in);
  for (uint32_t e = r.e0 + threadIdx.x * kVec; e < r.e1; e += kThreads * kVec) {
    if constexpr (kVec == 4) {
      const float4 v = sum4_at<true>(y, z, base + e);
      detail::store4(p + base + e, make_float4(Chain::forward(chain, cm, v.x + b), Chain::forward(chain, cm, v.y + b),
                                               Chain::forward(chain, cm, v.z + b), Chain::forward(chain, cm, v.w + b)));
    } else {
      const float v = __ldcs(y + base + e);
      p[base + e] = Chain::forward(chain, cm, (z != nullptr ? v + __ldcs(z + base + e) : v) + b);
    }
  }
}

template <class Chain, int kVec>
__global__ void __launch_bounds__(kThreads)
    chain_backward_kernel(const float* __restrict__ dp, const float* __restrict__ y, const float* __restrict__ z,
                          const uint8_t* __restrict__ codes, const float* __restrict__ bias, const EpilogueChain chain,
                          float* __restrict__ dy, bool accumulate, double* __restrict__ partials, PoolDims d) {
  const auto [r, ch, b, cm] = block_channel<Chain>(d, d.plane_in, bias, chain);
  const int64_t base = r.plane * int64_t(d.plane_in);
  ChainSums sums;
  for (uint32_t e = r.e0 + threadIdx.x * kVec; e < r.e1; e += kThreads * kVec) {
    if constexpr (kVec == 4) {
      float4 v{};
      if constexpr (kReadsCodes<Chain>)
        v = codes4_at<true>(codes, base + e);
      else if (y != nullptr)
        v = sum4_at<true>(y, z, base + e);
      const float4 g = __ldcs(reinterpret_cast<const float4*>(dp + base + e));
      float4 o =
          make_float4(Chain::backward(chain, cm, v.x + b, g.x, sums), Chain::backward(chain, cm, v.y + b, g.y, sums),
                      Chain::backward(chain, cm, v.z + b, g.z, sums), Chain::backward(chain, cm, v.w + b, g.w, sums));
      if (accumulate) {
        const float4 old = detail::load4(dy + base + e);
        o = make_float4(old.x + o.x, old.y + o.y, old.z + o.z, old.w + o.w);
      }
      detail::store4(dy + base + e, o);
    } else {
      float v = 0.f;
      if constexpr (kReadsCodes<Chain>) {
        v = __ldcs(codes + base + e);
      } else {
        if (y != nullptr) v = __ldcs(y + base + e);
        if (z != nullptr) v += __ldcs(z + base + e);
      }
      const float dv = Chain::backward(chain, cm, v + b, __ldcs(dp + base + e), sums);
      dy[base + e] = accumulate ? dy[base + e] + dv : dv;
    }
  }
  write_chain_partials<Chain>(sums, chain, partials, d.c, d.per, ch, r.slot);
}

// ---- max and average pools ----

// Pool kernels take kUnroll elements per thread at a time, kThreads apart,
// and issue their loads together: one scalar load in flight per thread
// leaves the kernels latency-bound at a fraction of the copy bandwidth.
constexpr int kUnroll = 4;

// Forward: the kUnroll outputs walk their windows in lockstep, offset by
// offset in row-major order, skipping what lies in the padding: the order,
// and so the bits, of a plain loop over each window.
template <class Chain, ChainPool kPool>
__global__ void __launch_bounds__(kThreads)
    pool_forward_kernel(const float* __restrict__ y, const float* __restrict__ z, const float* __restrict__ bias,
                        const EpilogueChain chain, float* __restrict__ p, uint8_t* __restrict__ argmax, PoolDims d) {
  const auto [r, ch, b, cm] = block_channel<Chain>(d, d.plane_out, bias, chain);
  const int64_t in_base = r.plane * int64_t(d.plane_in);
  const int64_t out = r.plane * int64_t(d.plane_out);
  for (uint32_t e0 = r.e0 + threadIdx.x; e0 < r.e1; e0 += kThreads * kUnroll) {
    int32_t start[kUnroll][3];  // each window's first element, maybe in the padding
    PoolWindow<kPool> window[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t e = min(e0 + u * kThreads, r.e1 - 1);  // past the chunk: a copy of its last, not stored
      const uint32_t row = d.out_w.div(e), od = d.out_h.div(row);
      const uint32_t o[3] = {od, row - od * d.out[1], e - row * d.out[2]};
#pragma unroll
      for (int a = 0; a < 3; ++a) start[u][a] = int32_t(o[a]) * d.s[a] - d.pad[a];
    }
    int w = 0;  // the offset's index in the window
    for (int32_t w0 = 0; w0 < d.k[0]; ++w0)
      for (int32_t w1 = 0; w1 < d.k[1]; ++w1)
        for (int32_t w2 = 0; w2 < d.k[2]; ++w2, ++w) {
          float v[kUnroll];
          bool inside[kUnroll];
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const int32_t i0 = start[u][0] + w0, i1 = start[u][1] + w1, i2 = start[u][2] + w2;
            inside[u] = uint32_t(i0) < d.in[0] && uint32_t(i1) < d.in[1] && uint32_t(i2) < d.in[2];
            v[u] = inside[u] ? sum_at(y, z, in_base + (uint32_t(i0) * d.in[1] + uint32_t(i1)) * d.in[2] + uint32_t(i2))
                             : 0.f;
          }
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            if (!inside[u]) continue;
            const float vb = v[u] + b;
            window[u].take(Chain::forward(chain, cm, vb), vb, w);
          }
        }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t e = e0 + u * kThreads;
      if (e >= r.e1) break;
      p[out + e] = window[u].result(d.divisor);
      if (kPool == ChainPool::Max && argmax != nullptr) argmax[out + e] = uint8_t(window[u].best_i);
    }
  }
}

// The pair kernel's round: kPairUnroll pairs, kRowBatch window rows with their loads in flight.
constexpr int kPairUnroll = 2, kRowBatch = 2;

// Forward where windows are 2 wide along rows at stride 2 with no row padding,
// over rows of a multiple of 4 floats (pairs_apply): a thread takes two
// neighbouring outputs of a row, whose windows' rows are one aligned float4 of
// Y each, kPairUnroll such pairs kThreads apart, kRowBatch window rows a
// round with their loads issued together; chunks count pairs. With 16 bytes a
// load in place of 4, each thread keeps 4 times the bytes in flight:
// standalone 2 x 2 pools went from 34 and 46% of the copy bandwidth to 46 and
// 58% (bench/RESULTS.md v38). Each output takes its window's elements in
// row-major order, as pool_forward_kernel does: the same bits.
template <class Chain, ChainPool kPool>
__global__ void __launch_bounds__(kThreads)
    pool_forward_pairs_kernel(const float* __restrict__ y, const float* __restrict__ z, const float* __restrict__ bias,
                              const EpilogueChain chain, float* __restrict__ p, uint8_t* __restrict__ argmax,
                              PoolDims d) {
  const auto [r, ch, b, cm] = block_channel<Chain>(d, d.plane_out / 2, bias, chain);
  const int64_t in_base = r.plane * int64_t(d.plane_in);
  const int64_t out = r.plane * int64_t(d.plane_out);
  for (uint32_t q0 = r.e0 + threadIdx.x; q0 < r.e1; q0 += kThreads * kPairUnroll) {
    int32_t start[kPairUnroll][2];  // each pair's windows' first element along axes 0 and 1, maybe in the padding
    uint32_t column[kPairUnroll];   // and along rows: a multiple of 4
    PoolWindow<kPool> window[kPairUnroll][2];
#pragma unroll
    for (int u = 0; u < kPairUnroll; ++u) {
      const uint32_t e = 2 * min(q0 + u * kThreads, r.e1 - 1);  // past the chunk: a copy of its last, not stored
      const uint32_t row = d.out_w.div(e), od = d.out_h.div(row);
      start[u][0] = int32_t(od) * d.s[0] - d.pad[0];
      start[u][1] = int32_t(row - od * d.out[1]) * d.s[1] - d.pad[1];
      column[u] = 2 * (e - row * d.out[2]);
    }
    // The windows' rows (w0, w1), kRowBatch at a time with all their loads in flight.
    const int32_t rows = d.k[0] * d.k[1];
    int32_t w0 = 0, w1 = 0;
    for (int32_t r0 = 0; r0 < rows; r0 += kRowBatch) {
      float4 v[kRowBatch][kPairUnroll];
      bool inside[kRowBatch][kPairUnroll];
#pragma unroll
      for (int rb = 0; rb < kRowBatch; ++rb) {
#pragma unroll
        for (int u = 0; u < kPairUnroll; ++u) {
          const int32_t i0 = start[u][0] + w0, i1 = start[u][1] + w1;
          inside[rb][u] = r0 + rb < rows && uint32_t(i0) < d.in[0] && uint32_t(i1) < d.in[1];
          const int64_t i = in_base + (uint32_t(i0) * d.in[1] + uint32_t(i1)) * d.in[2] + column[u];
          v[rb][u] = inside[rb][u] ? sum4_at<false>(y, z, i) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
        if (++w1 == d.k[1]) w1 = 0, ++w0;
      }
#pragma unroll
      for (int rb = 0; rb < kRowBatch; ++rb) {
        const int w = 2 * (r0 + rb);  // the window offset of the row's first element
#pragma unroll
        for (int u = 0; u < kPairUnroll; ++u) {
          if (!inside[rb][u]) continue;
          const float x[4] = {v[rb][u].x + b, v[rb][u].y + b, v[rb][u].z + b, v[rb][u].w + b};
#pragma unroll
          for (int j = 0; j < 4; ++j) window[u][j / 2].take(Chain::forward(chain, cm, x[j]), x[j], w + j % 2);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kPairUnroll; ++u) {
      const uint32_t q = q0 + u * kThreads;
      if (q >= r.e1) break;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        p[out + 2 * q + h] = window[u][h].result(d.divisor);
        if (kPool == ChainPool::Max && argmax != nullptr) argmax[out + 2 * q + h] = uint8_t(window[u][h].best_i);
      }
    }
  }
}

// Forward where windows are 3 wide along rows at stride 2 with padding 1 (the
// ResNet stem's max pool), over rows of an even length (rows3_apply): output
// column x reads columns 2x - 1, 2x and 2x + 1. A thread loads 2x and 2x + 1
// as one float2 a window row and takes 2x - 1 from its left lane's float2,
// which holds output x - 1 of the same row (lanes hold consecutive outputs);
// lane 0 loads it itself. So a window row is one coalesced 8-byte load a
// thread where pool_forward_kernel issues three strided 4-byte ones. Each
// output takes its window in row-major order, as pool_forward_kernel does:
// the same bits.
template <class Chain, ChainPool kPool>
__global__ void __launch_bounds__(kThreads)
    pool_forward_rows3_kernel(const float* __restrict__ y, const float* __restrict__ z, const float* __restrict__ bias,
                              const EpilogueChain chain, float* __restrict__ p, uint8_t* __restrict__ argmax,
                              PoolDims d) {
  const auto [r, ch, b, cm] = block_channel<Chain>(d, d.plane_out, bias, chain);
  const int64_t in_base = r.plane * int64_t(d.plane_in);
  const int64_t out = r.plane * int64_t(d.plane_out);
  const bool lane0 = threadIdx.x % 32 == 0;
  // Uniform across a warp (shuffles below): every lane runs every round.
  for (uint32_t first = r.e0; first < r.e1; first += kThreads * kUnroll) {
    int32_t start[kUnroll][2];  // each window's first element along axes 0 and 1, maybe in the padding
    uint32_t column[kUnroll];   // 2x: even, so the float2 at it is aligned
    PoolWindow<kPool> window[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t e = min(first + u * kThreads + threadIdx.x, r.e1 - 1);  // past the chunk: not stored
      const uint32_t row = d.out_w.div(e), od = d.out_h.div(row);
      start[u][0] = int32_t(od) * d.s[0] - d.pad[0];
      start[u][1] = int32_t(row - od * d.out[1]) * d.s[1] - d.pad[1];
      column[u] = 2 * (e - row * d.out[2]);
    }
    int w = 0;  // the window offset of the row's first element
    for (int32_t w0 = 0; w0 < d.k[0]; ++w0)
      for (int32_t w1 = 0; w1 < d.k[1]; ++w1, w += 3) {
        float2 v[kUnroll];
        float left[kUnroll];
        bool inside[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int32_t i0 = start[u][0] + w0, i1 = start[u][1] + w1;
          inside[u] = uint32_t(i0) < d.in[0] && uint32_t(i1) < d.in[1];
          const int64_t i = in_base + (uint32_t(i0) * d.in[1] + uint32_t(i1)) * d.in[2] + column[u];
          v[u] = inside[u] ? sum2_at(y, z, i) : make_float2(0.f, 0.f);
          left[u] = __shfl_up_sync(0xffffffffu, v[u].y, 1);
          if (lane0 && inside[u] && column[u] > 0) left[u] = sum_at(y, z, i - 1);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (!inside[u]) continue;
          const float x[3] = {left[u] + b, v[u].x + b, v[u].y + b};
#pragma unroll
          for (int j = 0; j < 3; ++j)
            if (j > 0 || column[u] > 0) window[u].take(Chain::forward(chain, cm, x[j]), x[j], w + j);
        }
      }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t e = first + u * kThreads + threadIdx.x;
      if (e >= r.e1) break;
      p[out + e] = window[u].result(d.divisor);
      if (kPool == ChainPool::Max && argmax != nullptr) argmax[out + e] = uint8_t(window[u].best_i);
    }
  }
}

// The outputs whose windows hold input i along axis a: [lo, hi] (empty where
// i lies between windows).
__device__ __forceinline__ void covering(const PoolDims& d, int a, int32_t i, int32_t& lo, int32_t& hi) {
  const int32_t first = i + d.pad[a] - d.k[a] + 1;  // the lowest window start that still holds i
  lo = first <= 0 ? 0 : int32_t(d.stride[a].div(uint32_t(first + d.s[a] - 1)));
  hi = min(int32_t(d.stride[a].div(uint32_t(i + d.pad[a]))), int32_t(d.out[a]) - 1);
}

// How a window passes its gradient back: to its argmax (max), or spread over
// the window (average). An average window's volume of a power of two divides
// exactly as a multiplication by its inverse. Any other volume divides: the
// division calls its slow path, and unrolled around that call the kernel
// spilled (ptxas kept it to 32 registers), so that variant's loops stay rolled.
enum class WindowMath { Max, AvgByScale, AvgByDivision };

// Where the backward reads the windows' dP and argmax: a box of P's plane
// that starts at output index lo and holds n1 x n2 elements per slice. Either
// the whole plane in global memory, or the part a tile's windows cover,
// staged in shared memory.
struct WindowSource {
  const float* dp;
  const uint8_t* argmax;
  int32_t lo[3];
  uint32_t n1, n2;
};

template <bool kShared, class T>
__device__ __forceinline__ T read_window(const T* p) {
  if constexpr (kShared)
    return *p;
  else
    return __ldg(p);
}

// The pool's gradient at kN neighbours e .. e + kN - 1 along a row of a Y
// plane: dP summed over the windows that hold each (max: only where the
// element is the window's argmax). The windows over any of the neighbours
// are visited once each in ascending output order, each adding to the
// neighbours it reaches: every element's sum in the CPU reference's order.
template <WindowMath kMath, bool kShared, int kN>
__device__ __forceinline__ void window_gradients(const PoolDims& d, const WindowSource& src, uint32_t e,
                                                 float (&dz)[kN]) {
  const uint32_t row = d.in_w.div(e), plane_row = d.in_h.div(row);
  const int32_t i2 = int32_t(e - row * d.in[2]), i1 = int32_t(row - plane_row * d.in[1]), i0 = int32_t(plane_row);
  int32_t lo0, hi0, lo1, hi1, lo2, hi2, unused;
  covering(d, 0, i0, lo0, hi0);
  covering(d, 1, i1, lo1, hi1);
  covering(d, 2, i2, lo2, unused);
  covering(d, 2, i2 + kN - 1, unused, hi2);
#pragma unroll
  for (int j = 0; j < kN; ++j) dz[j] = 0.f;
  for (int32_t o0 = lo0; o0 <= hi0; ++o0)
    for (int32_t o1 = lo1; o1 <= hi1; ++o1) {
      const uint32_t src_row = (uint32_t(o0 - src.lo[0]) * src.n1 + uint32_t(o1 - src.lo[1])) * src.n2;
      // The window offset (argmax's numbering) of the row's first element.
      const int32_t row_w = ((i0 - (o0 * d.s[0] - d.pad[0])) * d.k[1] + (i1 - (o1 * d.s[1] - d.pad[1]))) * d.k[2];
      for (int32_t o2 = lo2; o2 <= hi2; ++o2) {
        const uint32_t o = src_row + uint32_t(o2 - src.lo[2]);
        const int32_t x = i2 - (o2 * d.s[2] - d.pad[2]);  // e's offset in the window along axis 2
        const float g = read_window<kShared>(src.dp + o);
        if constexpr (kMath == WindowMath::Max) {
          // The argmax lies in e's row at offset x + j: neighbour j.
          const int32_t w = int32_t(read_window<kShared>(src.argmax + o)) - row_w;
          const bool in_row = uint32_t(w) < uint32_t(d.k[2]);
#pragma unroll
          for (int j = 0; j < kN; ++j)
            if (in_row && w - x == j) dz[j] += g;
        } else {
          // never fused: an FMA would skip a subnormal's rounding
          const float share = kMath == WindowMath::AvgByScale ? __fmul_rn(g, d.inverse_divisor) : g / d.divisor;
#pragma unroll
          for (int j = 0; j < kN; ++j)
            if (uint32_t(x + j) < uint32_t(d.k[2])) dz[j] += share;
        }
      }
    }
}

// window_gradients where windows never overlap (k <= s along every axis): an
// element lies in at most one window, found by one division per axis. Its
// sum starts from zero as the reference's does (0 + -0 is +0).
template <WindowMath kMath, int kN>
__device__ __forceinline__ void disjoint_gradients(const PoolDims& d, const WindowSource& src, uint32_t e,
                                                   float (&dz)[kN]) {
  const uint32_t row = d.in_w.div(e), plane_row = d.in_h.div(row);
  const uint32_t i[3] = {plane_row, row - plane_row * d.in[1], e - row * d.in[2]};
  uint32_t o01 = 0, w01 = 0;  // the window's index in P's plane and e's offset in it, along axes 0 and 1
  bool inside = true;
#pragma unroll
  for (int a = 0; a < 2; ++a) {
    const uint32_t shifted = i[a] + uint32_t(d.pad[a]), o = d.stride[a].div(shifted), x = shifted - o * d.s[a];
    inside = inside && x < uint32_t(d.k[a]) && o < d.out[a];
    o01 = o01 * d.out[a] + o;
    w01 = w01 * d.k[a] + x;
  }
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    dz[j] = 0.f;
    const uint32_t shifted = i[2] + j + uint32_t(d.pad[2]), o2 = d.stride[2].div(shifted), x = shifted - o2 * d.s[2];
    if (!inside || x >= uint32_t(d.k[2]) || o2 >= d.out[2]) continue;
    const uint32_t o = o01 * d.out[2] + o2;
    const float g = __ldg(src.dp + o);
    if constexpr (kMath == WindowMath::Max) {
      if (__ldg(src.argmax + o) == w01 * d.k[2] + x) dz[j] += g;
    } else {
      // never fused: an FMA would skip a subnormal's rounding
      dz[j] += kMath == WindowMath::AvgByScale ? __fmul_rn(g, d.inverse_divisor) : g / d.divisor;
    }
  }
}

// A tiled chunk: its first element and its extent along each axis of the Y
// plane (edge tiles are cut by the plane).
struct Tile {
  uint32_t first[3], extent[3];
};

__device__ __forceinline__ Tile tile_of(const PoolDims& d, uint32_t chunk) {
  Tile t;
#pragma unroll
  for (int a = 2; a >= 0; --a) {
    const uint32_t index = chunk % d.tiles[a];
    chunk /= d.tiles[a];
    t.first[a] = index * d.tile[a];
    t.extent[a] = min(d.tile[a], d.in[a] - t.first[a]);
  }
  return t;
}

// Element q of a tile in row-major order, as an index into the Y plane; past
// the tile's extent (stored false), its first element instead.
__device__ __forceinline__ uint32_t tile_element(const PoolDims& d, const Tile& t, uint32_t q, bool& stored) {
  const uint32_t row = d.tile_w.div(q), j2 = q - row * d.tile[2];
  const uint32_t j0 = d.tile_h.div(row), j1 = row - j0 * d.tile[1];
  stored = j0 < t.extent[0] && j1 < t.extent[1] && j2 < t.extent[2];
  const uint32_t i0 = t.first[0] + (stored ? j0 : 0), i1 = t.first[1] + (stored ? j1 : 0),
                 i2 = t.first[2] + (stored ? j2 : 0);
  return (i0 * d.in[1] + i1) * d.in[2] + i2;
}

// What a tiled backward stages: 16 KiB of dP (and 4 KiB of argmax).
constexpr uint32_t kStagedWindows = 4096;

// Copies d.box's elements of P's plane, from element lo on, into shared
// memory in row-major order; what lies outside the plane is left unwritten
// (no window reads it). Each thread has kBatch loads in flight: one at a
// time left the copy latency-bound.
template <class T>
__device__ __forceinline__ void stage_box(const PoolDims& d, const uint32_t (&lo)[3], const T* __restrict__ plane,
                                          T* staged) {
  const uint32_t(&dims)[3] = d.out;
  constexpr int kBatch = 4;
  const uint32_t volume = d.box[0] * d.box[1] * d.box[2];
  for (uint32_t i0 = threadIdx.x; i0 < volume; i0 += kThreads * kBatch) {
    T v[kBatch];
    bool inside[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const uint32_t i = i0 + k * kThreads, row = d.box_w.div(i), b0 = d.box_h.div(row);
      const uint32_t c0 = lo[0] + b0, c1 = lo[1] + row - b0 * d.box[1], c2 = lo[2] + i - row * d.box[2];
      inside[k] = i < volume && c0 < dims[0] && c1 < dims[1] && c2 < dims[2];
      v[k] = inside[k] ? __ldg(plane + (c0 * dims[1] + c1) * dims[2] + c2) : T{};
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k)
      if (inside[k]) staged[i0 + k * kThreads] = v[k];
  }
}

// Y elements kVec at a time (kVec 4: rows of a multiple of 4 floats, 16-byte
// aligned y and dy), kSlots groups per thread, kThreads groups apart, their
// loads issued together. Tiled: the block's chunk is a tile, whose windows
// it reads from shared memory; else a run of elements, whose windows it
// reads from global memory.
template <class Chain, WindowMath kMath, int kVec, PoolBackwardPath kPath>
__global__ void __launch_bounds__(kThreads)
    pool_backward_kernel(const float* __restrict__ dp, const float* __restrict__ y, const float* __restrict__ z,
                         const uint8_t* __restrict__ codes, const float* __restrict__ bias,
                         const uint8_t* __restrict__ argmax, const EpilogueChain chain, float* __restrict__ dy,
                         bool accumulate, double* __restrict__ partials, PoolDims d) {
  constexpr int kSlots = kVec == 1 ? kUnroll : 2;  // groups of 4: 2 per thread cover a 2048-element chunk
  constexpr bool kTiled = kPath == PoolBackwardPath::Tiled;
  constexpr uint32_t kStaged = kTiled ? kStagedWindows : 1;
  __shared__ float staged_dp[kStaged];
  __shared__ uint8_t staged_argmax[kMath == WindowMath::Max ? kStaged : 1];
  const auto [r, ch, b, cm] = block_channel<Chain>(d, d.plane_in, bias, chain);
  const int64_t in_base = r.plane * int64_t(d.plane_in), out_base = r.plane * int64_t(d.plane_out);
  const uint8_t* argmax_plane = argmax != nullptr ? argmax + out_base : nullptr;
  WindowSource src{dp + out_base, argmax_plane, {0, 0, 0}, d.out[1], d.out[2]};
  Tile t{};
  uint32_t groups;
  if constexpr (!kTiled) {
    groups = (r.e1 - r.e0) / kVec;  // a run: kVec divides the plane and the chunk
  } else {
    t = tile_of(d, uint32_t(r.chunk));
    src = {staged_dp, staged_argmax, {}, d.box[1], d.box[2]};
    uint32_t lo[3];
    for (int a = 0; a < 3; ++a) {
      int32_t unused;
      covering(d, a, int32_t(t.first[a]), src.lo[a], unused);  // the first window over the tile
      lo[a] = uint32_t(src.lo[a]);
    }
    stage_box(d, lo, dp + out_base, staged_dp);
    if constexpr (kMath == WindowMath::Max) stage_box(d, lo, argmax_plane, staged_argmax);
    __syncthreads();
    groups = d.tile[0] * d.tile[1] * d.tile[2] / kVec;  // kVec divides tile[2]
  }
  ChainSums sums;
  for (uint32_t q0 = threadIdx.x; q0 < groups; q0 += kThreads * kSlots) {
    uint32_t e[kSlots];
    bool stored[kSlots];
    float v[kSlots][kVec], dz[kSlots][kVec];
#pragma unroll
    for (int u = 0; u < kSlots; ++u) {
      const uint32_t q = q0 + u * kThreads;
      if constexpr (kTiled) {
        e[u] = tile_element(d, t, q * kVec, stored[u]);
        stored[u] = stored[u] && q < groups;
      } else {
        stored[u] = q < groups;
        e[u] = stored[u] ? r.e0 + q * kVec : r.e1 - kVec;  // past the run: a copy of its last group, not stored
      }
      if (!stored[u] || (!kReadsCodes<Chain> && y == nullptr)) {
        for (int j = 0; j < kVec; ++j) v[u][j] = 0.f;
      } else if constexpr (kReadsCodes<Chain> && kVec == 4) {
        const float4 c4 = codes4_at<false>(codes, in_base + e[u]);
        v[u][0] = c4.x, v[u][1] = c4.y, v[u][2] = c4.z, v[u][3] = c4.w;
      } else if constexpr (kReadsCodes<Chain>) {
        v[u][0] = __ldg(codes + in_base + e[u]);
      } else if constexpr (kVec == 4) {
        float4 g4 = __ldg(reinterpret_cast<const float4*>(y + in_base + e[u]));
        if (z != nullptr) {
          const float4 w4 = __ldg(reinterpret_cast<const float4*>(z + in_base + e[u]));
          g4 = make_float4(g4.x + w4.x, g4.y + w4.y, g4.z + w4.z, g4.w + w4.w);
        }
        v[u][0] = g4.x, v[u][1] = g4.y, v[u][2] = g4.z, v[u][3] = g4.w;
      } else {
        v[u][0] = sum_at(y, z, in_base + e[u]);
      }
    }
    constexpr int kUnrolled = kMath == WindowMath::AvgByDivision ? 1 : kSlots;
#pragma unroll kUnrolled
    for (int u = 0; u < kSlots; ++u) {
      if constexpr (kPath == PoolBackwardPath::Disjoint)
        disjoint_gradients<kMath>(d, src, e[u], dz[u]);
      else
        window_gradients<kMath, kTiled>(d, src, e[u], dz[u]);
    }
#pragma unroll kUnrolled
    for (int u = 0; u < kSlots; ++u) {
      if (!stored[u]) continue;
      float dv[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) dv[j] = Chain::backward(chain, cm, v[u][j] + b, dz[u][j], sums);
      float* out = dy + in_base + e[u];
      if constexpr (kVec == 4) {
        float4 o = make_float4(dv[0], dv[1], dv[2], dv[3]);
        if (accumulate) {
          const float4 old = detail::load4(out);
          o = make_float4(old.x + o.x, old.y + o.y, old.z + o.z, old.w + o.w);
        }
        detail::store4(out, o);
      } else {
        *out = accumulate ? *out + dv[0] : dv[0];
      }
    }
  }
  write_chain_partials<Chain>(sums, chain, partials, d.c, d.per, ch, r.slot);
}

template <class Chain, WindowMath kMath, int kVec>
void launch_pool_backward(unsigned blocks, cudaStream_t stream, const float* dp, const float* y, const float* z,
                          const uint8_t* codes, const float* bias, const uint8_t* argmax, const EpilogueChain& chain,
                          float* dy, bool accumulate, double* partials, const PoolDims& d) {
  using Path = PoolBackwardPath;
  const auto kernel = d.path == Path::Disjoint ? pool_backward_kernel<Chain, kMath, kVec, Path::Disjoint>
                      : d.path == Path::Tiled  ? pool_backward_kernel<Chain, kMath, kVec, Path::Tiled>
                                               : pool_backward_kernel<Chain, kMath, kVec, Path::Gathered>;
  kernel<<<blocks, kThreads, 0, stream>>>(dp, y, z, codes, bias, argmax, chain, dy, accumulate, partials, d);
}

// ---- host side ----

// Tiles a pool's backward where the windows over a tile of about d.chunk Y
// elements fit shared memory: along an axis, t inputs lie in at most
// (t + k - 2) / s + 1 windows, and never more than P has.
void plan_tiles(PoolDims& d) {
  constexpr uint32_t kRow = 256;  // a multiple of 4: rows of 4-float groups stay whole
  d.tile[2] = std::min(d.in[2], kRow);
  d.tile[1] = std::min(d.in[1], std::max(1u, d.chunk / d.tile[2]));
  d.tile[0] = std::min(d.in[0], std::max(1u, d.chunk / (d.tile[2] * d.tile[1])));
  uint64_t staged = 1;
  uint64_t box[3];
  for (int a = 0; a < 3; ++a) {
    box[a] = std::min<uint64_t>(d.out[a], (uint64_t(d.tile[a]) + uint64_t(d.k[a]) - 2) / uint64_t(d.s[a]) + 1);
    staged *= box[a];
  }
  if (staged > kStagedWindows) return;
  d.path = PoolBackwardPath::Tiled;
  d.cpp = 1;
  for (int a = 0; a < 3; ++a) {
    d.box[a] = uint32_t(box[a]);
    d.tiles[a] = uint32_t(detail::ceil_div(d.in[a], d.tile[a]));
    d.cpp *= d.tiles[a];
  }
  d.tile_h = FastDiv(d.tile[1]);
  d.tile_w = FastDiv(d.tile[2]);
  d.box_h = FastDiv(d.box[1]);
  d.box_w = FastDiv(d.box[2]);
}

PoolDims pool_dims(const char* op, const ChainPoolGeometry& g, bool backward) {
  constexpr int64_t kMax31 = std::numeric_limits<int32_t>::max();
  if (const char* why = chain_pool_geometry_error(g)) detail::require(false, op, why);
  const std::array<int64_t, 3> out = chain_pool_output(g);
  PoolDims d;
  d.c = g.c;
  int64_t plane_in = 1, plane_out = 1, window = 1;
  for (int a = 0; a < 3; ++a) {
    plane_in *= g.y[a];
    plane_out *= out[a];
    window *= g.k[a];
    d.in[a] = uint32_t(g.y[a]);
    d.out[a] = uint32_t(out[a]);
    d.k[a] = int32_t(g.k[a]);
    d.s[a] = int32_t(g.stride[a]);
    d.pad[a] = int32_t(g.pad[a]);
  }
  d.in_h = FastDiv(d.in[1]);
  d.in_w = FastDiv(d.in[2]);
  d.out_h = FastDiv(d.out[1]);
  d.out_w = FastDiv(d.out[2]);
  for (int a = 0; a < 3; ++a) d.stride[a] = FastDiv(uint32_t(d.s[a]));
  d.plane_in = uint32_t(plane_in);
  d.plane_out = uint32_t(plane_out);
  d.divisor = float(window);
  d.inverse_divisor = 1.f / d.divisor;
  const bool by_input = backward || g.pool == ChainPool::None;
  const uint32_t per_element = by_input ? 1 : uint32_t(detail::ceil_div(window, 8));
  d.chunk = std::max<uint32_t>(256, kChunk / per_element / 4 * 4);
  d.cpp = detail::ceil_div(by_input ? plane_in : plane_out, d.chunk);
  if (backward && g.pool != ChainPool::None) {
    if (g.k[0] <= g.stride[0] && g.k[1] <= g.stride[1] && g.k[2] <= g.stride[2])
      d.path = PoolBackwardPath::Disjoint;
    else
      plan_tiles(d);
  }
  d.per = g.n * d.cpp;
  detail::require(g.n * g.c * d.cpp <= kMax31, op, "too many blocks");
  d.chunks = FastDiv(uint32_t(d.cpp));
  d.channels = FastDiv(uint32_t(g.c));
  return d;
}

// An average window's volume (at most 256^3, exact in a float) that is a power of two.
bool power_of_two(float volume) {
  const auto v = uint32_t(volume);
  return (v & (v - 1)) == 0;
}

unsigned blocks_of(const ChainPoolGeometry& g, const PoolDims& d) { return unsigned(g.n * g.c * d.cpp); }

bool vec4_ok(const PoolDims& d, std::initializer_list<const void*> buffers) {
  if (d.plane_in % 4 != 0) return false;
  for (const void* b : buffers)
    if (b != nullptr && !detail::aligned_to(b, 16)) return false;  // null: not read
  return true;
}

// pool_forward_pairs_kernel's case: a pool 2 wide along rows at stride 2, no
// row padding, rows of a multiple of 4 floats (so a row's outputs pair up and
// a pair's windows' rows are aligned float4s), y and z 16-byte aligned.
bool pairs_apply(const PoolDims& d, const float* y, const float* z) {
  return d.k[2] == 2 && d.s[2] == 2 && d.pad[2] == 0 && d.in[2] % 4 == 0 && vec4_ok(d, {y, z});
}

// pool_forward_rows3_kernel's case: a pool 3 wide along rows at stride 2
// with padding 1, rows of an even length (so each output's 2x and 2x + 1 are
// an aligned float2 inside the row), y and z 8-byte aligned.
bool rows3_apply(const PoolDims& d, const float* y, const float* z) {
  if (!(d.k[2] == 3 && d.s[2] == 2 && d.pad[2] == 1 && d.in[2] % 2 == 0)) return false;
  for (const void* b : {y, z})
    if (b != nullptr && !detail::aligned_to(b, 8)) return false;
  return true;
}

// The forward's chunks as pairs: as many outputs a block as pool_dims gave,
// or 512 where it gave 256.
void count_pairs(PoolDims& d, const ChainPoolGeometry& g) {
  d.chunk = std::max<uint32_t>(kThreads, d.chunk / 2);
  d.cpp = detail::ceil_div(d.plane_out / 2, d.chunk);
  d.per = g.n * d.cpp;
  d.chunks = FastDiv(uint32_t(d.cpp));
}

}  // namespace

const char* chain_pool_geometry_error(const ChainPoolGeometry& g) {
  constexpr int64_t kMax31 = std::numeric_limits<int32_t>::max();
  if (!(g.n > 0 && g.c > 0 && g.n <= kMax31 && g.c <= kMax31 && g.n * g.c <= kMax31))
    return "n and c must be positive, n * c < 2^31";
  const std::array<int64_t, 3> out = chain_pool_output(g);
  int64_t plane_in = 1, plane_out = 1, window = 1;
  for (int a = 0; a < 3; ++a) {
    if (!(g.y[a] > 0 && g.k[a] > 0 && g.stride[a] > 0 && g.pad[a] >= 0))
      return "y dims, window and stride must be positive, padding non-negative";
    if (!(g.pad[a] * 2 <= g.k[a] && out[a] > 0)) return "the window must fit the padded input, pad <= k / 2";
    if (!(g.k[a] <= 256 && g.stride[a] <= 256 && g.y[a] <= kMax31 - 512)) return "window, stride or dims too large";
    plane_in *= g.y[a];
    plane_out *= out[a];
    window *= g.k[a];
    if (!(plane_in <= kMax31 && plane_out <= kMax31)) return "a plane of y or p must have < 2^31 elements";
  }
  if (g.pool == ChainPool::Max && window > kMaxPoolWindow)
    return "max pool window larger than 255 elements (argmax is a byte)";
  if (g.pool == ChainPool::None && window != 1) return "no pool: the window must be 1";
  return nullptr;
}

std::array<int64_t, 3> chain_pool_output(const ChainPoolGeometry& g) {
  std::array<int64_t, 3> out{};
  for (int a = 0; a < 3; ++a) out[a] = g.stride[a] > 0 ? (g.y[a] + 2 * g.pad[a] - g.k[a]) / g.stride[a] + 1 : 0;
  return out;
}

namespace {

// Both forwards: z is the addend, or null.
void forward(const char* op, const float* y, const float* z, const float* bias, const EpilogueChain& chain, float* p,
             uint8_t* argmax, const ChainPoolGeometry& g, cudaStream_t stream) {
  detail::require(y != nullptr && p != nullptr, op, "null y or p");
  detail::require(argmax == nullptr || g.pool == ChainPool::Max, op, "argmax only with a max pool");
  require_chain(op, chain);
  PoolDims d = pool_dims(op, g, false);
  const bool pairs = pairs_apply(d, y, z), rows3 = !pairs && rows3_apply(d, y, z);
  if (pairs) count_pairs(d, g);
  const unsigned blocks = blocks_of(g, d);
  with_chain_policy(chain, [&](auto policy) {
    using Chain = decltype(policy);
    switch (g.pool) {
      case ChainPool::None:
        if (vec4_ok(d, {y, z, p}))
          chain_forward_kernel<Chain, 4><<<blocks, kThreads, 0, stream>>>(y, z, bias, chain, p, d);
        else
          chain_forward_kernel<Chain, 1><<<blocks, kThreads, 0, stream>>>(y, z, bias, chain, p, d);
        break;
      case ChainPool::Max: {
        const auto kernel = pairs   ? pool_forward_pairs_kernel<Chain, ChainPool::Max>
                            : rows3 ? pool_forward_rows3_kernel<Chain, ChainPool::Max>
                                    : pool_forward_kernel<Chain, ChainPool::Max>;
        kernel<<<blocks, kThreads, 0, stream>>>(y, z, bias, chain, p, argmax, d);
        break;
      }
      case ChainPool::Avg: {
        const auto kernel = pairs   ? pool_forward_pairs_kernel<Chain, ChainPool::Avg>
                            : rows3 ? pool_forward_rows3_kernel<Chain, ChainPool::Avg>
                                    : pool_forward_kernel<Chain, ChainPool::Avg>;
        kernel<<<blocks, kThreads, 0, stream>>>(y, z, bias, chain, p, nullptr, d);
        break;
      }
    }
  });
  ANVIL_CHECK_LAUNCH();
}

// Every backward: z is the addend, or null; codes, where given, stand in for
// y and the bias (both null then).
void backward(const char* op, const float* dp, const float* y, const float* z, const uint8_t* codes, const float* bias,
              const uint8_t* argmax, const EpilogueChain& chain, float* dy, bool accumulate, const ChainGrads& grads,
              void* scratch, const ChainPoolGeometry& g, cudaStream_t stream) {
  detail::require(dp != nullptr && dy != nullptr, op, "null dp or dy");
  if (codes != nullptr) {
    detail::require(chain_codes_supported(chain), op, "codes stand for a chain of 1 to 8 leaky_relus only");
    // The codes hold y + bias's signs: a bias (or y) beside them would shift the code the kernels read.
    detail::require(y == nullptr && z == nullptr && bias == nullptr, op, "codes stand in for y and the bias");
  } else {
    detail::require(y != nullptr || (chain.ops == 0 && bias == nullptr), op, "y is needed unless the chain is empty");
  }
  detail::require((argmax != nullptr) == (g.pool == ChainPool::Max), op, "a max pool needs its argmax");
  require_chain(op, chain);
  const bool reduce = chain_grads_wanted(chain, grads);
  detail::require(!reduce || (scratch != nullptr && detail::aligned_to(scratch, alignof(double))), op,
                  "scratch must be given (chain_pool_backward_scratch_bytes) and 8-byte aligned");
  const PoolDims d = pool_dims(op, g, true);
  const unsigned blocks = blocks_of(g, d);
  auto* partials = reduce ? static_cast<double*>(scratch) : nullptr;
  // Groups of 4 never cross a row; y, z, the codes and dy (whichever are read) 16-byte aligned.
  const bool rows4 = d.in[2] % 4 == 0 && vec4_ok(d, {y, z, codes, dy});
  auto run = [&](auto policy) {
    using Chain = decltype(policy);
    switch (g.pool) {
      case ChainPool::None:
        if (vec4_ok(d, {dp, y, z, codes, dy}))
          chain_backward_kernel<Chain, 4>
              <<<blocks, kThreads, 0, stream>>>(dp, y, z, codes, bias, chain, dy, accumulate, partials, d);
        else
          chain_backward_kernel<Chain, 1>
              <<<blocks, kThreads, 0, stream>>>(dp, y, z, codes, bias, chain, dy, accumulate, partials, d);
        break;
      case ChainPool::Max:
        if (rows4)
          launch_pool_backward<Chain, WindowMath::Max, 4>(blocks, stream, dp, y, z, codes, bias, argmax, chain, dy,
                                                          accumulate, partials, d);
        else
          launch_pool_backward<Chain, WindowMath::Max, 1>(blocks, stream, dp, y, z, codes, bias, argmax, chain, dy,
                                                          accumulate, partials, d);
        break;
      case ChainPool::Avg:
        if (power_of_two(d.divisor) && rows4)
          launch_pool_backward<Chain, WindowMath::AvgByScale, 4>(blocks, stream, dp, y, z, codes, bias, nullptr, chain,
                                                                 dy, accumulate, partials, d);
        else if (power_of_two(d.divisor))
          launch_pool_backward<Chain, WindowMath::AvgByScale, 1>(blocks, stream, dp, y, z, codes, bias, nullptr, chain,
                                                                 dy, accumulate, partials, d);
        else
          launch_pool_backward<Chain, WindowMath::AvgByDivision, 1>(blocks, stream, dp, y, z, codes, bias, nullptr,
                                                                    chain, dy, accumulate, partials, d);
        break;
    }
  };
  if (codes != nullptr)
    run(CodeChain{});
  else
    with_chain_policy(chain, run);
  ANVIL_CHECK_LAUNCH();
  if (reduce) finalize_chain_grads(partials, chain, g.c, d.per, grads, stream);
}

}  // namespace

void chain_pool_forward(const float* y, const float* bias, const EpilogueChain& chain, float* p, uint8_t* argmax,
                        const ChainPoolGeometry& g, cudaStream_t stream) {
  forward("chain_pool_forward", y, nullptr, bias, chain, p, argmax, g, stream);
}

void add_chain_pool_forward(const float* y, const float* addend, const EpilogueChain& chain, float* p, uint8_t* argmax,
                            const ChainPoolGeometry& g, cudaStream_t stream) {
  constexpr const char* op = "add_chain_pool_forward";
  detail::require(addend != nullptr, op, "null addend");
  forward(op, y, addend, nullptr, chain, p, argmax, g, stream);
}

PoolBackwardPath chain_pool_backward_path(const ChainPoolGeometry& g) {
  return pool_dims("chain_pool_backward_path", g, true).path;
}

size_t chain_pool_backward_scratch_bytes(const ChainPoolGeometry& g, const EpilogueChain& chain) {
  const PoolDims d = pool_dims("chain_pool_backward_scratch_bytes", g, true);
  return chain_partials_bytes(chain, g.c, d.per);
}

void chain_pool_backward(const float* dp, const float* y, const float* bias, const uint8_t* argmax,
                         const EpilogueChain& chain, float* dy, bool accumulate, const ChainGrads& grads, void* scratch,
                         const ChainPoolGeometry& g, cudaStream_t stream) {
  backward("chain_pool_backward", dp, y, nullptr, nullptr, bias, argmax, chain, dy, accumulate, grads, scratch, g,
           stream);
}

void chain_pool_backward_from_codes(const float* dp, const uint8_t* codes, const uint8_t* argmax,
                                    const EpilogueChain& chain, float* dy, bool accumulate, const ChainGrads& grads,
                                    void* scratch, const ChainPoolGeometry& g, cudaStream_t stream) {
  constexpr const char* op = "chain_pool_backward_from_codes";
  detail::require(codes != nullptr, op, "null codes");
  backward(op, dp, nullptr, nullptr, codes, nullptr, argmax, chain, dy, accumulate, grads, scratch, g, stream);
}

void add_chain_pool_backward(const float* dp, const float* y, const float* addend, const uint8_t* argmax,
                             const EpilogueChain& chain, float* dy, bool accumulate, const ChainGrads& grads,
                             void* scratch, const ChainPoolGeometry& g, cudaStream_t stream) {
  constexpr const char* op = "add_chain_pool_backward";
  detail::require((y == nullptr) == (addend == nullptr), op, "y and the addend come together");
  backward(op, dp, y, addend, nullptr, nullptr, argmax, chain, dy, accumulate, grads, scratch, g, stream);
}

}  // namespace anvil::cuda
