// The pieces of an implicit-GEMM conv kernel on the tensor cores
// (conv_wgrad_mma.cu) that any relation of the conv needs: B = conv(A, W) of
// cpu::ConvGeometry in int, and the gather of A at a position of B and a
// column (ca, t) of W's flattened (ca, taps) axis:
//   A[image, ca, o * stride - pad + t * dilation], 0 outside A.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/cpu/geometry.hpp"
#include "kernels/cuda/common.cuh"
#include "kernels/fast_div.hpp"

namespace anvil::cuda {

constexpr int kWarps = detail::kThreads / 32;
constexpr int kMmaStep = 32;   // K per pipeline step
constexpr int kMmaStages = 3;  // steps in flight
constexpr int kRowWords = 36;  // = 4 mod 32: a fragment's (row grp, word tig) reads hit 32 distinct banks

// A block tile of 8 warps, warps_m x warps_n x warps_k: each on 32 rows x 8
// frags_n columns (m16n8k8 MMA tiles) and on one in warps_k of each step's
// k-slices of 8, so that warps of a thin tile do not all load the same rows.
struct MmaTile {
  int warps_m, frags_n, warps_k = 1;
  int rows() const { return 32 * warps_m; }
  int cols() const { return 8 * frags_n * (kWarps / (warps_m * warps_k)); }
};

struct ConvDims {
  int cb, ca, taps, columns;  // columns: ca * taps, W's row length
  int a0, a1, a2, a_volume;
  int b1, b2, b_volume;
  int k1, k2;
  int s0, s1, s2, p0, p1, p2, d0, d1, d2;
  int positions;                      // images * b_volume
  FastDiv by_b_volume, by_b1, by_b2;  // origin_of's divisions (positions < 2^30: exact)
};

inline ConvDims conv_dims(const cpu::ConvGeometry& g) {
  ConvDims d{};
  d.cb = int(g.cb), d.ca = int(g.ca), d.taps = int(cpu::volume(g.k)), d.columns = d.ca * d.taps;
  d.a0 = int(g.a[0]), d.a1 = int(g.a[1]), d.a2 = int(g.a[2]), d.a_volume = int(cpu::volume(g.a));
  d.b1 = int(g.b[1]), d.b2 = int(g.b[2]), d.b_volume = int(cpu::volume(g.b));
  d.k1 = int(g.k[1]), d.k2 = int(g.k[2]);
  d.s0 = int(g.stride[0]), d.s1 = int(g.stride[1]), d.s2 = int(g.stride[2]);
  d.p0 = int(g.pad[0]), d.p1 = int(g.pad[1]), d.p2 = int(g.pad[2]);
  d.d0 = int(g.dilation[0]), d.d1 = int(g.dilation[1]), d.d2 = int(g.dilation[2]);
  d.positions = int(g.n * cpu::volume(g.b));
  d.by_b_volume = FastDiv(uint32_t(d.b_volume)), d.by_b1 = FastDiv(uint32_t(d.b1)), d.by_b2 = FastDiv(uint32_t(d.b2));
  return d;
}

// Whether the geometry has images, channels, taps and output positions: the
// plans divide by them.
inline bool conv_geometry_nonempty(const cpu::ConvGeometry& g) {
  return g.n >= 1 && g.ca >= 1 && g.cb >= 1 && cpu::volume(g.b) >= 1 && cpu::volume(g.k) >= 1;
}

// Whether every index the kernels form fits an int, with room for
// kOutsideColumn and the bounds' sums: the tensors, W, and the furthest a
// gathered offset reaches from an image's start, before or past it.
inline bool conv_indices_fit(const cpu::ConvGeometry& g) {
  constexpr int64_t kLimit = int64_t(1) << 30;
  const int64_t a_elements = g.n * g.ca * cpu::volume(g.a), b_elements = g.n * g.cb * cpu::volume(g.b);
  if (a_elements >= kLimit || b_elements >= kLimit || g.cb * g.ca * cpu::volume(g.k) >= kLimit) return false;
  int64_t reach = 0;
  for (int i = 0; i < 3; ++i)
    reach = reach * g.a[i] + std::max(g.pad[i], (g.b[i] - 1) * g.stride[i]) + (g.k[i] - 1) * g.dilation[i];
  return reach + a_elements < kLimit;
}

// Column (ca, t): its offset in A from a position's origin, and its tap
// times the dilation per dim (for the bounds). Past the last column, a tap
// that is never inside A.
struct alignas(16) Column {
  int offset, d, h, w;
};
constexpr int kOutsideColumn = 1 << 30;

__device__ __forceinline__ Column column_of(int column, const ConvDims& d) {
  if (column >= d.columns) return {0, kOutsideColumn, 0, 0};
  const int ca = column / d.taps, t = column % d.taps;
  const int td = t / (d.k1 * d.k2) * d.d0, th = t / d.k2 % d.k1 * d.d1, tw = t % d.k2 * d.d2;
  return {ca * d.a_volume + (td * d.a1 + th) * d.a2 + tw, td, th, tw};
}

// Position k of B (image, o): its origin in A (offset, and the corner per dim)
// and where it lives in a (n, cb, positions) tensor at channel 0.
struct Origin {
  int offset, d, h, w;
  int b_index;
};

__device__ __forceinline__ Origin origin_of(int k, const ConvDims& d) {
  const int image = int(d.by_b_volume.div(uint32_t(k))), o = k - image * d.b_volume;
  const int row = int(d.by_b2.div(uint32_t(o))), ow = o - row * d.b2;  // row: od * b1 + oh
  const int od = int(d.by_b1.div(uint32_t(row))), oh = row - od * d.b1;
  Origin r;
  r.d = od * d.s0 - d.p0, r.h = oh * d.s1 - d.p1, r.w = ow * d.s2 - d.p2;
  r.offset = image * d.ca * d.a_volume + (r.d * d.a1 + r.h) * d.a2 + r.w;
  r.b_index = image * d.cb * d.b_volume + o;
  return r;
}

__device__ __forceinline__ bool inside(const Origin& at, const Column& col, const ConvDims& d) {
  return unsigned(at.d + col.d) < unsigned(d.a0) && unsigned(at.h + col.h) < unsigned(d.a1) &&
         unsigned(at.w + col.w) < unsigned(d.a2);
}

// A staged float as the MMA takes it: TF32 value, and with kCompensated its residual.
template <bool kCompensated>
__device__ __forceinline__ void split_tf32(float v, uint32_t& big, uint32_t& small) {
  big = detail::tf32_bits(v);
  if (kCompensated) small = detail::tf32_bits(v - __uint_as_float(big));
}

}  // namespace anvil::cuda
