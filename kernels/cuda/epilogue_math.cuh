// The epilogue chain's math, shared by every kernel that runs it:
//   v = y + bias -> leaky(slope1) -> * m[c] -> leaky(slope2) -> max over a window.
#pragma once

#include "kernels/cuda/common.cuh"
#include "kernels/pointwise_ops.hpp"

namespace anvil::cuda {

// z3 of the chain for v = y + bias.
__device__ __forceinline__ float epi_z3(float v, float s1, float mc, float s2) {
  const float z1 = pointwise::LeakyRelu::forward(v, s1);
  const float z2 = z1 * mc;
  return pointwise::LeakyRelu::forward(z2, s2);
}

// Strictly greater keeps the first of tied maxima; a NaN always takes over,
// as in PyTorch's max pooling and the CPU reference (so with several NaNs in a
// window the argmax is the last of them).
__device__ __forceinline__ bool epi_better(float z, float best) { return (z > best) | isnan(z); }  // | : no branch

// Backward of the chain at one pooled element: v = y_at_max, dpv = dp.
__device__ __forceinline__ void epi_grad(float dpv, float v, float s1, float mc, float s2, float& dyv, float& dz2,
                                         float& z1) {
  z1 = pointwise::LeakyRelu::forward(v, s1);
  const float z2 = z1 * mc;
  dz2 = pointwise::LeakyRelu::backward(z2, 0.f, dpv, s2);
  const float dz1 = dz2 * mc;
  dyv = pointwise::LeakyRelu::backward(v, 0.f, dz1, s1);
}

}  // namespace anvil::cuda
