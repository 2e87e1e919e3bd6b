// Kernels for the phase-split transposed convolution (see phase_split.hpp).
// All are small or plain copies: flat grid-stride loops over the output.
#include "kernels/cuda/phase_split.hpp"

#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace anvil::cuda {
namespace {

using detail::kThreads;

// ===========================================================================
// Kernels
// ===========================================================================

__global__ void __launch_bounds__(kThreads)
    pad_kernel(const float* __restrict__ x, float* __restrict__ x_pad, PhaseSplitGeometry g, int64_t total) {
  const int64_t p0 = g.in[0] + g.front[0] + g.end[0], p1 = g.in[1] + g.front[1] + g.end[1],
                p2 = g.in[2] + g.front[2] + g.end[2];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t w = i % p2 - g.front[2], h = i / p2 % p1 - g.front[1], d = i / (p2 * p1) % p0 - g.front[0];
    const int64_t plane = i / (p2 * p1 * p0);
    const bool inside = d >= 0 && d < g.in[0] && h >= 0 && h < g.in[1] && w >= 0 && w < g.in[2];
    x_pad[i] = inside ? __ldg(x + ((plane * g.in[0] + d) * g.in[1] + h) * g.in[2] + w) : 0.f;
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
    wp[i] = (t0 < 0 || t1 < 0 || t2 < 0)
                ? 0.f
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

__global__ void __launch_bounds__(kThreads)
    crop_kernel(const float* __restrict__ dx_pad, float* __restrict__ dx, bool accumulate, PhaseSplitGeometry g,
                int64_t total) {
  const int64_t p0 = g.in[0] + g.front[0] + g.end[0], p1 = g.in[1] + g.front[1] + g.end[1],
                p2 = g.in[2] + g.front[2] + g.end[2];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t w = i % g.in[2], h = i / g.in[2] % g.in[1], d = i / (g.in[2] * g.in[1]) % g.in[0];
    const int64_t plane = i / (g.in[2] * g.in[1] * g.in[0]);
    const float v = __ldg(dx_pad + ((plane * p0 + d + g.front[0]) * p1 + h + g.front[1]) * p2 + w + g.front[2]);
    dx[i] = accumulate ? dx[i] + v : v;
  }
}


// The sparse weight gradient. Block (co, n, input-channel group) walks the
// phase grid one depth slice qd at a time: it stages that slice's x tile for
// its channels in shared memory, and dy and the argmax of the slice's items.
// Thread (channel, combined tap u, item slice) then adds dy * x into its own
// slot of each item's argmax phase (slots [phase][thread]: no sharing, fixed
// order). Tile rows are padded so that a warp's 32 (channel, tap) lanes read 32
// distinct banks for the headline geometry. The block's slices are summed in
// order at the end, and a second kernel sums the blocks over n in order.
struct SparseLayout {
  int cig = 1;       // input channels per block
  int groups = 1;    // blocks along the input channels
  int group = 1;     // cig * kp taps: threads per item
  int slices = 1;    // item slices per block
  int threads = 1;   // group * slices
  int wpad = 1, hpad = 1;  // tile row and plane strides, in floats
  int tile = 1;      // cig * kp0 * hpad * wpad floats
  int items = 1;     // phase-grid points per depth slice: Q1 * Q2
  size_t smem = 0;
};

__global__ void sparse_wgrad_kernel(SparseGradEpilogue e, const float* __restrict__ x_pad,
                                    float* __restrict__ partials, PhaseSplitGeometry g, SparseLayout L) {
  extern __shared__ float smem[];
  const int phases = int(g.s[0] * g.s[1] * g.s[2]), T = L.threads, tid = threadIdx.x;
  const int kp0 = int(g.kp[0]), kp1 = int(g.kp[1]), kp2 = int(g.kp[2]), kpv = kp0 * kp1 * kp2;
  const int p0 = int(g.in[0] + g.front[0] + g.end[0]), p1 = int(g.in[1] + g.front[1] + g.end[1]),
            p2 = int(g.in[2] + g.front[2] + g.end[2]);
  const int q0 = p0 - kp0 + 1, q2 = p2 - kp2 + 1;
  float* acc = smem;                    // [phases][T]
  float* tile = acc + phases * T;       // [cig][kp0][hpad][wpad]
  float* dy_s = tile + L.tile;          // [items]
  auto* arg_s = reinterpret_cast<uint8_t*>(dy_s + L.items);
  const int64_t co = blockIdx.x, n = blockIdx.y;
  const int ci0 = int(blockIdx.z) * L.cig;
  for (int i = tid; i < phases * T; i += T) acc[i] = 0.f;

  const int gi = tid % L.group, slice = tid / L.group;
  const int cl = gi / kpv, u = gi - cl * kpv;
  const int u0 = u / (kp1 * kp2), u1 = u / kp2 % kp1, u2 = u % kp2;
  const bool active = ci0 + cl < g.cin;
  const int tap_offset = ((cl * kp0 + u0) * L.hpad + u1) * L.wpad + u2;
  const int per_slice = (L.items + L.slices - 1) / L.slices;
  const int i0 = min(L.items, slice * per_slice), i1 = min(L.items, i0 + per_slice);
  const float mc = __ldg(e.m + co);
  const int tile_elems = L.cig * kp0 * p1 * p2;

  for (int qd = 0; qd < q0; ++qd) {
    __syncthreads();  // the previous slice's tile, dy and argmax are consumed
    for (int i = tid; i < tile_elems; i += T) {
      const int w = i % p2, h = i / p2 % p1, dd = i / (p2 * p1) % kp0, c = i / (p2 * p1 * kp0);
      const int64_t ci = ci0 + c;
      tile[((c * kp0 + dd) * L.hpad + h) * L.wpad + w] =
          ci < g.cin ? __ldg(x_pad + (((n * g.cin + ci) * p0 + qd + dd) * p1 + h) * p2 + w) : 0.f;
    }
    const int64_t base = ((n * g.cout + co) * q0 + qd) * int64_t(L.items);
    for (int i = tid; i < L.items; i += T) {
      const float v = __ldg(e.y_at_max + base + i), dpv = __ldg(e.dp + base + i);
      const float z2 = (v > 0.f ? v : e.slope1 * v) * mc;
      const float dz1 = (z2 > 0.f ? dpv : e.slope2 * dpv) * mc;
      dy_s[i] = v > 0.f ? dz1 : e.slope1 * dz1;
      arg_s[i] = __ldg(e.argmax + base + i);
    }
    __syncthreads();
    if (!active) continue;
    int qh = i0 / q2, qw = i0 - qh * q2;
    for (int i = i0; i < i1; ++i) {
      acc[arg_s[i] * T + tid] += dy_s[i] * tile[tap_offset + qh * L.wpad + qw];
      if (++qw == q2) qw = 0, ++qh;
    }
  }
  __syncthreads();
  float* out = partials + ((co * g.n + n) * L.groups + blockIdx.z) * int64_t(phases * L.group);
  for (int o = tid; o < phases * L.group; o += T) {
    const int r = o / L.group, k = o - r * L.group;
    float sum = 0.f;
    for (int sl = 0; sl < L.slices; ++sl) sum += acc[r * T + sl * L.group + k];
    out[o] = sum;
  }
}

// dw[ci, co, t] = sum over n, in order, of the block partial of (phase_of t, ci, combined_of t).
__global__ void __launch_bounds__(kThreads)
    sparse_wgrad_finish(const float* __restrict__ partials, float* __restrict__ dw, PhaseSplitGeometry g,
                        SparseLayout L, int64_t total) {
  const int64_t kv = g.k[0] * g.k[1] * g.k[2], kpv = g.kp[0] * g.kp[1] * g.kp[2];
  const int64_t phases = g.s[0] * g.s[1] * g.s[2];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i % kv, co = i / kv % g.cout, ci = i / (kv * g.cout);
    const int64_t t2 = t % g.k[2], t1 = t / g.k[2] % g.k[1], t0 = t / (g.k[2] * g.k[1]);
    const int64_t r = (g.phase_of[0][t0] * g.s[1] + g.phase_of[1][t1]) * g.s[2] + g.phase_of[2][t2];
    const int64_t u = (g.combined_of[0][t0] * g.kp[1] + g.combined_of[1][t1]) * g.kp[2] + g.combined_of[2][t2];
    const int64_t block_stride = L.groups * phases * L.group;
    const float* p = partials + (co * g.n * L.groups + ci / L.cig) * phases * L.group + r * L.group +
                     (ci % L.cig) * kpv + u;
    double sum = 0.0;
    for (int64_t nn = 0; nn < g.n; ++nn) sum += p[nn * block_stride];
    dw[i] = float(sum);
  }
}

