// Kernels for the phase-split transposed convolution (see phase_split.hpp).
// All are small or plain copies: flat grid-stride loops over the output.
#include "kernels/cuda/phase_split.hpp"

#include "kernels/cuda/common.cuh"

namespace anvil::cuda {
namespace {

using detail::kThreads;

// ===========================================================================
// Kernels
// ===========================================================================

// One block per (plane, d) slab of x_pad, threads along the slab's (h, w)
// elements, kInFlight loads issued before their stores: with one load per
// thread in flight the kernel ran at a third of copy bandwidth.
__global__ void __launch_bounds__(kThreads)
    pad_kernel(const float* __restrict__ x, float* __restrict__ x_pad, bool round_tf32, PhaseSplitGeometry g) {
  constexpr int kInFlight = 4;
  const int64_t p0 = g.in[0] + g.front[0] + g.end[0];
  const int p1 = int(g.in[1] + g.front[1] + g.end[1]), p2 = int(g.in[2] + g.front[2] + g.end[2]);
  const int in1 = int(g.in[1]), in2 = int(g.in[2]), slab = p1 * p2;
  const int64_t plane = blockIdx.x / p0, d = blockIdx.x % p0 - g.front[0];
  const bool slab_inside = d >= 0 && d < g.in[0];
  const float* src = x + (plane * g.in[0] + d) * in1 * in2;  // read only inside
  float* dst = x_pad + int64_t(blockIdx.x) * slab;
  for (int base = threadIdx.x; base < slab; base += kInFlight * kThreads) {
    float v[kInFlight];
#pragma unroll
    for (int j = 0; j < kInFlight; ++j) {
      const int e = base + j * kThreads, h = e / p2 - int(g.front[1]), w = e % p2 - int(g.front[2]);
      const bool inside = slab_inside && e < slab && h >= 0 && h < in1 && w >= 0 && w < in2;
      v[j] = inside ? __ldg(src + h * in2 + w) : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kInFlight; ++j) {
      const int e = base + j * kThreads;
      if (e < slab) dst[e] = round_tf32 ? __uint_as_float(detail::tf32_bits(v[j])) : v[j];
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    build_weight_kernel(const float* __restrict__ w, float* __restrict__ wp, PhaseSplitGeometry g, int64_t total) {
  const int64_t kpv = g.kp[0] * g.kp[1] * g.kp[2];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t u = i % kpv, ci = i / kpv % g.cin, oc = i / (kpv * g.cin);
    const int64_t co = oc % g.cout, r = oc / g.cout;
    const int64_t r2 = r % g.s[2], r1 = r / g.s[2] % g.s[1], r0 = r / (g.s[2] * g.s[1]);
    const int64_t u2 = u % g.kp[2], u1 = u / g.kp[2] % g.kp[1], u0 = u / (g.kp[2] * g.kp[1]);
    const int t0 = g.tap[0][r0 * g.kp[0] + u0], t1 = g.tap[1][r1 * g.kp[1] + u1], t2 = g.tap[2][r2 * g.kp[2] + u2];
    wp[i] = (t0 < 0 || t1 < 0 || t2 < 0) ? 0.f
                                         : __ldg(w + (((ci * g.cout + co) * g.k[0] + t0) * g.k[1] + t1) * g.k[2] + t2);
  }
}

__global__ void __launch_bounds__(kThreads)
    fold_weight_kernel(const float* __restrict__ dwp, float* __restrict__ dw, PhaseSplitGeometry g, int64_t total) {
  const int64_t kv = g.k[0] * g.k[1] * g.k[2];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i % kv, co = i / kv % g.cout, ci = i / (kv * g.cout);
    const int64_t t2 = t % g.k[2], t1 = t / g.k[2] % g.k[1], t0 = t / (g.k[2] * g.k[1]);
    const int64_t r = (g.phase_of[0][t0] * g.s[1] + g.phase_of[1][t1]) * g.s[2] + g.phase_of[2][t2];
    const int64_t u = (g.combined_of[0][t0] * g.kp[1] + g.combined_of[1][t1]) * g.kp[2] + g.combined_of[2][t2];
    dw[i] = __ldg(dwp + ((r * g.cout + co) * g.cin + ci) * (g.kp[0] * g.kp[1] * g.kp[2]) + u);
  }
}

__global__ void __launch_bounds__(kThreads) crop_kernel(const float* __restrict__ dx_pad, float* __restrict__ dx,
                                                        bool accumulate, PhaseSplitGeometry g, int64_t total) {
  const int64_t p0 = g.in[0] + g.front[0] + g.end[0], p1 = g.in[1] + g.front[1] + g.end[1],
                p2 = g.in[2] + g.front[2] + g.end[2];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t w = i % g.in[2], h = i / g.in[2] % g.in[1], d = i / (g.in[2] * g.in[1]) % g.in[0];
    const int64_t plane = i / (g.in[2] * g.in[1] * g.in[0]);
    const float v = __ldg(dx_pad + ((plane * p0 + d + g.front[0]) * p1 + h + g.front[1]) * p2 + w + g.front[2]);
    dx[i] = accumulate ? dx[i] + v : v;
  }
}

// One block per (plane, o0) slab of y, threads along its (o1, o2) elements,
// kInFlight loads before their stores (as pad_kernel). Each element reads its
// phase's plane of yp at its shift: neighbours in o2 alternate among s2
// planes, each read at consecutive positions.
__global__ void __launch_bounds__(kThreads)
    interleave_kernel(const float* __restrict__ yp, float* __restrict__ y, bool accumulate, PhaseSplitGeometry g) {
  constexpr int kInFlight = 4;
  const int out1 = int(g.out[1]), out2 = int(g.out[2]), slab = out1 * out2;
  const int s1 = int(g.s[1]), s2 = int(g.s[2]);
  const int64_t z1 = g.in[1] + g.front[1] + g.end[1] - g.kp[1] + 1, z2 = g.in[2] + g.front[2] + g.end[2] - g.kp[2] + 1;
  const int64_t zvol = (g.in[0] + g.front[0] + g.end[0] - g.kp[0] + 1) * z1 * z2;
  const int64_t plane = blockIdx.x / g.out[0], o0 = blockIdx.x % g.out[0];
  const int64_t n = plane / g.cout, c = plane % g.cout;
  const int64_t r0 = o0 % g.s[0], row0 = o0 / g.s[0] + g.shift[0][r0];
  // The first element of phase (r0, 0, 0)'s plane at row0; the phase (r1, r2) adds r1 * s2 + r2 planes.
  const float* base = yp + ((n * g.s[0] * s1 * s2 + r0 * s1 * s2) * g.cout + c) * zvol + row0 * z1 * z2;
  float* dst = y + int64_t(blockIdx.x) * slab;
  for (int first = threadIdx.x; first < slab; first += kInFlight * kThreads) {
    float v[kInFlight];
#pragma unroll
    for (int j = 0; j < kInFlight; ++j) {
      const int e = first + j * kThreads, o1 = e / out2, o2 = e % out2;
      const int r1 = o1 % s1, r2 = o2 % s2;
      const int64_t at =
          int64_t(r1 * s2 + r2) * g.cout * zvol + (o1 / s1 + g.shift[1][r1]) * z2 + o2 / s2 + g.shift[2][r2];
      v[j] = e < slab ? __ldg(base + at) : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kInFlight; ++j) {
      const int e = first + j * kThreads;
      if (e < slab) dst[e] = accumulate ? dst[e] + v[j] : v[j];
    }
  }
}

// ===========================================================================
// Launchers
// ===========================================================================

void check(const PhaseSplitGeometry& g, const char* op) {
  detail::require(g.n > 0 && g.cin > 0 && g.cout > 0, op, "n, cin and cout must be positive");
  for (int d = 0; d < 3; ++d) {
    detail::require(g.in[d] > 0 && g.front[d] >= 0 && g.end[d] >= 0, op, "bad input size or padding");
    detail::require(g.k[d] >= 1 && g.k[d] <= kMaxKernel, op, "kernel must be 1..16 per dim");
    detail::require(g.s[d] >= 1 && g.kp[d] >= 1 && g.s[d] * g.kp[d] <= kMaxPhaseTaps, op, "too many phase taps");
  }
}

}  // namespace

void phase_pad_input(const float* x, float* x_pad, bool round_tf32, const PhaseSplitGeometry& g, cudaStream_t stream) {
  check(g, "phase_pad_input");
  detail::require(x != nullptr && x_pad != nullptr, "phase_pad_input", "null pointer");
  const int64_t slabs = g.n * g.cin * (g.in[0] + g.front[0] + g.end[0]);
  const int64_t slab = (g.in[1] + g.front[1] + g.end[1]) * (g.in[2] + g.front[2] + g.end[2]);
  detail::require(slabs < (int64_t(1) << 31) && slab < (int64_t(1) << 30), "phase_pad_input",
                  "input too large for the pad kernel's indices");
  pad_kernel<<<unsigned(slabs), kThreads, 0, stream>>>(x, x_pad, round_tf32, g);
  ANVIL_CHECK_LAUNCH();
}

void phase_build_weight(const float* w, float* wp, const PhaseSplitGeometry& g, cudaStream_t stream) {
  check(g, "phase_build_weight");
  detail::require(w != nullptr && wp != nullptr, "phase_build_weight", "null pointer");
  const int64_t total = g.s[0] * g.s[1] * g.s[2] * g.cout * g.cin * g.kp[0] * g.kp[1] * g.kp[2];
  build_weight_kernel<<<detail::grid_stride_blocks(total), kThreads, 0, stream>>>(w, wp, g, total);
  ANVIL_CHECK_LAUNCH();
}

void phase_fold_weight_grad(const float* dwp, float* dw, const PhaseSplitGeometry& g, cudaStream_t stream) {
  check(g, "phase_fold_weight_grad");
  detail::require(dwp != nullptr && dw != nullptr, "phase_fold_weight_grad", "null pointer");
  const int64_t total = g.cin * g.cout * g.k[0] * g.k[1] * g.k[2];
  fold_weight_kernel<<<detail::grid_stride_blocks(total), kThreads, 0, stream>>>(dwp, dw, g, total);
  ANVIL_CHECK_LAUNCH();
}

void phase_crop_input_grad(const float* dx_pad, float* dx, bool accumulate, const PhaseSplitGeometry& g,
                           cudaStream_t stream) {
  check(g, "phase_crop_input_grad");
  detail::require(dx_pad != nullptr && dx != nullptr, "phase_crop_input_grad", "null pointer");
  const int64_t total = g.n * g.cin * g.in[0] * g.in[1] * g.in[2];
  crop_kernel<<<detail::grid_stride_blocks(total), kThreads, 0, stream>>>(dx_pad, dx, accumulate, g, total);
  ANVIL_CHECK_LAUNCH();
}

void phase_interleave_output(const float* yp, float* y, bool accumulate, const PhaseSplitGeometry& g,
                             cudaStream_t stream) {
  check(g, "phase_interleave_output");
  detail::require(yp != nullptr && y != nullptr, "phase_interleave_output", "null pointer");
  for (int d = 0; d < 3; ++d)
    detail::require(g.out[d] > 0 && g.q[d] * g.s[d] >= g.out[d], "phase_interleave_output",
                    "the phase grid does not cover the output");
  const int64_t slabs = g.n * g.cout * g.out[0], slab = g.out[1] * g.out[2];
  detail::require(slabs < (int64_t(1) << 31) && slab < (int64_t(1) << 30), "phase_interleave_output",
                  "output too large for the interleave kernel's indices");
  interleave_kernel<<<unsigned(slabs), kThreads, 0, stream>>>(yp, y, accumulate, g);
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
