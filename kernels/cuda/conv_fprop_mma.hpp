// The forward relation of any convolution on the tensor cores, in TF32 or 3xTF32 (conv_fprop_mma.cu).
#pragma once

#include <cuda_runtime.h>

#include "kernels/cpu/geometry.hpp"

namespace anvil::cuda {

// For the relation of cpu::ConvGeometry, B = conv(A, W) (a conv's forward,
// a transposed conv's input gradient):
//   B[n, cb, o] = sum over ca, t of W[cb, ca, t] * A[n, ca, o * stride - pad + t * dilation]
// (0 outside A), any kernel, stride, padding and dilation, 2-D as depth 1, in
// PyTorch's layouts (NCDHW, and W as (cb, ca, taps)): no layout conversion.
// An implicit GEMM on the TF32 tensor cores (M = n * B's positions, N = cb,
// K = ca * taps) that gathers A on the fly. compensated: each operand is split
// into a TF32 value and its residual and every product takes 3 MMAs, which
// makes it float32-accurate (3xTF32); otherwise the operands are truncated to
// TF32 (the low 13 bits of each float dropped). The products are summed in
// float32, each output in a fixed order: deterministic. accumulate adds into
// b; otherwise b is overwritten. Needs sm_80 (tensor_cores.hpp) and at most
// 1024 taps. A candidate of --autotune in either precision, not of the rule
// (docs/performance.md).
bool conv_mma_forward_supported(const cpu::ConvGeometry& g);
void conv_mma_forward(const float* a, const float* w, float* b, bool accumulate, bool compensated,
                      const cpu::ConvGeometry& g, cudaStream_t stream);

}  // namespace anvil::cuda
