// CPU reference per-channel ops over (n, c, spatial) tensors: bias and
// channel_scale. Float and double.
#pragma once

#include <cstdint>

namespace anvil::cpu {

// y[n, c, s] += bias[c]
template <class T>
void bias_forward(T* y, const T* bias, int64_t n, int64_t c, int64_t spatial);
// dbias[c] = sum over n, s of dy. Overwrites dbias.
template <class T>
void bias_backward(const T* dy, T* dbias, int64_t n, int64_t c, int64_t spatial);

// y[n, c, s] = x[n, c, s] * m[c]
template <class T>
void channel_scale_forward(const T* x, const T* m, T* y, int64_t n, int64_t c, int64_t spatial);
// dx = dy * m[c] (skipped when dx is null); dm[c] = sum over n, s of dy * x (overwrites dm)
template <class T>
void channel_scale_backward(const T* x, const T* m, const T* dy, T* dx, T* dm, int64_t n, int64_t c, int64_t spatial,
                            bool accumulate);

}  // namespace anvil::cpu
