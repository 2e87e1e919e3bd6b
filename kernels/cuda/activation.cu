// Unfused pointwise and per-channel kernels (see activation.hpp).
//
// Pointwise kernels: grid-stride loops over 16-byte float4 vectors, plus a
// scalar head (up to the first 16-byte boundary) and tail. Vectors are used
// when every pointer of the call has the same address modulo 16, else the
// whole range runs as scalars. In-place calls (out == an input) are fine:
// each element is read before it is written, by the same thread, and by no
// other thread.
//
// Per-channel reductions (bias_backward, channel_scale_backward's dm) are
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
#include "kernels/cuda/activation.hpp"

#include <cstdint>
#include <limits>

#include "kernels/cuda/common.cuh"

namespace anvil::cuda {
namespace {

using detail::kThreads;
using detail::VecSplit;

// ===========================================================================
// Kernels
// ===========================================================================

// out = f(a, b), or out += f(a, b) with kAccumulate. b is ignored (and may be
// null) with kInputs == 1.
template <int kInputs, bool kAccumulate, class F>
__global__ void __launch_bounds__(kThreads)
    map_kernel(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ out, VecSplit split, F f) {
  const int64_t tid = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t v = tid; v < split.nvec; v += stride) {
    const int64_t i = split.head + 4 * v;
    const float4 av = detail::ldg4(a + i);
    const float4 bv = kInputs > 1 ? detail::ldg4(b + i) : av;
    float4 r = make_float4(f(av.x, bv.x), f(av.y, bv.y), f(av.z, bv.z), f(av.w, bv.w));
    if (kAccumulate) {
      const float4 o = detail::load4(out + i);
      r = make_float4(o.x + r.x, o.y + r.y, o.z + r.z, o.w + r.w);
    }
    detail::store4(out + i, r);
  }
  auto scalar = [&](int64_t i) {
    const float av = __ldg(a + i);
    const float bv = kInputs > 1 ? __ldg(b + i) : av;
    float r = f(av, bv);
    if (kAccumulate) r = out[i] + r;
    out[i] = r;
  };
  for (int64_t i = tid; i < split.head; i += stride) scalar(i);
  const int64_t tail0 = split.head + 4 * split.nvec;
  for (int64_t i = tail0 + tid; i < tail0 + split.tail; i += stride) scalar(i);
}

struct LeakyForwardOp {
  float slope;
  __device__ float operator()(float x, float) const { return detail::leaky(x, slope); }
};
// PyTorch's convention: the gradient at x == 0 is slope * dy. The product is
// rounded on its own (no fused multiply-add) so that `dx += ...` matches the
// CPU reference bit for bit.
struct LeakyBackwardOp {
  float slope;
  __device__ float operator()(float x, float dy) const { return x > 0.f ? dy : __fmul_rn(slope, dy); }
};
struct IdentityOp {
  __device__ float operator()(float a, float) const { return a; }
};
struct AddOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct AddParamOp {
  __device__ float operator()(float x, float p) const { return x + p; }
};
struct MulParamOp {
  __device__ float operator()(float x, float p) const { return x * p; }
};

// y[i] = f(x[i], param[channel(i)]) with channel(i) = (i / spatial) % c.
// x may equal y (bias_forward runs in place). Idx is uint32_t where the flat
// count fits, which makes the one division per vector cheap.
template <class Idx, class F>
__global__ void __launch_bounds__(kThreads)
    channel_map_kernel(const float* __restrict__ x, const float* __restrict__ param, float* __restrict__ y, int64_t c,
                       int64_t spatial, VecSplit split, F f) {
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
    const float4 a = detail::ldg4(x + i);
    float4 r;
    r.x = f(a.x, p);
    next();
    r.y = f(a.y, p);
    next();
    r.z = f(a.z, p);
    next();
    r.w = f(a.w, p);
    detail::store4(y + i, r);
  }
  auto scalar = [&](int64_t i) {
    const Idx ch = (static_cast<Idx>(i) / sp) % cc;
    y[i] = f(__ldg(x + i), __ldg(param + ch));
  };
  for (int64_t i = tid; i < split.head; i += stride) scalar(i);
  const int64_t tail0 = split.head + 4 * split.nvec;
  for (int64_t i = tail0 + tid; i < tail0 + split.tail; i += stride) scalar(i);
}

