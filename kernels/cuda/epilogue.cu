// The fused epilogue: + bias -> the chain -> max pool (stride = kernel, no
// padding), forward and backward (see epilogue.hpp).
//
// Work split (both directions): each (n, c) plane's P pooled elements are cut
// into chunks (2048 elements for windows of up to 8, fewer for larger ones);
// block b covers chunk b % cpp of plane b / cpp, so a block never mixes planes
// and hence never mixes channels.
//
// Fast paths, for kernels (2, 2, 2) and (1, 2, 2) with W % 4 == 0 and aligned
// buffers: a thread handles two neighbouring pooled outputs along W, reading
// each of the k0 * 2 input rows of their windows with one float4 (4 W values =
// two windows), writing p and y_at_max as float2 and argmax as uchar2, and in
// backward writing dY as float4. Every other case runs the general path: one
// pooled element per thread (forward; scalar loads), any kernel up to 256
// window elements; backward computes per pair and then writes dY row segment
// by row segment with consecutive lanes on consecutive floats.
//
// Backward reduces dbias and the multipliers' gradients without atomics:
// each thread accumulates, in double, the pooled elements 2q and 2q+1 of the
// pairs q = first + tid + k * kThreads of its block, in that order (both paths
// use the same order, so they give the same bits); a fixed shuffle tree sums
// the block into scratch[array][c][n * cpp + chunk]; a second kernel sums each
// channel's n * cpp partials in a fixed order (epilogue_chain.cu). Bitwise
// deterministic; the scratch size depends on the geometry and the chain alone.
#include "kernels/cuda/epilogue.hpp"

#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/epilogue_chain.cuh"
#include "kernels/fast_div.hpp"