// ===========================================================================
// Launchers
// ===========================================================================

void check(const PhaseSplitGeometry& g, const char* op);

void check(const PhaseSplitGeometry& g, const char* op) {
  detail::require(g.n > 0 && g.cin > 0 && g.cout > 0, op, "n, cin and cout must be positive");
  for (int d = 0; d < 3; ++d) {
    detail::require(g.in[d] > 0 && g.front[d] >= 0 && g.end[d] >= 0, op, "bad input size or padding");
    detail::require(g.k[d] >= 1 && g.k[d] <= kMaxKernel, op, "kernel must be 1..16 per dim");
    detail::require(g.s[d] >= 1 && g.kp[d] >= 1 && g.s[d] * g.kp[d] <= kMaxPhaseTaps, op, "too many phase taps");
  }
}

constexpr size_t kSparseMaxSmem = 160 * 1024;

SparseLayout sparse_layout(const PhaseSplitGeometry& g) {
  SparseLayout L;
  const int64_t kpv = g.kp[0] * g.kp[1] * g.kp[2], phases = g.s[0] * g.s[1] * g.s[2];
  const int64_t p1 = g.in[1] + g.front[1] + g.end[1], p2 = g.in[2] + g.front[2] + g.end[2];
  L.cig = int(std::max<int64_t>(1, std::min<int64_t>(g.cin, 32 / std::max<int64_t>(kpv, 1))));
  L.groups = int(detail::ceil_div(g.cin, L.cig));
  L.group = int(L.cig * kpv);
  L.slices = int(std::max<int64_t>(1, 256 / L.group));
  L.threads = L.group * L.slices;
  // Rows padded to 2 mod 32 floats and planes to 4 mod 32: the headline's 4 x 8 lanes hit 32 banks.
  L.wpad = int(p2 + (34 - p2 % 32) % 32);
  L.hpad = int(p1);
  while ((int64_t(L.hpad) * L.wpad) % 32 != 4 && L.hpad < p1 + 32) ++L.hpad;
  L.tile = int(L.cig * g.kp[0] * L.hpad * L.wpad);
  L.items = int((p1 - g.kp[1] + 1) * (p2 - g.kp[2] + 1));
  L.smem = size_t(phases * L.threads + L.tile + L.items) * sizeof(float) + size_t(L.items);
  return L;
}

}  // namespace

