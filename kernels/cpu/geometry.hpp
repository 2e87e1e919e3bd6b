// Geometry shared by the CPU reference kernels and the layers that call them.
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

inline int64_t volume(const Dims3& d) { return d[0] * d[1] * d[2]; }

// The convolution relation between a tensor A (n, ca, a) and a tensor B (n, cb, b)
// with weight W (cb, ca, k):
//   B[n, cb, o] = sum_{ca, t} A[n, ca, o * stride - pad + t * dilation] * W[cb, ca, t]
// conv: A is the input, B the output, W (out, in, k) as in PyTorch.
// conv_transpose: B is the input, A the output, W (in, out, k) as in PyTorch.
struct ConvGeometry {
  int64_t n = 1, ca = 1, cb = 1;
  Dims3 a{1, 1, 1}, b{1, 1, 1}, k{1, 1, 1}, stride{1, 1, 1}, pad{0, 0, 0}, dilation{1, 1, 1};
};

// Pooling over (n * c) planes of size in -> out. Padding counts as -inf for max.
struct PoolGeometry {
  int64_t planes = 1;
  Dims3 in{1, 1, 1}, out{1, 1, 1}, k{1, 1, 1}, stride{1, 1, 1}, pad{0, 0, 0};
};

}  // namespace anvil::cpu
