// The direct conv fused with its epilogue (see direct_conv.hpp).
//
// A block takes a tile of pooled outputs: one pooled depth of one image,
// kRows x row_warps pooled rows, kLanes pooled columns, and group_warps groups
// of kCo output channels. It first copies the x its windows read into shared
// memory, zeros in the conv's padding, with each row's columns de-interleaved
// by the lanes' stride (pool stride x conv stride): lane j's column
// j * stride + v sits at (v mod stride) * phase_width + j + v / stride, so a
// warp's 32 loads of one tap are 32 consecutive words. The group's weights sit
// beside it as [k][channels] (k = ci * taps + tap), read as broadcast 16-byte
// loads, and per pool column w2 and k the tap's offset in the tile.
//
// A warp takes one group of kCo channels and lane j pooled column j of kRows
// pooled rows: per step of k, 4 loads of x, kCo / 4 of weights and one of the
// offset feed kRows x kCo FMAs. The window is walked row-major, as
// chain_pool.cu does; each of its conv outputs is a sum over k in order from
// 0, then the chain and the pool, so the results are chain_pool's bits for
// the same Y. Where pool windows overlap, the conv outputs they share are
// computed once per window.
#include "kernels/cuda/direct_conv.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/epilogue_chain.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/pool_window.cuh"
#include "kernels/fast_div.hpp"

namespace anvil::cuda {
namespace {

constexpr int kLanes = 32;  // pooled columns of a block
constexpr int kRows = 4;    // pooled rows of a thread
// A block's warps, group_warps x row_warps: 4 leave registers for two blocks an
// SM, so one block's copies into shared memory overlap the other's FMAs.
constexpr int kMaxWarps = 4;
// A block's shared memory: up to the 48 KiB every device gives; beyond, up to
// 96 KiB where the device lets a block opt in to that much (sm_80 and later).
constexpr int64_t kSmemDefault = 48 * 1024, kSmemMost = 96 * 1024;

struct DirectDims {
  int32_t cin, cout, taps, k_total;
  int32_t x[3], y[3], out[3];
  int32_t k1, k2, dil[3];
  int32_t cs[3], cpad[3];         // the conv's stride and padding
  int32_t pk[3], ps[3], ppad[3];  // the pool's window, stride and padding
  uint32_t x_plane, y_plane, p_plane;
  float divisor;
  bool saves_codes;  // the kernel's `saved` is the chain's codes, else Y (when not null)
  // The block's tile.
  int32_t kco, groups, group_warps, row_warps;
  int32_t tile_rows_out, tile_lanes;  // the pooled rows and columns whose windows a tile's x covers
  int32_t tile[3];                    // x's depth, rows and columns the tile's windows read
  int32_t lane_stride;                // x columns between neighbouring lanes' windows: a row's phases
  int32_t phase_width;                // a tile row's words per phase
  FastDiv group_chunks, col_chunks, row_chunks, depth;
  int64_t blocks;

