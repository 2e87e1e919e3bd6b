// The fused epilogue over a channels-last Y (see channels_last_pool.hpp).
//
// A block takes a tile of 64 consecutive elements of a P plane (across rows)
// for 32 channels. Reading, a thread takes kVec neighbouring channels of an
// element (one 16-byte load per window element where C allows), so a warp's
// loads are whole runs of Y's channels; writing, lanes span the tile's
// elements, so the NCDHW stores coalesce too. The tile passes through shared
// memory between. Windows are walked as chain_pool.cu's forward walks them
// (row-major, skipping padding, the same PoolWindow): the same bits. A
// channels-last P needs no transpose: each thread stores its kVec channels.
#include "kernels/cuda/channels_last_pool.hpp"

#include <limits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/epilogue_chain.cuh"
#include "kernels/cuda/pool_window.cuh"
#include "kernels/fast_div.hpp"

namespace anvil::cuda {
namespace {

using detail::kThreads;

constexpr int kTile = 32;                    // channels per block
constexpr int kElems = 64;                   // P elements per block (32 measured 1% to 2% slower)
constexpr int64_t kMaxChannelTiles = 65535;  // gridDim.y

struct Dims {
  uint32_t c = 1;
  uint32_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1};
  int32_t k[3] = {1, 1, 1}, s[3] = {1, 1, 1}, pad[3] = {0, 0, 0};
  uint32_t plane_out = 1;
  int64_t image_in = 1;         // Y's floats per image: D * H * W * C
  FastDiv out_h, out_w, tiles;  // by out[1], out[2] and the tiles per P plane
  double divisor = 1.0;         // the window's volume (average; count_include_pad)
  bool p_channels_last = false;
};

template <int kVec>
__device__ __forceinline__ void load_channels(const float* p, float (&v)[kVec]) {
  if constexpr (kVec == 4) {
    const float4 q = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else {
    v[0] = __ldg(p);
  }
}

// kVec: channels per thread (4: C % 4 == 0 and y, the addend and a channels-last p 16-byte aligned).
// kAdd: Y is y + addend (bias null), as chain_pool's add_ forms.
template <class Chain, ChainPool kPool, int kVec, bool kAdd>
__global__ void __launch_bounds__(kThreads)
    channels_last_pool_kernel(const float* __restrict__ y, const float* __restrict__ addend,
                              const float* __restrict__ bias, const EpilogueChain chain, float* __restrict__ p,
                              uint8_t* __restrict__ argmax, float* __restrict__ y_at_max, Dims d) {
  constexpr int kGroups = kTile / kVec;       // channel groups per tile
  constexpr int kRows = kThreads / kGroups;   // elements taken at once
  constexpr int kPerThread = kElems / kRows;  // elements per thread, their loads issued together
  constexpr bool kMax = kPool == ChainPool::Max;
  __shared__ float tile_p[kElems][kTile + 1], tile_v[kElems][kTile + 1];  // [element][channel]
  __shared__ uint8_t tile_i[kElems][kTile + 1];
  const uint32_t image = d.tiles.div(blockIdx.x);
  const uint32_t e0 = (blockIdx.x - image * d.tiles.divisor()) * kElems, c0 = blockIdx.y * kTile;
  const int group = threadIdx.x % kGroups, row = threadIdx.x / kGroups;

  // Channels c0 + kVec group + j of elements e0 + row + kRows u.
  const uint32_t ch0 = min(c0 + group * kVec, d.c - kVec);  // past the last channel: a copy, not stored
  float b[kVec];
  typename Chain::Channel cm[kVec];
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    b[j] = bias_at(bias, ch0 + j);
    cm[j] = Chain::at(chain, ch0 + j);
  }
  const float* yc = y + int64_t(image) * d.image_in + ch0;
  const float* ac = kAdd ? addend + int64_t(image) * d.image_in + ch0 : nullptr;
  int32_t start[kPerThread][3];  // each window's first element, maybe in the padding
  PoolWindow<kPool> window[kPerThread][kVec];
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    const uint32_t e = min(e0 + row + u * kRows, d.plane_out - 1);  // past the plane: not stored
    const uint32_t r = d.out_w.div(e), od = d.out_h.div(r);
    const uint32_t o[3] = {od, r - od * d.out[1], e - r * d.out[2]};
#pragma unroll
    for (int a = 0; a < 3; ++a) start[u][a] = int32_t(o[a]) * d.s[a] - d.pad[a];
  }
  int w = 0;  // the offset's index in the window (the argmax's numbering)
  for (int32_t w0 = 0; w0 < d.k[0]; ++w0)
    for (int32_t w1 = 0; w1 < d.k[1]; ++w1)
      for (int32_t w2 = 0; w2 < d.k[2]; ++w2, ++w) {
        float v[kPerThread][kVec];
        bool inside[kPerThread];
#pragma unroll
        for (int u = 0; u < kPerThread; ++u) {
          const int32_t i0 = start[u][0] + w0, i1 = start[u][1] + w1, i2 = start[u][2] + w2;
          inside[u] = uint32_t(i0) < d.in[0] && uint32_t(i1) < d.in[1] && uint32_t(i2) < d.in[2];
          const uint32_t at = inside[u] ? (uint32_t(i0) * d.in[1] + uint32_t(i1)) * d.in[2] + uint32_t(i2) : 0;
          load_channels<kVec>(yc + int64_t(at) * d.c, v[u]);
          if constexpr (kAdd) {
            float a[kVec];
            load_channels<kVec>(ac + int64_t(at) * d.c, a);
#pragma unroll
            for (int j = 0; j < kVec; ++j) v[u][j] += a[j];
          }
        }
#pragma unroll
        for (int u = 0; u < kPerThread; ++u) {
          if (!inside[u]) continue;
#pragma unroll
          for (int j = 0; j < kVec; ++j) {
            const float vb = v[u][j] + b[j];
            window[u][j].take(Chain::forward(chain, cm[j], vb), vb, w);
          }
        }
      }
  if (d.p_channels_last) {  // kVec divides C (or is 1): a thread's channels are all in P or all past it
    const uint32_t first = c0 + group * kVec;
    if (first >= d.c) return;
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      const uint32_t e = e0 + row + u * kRows;
      if (e >= d.plane_out) break;
      float* out = p + (int64_t(image) * d.plane_out + e) * d.c + first;
      if constexpr (kVec == 4)
        *reinterpret_cast<float4*>(out) = make_float4(window[u][0].result(d.divisor), window[u][1].result(d.divisor),
                                                      window[u][2].result(d.divisor), window[u][3].result(d.divisor));
      else
        *out = window[u][0].result(d.divisor);
    }
    return;
  }
