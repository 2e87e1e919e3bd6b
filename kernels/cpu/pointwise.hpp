// CPU reference pointwise activations (kernels/pointwise_ops.hpp), float and double.
// In place is allowed: y may be x, dx may be dy.
#pragma once

#include <cstdint>

#include "kernels/pointwise_ops.hpp"

namespace anvil::cpu {

// y = op(x). param: leaky_relu's slope, ignored by the others.
template <class T>
void pointwise_forward(PointwiseOp op, T param, const T* x, T* y, int64_t n);
// dx = op'(x) * dy, or dx += with accumulate. Reads x or y as
// pointwise_backward_uses_output(op) says; the other may be null.
template <class T>
void pointwise_backward(PointwiseOp op, T param, const T* x, const T* y, const T* dy, T* dx, int64_t n,
                        bool accumulate);

}  // namespace anvil::cpu