  __host__ __device__ int32_t channels() const { return group_warps * kco; }
  __host__ __device__ int32_t row_pitch() const { return lane_stride * phase_width; }
  __host__ __device__ int32_t x_rows() const { return cin * tile[0] * tile[1]; }
  // Shared memory in words: weights [k_total][channels], bias [channels], offsets [pk2][k_total], x.
  __host__ __device__ int64_t smem_words() const {
    return int64_t(k_total) * channels() + channels() + int64_t(pk[2]) * k_total + int64_t(x_rows()) * row_pitch();
  }
};

// *dst = valid ? *src : 0. From sm_80 on an asynchronous copy, so a thread's
// copies are all in flight at once (the caller waits for them); `any` is a
// valid address for the copy that only zero-fills.
__device__ __forceinline__ void stage(float* dst, const float* src, bool valid, const float* any) {
#if ANVIL_HAS_TENSOR_CORES
  copy_async(dst, valid ? src : any, valid);
#else
  *dst = valid ? __ldg(src) : 0.f;
#endif
}

template <class Chain, ChainPool kPool, bool kSaveMax, int kCo>
__global__ void __launch_bounds__(kMaxWarps * 32)
    direct_conv_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                       const EpilogueChain chain, float* __restrict__ p, uint8_t* __restrict__ argmax,
                       float* __restrict__ y_at_max, void* __restrict__ saved, DirectDims d) {
  extern __shared__ float4 smem4[];
  const int cols = d.channels(), pitch = d.row_pitch();
  float* ws = reinterpret_cast<float*>(smem4);
  float* bs = ws + d.k_total * cols;
  int* koff = reinterpret_cast<int*>(bs + cols);
  float* xs = reinterpret_cast<float*>(koff + d.pk[2] * d.k_total);

  // The tile: b = (((image * out0 + od) * row_chunks + row_chunk) * col_chunks + col_chunk) * group_chunks + chunk.
  uint32_t b = blockIdx.x, q = d.group_chunks.div(b);
  const int chunk = int(b - q * d.group_chunks.divisor());
  b = d.col_chunks.div(q);
  const int ow0 = int(q - b * d.col_chunks.divisor()) * kLanes;
  q = d.row_chunks.div(b);
  const int oh0 = int(b - q * d.row_chunks.divisor()) * kRows * d.row_warps;
  const uint32_t image = d.depth.div(q);
  const int od = int(q - image * d.depth.divisor());
  const int co_first = chunk * cols;

  for (int i = threadIdx.x; i < d.k_total * cols; i += blockDim.x) {
    const int k = i / cols, co = co_first + i % cols;
    stage(ws + i, w + int64_t(co) * d.k_total + k, co < d.cout, w);
  }
  for (int c = threadIdx.x; c < cols; c += blockDim.x)
    bs[c] = bias_at(bias, min(co_first + c, d.cout - 1));  // past the last channel: computed, not stored
  for (int i = threadIdx.x; i < d.pk[2] * d.k_total; i += blockDim.x) {
    const int w2 = i / d.k_total, k = i - w2 * d.k_total, ci = k / d.taps, t = k - ci * d.taps;
    const int td = t / (d.k1 * d.k2) * d.dil[0], th = t / d.k2 % d.k1 * d.dil[1], tw = t % d.k2 * d.dil[2];
    const int v = w2 * d.cs[2] + tw;
    koff[i] = ((ci * d.tile[0] + td) * d.tile[1] + th) * pitch + v % d.lane_stride * d.phase_width + v / d.lane_stride;
  }
  // x: warps take tile rows (ci, depth, row), lanes columns.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int xd0 = (od * d.ps[0] - d.ppad[0]) * d.cs[0] - d.cpad[0];
  const int xh0 = (oh0 * d.ps[1] - d.ppad[1]) * d.cs[1] - d.cpad[1];
  const int xw0 = (ow0 * d.ps[2] - d.ppad[2]) * d.cs[2] - d.cpad[2];
  const float* xi = x + int64_t(image) * d.cin * d.x_plane;
  const int phases = d.lane_stride, step_phase = kLanes % phases, step_index = kLanes / phases;
  for (int row = warp; row < d.x_rows(); row += warps) {
    const int ci = row / (d.tile[0] * d.tile[1]), rest = row - ci * d.tile[0] * d.tile[1];
    const int xd = xd0 + rest / d.tile[1], xh = xh0 + rest % d.tile[1];
    const bool row_in = uint32_t(xd) < uint32_t(d.x[0]) && uint32_t(xh) < uint32_t(d.x[1]);
    const float* src = xi + (row_in ? ci * int(d.x_plane) + (xd * d.x[1] + xh) * d.x[2] : 0);
    float* dst = xs + row * pitch;
    int phase = lane % phases, index = lane / phases;
    for (int tw = lane; tw < d.tile[2]; tw += kLanes) {
      const int xw = xw0 + tw;
      stage(dst + phase * d.phase_width + index, src + xw, row_in && uint32_t(xw) < uint32_t(d.x[2]), xi);
      phase += step_phase;
      index += step_index;
      if (phase >= phases) {
        phase -= phases;
        ++index;
      }
    }
  }
#if ANVIL_HAS_TENSOR_CORES
  copy_async_commit();
  copy_async_wait<0>();
#endif
  __syncthreads();

  const int gl = warp % d.group_warps, rw = warp / d.group_warps;
  const int co0 = co_first + gl * kCo;
  if (co0 >= d.cout) return;  // after the block's only barrier
  // A pooled position past the output computes on the tile's last column (row) and stores nothing.
  const int ow = ow0 + lane, row0 = rw * kRows;  // row0: the thread's first pooled row in the tile
  const int tile_lane = min(lane, d.tile_lanes - 1);

  PoolWindow<kPool> window[kRows][kCo];
  const float4* wq = reinterpret_cast<const float4*>(ws + gl * kCo);
  const int wq_step = cols / 4;
  int wi = 0;  // the window offset's index, row-major
  for (int32_t w0 = 0; w0 < d.pk[0]; ++w0)
    for (int32_t w1 = 0; w1 < d.pk[1]; ++w1)
      for (int32_t w2 = 0; w2 < d.pk[2]; ++w2, ++wi) {
        const int yd = od * d.ps[0] - d.ppad[0] + w0, yw = ow * d.ps[2] - d.ppad[2] + w2;
        const bool dw_in = ow < d.out[2] && uint32_t(yd) < uint32_t(d.y[0]) && uint32_t(yw) < uint32_t(d.y[2]);
        const float* xrow[kRows];
#pragma unroll
        for (int m = 0; m < kRows; ++m)
          xrow[m] = xs +
                    (w0 * d.cs[0] * d.tile[1] + (min(row0 + m, d.tile_rows_out - 1) * d.ps[1] + w1) * d.cs[1]) * pitch +
                    tile_lane;
        const int* kt = koff + w2 * d.k_total;
        float acc[kRows][kCo] = {};
#pragma unroll 2
        for (int k = 0; k < d.k_total; ++k) {
          const int o = kt[k];
          float xv[kRows];
#pragma unroll
          for (int m = 0; m < kRows; ++m) xv[m] = xrow[m][o];
#pragma unroll
          for (int j = 0; j < kCo / 4; ++j) {
            const float4 q4 = wq[k * wq_step + j];
#pragma unroll
            for (int m = 0; m < kRows; ++m) {
              acc[m][4 * j] = fmaf(xv[m], q4.x, acc[m][4 * j]);
              acc[m][4 * j + 1] = fmaf(xv[m], q4.y, acc[m][4 * j + 1]);
              acc[m][4 * j + 2] = fmaf(xv[m], q4.z, acc[m][4 * j + 2]);
              acc[m][4 * j + 3] = fmaf(xv[m], q4.w, acc[m][4 * j + 3]);
            }
          }
        }
#pragma unroll
        for (int m = 0; m < kRows; ++m) {
          const int oh = oh0 + row0 + m, yh = oh * d.ps[1] - d.ppad[1] + w1;
          // Past the output, or in the pool's padding.
          if (!dw_in || oh >= d.out[1] || uint32_t(yh) >= uint32_t(d.y[1])) continue;
          const uint32_t y_at = (uint32_t(yd) * d.y[1] + uint32_t(yh)) * d.y[2] + uint32_t(yw);
#pragma unroll
          for (int c = 0; c < kCo; ++c) {
            const int co = min(co0 + c, d.cout - 1);  // a channel past the last: computed, not stored
            const float v = acc[m][c] + bs[gl * kCo + c];
            if (saved != nullptr && co0 + c < d.cout)
              save_for_backward<Chain>(saved, d.saves_codes, (int64_t(image) * d.cout + co) * d.y_plane + y_at,
                                       acc[m][c], v, chain);
            window[m][c].take(Chain::forward(chain, Chain::at(chain, co), v), v, wi);
          }
        }
      }
  if (ow >= d.out[2]) return;
#pragma unroll
  for (int m = 0; m < kRows; ++m) {
    const int oh = oh0 + row0 + m;
    if (oh >= d.out[1]) break;
    const uint32_t e = (uint32_t(od) * d.out[1] + uint32_t(oh)) * d.out[2] + uint32_t(ow);
#pragma unroll
    for (int c = 0; c < kCo; ++c) {
      if (co0 + c >= d.cout) break;
      const int64_t at = (int64_t(image) * d.cout + co0 + c) * d.p_plane + e;
      p[at] = window[m][c].result(d.divisor);
      if constexpr (kSaveMax) {
        if (argmax != nullptr) argmax[at] = uint8_t(window[m][c].best_i);
        if (y_at_max != nullptr) y_at_max[at] = window[m][c].best_v;
      }
    }
  }
}

// Output channels per thread: 8 where there are that many (2 weight loads feed 8 FMAs a row).
int channels_per_thread(int64_t cout) { return cout >= 8 ? 8 : 4; }

// The block's tile: as many channel groups (a warp each, up to kMaxWarps), then
// as many rows of warps, as fit the shared memory budget. False when one
// warp's does not.
bool plan_tile(const std::array<int64_t, 3>& kext, DirectDims& d) {
  d.kco = channels_per_thread(d.cout);
  d.groups = int32_t(detail::ceil_div(d.cout, d.kco));
  d.tile_lanes = std::min(kLanes, d.out[2]);
  // In double: strides and dilations of 31 bits overflow int64 here, and such a tile never fits.
  const double lane_stride = double(d.ps[2]) * d.cs[2];
  const double tile0 = double(d.pk[0] - 1) * d.cs[0] + double(kext[0]) + 1;
  const double tile2 = (double(d.tile_lanes - 1) * d.ps[2] + d.pk[2] - 1) * d.cs[2] + double(kext[2]) + 1;
  const double phase_width = std::ceil(tile2 / lane_stride);
  for (int64_t gw = std::min<int64_t>(d.groups, kMaxWarps); gw >= 1; gw /= 2)
    for (int64_t rw = std::min<int64_t>(kMaxWarps / gw, detail::ceil_div(d.out[1], kRows)); rw >= 1; rw /= 2) {
      const int64_t rows_out = std::min<int64_t>(kRows * rw, d.out[1]);
      const double tile1 = (double(rows_out - 1) * d.ps[1] + d.pk[1] - 1) * d.cs[1] + double(kext[1]) + 1;
      const double words = double(d.k_total) * gw * d.kco + double(gw) * d.kco + double(d.pk[2]) * d.k_total +
                           tile0 * tile1 * d.cin * lane_stride * phase_width;
      const double bytes = words * sizeof(float);
      if (bytes > double(kSmemDefault) && (bytes > double(kSmemMost) || bytes > double(detail::max_block_smem())))
        continue;
      d.group_warps = int32_t(gw);
      d.row_warps = int32_t(rw);
      d.tile_rows_out = int32_t(rows_out);
      d.tile[0] = int32_t(tile0);
      d.tile[1] = int32_t(tile1);
      d.tile[2] = int32_t(tile2);
      d.lane_stride = int32_t(lane_stride);
      d.phase_width = int32_t(phase_width);
      return true;
    }
  return false;
}

// The checks of direct_conv_supported, and the dims the kernel takes.
const char* direct_dims(const DirectConvGeometry& g, DirectDims& d) {
  constexpr int64_t kMax31 = std::numeric_limits<int32_t>::max();
  const ChainPoolGeometry& pg = g.out;
  if (const char* why = chain_pool_geometry_error(pg)) return why;  // the pool's own limits, as chain_pool's
  const std::array<int64_t, 3> out = chain_pool_output(pg);
  if (g.cin < 1) return "no input channels";
  int64_t taps = 1, x_plane = 1, padded_plane = 1, y_plane = 1, p_plane = 1, window = 1;
  std::array<int64_t, 3> kext{};
  for (int a = 0; a < 3; ++a) {
    if (g.x[a] < 1 || g.k[a] < 1 || g.stride[a] < 1 || g.dilation[a] < 1 || g.pad[a] < 0)
      return "non-positive sizes or negative padding";
    if (g.x[a] > kMax31 || g.k[a] > kMax31 || g.stride[a] > kMax31 || g.dilation[a] > kMax31 || g.pad[a] > kMax31)
      return "sizes beyond 31 bits";
    kext[a] = (g.k[a] - 1) * g.dilation[a];
    if (pg.y[a] != (g.x[a] + 2 * g.pad[a] - kext[a] - 1) / g.stride[a] + 1 || pg.y[a] < 1)
      return "the output dims are not the conv's";
    // Every conv output in some window: windows without gaps that reach the end.
    if (pg.stride[a] > pg.k[a] || (out[a] - 1) * pg.stride[a] - pg.pad[a] + pg.k[a] < pg.y[a])
      return "a pool that leaves conv outputs outside its windows";
    taps *= g.k[a];
    x_plane *= g.x[a];
    padded_plane *= g.x[a] + 2 * g.pad[a];  // bounds a window's x offset, which may start in the padding
    y_plane *= pg.y[a];
    p_plane *= out[a];
    window *= pg.k[a];
    if (taps > kDirectConvMaxK || padded_plane * g.cin > kMax31) return "sizes beyond 31 bits";
    d.x[a] = int32_t(g.x[a]);
    d.y[a] = int32_t(pg.y[a]);
    d.out[a] = int32_t(out[a]);
    d.dil[a] = int32_t(g.dilation[a]);
    d.cs[a] = int32_t(g.stride[a]);
    d.cpad[a] = int32_t(g.pad[a]);
    d.pk[a] = int32_t(pg.k[a]);
    d.ps[a] = int32_t(pg.stride[a]);
    d.ppad[a] = int32_t(pg.pad[a]);
  }
  if (g.cin * taps > kDirectConvMaxK) return "more than 512 input channels x kernel taps";
  d.cin = int32_t(g.cin);
  d.cout = int32_t(pg.c);
  d.taps = int32_t(taps);
  d.k_total = int32_t(g.cin * taps);
  d.k1 = int32_t(g.k[1]);
  d.k2 = int32_t(g.k[2]);
  d.x_plane = uint32_t(x_plane);
  d.y_plane = uint32_t(y_plane);
  d.p_plane = uint32_t(p_plane);
  d.divisor = float(window);
  if (!plan_tile(kext, d)) return "the input its windows read does not fit in shared memory";
  const int64_t group_chunks = detail::ceil_div(d.groups, d.group_warps);
  const int64_t row_chunks = detail::ceil_div(d.out[1], int64_t(kRows) * d.row_warps);
  const int64_t col_chunks = detail::ceil_div(d.out[2], kLanes);
  d.blocks = pg.n * d.out[0] * row_chunks * col_chunks * group_chunks;
  if (d.blocks > kMax31) return "too many blocks";
  d.group_chunks = FastDiv(uint32_t(group_chunks));
  d.col_chunks = FastDiv(uint32_t(col_chunks));
  d.row_chunks = FastDiv(uint32_t(row_chunks));
  d.depth = FastDiv(uint32_t(d.out[0]));
  return nullptr;
}

template <class Chain, ChainPool kPool, bool kSaveMax, int kCo>
void launch(const float* x, const float* w, const float* bias, const EpilogueChain& chain, float* p, uint8_t* argmax,
            float* y_at_max, void* saved, const DirectDims& d, cudaStream_t stream) {
  const size_t smem = size_t(d.smem_words()) * sizeof(float);
  const unsigned threads = unsigned(d.group_warps * d.row_warps * 32);
  const auto kernel = direct_conv_kernel<Chain, kPool, kSaveMax, kCo>;
  if (smem > size_t(kSmemDefault))
    ANVIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<unsigned(d.blocks), threads, smem, stream>>>(x, w, bias, chain, p, argmax, y_at_max, saved, d);
}

}  // namespace