// Loads 4 consecutive floats, as one float4 when vec (p 16-byte aligned).
__device__ __forceinline__ float4 load_group(const float* __restrict__ p, bool vec) {
  if (vec) return detail::ldg4(p);
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
      bool vec = detail::aligned16(dy + base);
      if (kScale) vec = vec && detail::aligned16(x + base) && (dx == nullptr || detail::aligned16(dx + base));
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
                const float4 o = detail::load4(dx + i);
                d = make_float4(o.x + d.x, o.y + d.y, o.z + d.z, o.w + d.w);
              }
              detail::store4(dx + i, d);
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

  const double total = detail::block_sum(acc);
  if (threadIdx.x == 0) partials[ch * chunks + chunk] = total;
}

__global__ void __launch_bounds__(kThreads)
    finalize_kernel(const double* __restrict__ partials, int64_t per, int64_t c, float* __restrict__ out) {
  detail::finalize_channels(partials, per, c, out);
}

// ===========================================================================
// Launchers
// ===========================================================================

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
  detail::require(n > 0 && c > 0 && spatial > 0, op, "n, c and spatial must be positive");
  detail::require(n <= std::numeric_limits<int64_t>::max() / c / spatial, op, "n * c * spatial overflows");
}

ReducePlan reduce_plan(const char* op, int64_t n, int64_t c, int64_t spatial) {
  check_dims(op, n, c, spatial);
  ReducePlan p;
  p.per_channel = n * spatial;
  p.chunks = std::max<int64_t>(
      1, std::min(detail::ceil_div(kReduceTargetBlocks, c), detail::ceil_div(p.per_channel, kReduceMinChunk)));
  p.chunk_len = detail::ceil_div(p.per_channel, p.chunks);
  p.segments = spatial >= kSegmentMinSpatial;
  detail::require(c * p.chunks <= std::numeric_limits<int32_t>::max(), op, "too many channels");
  return p;
}

template <bool kScale>
void launch_reduce(const float* dy, const float* x, const float* m, float* dx, bool accumulate, double* partials,
                   int64_t c, int64_t spatial, const ReducePlan& p, cudaStream_t stream) {
  const unsigned blocks = unsigned(c * p.chunks);
  if (p.per_channel <= int64_t(std::numeric_limits<uint32_t>::max())) {
    channel_reduce_kernel<kScale, uint32_t><<<blocks, kThreads, 0, stream>>>(
        dy, x, m, dx, accumulate, partials, c, spatial, p.per_channel, p.chunks, p.chunk_len, p.segments);
  } else {
    channel_reduce_kernel<kScale, uint64_t><<<blocks, kThreads, 0, stream>>>(
        dy, x, m, dx, accumulate, partials, c, spatial, p.per_channel, p.chunks, p.chunk_len, p.segments);
  }
  ANVIL_CHECK_LAUNCH();
}

template <int kInputs, bool kAccumulate, class F>
void launch_map(const float* a, const float* b, float* out, int64_t count, F f, cudaStream_t stream) {
  const VecSplit split = detail::vec_split(count, {a, b, out});
  const int64_t work = std::max(split.nvec, split.head + split.tail);
  map_kernel<kInputs, kAccumulate, F><<<detail::grid_stride_blocks(work), kThreads, 0, stream>>>(a, b, out, split, f);
  ANVIL_CHECK_LAUNCH();
}

template <class F>
void launch_channel_map(const float* x, const float* param, float* y, int64_t n, int64_t c, int64_t spatial, F f,
                        cudaStream_t stream) {
  const int64_t count = n * c * spatial;
  const VecSplit split = detail::vec_split(count, {x, y});
  const unsigned blocks = detail::grid_stride_blocks(std::max(split.nvec, split.head + split.tail));
  if (count <= int64_t(std::numeric_limits<uint32_t>::max())) {
    channel_map_kernel<uint32_t, F><<<blocks, kThreads, 0, stream>>>(x, param, y, c, spatial, split, f);
  } else {
    channel_map_kernel<uint64_t, F><<<blocks, kThreads, 0, stream>>>(x, param, y, c, spatial, split, f);
  }
  ANVIL_CHECK_LAUNCH();
}

}  // namespace

void leaky_relu_forward(const float* x, float* y, int64_t count, float slope, cudaStream_t stream) {
  constexpr const char* op = "leaky_relu_forward";
  detail::require(x != nullptr && y != nullptr, op, "null pointer");
  detail::require(count > 0, op, "count must be positive");
  launch_map<1, false>(x, nullptr, y, count, LeakyForwardOp{slope}, stream);
}

