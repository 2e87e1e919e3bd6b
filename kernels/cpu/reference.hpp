// CPU reference implementations: plain, obviously correct loops. They are the
// test oracle and the fallback backend. Templates are instantiated for float
// (the backend) and double (finite-difference checks).
//
// Layout is NCDHW, row-major. 2-D tensors are lifted to 3-D with D = 1 (and
// kernel 1, stride 1, padding 0 along D), so one code path serves both.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>


namespace anvil::cpu {

using Dims3 = std::array<int64_t, 3>;

// Per-dimension values of a 2-D or 3-D layer as 3-D: leading dims get `fill`.
inline Dims3 lift_dims(const std::vector<int64_t>& v, int64_t fill) {
  Dims3 out{fill, fill, fill};
  for (std::size_t i = 0; i < v.size(); ++i) out[3 - v.size() + i] = v[i];
  return out;
}

// The convolution relation between a tensor A (n, ca, a) and a tensor B (n, cb, b)
// with weight W (cb, ca, k):
//   B[n, cb, o] = sum_{ca, t} A[n, ca, o * stride - pad + t * dilation] * W[cb, ca, t]
// conv: A is the input, B the output, W (out, in, k) as in PyTorch.
// conv_transpose: B is the input, A the output, W (in, out, k) as in PyTorch.
struct ConvGeometry {
  int64_t n = 1, ca = 1, cb = 1;
  Dims3 a{1, 1, 1}, b{1, 1, 1}, k{1, 1, 1}, stride{1, 1, 1}, pad{0, 0, 0}, dilation{1, 1, 1};
};

// B = conv(A, W). Overwrites B.
template <class T> void conv_forward(const T* a, const T* w, T* b, const ConvGeometry& g);
// dA = conv^T(dB, W). Overwrites dA unless accumulate.
template <class T> void conv_backward_data(const T* db, const T* w, T* da, const ConvGeometry& g, bool accumulate);
// dW = sum over n, o of dB x A. Overwrites dW.
template <class T> void conv_backward_filter(const T* a, const T* db, T* dw, const ConvGeometry& g);

// y[n, c, s] += bias[c]
template <class T> void bias_forward(T* y, const T* bias, int64_t n, int64_t c, int64_t spatial);
// dbias[c] = sum over n, s of dy. Overwrites dbias.
template <class T> void bias_backward(const T* dy, T* dbias, int64_t n, int64_t c, int64_t spatial);

// y = x > 0 ? x : slope * x   (relu is slope 0)
template <class T> void leaky_relu_forward(const T* x, T* y, int64_t count, T slope);
// dx = x > 0 ? dy : slope * dy   (PyTorch's convention at x == 0)
template <class T> void leaky_relu_backward(const T* x, const T* dy, T* dx, int64_t count, T slope, bool accumulate);

// y[n, c, s] = x[n, c, s] * m[c]
template <class T> void channel_scale_forward(const T* x, const T* m, T* y, int64_t n, int64_t c, int64_t spatial);
// dx = dy * m[c] (skipped when dx is null); dm[c] = sum over n, s of dy * x (overwrites dm)
template <class T>
void channel_scale_backward(const T* x, const T* m, const T* dy, T* dx, T* dm, int64_t n, int64_t c, int64_t spatial,
                            bool accumulate);

// Pooling over (n * c) planes of size in -> out. Padding counts as -inf for max.
struct PoolGeometry {
  int64_t planes = 1;
  Dims3 in{1, 1, 1}, out{1, 1, 1}, k{1, 1, 1}, stride{1, 1, 1}, pad{0, 0, 0};
};
// The gradient goes to the first maximum in window order, as in PyTorch.
template <class T> void max_pool_forward(const T* x, T* y, const PoolGeometry& g);
template <class T> void max_pool_backward(const T* x, const T* dy, T* dx, const PoolGeometry& g, bool accumulate);
// Padding counts in the divisor (PyTorch's count_include_pad=True).
template <class T> void avg_pool_forward(const T* x, T* y, const PoolGeometry& g);
template <class T> void avg_pool_backward(const T* dy, T* dx, const PoolGeometry& g, bool accumulate);

// dst = src, or dst += src when accumulate (gradient fan-out, the add layer)
template <class T> void copy_or_accumulate(const T* src, T* dst, int64_t count, bool accumulate);
template <class T> void add_forward(const T* a, const T* b, T* y, int64_t count);

}  // namespace anvil::cpu
