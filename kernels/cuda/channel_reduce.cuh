// The per-channel machinery of bias.cu and channel_scale.cu:
// channel_map applies y[i] = f(x[i], param[channel(i)]) over an (n, c, spatial)
// tensor, and channel_reduce sums dy (bias) or dy * x (channel_scale) per channel.
//
// The reductions (bias_backward, channel_scale_backward's dm) are
// deterministic without atomics. Each channel's n * spatial elements, taken
// in (n, spatial) order, are cut into `chunks` fixed ranges; block (ch, chunk)
// sums its range in double, each thread over a fixed subset in a fixed order,
// then a fixed shuffle tree, into scratch[ch * chunks + chunk]; a second kernel
// sums each channel's partials in a fixed order. `chunks` depends on (n, c,
// spatial) alone, and which thread adds which element does not depend on the
// pointers' alignment (only whether it loads them as float4 or one by one), so
// results are bitwise identical between runs, wherever the buffers lie.
// Accumulation is in double: the products dy * x of floats are exact in
// double, so the result is the exact sum rounded once to float (plus the
// double rounding, ~1e-16 relative).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "kernels/cuda/common.cuh"

namespace anvil::cuda::detail {
// Unnamed: each .cu that includes this gets its own finalize_kernel (not a
// template), so the copies do not clash at link time.
namespace {

// y[i] = f(x[i], param[channel(i)]) with channel(i) = (i / spatial) % c.
// x may equal y (bias_forward runs in place): each element is read before it
// is written, by the same thread alone, so x and y are neither __restrict__
// nor read through __ldg. Idx is uint32_t where the flat count fits, which
// makes the one division per vector cheap.
template <class Idx, class F>
__global__ void __launch_bounds__(kThreads)
    channel_map_kernel(const float* x, const float* __restrict__ param, float* y, int64_t c, int64_t spatial,
                       VecSplit split, F f) {
  const int64_t tid = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const Idx sp = static_cast<Idx>(spatial), cc = static_cast<Idx>(c);
  for (int64_t v = tid; v < split.nvec; v += stride) {
    const int64_t i = split.head + 4 * v;
    const Idx q = static_cast<Idx>(i) / sp;
    Idx s = static_cast<Idx>(i) - q * sp;
    Idx ch = q % cc;
    float p = __ldg(param + ch);
    // The 4 elements may straddle channel boundaries when spatial < 4 or
    // spatial % 4 != 0: step the channel element by element.
    auto next = [&] {
      if (++s == sp) {
        s = 0;
        if (++ch == cc) ch = 0;
        p = __ldg(param + ch);
      }
    };
    const float4 a = load4(x + i);
    float4 r;
    r.x = f(a.x, p);
    next();
    r.y = f(a.y, p);
    next();
    r.z = f(a.z, p);
    next();
    r.w = f(a.w, p);
    store4(y + i, r);
  }
  auto scalar = [&](int64_t i) {
    const Idx ch = (static_cast<Idx>(i) / sp) % cc;
    y[i] = f(x[i], __ldg(param + ch));
  };
  for (int64_t i = tid; i < split.head; i += stride) scalar(i);
  const int64_t tail0 = split.head + 4 * split.nvec;
  for (int64_t i = tail0 + tid; i < tail0 + split.tail; i += stride) scalar(i);
}

// Loads 4 consecutive floats, as one float4 when vec (p 16-byte aligned).
__device__ __forceinline__ float4 load_group(const float* __restrict__ p, bool vec) {
  if (vec) return ldg4(p);
  return make_float4(__ldg(p), __ldg(p + 1), __ldg(p + 2), __ldg(p + 3));
}

// Per-channel partial sums, block (ch, chunk) over elements [v0, v1) of the
// channel's (n, spatial) range:
//   kScale == false: sum of dy                                  (bias_backward)
//   kScale == true:  sum of dy * x, and dx = dy * m[ch] (dx += with accumulate)
//                    when dx is not null                        (channel_scale_backward)
// segments (spatial >= 1024): walk the range as contiguous runs inside each
// (n, ch) plane, 4-element groups per thread (float4 loads when aligned);
// otherwise one element per thread at a time, stepping its (n, s) position
// without dividing. Idx (uint32_t where n * spatial fits) does the one division.
template <bool kScale, class Idx>
__global__ void __launch_bounds__(kThreads)
    channel_reduce_kernel(const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ m,
                          float* __restrict__ dx, bool accumulate, double* __restrict__ partials, int64_t c,
                          int64_t spatial, int64_t per_channel, int64_t chunks, int64_t chunk_len, bool segments) {
  const int64_t ch = int64_t(blockIdx.x) / chunks;
  const int64_t chunk = int64_t(blockIdx.x) - ch * chunks;
  const int64_t v0 = chunk * chunk_len;
  const int64_t v1 = min(per_channel, v0 + chunk_len);
  const float mc = (kScale && dx != nullptr) ? __ldg(m + ch) : 0.f;
  const Idx sp = static_cast<Idx>(spatial);
  double acc = 0.0;

  auto element = [&](int64_t i) {
    const float g = __ldg(dy + i);
    if (kScale) {
      acc = fma(double(g), double(__ldg(x + i)), acc);
      if (dx != nullptr) {
        const float d = __fmul_rn(g, mc);
        dx[i] = accumulate ? dx[i] + d : d;
      }
    } else {
      acc += double(g);
    }
  };

  if (segments) {
    // Runs: [v0, end of its plane), then whole planes, then the start of the last.
    int64_t nn = 0, s = 0;
    if (v0 < v1) {
      const Idx q = static_cast<Idx>(v0) / sp;
      nn = int64_t(q);
      s = int64_t(static_cast<Idx>(v0) - q * sp);
    }
    for (int64_t v = v0; v < v1; ++nn, s = 0) {  // uniform across the block
      const int64_t len = min(v1 - v, spatial - s);
      const int64_t base = (nn * c + ch) * spatial + s;
      bool vec = aligned16(dy + base);
      if (kScale) vec = vec && aligned16(x + base) && (dx == nullptr || aligned16(dx + base));
      const int64_t groups = len >> 2;
      for (int64_t gi = threadIdx.x; gi < groups; gi += kThreads) {
        const int64_t i = base + 4 * gi;
        const float4 g = load_group(dy + i, vec);
        if (kScale) {
          const float4 xv = load_group(x + i, vec);
          acc = fma(double(g.x), double(xv.x), acc);
          acc = fma(double(g.y), double(xv.y), acc);
          acc = fma(double(g.z), double(xv.z), acc);
          acc = fma(double(g.w), double(xv.w), acc);
          if (dx != nullptr) {
            float4 d = make_float4(__fmul_rn(g.x, mc), __fmul_rn(g.y, mc), __fmul_rn(g.z, mc), __fmul_rn(g.w, mc));
            if (vec) {
              if (accumulate) {
                const float4 o = load4(dx + i);
                d = make_float4(o.x + d.x, o.y + d.y, o.z + d.z, o.w + d.w);
              }
              store4(dx + i, d);
            } else {
              if (accumulate) {
                d.x = dx[i] + d.x;
                d.y = dx[i + 1] + d.y;
                d.z = dx[i + 2] + d.z;
                d.w = dx[i + 3] + d.w;
              }
              dx[i] = d.x;
              dx[i + 1] = d.y;
              dx[i + 2] = d.z;
              dx[i + 3] = d.w;
            }
          }
        } else {
          acc += double(g.x);
          acc += double(g.y);
          acc += double(g.z);
          acc += double(g.w);
        }
      }
      const int64_t t = 4 * groups + threadIdx.x;
      if (t < len) element(base + t);
      v += len;
    }
  } else {
    // Elements v0 + tid + k * kThreads, k = 0, 1, ..., in that order, with the
    // loads of kUnroll of them issued before their use.
    constexpr int kUnroll = 4;
    const int64_t first = v0 + threadIdx.x;
    if (first < v1) {
      const Idx q = static_cast<Idx>(first) / sp;
      int64_t nn = int64_t(q);
      int64_t s = int64_t(static_cast<Idx>(first) - q * sp);
      const int64_t step_n = int64_t(static_cast<Idx>(kThreads) / sp);
      const int64_t step_s = kThreads - step_n * spatial;
      for (int64_t v = first; v < v1; v += kUnroll * kThreads) {
        int64_t idx[kUnroll];
        float g[kUnroll], xv[kUnroll];
#pragma unroll
        for (int j = 0; j < kUnroll; ++j) {
          idx[j] = (nn * c + ch) * spatial + s;
          nn += step_n;
          s += step_s;
          if (s >= spatial) {
            s -= spatial;
            ++nn;
          }
        }
#pragma unroll
        for (int j = 0; j < kUnroll; ++j) {
          const bool in = v + j * kThreads < v1;
          g[j] = in ? __ldg(dy + idx[j]) : 0.f;
          xv[j] = (kScale && in) ? __ldg(x + idx[j]) : 0.f;
        }
#pragma unroll
        for (int j = 0; j < kUnroll; ++j) {
          if (v + j * kThreads >= v1) break;
          if (kScale) {
            acc = fma(double(g[j]), double(xv[j]), acc);
            if (dx != nullptr) {
              const float d = __fmul_rn(g[j], mc);
              dx[idx[j]] = accumulate ? dx[idx[j]] + d : d;
            }
          } else {
            acc += double(g[j]);
          }
        }
      }
    }
  }

  const double total = block_sum(acc);
  if (threadIdx.x == 0) partials[ch * chunks + chunk] = total;
}

__global__ void __launch_bounds__(kThreads)
    finalize_kernel(const double* __restrict__ partials, int64_t per, int64_t c, float* __restrict__ out) {
  finalize_channels(partials, per, c, out);
}

// How a per-channel reduction is cut: a pure function of (n, c, spatial).
struct ReducePlan {
  int64_t per_channel = 0;  // n * spatial
  int64_t chunks = 1;       // blocks per channel
  int64_t chunk_len = 0;    // elements per block (the last may be short or empty)
  bool segments = true;
};

constexpr int64_t kReduceTargetBlocks = 2048;  // total blocks aimed at
constexpr int64_t kReduceMinChunk = 4096;      // elements per block, at least (where there are that many)
constexpr int64_t kSegmentMinSpatial = 1024;   // below this, one element per thread (runs too short for float4)

void check_dims(const char* op, int64_t n, int64_t c, int64_t spatial) {
  require(n > 0 && c > 0 && spatial > 0, op, "n, c and spatial must be positive");
  require(n <= std::numeric_limits<int64_t>::max() / c / spatial, op, "n * c * spatial overflows");
}

ReducePlan reduce_plan(const char* op, int64_t n, int64_t c, int64_t spatial) {
  check_dims(op, n, c, spatial);
  ReducePlan p;
  p.per_channel = n * spatial;
  p.chunks = std::max<int64_t>(1, std::min(ceil_div(kReduceTargetBlocks, c), ceil_div(p.per_channel, kReduceMinChunk)));
  p.chunk_len = ceil_div(p.per_channel, p.chunks);
  p.segments = spatial >= kSegmentMinSpatial;
  require(c * p.chunks <= std::numeric_limits<int32_t>::max(), op, "too many channels");
  return p;
}

size_t reduce_scratch_bytes(const char* op, int64_t n, int64_t c, int64_t spatial) {
  return size_t(c * reduce_plan(op, n, c, spatial).chunks) * sizeof(double);
}

// out[ch] = sum over n, s of dy (kScale false) or of dy * x (kScale true; then
// also dx = dy * m[ch], or dx += with accumulate, unless dx is null).
// Overwrites out. dx must not overlap dy or x.
template <bool kScale>
void channel_reduce(const char* op, const float* dy, const float* x, const float* m, float* dx, bool accumulate,
                    float* out, int64_t n, int64_t c, int64_t spatial, void* scratch, cudaStream_t stream) {
  require(scratch != nullptr, op, "null scratch (size it with the op's _scratch_bytes)");
  require(aligned_to(scratch, alignof(double)), op, "scratch must be 8-byte aligned");
  const ReducePlan p = reduce_plan(op, n, c, spatial);
  auto* partials = static_cast<double*>(scratch);
  const unsigned blocks = unsigned(c * p.chunks);
  if (p.per_channel <= int64_t(std::numeric_limits<uint32_t>::max())) {
    channel_reduce_kernel<kScale, uint32_t><<<blocks, kThreads, 0, stream>>>(
        dy, x, m, dx, accumulate, partials, c, spatial, p.per_channel, p.chunks, p.chunk_len, p.segments);
  } else {
    channel_reduce_kernel<kScale, uint64_t><<<blocks, kThreads, 0, stream>>>(
        dy, x, m, dx, accumulate, partials, c, spatial, p.per_channel, p.chunks, p.chunk_len, p.segments);
  }
  ANVIL_CHECK_LAUNCH();
  finalize_kernel<<<finalize_blocks(c), kThreads, 0, stream>>>(partials, p.chunks, c, out);
  ANVIL_CHECK_LAUNCH();
}

// y = f(x, param[channel]) over (n, c, spatial); y may be x.
template <class F>
void channel_map(const char* op, const float* x, const float* param, float* y, int64_t n, int64_t c, int64_t spatial,
                 F f, cudaStream_t stream) {
  check_dims(op, n, c, spatial);
  const int64_t count = n * c * spatial;
  const VecSplit split = vec_split(count, {x, y});
  const unsigned blocks = grid_stride_blocks(std::max(split.nvec, split.head + split.tail));
  if (count <= int64_t(std::numeric_limits<uint32_t>::max())) {
    channel_map_kernel<uint32_t, F><<<blocks, kThreads, 0, stream>>>(x, param, y, c, spatial, split, f);
  } else {
    channel_map_kernel<uint64_t, F><<<blocks, kThreads, 0, stream>>>(x, param, y, c, spatial, split, f);
  }
  ANVIL_CHECK_LAUNCH();
}

}  // namespace
}  // namespace anvil::cuda::detail