bool direct_conv_supported(const DirectConvGeometry& g, const char** why_not) {
  DirectDims d;
  const char* why = direct_dims(g, d);
  if (why_not != nullptr) *why_not = why;
  return why == nullptr;
}

void direct_conv_forward(const float* x, const float* w, const float* bias, const EpilogueChain& chain, float* p,
                         uint8_t* argmax, float* y_at_max, float* y, uint8_t* codes, const DirectConvGeometry& g,
                         cudaStream_t stream) {
  constexpr const char* op = "direct_conv_forward";
  detail::require(x != nullptr && w != nullptr && p != nullptr, op, "null x, w or p");
  require_codes_or_y(op, chain, y, codes);
  detail::require((argmax == nullptr && y_at_max == nullptr) || g.out.pool == ChainPool::Max, op,
                  "argmax and y_at_max only with a max pool");
  require_chain(op, chain);
  DirectDims d;
  if (const char* why = direct_dims(g, d)) detail::require(false, op, why);
  d.saves_codes = codes != nullptr;
  void* saved = codes != nullptr ? static_cast<void*>(codes) : static_cast<void*>(y);
  with_chain_policy(chain, [&](auto policy) {
    using Chain = decltype(policy);
    auto by_pool = [&](auto kco) {
      constexpr int kCo = decltype(kco)::value;
      if (g.out.pool == ChainPool::Avg)
        launch<Chain, ChainPool::Avg, false, kCo>(x, w, bias, chain, p, argmax, y_at_max, saved, d, stream);
      else if (argmax != nullptr || y_at_max != nullptr)
        launch<Chain, ChainPool::Max, true, kCo>(x, w, bias, chain, p, argmax, y_at_max, saved, d, stream);
      else  // no pool: a window of one, whose "max" is the value
        launch<Chain, ChainPool::Max, false, kCo>(x, w, bias, chain, p, argmax, y_at_max, saved, d, stream);
    };
    if (d.kco == 8)
      by_pool(std::integral_constant<int, 8>{});
    else
      by_pool(std::integral_constant<int, 4>{});
  });
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
