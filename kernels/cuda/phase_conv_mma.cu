// The phase-split conv and the fused epilogue in one kernel (see phase_split.hpp).
//
// As an implicit GEMM: Y[q, n] = sum over k of X[q, k] * W[n, k], with
//   q = (image, position) of the phase grid, n = phase * cout + co (all of them,
//   <= 256), k = ci * kpv + u (<= 128), X[q, k] = x_pad[image, ci, q + u].
// A block stays resident (one per SM: the combined weight fills most of its
// shared memory) and takes tiles of two 32-position steps of the grid in turn.
// 16 warps each compute 32 positions x 32 columns with m16n8k8 TF32 MMAs; the
// tile's Y goes to shared memory, where each (position, co) takes the max of
// the epilogue chain over its phases. Y never reaches global memory. The next
// tile's x is copied (cp.async) while the epilogue runs.
//
// Compensated: both operands are split into TF32 value and residual and each
// product takes 3 MMAs; the products of every 32 k are summed apart and added
// in float32 (the tensor cores' accumulator truncates), as in the weight
// gradient's kernel.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/epilogue_math.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/phase_split.hpp"

namespace anvil::cuda {
namespace {

constexpr int kBlock = 512;  // 16 warps: enough to hide latency at one block per SM
constexpr int kCols = 256;   // every output channel of every phase
constexpr int kMaxK = 128;
constexpr int kSegs = 2;                   // grid steps per tile
constexpr int kPositions = kSegs * 32;     // positions per tile
constexpr int kXPitch = 48;                // = 16 mod 32: two x rows 16 banks apart
constexpr int kYPitch = kCols + 1;         // = 1 mod 32: lanes over positions hit 32 banks
constexpr size_t kMaxSmem = 227 * 1024;    // the H100's opt-in limit per block

struct FwdDims {
  int cout, cin, kpv, kp1, kp2, rows;
  int x0, x1, x2;
  int q0, q1, q2, steps_per_row;
  int phases, n_total, k_total, k_pad, w_pitch;
  int seg_words;  // one step's x rows and a zero row
  int64_t steps;
};

// Shared memory, in 4-byte words: the weight [kCols][w_pitch], x [kSegs][seg_words],
// k -> x offset [k_pad], Y [kPositions][kYPitch], staged row -> x offset [cin * rows].
__host__ __device__ inline int w_words(const FwdDims& d) { return kCols * d.w_pitch; }
__host__ __device__ inline int x_words(const FwdDims& d) { return kSegs * d.seg_words; }

// Tile t's two steps, and whether each exists.
struct Tile {
  StepCursor at[kSegs];
  bool valid[kSegs];
  __device__ Tile(int t, const FwdDims& d) {
    for (int s = 0; s < kSegs; ++s) {
      valid[s] = t * kSegs + s < d.steps;
      if (valid[s]) at[s].seek(t * kSegs + s, d);
    }
  }
};

// Issues the copies of a tile's x rows. row_off[r]: the offset of staged row
// r (channel, x row) from a step's x start.
__device__ __forceinline__ void stage_tile(const Tile& tile, float* xs, const int* row_off,
                                           const float* __restrict__ x_pad, const FwdDims& d) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, row_len = 32 + d.kp2 - 1;
  for (int s = 0; s < kSegs; ++s) {
    const StepCursor& at = tile.at[s];
    const int x0 = tile.valid[s] ? at.x_index(d) : 0;
    for (int r = warp; r < d.cin * d.rows; r += kBlock / 32)
      for (int w = lane; w < row_len; w += 32) {
        const bool ok = tile.valid[s] && at.w0 + w < d.x2;
        copy_async(xs + s * d.seg_words + r * kXPitch + w, x_pad + (ok ? x0 + row_off[r] + w : 0), ok);
      }
  }
}

template <bool kCompensated>
__global__ void __launch_bounds__(kBlock, 1)
    fused_forward_kernel(const float* __restrict__ x_pad, const float* __restrict__ wp,
                         const float* __restrict__ bias, const float* __restrict__ m, float s1, float s2,
                         float* __restrict__ p, uint8_t* __restrict__ argmax, float* __restrict__ y_at_max,
                         FwdDims d) {
  extern __shared__ float smem_f[];
  float* ws = smem_f;
  float* xs = ws + w_words(d);
  int* koff = reinterpret_cast<int*>(xs + x_words(d));
  float* ys = reinterpret_cast<float*>(koff + d.k_pad);
  int* row_off = reinterpret_cast<int*>(ys + kPositions * kYPitch);
  for (int r = threadIdx.x; r < d.cin * d.rows; r += kBlock) {
    const int ci = r / d.rows, u0 = r % d.rows / d.kp1, u1 = r % d.kp1;
    row_off[r] = ((ci * d.x0 + u0) * d.x1 + u1) * d.x2;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, grp = lane / 4, tig = lane % 4;

  for (int i = threadIdx.x; i < w_words(d); i += kBlock) {
    const int n = i / d.w_pitch, k = i % d.w_pitch;
    const float v = n < d.n_total && k < d.k_total ? __ldg(wp + n * d.k_total + k) : 0.f;
    ws[i] = kCompensated ? v : __uint_as_float(detail::tf32_bits(v));  // TF32: round once, here
  }
  for (int k = threadIdx.x; k < d.k_pad; k += kBlock) {
    const int ci = k / d.kpv, u = k % d.kpv;
    const int u0 = u / (d.kp1 * d.kp2), u1 = u / d.kp2 % d.kp1, u2 = u % d.kp2;
    koff[k] = k < d.k_total ? (ci * d.rows + u0 * d.kp1 + u1) * kXPitch + u2 : d.cin * d.rows * kXPitch;
  }
  for (int s = 0; s < kSegs; ++s)  // the zero row that padded k reads
    for (int w = threadIdx.x; w < kXPitch; w += kBlock) xs[s * d.seg_words + d.cin * d.rows * kXPitch + w] = 0.f;

  const int seg = warp / 8, wn = (warp % 8) * 32;  // this warp's step and first column
  const float* xw = xs + seg * d.seg_words;
  const int tiles = int((d.steps + kSegs - 1) / kSegs);
  const int64_t q_count = int64_t(d.q0) * d.q1 * d.q2;
  __syncthreads();  // row_off
  Tile tile(blockIdx.x, d);
  stage_tile(tile, xs, row_off, x_pad, d);
  copy_async_commit();
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    copy_async_wait<0>();
    __syncthreads();  // x (and, the first time, the weight) in; the last tile's epilogue done

    float acc[2][4][4] = {};
    float part[2][4][4];
#pragma unroll 4
    for (int ks = 0; ks < d.k_pad / 8; ++ks) {
      if (kCompensated && ks % 4 == 0)
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) part[i][j][r] = 0.f;
      const int k = ks * 8 + tig;
      const int o0 = koff[k], o1 = koff[k + 4];
      uint32_t a[2][4], as[2][4], b[4][2], bs[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int pos = i * 16 + grp;
        const float v[4] = {xw[o0 + pos], xw[o0 + pos + 8], xw[o1 + pos], xw[o1 + pos + 8]};
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          a[i][r] = kCompensated ? detail::tf32_bits(v[r]) : __float_as_uint(v[r]);  // TF32: x_pad is rounded
          if (kCompensated) as[i][r] = detail::tf32_bits(v[r] - __uint_as_float(a[i][r]));
        }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float* wrow = ws + (wn + j * 8 + grp) * d.w_pitch + k;
        const float v[2] = {wrow[0], wrow[4]};
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          b[j][h] = kCompensated ? detail::tf32_bits(v[h]) : __float_as_uint(v[h]);
          if (kCompensated) bs[j][h] = detail::tf32_bits(v[h] - __uint_as_float(b[j][h]));
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (kCompensated) {
            mma_tf32(part[i][j], a[i], bs[j]);
            mma_tf32(part[i][j], as[i], b[j]);
            mma_tf32(part[i][j], a[i], b[j]);
          } else {
            mma_tf32(acc[i][j], a[i], b[j]);
          }
        }
      if (kCompensated && (ks % 4 == 3 || ks == d.k_pad / 8 - 1))
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] += part[i][j][r];
    }
    __syncthreads();  // every warp is done with x: copy the next tile's during the epilogue
    const Tile next(t + gridDim.x, d);
    if (t + int(gridDim.x) < tiles) stage_tile(next, xs, row_off, x_pad, d);
    copy_async_commit();

    // Accumulator (i, j, r) is Y at position i*16 + grp + 8 (r/2), column wn + j*8 + 2 tig + r % 2.
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r)
          ys[(seg * 32 + i * 16 + grp + 8 * (r / 2)) * kYPitch + wn + j * 8 + 2 * tig + r % 2] = acc[i][j][r];
    __syncthreads();

    // The epilogue: lanes over positions, warps over (step, co).
    for (int item = warp; item < kSegs * d.cout; item += kBlock / 32) {
      const int s = item / d.cout, co = item % d.cout;
      const StepCursor& at = tile.at[s];
      if (!tile.valid[s] || at.w0 + lane >= d.q2) continue;
      const float b0 = bias != nullptr ? __ldg(bias + co) : 0.f, mc = __ldg(m + co);
      const float* yrow = ys + (s * 32 + lane) * kYPitch + co;
      float best = 0.f, best_v = 0.f;
      uint32_t best_i = 0;
      for (int ph = 0; ph < d.phases; ++ph) {
        const float v = yrow[ph * d.cout] + b0;
        const float z = epi_z3(v, s1, mc, s2);
        if (ph == 0 || epi_better(z, best)) {
          best = z;
          best_v = v;
          best_i = uint32_t(ph);
        }
      }
      const int64_t out = (int64_t(at.image) * d.cout + co) * q_count +
                          (int64_t(at.qd) * d.q1 + at.qh) * d.q2 + at.w0 + lane;
      p[out] = best;
      if (argmax != nullptr) {
        argmax[out] = uint8_t(best_i);
        y_at_max[out] = best_v;
      }
    }
    tile = next;
  }
  copy_async_wait<0>();
}