#pragma unroll
  for (int u = 0; u < kPerThread; ++u)
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const int e = row + u * kRows, c = group * kVec + j;
      tile_p[e][c] = window[u][j].result(d.divisor);
      if (kMax) {
        tile_v[e][c] = window[u][j].best_v;
        tile_i[e][c] = uint8_t(window[u][j].best_i);
      }
    }
  __syncthreads();

  // Lane = element; warp w's channels c0 + w + 8 u.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int part = 0; part < kElems / 32; ++part) {
    const int el = part * 32 + lane;
    const uint32_t e = e0 + el;
    if (e >= d.plane_out) break;
#pragma unroll
    for (int u = 0; u < kTile / (kThreads / 32); ++u) {
      const int j = warp + u * (kThreads / 32);
      if (c0 + j >= d.c) break;
      const int64_t o = (int64_t(image) * d.c + c0 + j) * d.plane_out + e;
      p[o] = tile_p[el][j];
      if (argmax != nullptr) argmax[o] = tile_i[el][j];
      if (y_at_max != nullptr) y_at_max[o] = tile_v[el][j];
    }
  }
}

template <class Chain, ChainPool kPool, bool kAdd>
void launch(dim3 blocks, bool vec4, const float* y, const float* addend, const float* bias, const EpilogueChain& chain,
            float* p, uint8_t* argmax, float* y_at_max, const Dims& d, cudaStream_t stream) {
  if (vec4)
    channels_last_pool_kernel<Chain, kPool, 4, kAdd>
        <<<blocks, kThreads, 0, stream>>>(y, addend, bias, chain, p, argmax, y_at_max, d);
  else
    channels_last_pool_kernel<Chain, kPool, 1, kAdd>
        <<<blocks, kThreads, 0, stream>>>(y, addend, bias, chain, p, argmax, y_at_max, d);
}

