// CPU reference element-wise sum and gradient fan-out (the add layer). Float and double.
#pragma once

#include <cstdint>

namespace anvil::cpu {

template <class T>
void add_forward(const T* a, const T* b, T* y, int64_t count);
// dst = src, or dst += src when accumulate (gradient fan-out, the add layer)
template <class T>
void copy_or_accumulate(const T* src, T* dst, int64_t count, bool accumulate);

}  // namespace anvil::cpu
