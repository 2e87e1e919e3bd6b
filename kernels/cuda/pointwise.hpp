// CUDA pointwise activations (kernels/pointwise_ops.hpp), float32. In place is
// allowed: y may be x, dx may be dy.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/pointwise_ops.hpp"

namespace anvil::cuda {

// y = op(x). param: leaky_relu's slope, ignored by the others.
void pointwise_forward(PointwiseOp op, float param, const float* x, float* y, int64_t n, cudaStream_t stream);
// dx = op'(x) * dy, or dx += with accumulate. Reads x or y as
// pointwise_backward_uses_output(op) says; the other may be null.
void pointwise_backward(PointwiseOp op, float param, const float* x, const float* y, const float* dy, float* dx,
                        int64_t n, bool accumulate, cudaStream_t stream);

}  // namespace anvil::cuda