FwdDims fwd_dims(const PhaseSplitGeometry& g) {
  FwdDims d{};
  d.cout = int(g.cout);
  d.cin = int(g.cin);
  d.kpv = int(g.kp[0] * g.kp[1] * g.kp[2]);
  d.kp1 = int(g.kp[1]);
  d.kp2 = int(g.kp[2]);
  d.rows = int(g.kp[0] * g.kp[1]);
  d.x0 = int(g.in[0] + g.front[0] + g.end[0]);
  d.x1 = int(g.in[1] + g.front[1] + g.end[1]);
  d.x2 = int(g.in[2] + g.front[2] + g.end[2]);
  d.q0 = int(d.x0 - g.kp[0] + 1);
  d.q1 = int(d.x1 - g.kp[1] + 1);
  d.q2 = int(d.x2 - g.kp[2] + 1);
  d.steps_per_row = int(detail::ceil_div(d.q2, StepCursor::kStep));
  d.phases = int(g.s[0] * g.s[1] * g.s[2]);
  d.n_total = d.phases * d.cout;
  d.k_total = d.cin * d.kpv;
  d.k_pad = int(detail::ceil_div(d.k_total, 8) * 8);
  d.w_pitch = int(detail::ceil_div(d.k_pad, 32) * 32 + 4);  // = 4 mod 32: B fragments hit 32 banks
  d.seg_words = (d.cin * d.rows + 1) * kXPitch;
  d.steps = g.n * d.q0 * d.q1 * d.steps_per_row;
  return d;
}

