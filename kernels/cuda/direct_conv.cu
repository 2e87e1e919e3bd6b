// The direct conv fused with its epilogue (see direct_conv.hpp).
//
// Block b takes kThreads pooled positions of one image and kCo output channels
// (b = (image * groups + group) * chunks + chunk), one position a thread. The
// group's weights sit in shared memory as [k][kCo] (k = ci * taps + tap), so
// a step of k is one x load, kCo / 4 broadcast 16-byte weight loads and kCo
// FMAs; the taps' x offsets (and their displacements, for the border checks)
// are a table beside them. A thread walks its window row-major, as
// chain_pool.cu does, computes each conv output of the window for its kCo
// channels in registers, then the chain and the pool; the order of the sums is
// chain_pool.cu's, so the results are its bits for the same Y. Where pool
// windows overlap, the conv outputs they share are computed once per window.
#include "kernels/cuda/direct_conv.hpp"

#include <limits>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/epilogue_chain.cuh"
#include "kernels/fast_div.hpp"

namespace anvil::cuda {
namespace {

using detail::kThreads;

struct DirectDims {
  int32_t cin, cout, taps, k_total;
  int32_t x[3], y[3], out[3];
  int32_t kext[3];  // the kernel's extent - 1 along each axis: (k - 1) * dilation
  int32_t k1, k2, dil[3];
  int32_t cs[3], cpad[3];          // the conv's stride and padding
  int32_t pk[3], ps[3], ppad[3];   // the pool's window, stride and padding
  uint32_t x_plane, y_plane, p_plane;
  FastDiv out_w, out_h, chunks, groups;
  float divisor;
};

template <class Chain, ChainPool kPool, int kCo>
__global__ void __launch_bounds__(kThreads)
    direct_conv_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                       const EpilogueChain chain, float* __restrict__ p, uint8_t* __restrict__ argmax,
                       float* __restrict__ y_at_max, float* __restrict__ y, DirectDims d) {
  extern __shared__ float4 smem4[];
  float* ws = reinterpret_cast<float*>(smem4);                 // [k_total][kCo]
  int4* taps = reinterpret_cast<int4*>(ws + d.k_total * kCo);  // per k: x offset, then its displacement per axis
  __shared__ float bs[kCo];
  const uint32_t rest = d.chunks.div(blockIdx.x), chunk = blockIdx.x - rest * d.chunks.divisor();
  const uint32_t image = d.groups.div(rest), co0 = (rest - image * d.groups.divisor()) * kCo;
  for (int i = threadIdx.x; i < d.k_total * kCo; i += kThreads) {
    const int k = i / kCo, co = int(co0) + i % kCo;
    ws[i] = co < d.cout ? __ldg(w + int64_t(co) * d.k_total + k) : 0.f;
  }
  for (int k = threadIdx.x; k < d.k_total; k += kThreads) {
    const int ci = k / d.taps, t = k - ci * d.taps;
    const int d0 = t / (d.k1 * d.k2) * d.dil[0], d1 = t / d.k2 % d.k1 * d.dil[1], d2 = t % d.k2 * d.dil[2];
    taps[k] = make_int4(ci * int(d.x_plane) + (d0 * d.x[1] + d1) * d.x[2] + d2, d0, d1, d2);
  }
  if (threadIdx.x < kCo) {
    const int co = int(co0) + threadIdx.x;
    bs[threadIdx.x] = bias != nullptr && co < d.cout ? __ldg(bias + co) : 0.f;
  }
  __syncthreads();
  const uint32_t e = chunk * kThreads + threadIdx.x;
  if (e >= d.p_plane) return;  // after the block's only barrier

  const uint32_t row = d.out_w.div(e), od = d.out_h.div(row);
  const int32_t o[3] = {int32_t(od), int32_t(row - od * d.out[1]), int32_t(e - row * d.out[2])};
  const float* xi = x + int64_t(image) * d.cin * d.x_plane;
  float best[kCo], best_v[kCo];
  int best_i[kCo];
  double sum[kCo];
#pragma unroll
  for (int c = 0; c < kCo; ++c) {
    best[c] = -INFINITY;
    best_v[c] = 0.f;
    best_i[c] = kMaxPoolWindow;  // stays for a window of padding only
    sum[c] = 0.0;
  }
  int wi = 0;  // the window offset's index, row-major
  for (int32_t w0 = 0; w0 < d.pk[0]; ++w0)
    for (int32_t w1 = 0; w1 < d.pk[1]; ++w1)
      for (int32_t w2 = 0; w2 < d.pk[2]; ++w2, ++wi) {
        const int32_t yi[3] = {o[0] * d.ps[0] - d.ppad[0] + w0, o[1] * d.ps[1] - d.ppad[1] + w1,
                               o[2] * d.ps[2] - d.ppad[2] + w2};
        if (uint32_t(yi[0]) >= uint32_t(d.y[0]) || uint32_t(yi[1]) >= uint32_t(d.y[1]) ||
            uint32_t(yi[2]) >= uint32_t(d.y[2]))
          continue;  // in the pool's padding
        int32_t xb[3];
        bool interior = true;
#pragma unroll
        for (int a = 0; a < 3; ++a) {
          xb[a] = yi[a] * d.cs[a] - d.cpad[a];
          interior &= xb[a] >= 0 && xb[a] + d.kext[a] < d.x[a];
        }
        const int32_t base = (xb[0] * d.x[1] + xb[1]) * d.x[2] + xb[2];  // may be negative off the interior
        float acc[kCo] = {};
        auto step = [&](int k, float v) {
          const float4* wk = reinterpret_cast<const float4*>(ws + k * kCo);
#pragma unroll
          for (int j = 0; j < kCo / 4; ++j) {
            const float4 q = wk[j];
            acc[4 * j] = fmaf(v, q.x, acc[4 * j]);
            acc[4 * j + 1] = fmaf(v, q.y, acc[4 * j + 1]);
            acc[4 * j + 2] = fmaf(v, q.z, acc[4 * j + 2]);
            acc[4 * j + 3] = fmaf(v, q.w, acc[4 * j + 3]);
          }
        };
        if (interior) {
#pragma unroll 2
          for (int k = 0; k < d.k_total; ++k) step(k, __ldg(xi + (base + taps[k].x)));
        } else {
#pragma unroll 2
          for (int k = 0; k < d.k_total; ++k) {
            const int4 t = taps[k];
            const bool inside = uint32_t(xb[0] + t.y) < uint32_t(d.x[0]) && uint32_t(xb[1] + t.z) < uint32_t(d.x[1]) &&
                                uint32_t(xb[2] + t.w) < uint32_t(d.x[2]);
            step(k, inside ? __ldg(xi + (base + t.x)) : 0.f);
          }
        }
        const uint32_t y_at = (uint32_t(yi[0]) * d.y[1] + uint32_t(yi[1])) * d.y[2] + uint32_t(yi[2]);
#pragma unroll
        for (int c = 0; c < kCo; ++c) {
          const int co = min(int(co0) + c, d.cout - 1);  // a channel past the last: computed, not stored
          if (y != nullptr && int(co0) + c < d.cout) y[(int64_t(image) * d.cout + co) * d.y_plane + y_at] = acc[c];
          const float v = acc[c] + bs[c];
          const float z = Chain::forward(chain, Chain::at(chain, co), v);
          if constexpr (kPool == ChainPool::Avg) {
            sum[c] += double(z);
          } else if (best_i[c] == kMaxPoolWindow || epi_better(z, best[c])) {
            best[c] = z;
            best_v[c] = v;
            best_i[c] = wi;
          }
        }
      }
#pragma unroll
  for (int c = 0; c < kCo; ++c) {
    if (int(co0) + c >= d.cout) break;
    const int64_t at = (int64_t(image) * d.cout + co0 + c) * d.p_plane + e;
    if constexpr (kPool == ChainPool::Avg) {
      p[at] = float(sum[c] / double(d.divisor));
    } else {
      p[at] = best[c];
      if (argmax != nullptr) argmax[at] = uint8_t(best_i[c]);
      if (y_at_max != nullptr) y_at_max[at] = best_v[c];
    }
  }
}

// The checks of direct_conv_supported, and the dims the kernel takes.
const char* direct_dims(const DirectConvGeometry& g, DirectDims& d) {
  constexpr int64_t kMax31 = std::numeric_limits<int32_t>::max();
  const ChainPoolGeometry& pg = g.out;
  if (const char* why = chain_pool_geometry_error(pg)) return why;  // the pool's own limits, as chain_pool's
  const std::array<int64_t, 3> out = chain_pool_output(pg);
  if (g.cin < 1) return "no input channels";
  int64_t taps = 1, x_plane = 1, padded_plane = 1, y_plane = 1, p_plane = 1, window = 1;
  for (int a = 0; a < 3; ++a) {
    if (g.x[a] < 1 || g.k[a] < 1 || g.stride[a] < 1 || g.dilation[a] < 1 || g.pad[a] < 0)
      return "non-positive sizes or negative padding";
    if (g.x[a] > kMax31 || g.k[a] > kMax31 || g.stride[a] > kMax31 || g.dilation[a] > kMax31 || g.pad[a] > kMax31)
      return "sizes beyond 31 bits";
    const int64_t ext = (g.k[a] - 1) * g.dilation[a];
    if (pg.y[a] != (g.x[a] + 2 * g.pad[a] - ext - 1) / g.stride[a] + 1 || pg.y[a] < 1)
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
    d.kext[a] = int32_t(ext);
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
  d.out_w = FastDiv(uint32_t(out[2]));
  d.out_h = FastDiv(uint32_t(out[1]));
  d.divisor = float(window);
  return nullptr;
}

// Output channels per thread: 8 where there are that many (2 weight loads feed 8 FMAs). 16 took
// 106 to 192 registers, or spilled under a cap of 128.
int channels_per_thread(int64_t cout) { return cout >= 8 ? 8 : 4; }

template <class Chain, ChainPool kPool, int kCo>
void launch(const float* x, const float* w, const float* bias, const EpilogueChain& chain, float* p,
            uint8_t* argmax, float* y_at_max, float* y, DirectDims d, int64_t n, cudaStream_t stream) {
  const int64_t groups = detail::ceil_div(d.cout, kCo), chunks = detail::ceil_div(d.p_plane, kThreads);
  const int64_t blocks = n * groups * chunks;
  detail::require(blocks <= std::numeric_limits<int32_t>::max(), "direct_conv_forward", "too many blocks");
  d.chunks = FastDiv(uint32_t(chunks));
  d.groups = FastDiv(uint32_t(groups));
  const size_t smem = size_t(d.k_total) * (kCo * sizeof(float) + sizeof(int4));
  direct_conv_kernel<Chain, kPool, kCo><<<unsigned(blocks), kThreads, smem, stream>>>(x, w, bias, chain, p, argmax,
                                                                                     y_at_max, y, d);
}

}  // namespace

bool direct_conv_supported(const DirectConvGeometry& g, const char** why_not) {
  DirectDims d;
  const char* why = direct_dims(g, d);
  if (why_not != nullptr) *why_not = why;
  return why == nullptr;
}

void direct_conv_forward(const float* x, const float* w, const float* bias, const EpilogueChain& chain, float* p,
                         uint8_t* argmax, float* y_at_max, float* y, const DirectConvGeometry& g,
                         cudaStream_t stream) {
  constexpr const char* op = "direct_conv_forward";
  detail::require(x != nullptr && w != nullptr && p != nullptr, op, "null x, w or p");
  detail::require((argmax == nullptr && y_at_max == nullptr) || g.out.pool == ChainPool::Max, op,
                  "argmax and y_at_max only with a max pool");
  require_chain(op, chain);
  DirectDims d;
  if (const char* why = direct_dims(g, d)) detail::require(false, op, why);
  const int co = channels_per_thread(g.out.c);
  with_chain_policy(chain, [&](auto policy) {
    using Chain = decltype(policy);
    auto by_pool = [&](auto kco) {
      constexpr int kCo = decltype(kco)::value;
      if (g.out.pool == ChainPool::Avg)
        launch<Chain, ChainPool::Avg, kCo>(x, w, bias, chain, p, argmax, y_at_max, y, d, g.out.n, stream);
      else  // no pool: a window of one, whose "max" is the value
        launch<Chain, ChainPool::Max, kCo>(x, w, bias, chain, p, argmax, y_at_max, y, d, g.out.n, stream);
    };
    if (co == 8)
      by_pool(std::integral_constant<int, 8>{});
    else
      by_pool(std::integral_constant<int, 4>{});
  });
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