void leaky_relu_backward(const float* x, const float* dy, float* dx, int64_t count, float slope, bool accumulate,
                         cudaStream_t stream) {
  constexpr const char* op = "leaky_relu_backward";
  detail::require(x != nullptr && dy != nullptr && dx != nullptr, op, "null pointer");
  detail::require(count > 0, op, "count must be positive");
  if (accumulate) {
    launch_map<2, true>(x, dy, dx, count, LeakyBackwardOp{slope}, stream);
  } else {
    launch_map<2, false>(x, dy, dx, count, LeakyBackwardOp{slope}, stream);
  }
}

void copy_or_accumulate(const float* src, float* dst, int64_t count, bool accumulate, cudaStream_t stream) {
  constexpr const char* op = "copy_or_accumulate";
  detail::require(src != nullptr && dst != nullptr, op, "null pointer");
  detail::require(count > 0, op, "count must be positive");
  if (accumulate) {
    launch_map<1, true>(src, nullptr, dst, count, IdentityOp{}, stream);
  } else {
    launch_map<1, false>(src, nullptr, dst, count, IdentityOp{}, stream);
  }
}

void add_forward(const float* a, const float* b, float* y, int64_t count, cudaStream_t stream) {
  constexpr const char* op = "add_forward";
  detail::require(a != nullptr && b != nullptr && y != nullptr, op, "null pointer");
  detail::require(count > 0, op, "count must be positive");
  launch_map<2, false>(a, b, y, count, AddOp{}, stream);
}

size_t channel_reduce_scratch_bytes(int64_t n, int64_t c, int64_t spatial) {
  const ReducePlan p = reduce_plan("channel_reduce_scratch_bytes", n, c, spatial);
  return size_t(c * p.chunks) * sizeof(double);
}

void bias_forward(float* y, const float* bias, int64_t n, int64_t c, int64_t spatial, cudaStream_t stream) {
  constexpr const char* op = "bias_forward";
  detail::require(y != nullptr && bias != nullptr, op, "null pointer");
  check_dims(op, n, c, spatial);
  launch_channel_map(y, bias, y, n, c, spatial, AddParamOp{}, stream);
}

void bias_backward(const float* dy, float* dbias, int64_t n, int64_t c, int64_t spatial, void* scratch,
                   cudaStream_t stream) {
  constexpr const char* op = "bias_backward";
  detail::require(dy != nullptr && dbias != nullptr, op, "null pointer");
  detail::require(scratch != nullptr, op, "null scratch (size it with channel_reduce_scratch_bytes)");
  detail::require(detail::aligned_to(scratch, alignof(double)), op, "scratch must be 8-byte aligned");
  const ReducePlan p = reduce_plan(op, n, c, spatial);
  auto* partials = static_cast<double*>(scratch);
  launch_reduce<false>(dy, nullptr, nullptr, nullptr, false, partials, c, spatial, p, stream);
  finalize_kernel<<<detail::finalize_blocks(c), kThreads, 0, stream>>>(partials, p.chunks, c, dbias);
  ANVIL_CHECK_LAUNCH();
}

void channel_scale_forward(const float* x, const float* m, float* y, int64_t n, int64_t c, int64_t spatial,
                           cudaStream_t stream) {
  constexpr const char* op = "channel_scale_forward";
  detail::require(x != nullptr && m != nullptr && y != nullptr, op, "null pointer");
  check_dims(op, n, c, spatial);
  launch_channel_map(x, m, y, n, c, spatial, MulParamOp{}, stream);
}

void channel_scale_backward(const float* x, const float* m, const float* dy, float* dx, float* dm, int64_t n,
                            int64_t c, int64_t spatial, bool accumulate, void* scratch, cudaStream_t stream) {
  constexpr const char* op = "channel_scale_backward";
  detail::require(x != nullptr && m != nullptr && dy != nullptr && dm != nullptr, op, "null pointer");
  detail::require(scratch != nullptr, op, "null scratch (size it with channel_reduce_scratch_bytes)");
  detail::require(detail::aligned_to(scratch, alignof(double)), op, "scratch must be 8-byte aligned");
  const ReducePlan p = reduce_plan(op, n, c, spatial);
  auto* partials = static_cast<double*>(scratch);
  launch_reduce<true>(dy, x, m, dx, accumulate, partials, c, spatial, p, stream);
  finalize_kernel<<<detail::finalize_blocks(c), kThreads, 0, stream>>>(partials, p.chunks, c, dm);
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