size_t fwd_smem_bytes(const FwdDims& d) {
  return (size_t(w_words(d)) + x_words(d) + d.k_pad + size_t(kPositions) * kYPitch + size_t(d.cin) * d.rows) *
         sizeof(float);
}

}  // namespace

bool phase_fused_forward_supported(const PhaseSplitGeometry& g) {
  const int64_t phases = g.s[0] * g.s[1] * g.s[2];
  if (phases * g.cout > kCols || phases > 256 || g.cin * g.kp[0] * g.kp[1] * g.kp[2] > kMaxK) return false;
  if (g.kp[2] > kXPitch - 32 + 1) return false;
  int64_t x_pad = g.n * g.cin, pooled = g.n * g.cout;
  for (int i = 0; i < 3; ++i) {
    x_pad *= g.in[i] + g.front[i] + g.end[i];
    pooled *= g.in[i] + g.front[i] + g.end[i] - g.kp[i] + 1;
  }
  if (x_pad >= (int64_t(1) << 31) || pooled >= (int64_t(1) << 31)) return false;  // int indices and steps
  return fwd_smem_bytes(fwd_dims(g)) <= kMaxSmem;
}

void phase_fused_forward(const float* x_pad, const float* wp, const float* bias, const float* m, float slope1,
                         float slope2, float* p, uint8_t* argmax, float* y_at_max, bool compensated,
                         const PhaseSplitGeometry& g, cudaStream_t stream) {
  constexpr const char* op = "phase_fused_forward";
  detail::require(phase_fused_forward_supported(g), op, "geometry not supported (check supported() first)");
  detail::require(x_pad && wp && m && p, op, "null pointer (only bias, argmax and y_at_max may be null)");
  detail::require((argmax == nullptr) == (y_at_max == nullptr), op, "argmax and y_at_max go together");
  const FwdDims d = fwd_dims(g);
  const size_t smem = fwd_smem_bytes(d);
  const int64_t tiles = detail::ceil_div(d.steps, kSegs);
  const unsigned blocks = unsigned(std::min<int64_t>(tiles, detail::sm_count()));
  const auto kernel = compensated ? fused_forward_kernel<true> : fused_forward_kernel<false>;
  ANVIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<blocks, kBlock, smem, stream>>>(x_pad, wp, bias, m, slope1, slope2, p, argmax, y_at_max, d);
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
