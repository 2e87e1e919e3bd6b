// CPU reference element-wise layers: leaky ReLU, per-channel scale, gradient
// fan-out and the add layer.
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/parallel.hpp"


namespace anvil::cpu {

template <class T> void leaky_relu_forward(const T* x, T* y, int64_t count, T slope) {
  for (int64_t i = 0; i < count; ++i) y[i] = x[i] > T(0) ? x[i] : slope * x[i];
}

template <class T>
void leaky_relu_backward(const T* x, const T* dy, T* dx, int64_t count, T slope, bool accumulate) {
  // Strictly x > 0: at x == 0 the gradient is slope * dy, as in PyTorch.
  for (int64_t i = 0; i < count; ++i) {
    const T g = x[i] > T(0) ? dy[i] : slope * dy[i];
    dx[i] = accumulate ? dx[i] + g : g;
  }
}

template <class T> void channel_scale_forward(const T* x, const T* m, T* y, int64_t n, int64_t c, int64_t spatial) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch) {
      const int64_t base = (i * c + ch) * spatial;
      const T mv = m[ch];
      for (int64_t s = 0; s < spatial; ++s) y[base + s] = x[base + s] * mv;
    }
}

template <class T>
void channel_scale_backward(const T* x, const T* m, const T* dy, T* dx, T* dm, int64_t n, int64_t c, int64_t spatial,
                            bool accumulate) {
  // One thread per channel: it owns dm[ch] and that channel's dx slices.
  // Either output may be null (dx: no input gradient wanted; dm: frozen scale).
  ANVIL_OMP_PARALLEL_FOR_IF(n * c * spatial)
  for (int64_t ch = 0; ch < c; ++ch) {
    const T mv = m[ch];
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t base = (i * c + ch) * spatial;
      for (int64_t s = 0; s < spatial; ++s) {
        const T g = dy[base + s];
        if (dm) sum += static_cast<double>(g) * x[base + s];
        if (dx) dx[base + s] = accumulate ? dx[base + s] + g * mv : g * mv;
      }
    }
    if (dm) dm[ch] = static_cast<T>(sum);
  }
}

template <class T> void copy_or_accumulate(const T* src, T* dst, int64_t count, bool accumulate) {
  if (accumulate) {
    for (int64_t i = 0; i < count; ++i) dst[i] += src[i];
  } else {
    for (int64_t i = 0; i < count; ++i) dst[i] = src[i];
  }
}

template <class T> void add_forward(const T* a, const T* b, T* y, int64_t count) {
  for (int64_t i = 0; i < count; ++i) y[i] = a[i] + b[i];
}

#define ANVIL_INSTANTIATE_ACTIVATION(T)                                                                        \
  template void leaky_relu_forward<T>(const T*, T*, int64_t, T);                                               \
  template void leaky_relu_backward<T>(const T*, const T*, T*, int64_t, T, bool);                              \
  template void channel_scale_forward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t);                   \
  template void channel_scale_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t,     \
                                          bool);                                                               \
  template void copy_or_accumulate<T>(const T*, T*, int64_t, bool);                                            \
  template void add_forward<T>(const T*, const T*, T*, int64_t);

ANVIL_INSTANTIATE_ACTIVATION(float)
ANVIL_INSTANTIATE_ACTIVATION(double)

}  // namespace anvil::cpu
