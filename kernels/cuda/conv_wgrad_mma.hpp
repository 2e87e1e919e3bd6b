// The weight gradient of any convolution on the tensor cores (conv_wgrad_mma.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/cpu/geometry.hpp"

namespace anvil::cuda {

// For the relation of cpu::ConvGeometry, B = conv(A, W) (conv: A = x and
// dB = dy; conv_transpose: A = dy and dB = x):
//   dW[cb, ca, t] = sum over images n and positions o of B of
//                   dB[n, cb, o] * A[n, ca, o * stride - pad + t * dilation]
// (0 outside A), any kernel, stride, padding and dilation, 2-D as depth 1. An
// implicit GEMM on the TF32 tensor cores (M = cb, N = ca * taps, K = n * B's
// positions) that gathers its operands on the fly: no im2col tensor exists.
// compensated: each operand is split into a TF32 value and residual and every
// product takes 3 MMAs, which makes it float32-accurate (3xTF32); otherwise
// the operands are rounded to TF32 (nearest). Deterministic: K is split in a
// way that depends on the shapes alone and the partials are summed in a fixed
// order, in double. dw is overwritten. Needs sm_80 (tensor_cores.hpp).
bool conv_mma_weight_grad_supported(const cpu::ConvGeometry& g);
size_t conv_mma_weight_grad_scratch_bytes(const cpu::ConvGeometry& g);
void conv_mma_weight_grad(const float* a, const float* db, float* dw, void* scratch, bool compensated,
                          const cpu::ConvGeometry& g, cudaStream_t stream);

}  // namespace anvil::cuda
