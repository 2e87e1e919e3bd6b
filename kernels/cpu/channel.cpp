// CPU reference per-channel ops: bias and channel_scale. Reductions give each
// channel to one thread and sum in double in a fixed order: deterministic
// whatever the thread count.
#include "kernels/cpu/channel.hpp"

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/parallel.hpp"

namespace anvil::cpu {

template <class T>
void bias_forward(T* y, const T* bias, int64_t n, int64_t c, int64_t spatial) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch) {
      T* yp = y + (i * c + ch) * spatial;
      const T bv = bias[ch];
      for (int64_t s = 0; s < spatial; ++s) yp[s] += bv;
    }
}

template <class T>
void bias_backward(const T* dy, T* dbias, int64_t n, int64_t c, int64_t spatial) {
  ANVIL_OMP_PARALLEL_FOR_IF(n * c * spatial)
  for (int64_t ch = 0; ch < c; ++ch) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const T* dp = dy + (i * c + ch) * spatial;
      for (int64_t s = 0; s < spatial; ++s) sum += dp[s];
    }
    dbias[ch] = static_cast<T>(sum);
  }
}

template <class T>
void channel_scale_forward(const T* x, const T* m, T* y, int64_t n, int64_t c, int64_t spatial) {
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

#define ANVIL_INSTANTIATE_CHANNEL(T)                                                         \
  template void bias_forward<T>(T*, const T*, int64_t, int64_t, int64_t);                    \
  template void bias_backward<T>(const T*, T*, int64_t, int64_t, int64_t);                   \
  template void channel_scale_forward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t); \
  template void channel_scale_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t, bool);

ANVIL_INSTANTIATE_CHANNEL(float)
ANVIL_INSTANTIATE_CHANNEL(double)

}  // namespace anvil::cpu
