// CPU reference convolution (see ConvGeometry for the relation). Templates
// are instantiated for float (the backend) and double (finite-difference checks).
#pragma once

#include "kernels/cpu/geometry.hpp"

namespace anvil::cpu {

// B = conv(A, W). Overwrites B unless accumulate (a transposed conv's dx, added to a fan-out's).
template <class T>
void conv_forward(const T* a, const T* w, T* b, const ConvGeometry& g, bool accumulate = false);
// dA = conv^T(dB, W). Overwrites dA unless accumulate.
template <class T>
void conv_backward_data(const T* db, const T* w, T* da, const ConvGeometry& g, bool accumulate);
// dW = sum over n, o of dB x A. Overwrites dW.
template <class T>
void conv_backward_filter(const T* a, const T* db, T* dw, const ConvGeometry& g);

}  // namespace anvil::cpu