template <bool kAdd>
void forward(const char* op, const float* y, const float* addend, const float* bias, const EpilogueChain& chain,
             float* p, PLayout p_layout, uint8_t* argmax, float* y_at_max, const ChainPoolGeometry& g,
             cudaStream_t stream) {
  detail::require(y != nullptr && p != nullptr && (addend != nullptr) == kAdd, op, "null y, p or addend");
  detail::require(argmax == nullptr || g.pool == ChainPool::Max, op, "argmax only with a max pool");
  detail::require(y_at_max == nullptr || argmax != nullptr, op, "y_at_max only with argmax");
  const bool p_last = p_layout == PLayout::ChannelsLast;
  detail::require(!p_last || argmax == nullptr, op, "argmax only with a packed P");
  if (const char* why = channels_last_pool_geometry_error(g)) detail::require(false, op, why);
  require_chain(op, chain);
  const std::array<int64_t, 3> out = chain_pool_output(g);
  Dims d;
  d.c = uint32_t(g.c);
  int64_t window = 1;
  d.image_in = g.c;
  for (int a = 0; a < 3; ++a) {
    d.in[a] = uint32_t(g.y[a]);
    d.out[a] = uint32_t(out[a]);
    d.k[a] = int32_t(g.k[a]);
    d.s[a] = int32_t(g.stride[a]);
    d.pad[a] = int32_t(g.pad[a]);
    window *= g.k[a];
    d.image_in *= g.y[a];
  }
  d.plane_out = uint32_t(out[0] * out[1] * out[2]);
  d.out_h = FastDiv(d.out[1]);
  d.out_w = FastDiv(d.out[2]);
  const int64_t tiles = detail::ceil_div(d.plane_out, kElems);
  d.tiles = FastDiv(uint32_t(tiles));
  d.divisor = double(window);
  d.p_channels_last = p_last;
  const dim3 blocks(unsigned(g.n * tiles), unsigned(detail::ceil_div(g.c, kTile)));
  const bool vec4 = g.c % 4 == 0 && detail::aligned_to(y, 16) && (!kAdd || detail::aligned_to(addend, 16)) &&
                    (!p_last || detail::aligned_to(p, 16));
  with_chain_policy(chain, [&](auto policy) {
    using Chain = decltype(policy);
    switch (g.pool) {
      case ChainPool::Max:
        launch<Chain, ChainPool::Max, kAdd>(blocks, vec4, y, addend, bias, chain, p, argmax, y_at_max, d, stream);
        break;
      case ChainPool::Avg:
        launch<Chain, ChainPool::Avg, kAdd>(blocks, vec4, y, addend, bias, chain, p, nullptr, nullptr, d, stream);
        break;
      case ChainPool::None:
        launch<Chain, ChainPool::None, kAdd>(blocks, vec4, y, addend, bias, chain, p, nullptr, nullptr, d, stream);
        break;
    }
  });
  ANVIL_CHECK_LAUNCH();
}

}  // namespace

const char* channels_last_pool_geometry_error(const ChainPoolGeometry& g) {
  if (const char* why = chain_pool_geometry_error(g)) return why;
  const std::array<int64_t, 3> out = chain_pool_output(g);
  const int64_t tiles = detail::ceil_div(out[0] * out[1] * out[2], kElems);
  if (g.n * tiles > std::numeric_limits<int32_t>::max()) return "n * (P's plane / 64) must be < 2^31";
  if (detail::ceil_div(g.c, kTile) > kMaxChannelTiles) return "at most 65535 * 32 channels";
  return nullptr;
}

void channels_last_pool_forward(const float* y, const float* bias, const EpilogueChain& chain, float* p,
                                PLayout p_layout, uint8_t* argmax, float* y_at_max, const ChainPoolGeometry& g,
                                cudaStream_t stream) {
  forward<false>("channels_last_pool_forward", y, nullptr, bias, chain, p, p_layout, argmax, y_at_max, g, stream);
}

void add_channels_last_pool_forward(const float* y, const float* addend, const EpilogueChain& chain, float* p,
                                    PLayout p_layout, uint8_t* argmax, const ChainPoolGeometry& g,
                                    cudaStream_t stream) {
  forward<true>("add_channels_last_pool_forward", y, addend, nullptr, chain, p, p_layout, argmax, nullptr, g, stream);
}

}  // namespace anvil::cuda
