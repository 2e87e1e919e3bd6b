// CPU reference element-wise sum and gradient fan-out (the add layer).
#include "kernels/cpu/add.hpp"

#include <cstdint>

namespace anvil::cpu {

template <class T>
void copy_or_accumulate(const T* src, T* dst, int64_t count, bool accumulate) {
  if (accumulate) {
    for (int64_t i = 0; i < count; ++i) dst[i] += src[i];
  } else {
    for (int64_t i = 0; i < count; ++i) dst[i] = src[i];
  }
}

template <class T>
void add_forward(const T* a, const T* b, T* y, int64_t count) {
  for (int64_t i = 0; i < count; ++i) y[i] = a[i] + b[i];
}

#define ANVIL_INSTANTIATE_ADD(T)                                    \
  template void copy_or_accumulate<T>(const T*, T*, int64_t, bool); \
  template void add_forward<T>(const T*, const T*, T*, int64_t);

ANVIL_INSTANTIATE_ADD(float)
ANVIL_INSTANTIATE_ADD(double)

}  // namespace anvil::cpu