namespace anvil::cuda {
namespace {

using detail::kThreads;

// Pooled elements per block: kChunk for windows of up to 8 elements, fewer
// (at least kMinChunk) for larger windows so that a block's share of Y stays
// about the same. Always even, so pairs never straddle blocks.
constexpr uint32_t kChunk = 2048;
constexpr uint32_t kMinChunk = 256;
static_assert(kChunk % 2 == 0 && kMinChunk % 2 == 0, "chunks must be even");

// The geometry as the kernels need it. Everything inside one plane fits in
// 31 bits (checked on the host), so in-plane offsets are uint32_t.
struct EpiDims {
  int64_t c = 1;            // channels
  int64_t cpp = 1;          // chunks (blocks) per plane
  uint32_t chunk = kChunk;  // pooled elements per chunk (even, <= kChunk)
  int64_t plane_in = 1;     // D * H * W
  int64_t per = 1;          // partials per channel: n * cpp
  uint32_t h = 1, w = 1;
  uint32_t ph = 1, pw = 1, p = 1;  // pooled H, W, and pooled elements per plane
  uint32_t k0 = 1, k1 = 1, k2 = 1;
};

// ===========================================================================
// Kernels
// ===========================================================================

// The block's plane and pooled range [e0, e1).
struct BlockRange {
  int64_t plane;
  int64_t chunk;
  uint32_t e0, e1;
};

__device__ __forceinline__ BlockRange block_range(const EpiDims& g) {
  BlockRange r;
  r.plane = int64_t(blockIdx.x) / g.cpp;
  r.chunk = int64_t(blockIdx.x) - r.plane * g.cpp;
  r.e0 = uint32_t(r.chunk) * g.chunk;
  r.e1 = min(g.p, r.e0 + g.chunk);
  return r;
}

template <class Chain>
__global__ void __launch_bounds__(kThreads)
    epi_forward_general(const float* __restrict__ y, const float* __restrict__ bias, const EpilogueChain chain,
                        float* __restrict__ p, uint8_t* __restrict__ argmax, float* __restrict__ y_at_max, EpiDims g) {
  const BlockRange r = block_range(g);
  const int64_t ch = r.plane % g.c;
  const float b = bias_at(bias, ch);
  const typename Chain::Channel cm = Chain::at(chain, ch);
  const float* yp = y + r.plane * g.plane_in;
  const int64_t out = r.plane * int64_t(g.p);
  for (uint32_t e = r.e0 + threadIdx.x; e < r.e1; e += kThreads) {
    const uint32_t row = e / g.pw, pw = e - row * g.pw;
    const uint32_t pd = row / g.ph, ph = row - pd * g.ph;
    const float* win = yp + ((pd * g.k0) * g.h + ph * g.k1) * g.w + pw * g.k2;
    float best = 0.f, best_v = 0.f;
    uint32_t best_i = 0, idx = 0;
    for (uint32_t kd = 0; kd < g.k0; ++kd) {
      for (uint32_t kh = 0; kh < g.k1; ++kh) {
        const float* src = win + (kd * g.h + kh) * g.w;
        for (uint32_t kw = 0; kw < g.k2; ++kw, ++idx) {
          const float v = __ldg(src + kw) + b;
          const float z = Chain::forward(chain, cm, v);
          if (idx == 0 || epi_better(z, best)) {
            best = z;
            best_v = v;
            best_i = idx;
          }
        }
      }
    }
    p[out + e] = best;
    if (argmax != nullptr) {  // null for inference: nothing is saved for backward
      argmax[out + e] = uint8_t(best_i);
      y_at_max[out + e] = best_v;
    }
  }
}

// k = (K0, 2, 2); W % 4 == 0; y 16-byte, p and y_at_max 8-byte, argmax 2-byte aligned.
template <class Chain, int K0>
__global__ void __launch_bounds__(kThreads)
    epi_forward_k22(const float* __restrict__ y, const float* __restrict__ bias, const EpilogueChain chain,
                    float* __restrict__ p, uint8_t* __restrict__ argmax, float* __restrict__ y_at_max, EpiDims g) {
  const BlockRange r = block_range(g);
  const int64_t ch = r.plane % g.c;
  const float b = bias_at(bias, ch);
  const typename Chain::Channel cm = Chain::at(chain, ch);
  const float* yp = y + r.plane * g.plane_in;
  const int64_t out = r.plane * int64_t(g.p);
  // P is even here (PW is), so e0 and e1 are even.
  for (uint32_t q = r.e0 / 2 + threadIdx.x; q < r.e1 / 2; q += kThreads) {
    const uint32_t e = 2 * q;
    const uint32_t row = e / g.pw, pw = e - row * g.pw;  // pw even
    const uint32_t pd = row / g.ph, ph = row - pd * g.ph;
    const float* win = yp + ((pd * K0) * g.h + ph * 2) * g.w + 2 * pw;
    float4 rows[K0 * 2];
#pragma unroll
    for (int kd = 0; kd < K0; ++kd) {
#pragma unroll
      for (int kh = 0; kh < 2; ++kh)
        rows[kd * 2 + kh] = __ldcs(reinterpret_cast<const float4*>(win + (kd * g.h + kh) * g.w));
    }
    // Output 0 has the window elements .x (kw 0) and .y (kw 1) of each row,
    // output 1 has .z and .w; row j = kd * 2 + kh has window index 2 j + kw.
    float best0 = 0.f, v0 = 0.f, best1 = 0.f, v1 = 0.f;
    uint32_t i0 = 0, i1 = 0;
#pragma unroll
    for (int j = 0; j < K0 * 2; ++j) {
      const float4 v = make_float4(rows[j].x + b, rows[j].y + b, rows[j].z + b, rows[j].w + b);
      const float za = Chain::forward(chain, cm, v.x), zb = Chain::forward(chain, cm, v.y);
      const float zc = Chain::forward(chain, cm, v.z), zd = Chain::forward(chain, cm, v.w);
      if (j == 0 || epi_better(za, best0)) {
        best0 = za;
        v0 = v.x;
        i0 = 2 * j;
      }
      if (epi_better(zb, best0)) {
        best0 = zb;
        v0 = v.y;
        i0 = 2 * j + 1;
      }
      if (j == 0 || epi_better(zc, best1)) {
        best1 = zc;
        v1 = v.z;
        i1 = 2 * j;
      }
      if (epi_better(zd, best1)) {
        best1 = zd;
        v1 = v.w;
        i1 = 2 * j + 1;
      }
    }
    *reinterpret_cast<float2*>(p + out + e) = make_float2(best0, best1);
    if (argmax != nullptr) {
      *reinterpret_cast<float2*>(y_at_max + out + e) = make_float2(v0, v1);
      *reinterpret_cast<uchar2*>(argmax + out + e) = make_uchar2(uint8_t(i0), uint8_t(i1));
    }
  }
}

// Writes the block's partial sums. Every thread must call it.
template <class Chain>
__device__ __forceinline__ void epi_write_partials(const ChainSums& sums, const EpilogueChain& chain,
                                                   double* __restrict__ partials, const BlockRange& r,
                                                   const EpiDims& g) {
  const int64_t ch = r.plane % g.c, nn = r.plane / g.c;
  write_chain_partials<Chain>(sums, chain, partials, g.c, g.per, ch, nn * g.cpp + r.chunk);
}

// Two phases. 1: the chunk's pooled elements in pair order (as the fast
// path, for the same reduction bits): the gradient at each argmax, its terms
// of the sums, and the gradient and argmax staged in shared memory. 2: dY
// written row segment by row segment, one warp per segment and lanes over
// consecutive floats, so that the stores coalesce whatever the kernel.
template <class Chain>
__global__ void __launch_bounds__(kThreads)
    epi_backward_general(const float* __restrict__ dp, const uint8_t* __restrict__ argmax,
                         const float* __restrict__ y_at_max, const EpilogueChain chain, float* __restrict__ dy,
                         double* __restrict__ partials, EpiDims g) {
  __shared__ float grad_s[kChunk];
  __shared__ uint8_t argmax_s[kChunk];
  const BlockRange r = block_range(g);
  const typename Chain::Channel cm = Chain::at(chain, r.plane % g.c);
  const int64_t out = r.plane * int64_t(g.p);
  ChainSums sums;
  const uint32_t q1 = (r.e1 + 1) / 2;  // the last pair of an odd P has one element
  for (uint32_t q = r.e0 / 2 + threadIdx.x; q < q1; q += kThreads) {
    const uint32_t e_end = min(2 * q + 2, r.e1);
    for (uint32_t e = 2 * q; e < e_end; ++e) {
      const float dyv = Chain::backward(chain, cm, __ldg(y_at_max + out + e), __ldg(dp + out + e), sums);
      grad_s[e - r.e0] = dyv;
      argmax_s[e - r.e0] = __ldg(argmax + out + e);
    }
  }
  __syncthreads();

  // The chunk covers pooled rows row0..row1 (the first and last maybe in
  // part); pooled row `row` and window offsets (kd, kh) give one contiguous
  // run of dY, a segment: input row (pd k0 + kd, ph k1 + kh), columns
  // [lo k2, hi k2). Warp w takes a contiguous range of the segments in
  // (row, kd, kh) order, stepping through them without dividing.
  float* dyp = dy + r.plane * g.plane_in;
  const uint32_t row0 = r.e0 / g.pw, row1 = (r.e1 - 1) / g.pw;
  const uint32_t k01 = g.k0 * g.k1;
  const uint32_t segments = (row1 - row0 + 1) * k01;
  constexpr uint32_t kWarps = kThreads / 32;
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint32_t per_warp = (segments + kWarps - 1) / kWarps;
  const uint32_t seg_begin = min(segments, warp * per_warp), seg_end = min(segments, seg_begin + per_warp);
  if (seg_begin < seg_end) {
    uint32_t row = row0 + seg_begin / k01;
    const uint32_t t = seg_begin - (row - row0) * k01;
    uint32_t kd = t / g.k1, kh = t - kd * g.k1;
    uint32_t pd = row / g.ph, ph = row - pd * g.ph;
    const uint32_t lane_pw = lane / g.k2, lane_kw = lane - lane_pw * g.k2;  // lane's offset, in windows and within one
    const uint32_t step_pw = 32 / g.k2, step_kw = 32 - step_pw * g.k2;
    for (uint32_t seg = seg_begin; seg < seg_end; ++seg) {
      const uint32_t lo = row == row0 ? r.e0 - row * g.pw : 0;
      const uint32_t hi = row == row1 ? r.e1 - row * g.pw : g.pw;
      float* dst = dyp + ((pd * g.k0 + kd) * g.h + ph * g.k1 + kh) * g.w;
      const uint32_t wbase = (kd * g.k1 + kh) * g.k2;  // window index of kw = 0
      const uint32_t local0 = row * g.pw - r.e0;       // chunk-local index of pooled column 0 (mod 2^32)
      uint32_t pw = lo + lane_pw, kw = lane_kw;
      for (uint32_t f = lo * g.k2 + lane; f < hi * g.k2; f += 32) {
        const uint32_t local = local0 + pw;
        dst[f] = argmax_s[local] == wbase + kw ? grad_s[local] : 0.f;
        pw += step_pw;
        kw += step_kw;
        if (kw >= g.k2) {
          kw -= g.k2;
          ++pw;
        }
      }
      if (++kh == g.k1) {  // next segment: (row, kd, kh) + 1
        kh = 0;
        if (++kd == g.k0) {
          kd = 0;
          ++row;
          if (++ph == g.ph) {
            ph = 0;
            ++pd;
          }
        }
      }
    }
  }
  epi_write_partials<Chain>(sums, chain, partials, r, g);
}

// k = (K0, 2, 2); W % 4 == 0; dy 16-byte, dp and y_at_max 8-byte, argmax 2-byte aligned.
template <class Chain, int K0>
__global__ void __launch_bounds__(kThreads)
    epi_backward_k22(const float* __restrict__ dp, const uint8_t* __restrict__ argmax,
                     const float* __restrict__ y_at_max, const EpilogueChain chain, float* __restrict__ dy,
                     double* __restrict__ partials, EpiDims g) {
  const BlockRange r = block_range(g);
  const typename Chain::Channel cm = Chain::at(chain, r.plane % g.c);
  float* dyp = dy + r.plane * g.plane_in;
  const int64_t out = r.plane * int64_t(g.p);
  ChainSums sums;
  for (uint32_t q = r.e0 / 2 + threadIdx.x; q < r.e1 / 2; q += kThreads) {
    const uint32_t e = 2 * q;
    const float2 dpv = __ldg(reinterpret_cast<const float2*>(dp + out + e));
    const float2 yv = __ldg(reinterpret_cast<const float2*>(y_at_max + out + e));
    const uchar2 a = __ldg(reinterpret_cast<const uchar2*>(argmax + out + e));
    // Same order as the general path: element 2q, then 2q + 1.
    const float dyv0 = Chain::backward(chain, cm, yv.x, dpv.x, sums);
    const float dyv1 = Chain::backward(chain, cm, yv.y, dpv.y, sums);
    const uint32_t row = e / g.pw, pw = e - row * g.pw;
    const uint32_t pd = row / g.ph, ph = row - pd * g.ph;
    float* win = dyp + ((pd * K0) * g.h + ph * 2) * g.w + 2 * pw;
#pragma unroll
    for (int kd = 0; kd < K0; ++kd) {
#pragma unroll
      for (int kh = 0; kh < 2; ++kh) {
        const uint32_t w0 = 2 * (kd * 2 + kh);  // window index of kw = 0 in this row
        const float4 o = make_float4(a.x == w0 ? dyv0 : 0.f, a.x == w0 + 1 ? dyv0 : 0.f, a.y == w0 ? dyv1 : 0.f,
                                     a.y == w0 + 1 ? dyv1 : 0.f);
        detail::store4(win + (kd * g.h + kh) * g.w, o);
      }
    }
  }
  epi_write_partials<Chain>(sums, chain, partials, r, g);
}

// ---- the phase-split layout ----
// Block ranges are as above (plane = n * c + ch); a window's elements are
// `phases` planes of Yp apart, each at its phase's offset. Consecutive threads
// take consecutive pooled elements, so every load and store is coalesced.

// Where pooled elements sit in a Yp plane. Dense: Yp's planes are the pooled
// grid and every phase starts at 0 (the aligned form), so the kernel's
// parameters stay small. Shifted: Yp's planes are larger (z >= q) and each
// phase starts at its own offset; passed as a __grid_constant__, so the
// offsets are indexed at run time without a local copy.
struct DenseLayout {
  uint32_t phases = 1;
  uint32_t zp = 1;  // elements per Yp plane
  __device__ __forceinline__ uint32_t index(uint32_t e) const { return e; }
  __device__ __forceinline__ uint32_t offset(uint32_t) const { return 0; }
};

struct ShiftedLayout : DenseLayout {
  uint32_t z1 = 1, z2 = 1;  // Yp's H and W
  FastDiv q1, q2;           // the pooled H and W
  uint32_t offsets[256] = {};
  // Pooled element e's position in a Yp plane, before its phase's offset.
  __device__ __forceinline__ uint32_t index(uint32_t e) const {
    const uint32_t row = q2.div(e), e2 = e - row * q2.divisor();
    const uint32_t e0 = q1.div(row), e1 = row - e0 * q1.divisor();
    return (e0 * z1 + e1) * z2 + e2;
  }
  __device__ __forceinline__ uint32_t offset(uint32_t w) const { return offsets[w]; }
};

__device__ __forceinline__ int64_t phase_base(const BlockRange& r, const EpiDims& g, const DenseLayout& l) {
  const int64_t ch = r.plane % g.c, nn = r.plane / g.c;
  return (nn * l.phases * g.c + ch) * int64_t(l.zp);
}

template <class Chain, class Layout>
__global__ void __launch_bounds__(kThreads)
    phase_forward(const float* __restrict__ yp, const float* __restrict__ bias, const EpilogueChain chain,
                  float* __restrict__ p, uint8_t* __restrict__ argmax, float* __restrict__ y_at_max, EpiDims g,
                  const __grid_constant__ Layout l) {
  const BlockRange r = block_range(g);
  const int64_t ch = r.plane % g.c;
  const float b = bias_at(bias, ch);
  const typename Chain::Channel cm = Chain::at(chain, ch);
  const float* base = yp + phase_base(r, g, l);
  const int64_t wstride = g.c * int64_t(l.zp);
  const int64_t out = r.plane * int64_t(g.p);
  for (uint32_t e = r.e0 + threadIdx.x; e < r.e1; e += kThreads) {
    const float* at = base + l.index(e);
    float best = 0.f, best_v = 0.f;
    uint32_t best_i = 0;
    for (uint32_t w = 0; w < l.phases; ++w) {
      const float v = __ldcs(at + w * wstride + l.offset(w)) + b;
      const float z = Chain::forward(chain, cm, v);
      if (w == 0 || epi_better(z, best)) {
        best = z;
        best_v = v;
        best_i = w;
      }
    }
    p[out + e] = best;
    if (argmax != nullptr) {
      argmax[out + e] = uint8_t(best_i);
      y_at_max[out + e] = best_v;
    }
  }
}

template <class Chain, class Layout>
__global__ void __launch_bounds__(kThreads)
    phase_backward(const float* __restrict__ dp, const uint8_t* __restrict__ argmax, const float* __restrict__ y_at_max,
                   const EpilogueChain chain, float* __restrict__ dyp, uint32_t* __restrict__ dy_tf32,
                   uint32_t* __restrict__ dy_residual, double* __restrict__ partials, EpiDims g,
                   const __grid_constant__ Layout l) {
  const BlockRange r = block_range(g);
  const typename Chain::Channel cm = Chain::at(chain, r.plane % g.c);
  float* base = dyp != nullptr ? dyp + phase_base(r, g, l) : nullptr;
  const int64_t wstride = g.c * int64_t(l.zp);
  const int64_t out = r.plane * int64_t(g.p);
  ChainSums sums;
  for (uint32_t e = r.e0 + threadIdx.x; e < r.e1; e += kThreads) {
    const float dyv = Chain::backward(chain, cm, __ldg(y_at_max + out + e), __ldg(dp + out + e), sums);
    const uint32_t a = __ldg(argmax + out + e);
    if (dy_tf32 != nullptr) {
      const uint32_t big = detail::tf32_bits(dyv);
      dy_tf32[out + e] = big | a;
      if (dy_residual != nullptr) dy_residual[out + e] = detail::tf32_bits(dyv - __uint_as_float(big));
    }
    if (dyp != nullptr) {
      float* at = base + l.index(e);
      for (uint32_t w = 0; w < l.phases; ++w) __stcs(at + w * wstride + l.offset(w), w == a ? dyv : 0.f);
    }
  }
  epi_write_partials<Chain>(sums, chain, partials, r, g);
}

// ===========================================================================
// Launchers
// ===========================================================================

EpiDims epi_dims(const char* op, const EpilogueGeometry& g) {
  constexpr int64_t kMax31 = std::numeric_limits<int32_t>::max();
  detail::require(g.n > 0 && g.c > 0, op, "n and c must be positive");
  int64_t plane_in = 1, window = 1;
  for (int i = 0; i < 3; ++i) {
    detail::require(g.y[i] > 0 && g.k[i] > 0, op, "y dims and pool kernel must be positive");
    detail::require(g.y[i] % g.k[i] == 0, op, "y dims must be divisible by the pool kernel");
    detail::require(g.y[i] <= kMax31 && plane_in <= kMax31 / g.y[i], op, "a plane of y must have < 2^31 elements");
    detail::require(g.k[i] <= 256, op, "pool window larger than 256 elements (argmax is uint8)");
    plane_in *= g.y[i];
    window *= g.k[i];
  }
  detail::require(window <= 256, op, "pool window larger than 256 elements (argmax is uint8)");
  detail::require(g.n <= kMax31 && g.c <= kMax31 && g.n * g.c <= kMax31, op, "n * c must be < 2^31");
  EpiDims d;
  d.c = g.c;
  d.plane_in = plane_in;
  d.h = uint32_t(g.y[1]);
  d.w = uint32_t(g.y[2]);
  d.k0 = uint32_t(g.k[0]);
  d.k1 = uint32_t(g.k[1]);
  d.k2 = uint32_t(g.k[2]);
  d.ph = uint32_t(g.y[1] / g.k[1]);
  d.pw = uint32_t(g.y[2] / g.k[2]);
  d.p = uint32_t(plane_in / window);
  const uint32_t by_window = uint32_t(kChunk / detail::ceil_div(window, 8));
  d.chunk = std::max(kMinChunk, by_window - by_window % 2);
  d.cpp = detail::ceil_div(d.p, d.chunk);
  d.per = g.n * d.cpp;
  detail::require(g.n * g.c * d.cpp <= kMax31, op, "too many blocks");
  return d;
}

// The (K0, 2, 2) fast path: which K0, or 0 where the general path must run.
int fast_k0(const EpilogueGeometry& g) {
  if (g.k[1] != 2 || g.k[2] != 2 || g.y[2] % 4 != 0) return 0;
  if (g.k[0] == 1) return 1;
  if (g.k[0] == 2) return 2;
  return 0;
}

// Calls launch(policy, k0) with the chain's policy and k0 a compile-time 2 or 1 where the 2 x 2 kernels
// take the geometry and the pointers are aligned for them, else 0: the general kernel.
template <class Launch>
void with_epilogue_kernel(const EpilogueGeometry& g, const EpilogueChain& chain, bool aligned, Launch&& launch) {
  const int k0 = aligned ? fast_k0(g) : 0;
  with_chain_policy(chain, [&](auto policy) {
    if (k0 == 2)
      launch(policy, std::integral_constant<int, 2>{});
    else if (k0 == 1)
      launch(policy, std::integral_constant<int, 1>{});
    else
      launch(policy, std::integral_constant<int, 0>{});
  });
}

unsigned epi_blocks(const EpilogueGeometry& g, const EpiDims& d) { return unsigned(g.n * g.c * d.cpp); }

// Argument checks shared by both layouts' launchers.
void require_forward_args(const char* op, const float* y, const EpilogueChain& chain, const float* p,
                          const uint8_t* argmax, const float* y_at_max) {
  detail::require(y != nullptr && p != nullptr, op, "null y or p");
  require_chain(op, chain);
  detail::require((argmax == nullptr) == (y_at_max == nullptr), op, "argmax and y_at_max are both given or both null");
}

void require_scratch(const char* op, bool reduce, const void* scratch) {
  detail::require(!reduce || (scratch != nullptr && detail::aligned_to(scratch, alignof(double))), op,
                  "scratch must be given (see the *_scratch_bytes functions) and 8-byte aligned");
}

EpiDims phase_dims(const char* op, const PhaseEpilogueGeometry& g) {
  constexpr int64_t kMax31 = std::numeric_limits<int32_t>::max();
  detail::require(g.n > 0 && g.c > 0, op, "n and c must be positive");
  detail::require(g.phases >= 1 && g.phases <= 256, op, "phases must be 1..256 (argmax is uint8)");
  int64_t q = 1, z = 1;
  for (int i = 0; i < 3; ++i) {
    detail::require(g.q[i] > 0 && g.z[i] >= g.q[i], op, "q must be positive and z at least q");
    detail::require(g.z[i] <= kMax31 && z <= kMax31 / g.z[i], op, "a Yp plane must have < 2^31 elements");
    q *= g.q[i];
    z *= g.z[i];
  }
  for (int64_t w = 0; w < g.phases; ++w)
    detail::require(g.offset[w] >= 0 && g.offset[w] + (((g.q[0] - 1) * g.z[1] + g.q[1] - 1) * g.z[2] + g.q[2] - 1) < z,
                    op, "a phase's offset puts its elements outside Yp");
  detail::require(g.n * g.c <= kMax31, op, "n * c must be < 2^31");
  EpiDims d;
  d.c = g.c;
  d.p = uint32_t(q);
  d.cpp = detail::ceil_div(d.p, kChunk);
  d.per = g.n * d.cpp;
  detail::require(g.n * g.c * d.cpp <= kMax31, op, "too many blocks");
  return d;
}

bool phase_layout_dense(const PhaseEpilogueGeometry& g) { return g.z == g.q; }  // then every offset is 0

// Launches `launch` with the layout's type: DenseLayout where it holds, else ShiftedLayout.
template <class Launch>
void with_phase_layout(const PhaseEpilogueGeometry& g, Launch&& launch) {
  DenseLayout dense;
  dense.phases = uint32_t(g.phases);
  dense.zp = uint32_t(g.z[0] * g.z[1] * g.z[2]);
  if (phase_layout_dense(g)) return launch(dense);
  ShiftedLayout l;
  static_cast<DenseLayout&>(l) = dense;
  l.z1 = uint32_t(g.z[1]);
  l.z2 = uint32_t(g.z[2]);
  l.q1 = FastDiv(uint32_t(g.q[1]));
  l.q2 = FastDiv(uint32_t(g.q[2]));
  for (int64_t w = 0; w < g.phases; ++w) l.offsets[w] = uint32_t(g.offset[w]);
  launch(l);
}

}  // namespace

void phase_epilogue_forward(const float* yp, const float* bias, const EpilogueChain& chain, float* p, uint8_t* argmax,
                            float* y_at_max, const PhaseEpilogueGeometry& g, cudaStream_t stream) {
  constexpr const char* op = "phase_epilogue_forward";
  require_forward_args(op, yp, chain, p, argmax, y_at_max);
  const EpiDims d = phase_dims(op, g);
  with_phase_layout(g, [&](const auto& layout) {
    with_chain_policy(chain, [&](auto policy) {
      phase_forward<decltype(policy), std::decay_t<decltype(layout)>>
          <<<unsigned(g.n * g.c * d.cpp), kThreads, 0, stream>>>(yp, bias, chain, p, argmax, y_at_max, d, layout);
    });
  });
  ANVIL_CHECK_LAUNCH();
}

size_t phase_epilogue_backward_scratch_bytes(const PhaseEpilogueGeometry& g, const EpilogueChain& chain) {
  const EpiDims d = phase_dims("phase_epilogue_backward_scratch_bytes", g);
  return chain_partials_bytes(chain, g.c, d.per);
}

void phase_epilogue_backward(const float* dp, const uint8_t* argmax, const float* y_at_max, const EpilogueChain& chain,
                             const PhaseGradOutputs& out, void* scratch, const PhaseEpilogueGeometry& g,
                             cudaStream_t stream) {
  constexpr const char* op = "phase_epilogue_backward";
  detail::require(dp != nullptr && argmax != nullptr && y_at_max != nullptr, op,
                  "null pointer (only the outputs may be null)");
  require_chain(op, chain);
  detail::require(out.dy_residual == nullptr || out.dy_tf32 != nullptr, op, "a residual needs dy_tf32");
  const bool reduce = chain_grads_wanted(chain, out.grads);
  require_scratch(op, reduce, scratch);
  const EpiDims d = phase_dims(op, g);
  auto* partials = reduce ? static_cast<double*>(scratch) : nullptr;
  if (out.dyp != nullptr && !phase_layout_dense(g)) {  // the elements no phase reads
    const size_t yp = size_t(g.n * g.phases * g.c) * size_t(g.z[0] * g.z[1] * g.z[2]);
    ANVIL_CUDA_CHECK(cudaMemsetAsync(out.dyp, 0, yp * sizeof(float), stream));
  }
  with_phase_layout(g, [&](const auto& layout) {
    with_chain_policy(chain, [&](auto policy) {
      phase_backward<decltype(policy), std::decay_t<decltype(layout)>>
          <<<unsigned(g.n * g.c * d.cpp), kThreads, 0, stream>>>(dp, argmax, y_at_max, chain, out.dyp, out.dy_tf32,
                                                                 out.dy_residual, partials, d, layout);
    });
  });
  ANVIL_CHECK_LAUNCH();
  if (reduce) finalize_chain_grads(partials, chain, g.c, d.per, out.grads, stream);
}

void fused_epilogue_forward(const float* y, const float* bias, const EpilogueChain& chain, float* p, uint8_t* argmax,
                            float* y_at_max, const EpilogueGeometry& g, cudaStream_t stream) {
  constexpr const char* op = "fused_epilogue_forward";
  require_forward_args(op, y, chain, p, argmax, y_at_max);
  const EpiDims d = epi_dims(op, g);
  const unsigned blocks = epi_blocks(g, d);
  const bool aligned = detail::aligned_to(y, 16) && detail::aligned_to(p, 8) && detail::aligned_to(y_at_max, 8) &&
                       detail::aligned_to(argmax, 2);
  with_epilogue_kernel(g, chain, aligned, [&](auto policy, auto k0_constant) {
    using Chain = decltype(policy);
    constexpr int k0 = decltype(k0_constant)::value;
    if constexpr (k0 == 0)
      epi_forward_general<Chain><<<blocks, kThreads, 0, stream>>>(y, bias, chain, p, argmax, y_at_max, d);
    else
      epi_forward_k22<Chain, k0><<<blocks, kThreads, 0, stream>>>(y, bias, chain, p, argmax, y_at_max, d);
  });
  ANVIL_CHECK_LAUNCH();
}

size_t fused_epilogue_backward_scratch_bytes(const EpilogueGeometry& g, const EpilogueChain& chain) {
  const EpiDims d = epi_dims("fused_epilogue_backward_scratch_bytes", g);
  return chain_partials_bytes(chain, g.c, d.per);
}

void fused_epilogue_backward(const float* dp, const uint8_t* argmax, const float* y_at_max, const EpilogueChain& chain,
                             float* dy, const ChainGrads& grads, void* scratch, const EpilogueGeometry& g,
                             cudaStream_t stream) {
  constexpr const char* op = "fused_epilogue_backward";
  detail::require(dp != nullptr && argmax != nullptr && y_at_max != nullptr && dy != nullptr, op,
                  "null pointer (only the gradients may be null)");
  require_chain(op, chain);
  const bool reduce = chain_grads_wanted(chain, grads);
  require_scratch(op, reduce, scratch);
  const EpiDims d = epi_dims(op, g);
  const unsigned blocks = epi_blocks(g, d);
  auto* partials = reduce ? static_cast<double*>(scratch) : nullptr;
  const bool aligned = detail::aligned_to(dy, 16) && detail::aligned_to(dp, 8) && detail::aligned_to(y_at_max, 8) &&
                       detail::aligned_to(argmax, 2);
  with_epilogue_kernel(g, chain, aligned, [&](auto policy, auto k0_constant) {
    using Chain = decltype(policy);
    constexpr int k0 = decltype(k0_constant)::value;
    if constexpr (k0 == 0)
      epi_backward_general<Chain><<<blocks, kThreads, 0, stream>>>(dp, argmax, y_at_max, chain, dy, partials, d);
    else
      epi_backward_k22<Chain, k0><<<blocks, kThreads, 0, stream>>>(dp, argmax, y_at_max, chain, dy, partials, d);
  });
  ANVIL_CHECK_LAUNCH();
  if (reduce) finalize_chain_grads(partials, chain, g.c, d.per, grads, stream);
}

}  // namespace anvil::cuda
