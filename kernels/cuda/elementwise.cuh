// The element-wise map behind the pointwise CUDA kernels (add.cu, pointwise.cu):
//   out[i] = f(in0[i], in1[i], ...), or out[i] += f(...) with kAccumulate.
//
// Grid-stride loops over 16-byte float4 vectors, plus a scalar head (up to the
// first 16-byte boundary) and tail. Vectors are used when every pointer of the
// call has the same address modulo 16, else the whole range runs as scalars.
// out may alias any input (in place): each element is read before it is
// written, by the same thread, and by no other thread. Hence no __restrict__
// and plain loads rather than __ldg (whose cache assumes read-only data).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace anvil::cuda::detail {

// f applied lane by lane to float4s (one per input).
template <class F, class... V>
__device__ __forceinline__ float4 map4(const F& f, const V&... v) {
  return make_float4(f(v.x...), f(v.y...), f(v.z...), f(v.w...));
}

template <bool kAccumulate, class F, class... In>
__global__ void __launch_bounds__(kThreads) map_kernel(float* out, VecSplit split, F f, In... in) {
  const int64_t tid = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  // Two vectors per iteration, both loaded before either is stored: out may
  // alias an input, so the compiler cannot hoist a load above a store itself,
  // and one load in flight per input left the sum at 64% of copy bandwidth.
  auto step = [&](int64_t i) {
    float4 r = map4(f, load4(in + i)...);
    if (kAccumulate) {
      const float4 o = load4(out + i);
      r = make_float4(o.x + r.x, o.y + r.y, o.z + r.z, o.w + r.w);
    }
    return r;
  };
  for (int64_t v = tid; v < split.nvec; v += 2 * stride) {
    const int64_t i0 = split.head + 4 * v, i1 = i0 + 4 * stride;
    const bool second = v + stride < split.nvec;
    const float4 r0 = step(i0);
    const float4 r1 = second ? step(i1) : r0;
    store4(out + i0, r0);
    if (second) store4(out + i1, r1);
  }
  auto scalar = [&](int64_t i) {
    float r = f(in[i]...);
    if (kAccumulate) r = out[i] + r;
    out[i] = r;
  };
  for (int64_t i = tid; i < split.head; i += stride) scalar(i);
  const int64_t tail0 = split.head + 4 * split.nvec;
  for (int64_t i = tail0 + tid; i < tail0 + split.tail; i += stride) scalar(i);
}

// Launches map_kernel over count elements; in... are const float*.
template <bool kAccumulate, class F, class... In>
void launch_map(float* out, int64_t count, cudaStream_t stream, F f, In... in) {
  const VecSplit split = vec_split(count, {out, in...});
  const int64_t work = std::max(split.nvec, split.head + split.tail);
  map_kernel<kAccumulate><<<grid_stride_blocks(work), kThreads, 0, stream>>>(out, split, f, in...);
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda::detail