bool phase_sparse_weight_grad_supported(const PhaseSplitGeometry& g) {
  const int64_t kpv = g.kp[0] * g.kp[1] * g.kp[2];
  if (kpv > 256 || g.s[0] * g.s[1] * g.s[2] > 256) return false;
  const SparseLayout L = sparse_layout(g);
  return L.threads <= 1024 && L.smem <= kSparseMaxSmem && g.n <= 65535 && L.groups <= 65535;
}

size_t phase_sparse_weight_grad_scratch_bytes(const PhaseSplitGeometry& g) {
  const SparseLayout L = sparse_layout(g);
  return size_t(g.cout * g.n * L.groups * g.s[0] * g.s[1] * g.s[2] * L.group) * sizeof(float);
}

void phase_sparse_weight_grad(const SparseGradEpilogue& e, const float* x_pad, float* dw, void* scratch,
                              const PhaseSplitGeometry& g, cudaStream_t stream) {
  constexpr const char* op = "phase_sparse_weight_grad";
  check(g, op);
  detail::require(phase_sparse_weight_grad_supported(g), op, "geometry not supported (check supported() first)");
  detail::require(e.dp && e.argmax && e.y_at_max && e.m && x_pad && dw && scratch, op, "null pointer");
  const SparseLayout L = sparse_layout(g);
  ANVIL_CUDA_CHECK(cudaFuncSetAttribute(sparse_wgrad_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(L.smem)));
  auto* partials = static_cast<float*>(scratch);
  const dim3 grid(unsigned(g.cout), unsigned(g.n), unsigned(L.groups));
  sparse_wgrad_kernel<<<grid, unsigned(L.threads), L.smem, stream>>>(e, x_pad, partials, g, L);
  ANVIL_CHECK_LAUNCH();
  const int64_t total = g.cin * g.cout * g.k[0] * g.k[1] * g.k[2];
  sparse_wgrad_finish<<<detail::grid_stride_blocks(total), kThreads, 0, stream>>>(partials, dw, g, L, total);
  ANVIL_CHECK_LAUNCH();
}

void phase_pad_input(const float* x, float* x_pad, const PhaseSplitGeometry& g, cudaStream_t stream) {
  check(g, "phase_pad_input");
  detail::require(x != nullptr && x_pad != nullptr, "phase_pad_input", "null pointer");
  int64_t total = g.n * g.cin;
  for (int d = 0; d < 3; ++d) total *= g.in[d] + g.front[d] + g.end[d];
  pad_kernel<<<detail::grid_stride_blocks(total), kThreads, 0, stream>>>(x, x_pad, g, total);
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

}  // namespace anvil::cuda
