// CPU reference max and average pooling, float and double.
#pragma once

#include "kernels/cpu/geometry.hpp"

namespace anvil::cpu {

// The gradient goes to the first maximum in window order, as in PyTorch.
template <class T>
void max_pool_forward(const T* x, T* y, const PoolGeometry& g);
template <class T>
void max_pool_backward(const T* x, const T* dy, T* dx, const PoolGeometry& g, bool accumulate);
// Padding counts in the divisor (PyTorch's count_include_pad=True).
template <class T>
void avg_pool_forward(const T* x, T* y, const PoolGeometry& g);
template <class T>
void avg_pool_backward(const T* dy, T* dx, const PoolGeometry& g, bool accumulate);

}  // namespace anvil::cpu
