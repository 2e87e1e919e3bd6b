// The tensor-core weight gradient of the phase-split conv (see phase_wgrad_mma.hpp).
//
// As a GEMM: dWp[m, n] = sum over positions k of A[m, k] * B[k, n], with
//   m = phase * cout + co (the combined weight's output channel),
//   n = ci * kpv + u      (input channel, combined tap),
//   k = (image, q)        (a point of the phase grid),
//   A[m, k] = dY at the argmax of (image, co, q) if that argmax is `phase`, else 0,
//   B[k, n] = x_pad[image, ci, q + u].
// A block owns a 128 x 128 tile of dWp and a fixed run of K steps; a K step is
// 32 consecutive q along the innermost dim. cp.async stages each step's dY
// words (TF32 with the argmax in the dropped bits, as the epilogue writes
// them) and the x rows it reads into shared memory, kStages steps ahead; 8
// warps run m16n8k8 TF32 MMAs, each on a 64 x 32 sub-tile. Block partials are
// summed in a fixed order by a second kernel: the result is deterministic.
//
// Compensated: each operand is a TF32 value plus a TF32 residual, and
// big*small + small*big + big*big gives float32-accurate products. The tensor
// cores' accumulator truncates, so each step's products are summed apart and
// added to the running sums with ordinary float32 adds.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/phase_wgrad_mma.hpp"

namespace anvil::cuda {
namespace {

constexpr int kTile = 128;     // block tile, M and N
constexpr int kStep = 32;      // positions per K step
constexpr int kStages = 3;     // K steps in flight
constexpr int kDyPitch = 36;   // 144 bytes = 16 mod 128: the 8 rows of an ldmatrix tile hit distinct banks
constexpr int kRowPitch = 40;  // = 8 mod 32: the 4 x rows x 5 offsets of a B fragment hit distinct banks
constexpr int kStepsPerSplit = 64;
constexpr int kBlockThreads = 256;
static_assert(kBlockThreads == detail::kThreads, "one block size for all anvil kernels");
static_assert(kStep == StepCursor::kStep, "a K step is one step of the phase grid");

struct MmaDims : PhaseGridDims {
  int m_total, n_total;
  int stage_channels;  // input channels staged per N tile
};

// One stage of shared memory: dY words [cout][kDyPitch] (then their residuals
// when compensated), then x [channels][rows][kRowPitch] and a zero row, which
// the columns past the last read.
__host__ __device__ inline int dy_words(const MmaDims& d) { return d.cout * kDyPitch; }
__host__ __device__ inline int x_rows(const MmaDims& d) { return d.stage_channels * d.rows; }
__host__ __device__ inline int x_words(const MmaDims& d) { return (x_rows(d) + 1) * kRowPitch; }
__host__ __device__ inline int stage_words(const MmaDims& d, bool compensated) {
  return dy_words(d) * (compensated ? 2 : 1) + x_words(d);
}

// Issues the copies of one K step into `stage`. row_off[r]: the x offset of
// staged row r (channel, x row) from the step's x start, or -1 past cin.
template <bool kCompensated>
__device__ __forceinline__ void stage_step(const StepCursor& at, uint32_t* stage, const int* row_off,
                                           const uint32_t* __restrict__ dy_tf32,
                                           const uint32_t* __restrict__ dy_residual, const float* __restrict__ x_pad,
                                           const MmaDims& d) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // dY: lanes along q, warps along co.
  const bool inside = at.w0 + lane < d.q2;
  const int q_count = d.q0 * d.q1 * d.q2;
  const int dy0 = at.dy_index(d) + lane;
  for (int co = warp; co < d.cout; co += kBlockThreads / 32) {
    const int i = inside ? dy0 + co * q_count : 0;
    copy_async(stage + co * kDyPitch + lane, dy_tf32 + i, inside);
    if (kCompensated) copy_async(stage + dy_words(d) + co * kDyPitch + lane, dy_residual + i, inside);
  }
  // x: rows (channel, row), lanes along w; a row is kStep + kp2 - 1 <= kRowPitch floats.
  uint32_t* xs = stage + dy_words(d) * (kCompensated ? 2 : 1) + lane;
  const float* x0 = x_pad + at.x_index(d) + lane;
  const int in_row = d.x2 - at.w0;  // x_pad's floats from w0 on: later ones are zero
  const bool second = lane + 32 < kStep + d.kp2 - 1;
  for (int r = warp; r < x_rows(d); r += kBlockThreads / 32) {
    const bool real = row_off[r] >= 0, ok0 = real && lane < in_row, ok1 = real && lane + 32 < in_row;
    copy_async(xs + r * kRowPitch, ok0 ? x0 + row_off[r] : x_pad, ok0);
    if (second) copy_async(xs + r * kRowPitch + 32, ok1 ? x0 + row_off[r] + 32 : x_pad, ok1);
  }
}

template <bool kCompensated>
__global__ void __launch_bounds__(kBlockThreads, kCompensated ? 1 : 2)
    mma_wgrad_kernel(const uint32_t* __restrict__ dy_tf32, const uint32_t* __restrict__ dy_residual,
                     const float* __restrict__ x_pad, float* __restrict__ partials, MmaDims d) {
#if ANVIL_HAS_TENSOR_CORES
  extern __shared__ uint32_t smem[];
  const int m0 = blockIdx.y * kTile, n0 = blockIdx.z * kTile;
  const int ci_lo = n0 / d.kpv;
  const int words = stage_words(d, kCompensated);
  int* row_off = reinterpret_cast<int*>(smem + kStages * words);
  for (int r = threadIdx.x; r < x_rows(d); r += kBlockThreads) {
    const int ci = ci_lo + r / d.rows, u0 = r % d.rows / d.kp1, u1 = r % d.kp1;
    row_off[r] = ci < d.cin ? ((ci * d.x0 + u0) * d.x1 + u1) * d.x2 : -1;
  }
  for (int i = threadIdx.x; i < kStages * kRowPitch; i += kBlockThreads)  // the zero rows
    smem[i / kRowPitch * words + dy_words(d) * (kCompensated ? 2 : 1) + x_rows(d) * kRowPitch + i % kRowPitch] = 0u;
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, grp = lane / 4, tig = lane % 4;
  const int wm = m0 + (warp / 4) * 64, wn = n0 + (warp % 4) * 32;

  // A fragments come by ldmatrix: row_of[i] is the dY row (and half) this lane
  // addresses for MMA tile i. a_phase[2 i + h]: the phase of this thread's row
  // grp + 8 h of tile i, which its fragment words must carry as their tag.
  int row_of[4];
  uint32_t a_phase[8];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = wm + i * 16 + lane % 16;
    row_of[i] = (m < d.m_total ? m % d.cout * kDyPitch : 0) + lane / 16 * 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int mh = wm + i * 16 + h * 8 + grp;
      a_phase[2 * i + h] = mh < d.m_total ? uint32_t(mh / d.cout) : 0xffffffffu;  // never matches a tag
    }
  }
  // Its B columns: the x offset of (ci, u); past the last column, the zero row.
  int b_off[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int n = wn + j * 8 + grp;
    const int ci = n / d.kpv, u = n % d.kpv;
    const int u0 = u / (d.kp1 * d.kp2), u1 = u / d.kp2 % d.kp1, u2 = u % d.kp2;
    b_off[j] = n < d.n_total ? ((ci - ci_lo) * d.rows + u0 * d.kp1 + u1) * kRowPitch + u2 : x_rows(d) * kRowPitch;
  }

  float acc[4][4][4] = {};

  const int64_t first = int64_t(blockIdx.x) * kStepsPerSplit;
  const int count = int(min(int64_t(kStepsPerSplit), d.steps - first));
  StepCursor next;  // the next step to stage
  next.seek(int(first), d);
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < count) {
      stage_step<kCompensated>(next, smem + i * words, row_off, dy_tf32, dy_residual, x_pad, d);
      next.next(d);
    }
    copy_async_commit();
  }
  for (int step = 0; step < count; ++step) {
    copy_async_wait<kStages - 2>();
    __syncthreads();  // this step's stage is in; every warp is done with the stage refilled next
    if (step + kStages - 1 < count) {
      stage_step<kCompensated>(next, smem + (step + kStages - 1) % kStages * words, row_off, dy_tf32, dy_residual,
                               x_pad, d);
      next.next(d);
    }
    copy_async_commit();

    const uint32_t* dys = smem + step % kStages * words;
    const uint32_t* dys_small = dys + dy_words(d);
    const float* xs = reinterpret_cast<const float*>(dys + dy_words(d) * (kCompensated ? 2 : 1));
    float part[4][4][4] = {};  // this step's 3xTF32 products (compensated)
#pragma unroll
    for (int ks = 0; ks < kStep / 8; ++ks) {
      const int k = ks * 8 + tig;
      uint32_t b[4][2], bs[4][2];
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float v = xs[b_off[j] + k + 4 * h];
          b[j][h] = kCompensated ? detail::tf32_bits(v) : __float_as_uint(v);  // TF32: x_pad is rounded
          if (kCompensated) bs[j][h] = detail::tf32_bits(v - __uint_as_float(b[j][h]));
        }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        // Fragment order: (row grp, col k), (row grp+8, col k), (row grp, col k+4), (row grp+8, col k+4).
        uint32_t a[4], as[4];
        load_matrix_x4(a, dys + row_of[i] + ks * 8);
        if (kCompensated) load_matrix_x4(as, dys_small + row_of[i] + ks * 8);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          // The tensor cores read TF32 and drop the 13 low bits: the tag needs no masking.
          const bool hit = ((a[r] ^ a_phase[2 * i + r % 2]) & kTf32DroppedBits) == 0;
          a[r] = hit ? a[r] : 0u;
          if (kCompensated) as[r] = hit ? as[r] : 0u;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (kCompensated) {
            mma_tf32(part[i][j], a, bs[j]);
            mma_tf32(part[i][j], as, b[j]);
            mma_tf32(part[i][j], a, b[j]);
          } else {
            mma_tf32(acc[i][j], a, b[j]);
          }
        }
      }
    }
    if (kCompensated) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[i][j][r] += part[i][j][r];
    }
  }

  // Accumulator (i, j, r) sits at row grp + 8 (r / 2), column 2 tig + r % 2 of MMA tile (i, j).
  float* out = partials + int64_t(blockIdx.x) * d.m_total * d.n_total;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int m = wm + i * 16 + grp + 8 * (r / 2), n = wn + j * 8 + 2 * tig + r % 2;
        if (m < d.m_total && n < d.n_total) out[int64_t(m) * d.n_total + n] = acc[i][j][r];
      }
#else
  __trap();  // built for a target before sm_80: tensor_core_kernels_available() is false there
#endif
}

// Where a block's partial of (phase, co, column ci * kpv + u) lives.
struct Partials {
  int64_t phase, channel, split;
  int64_t splits;
};

// dw[ci, co, t] = the sum over splits of the partial of (phase_of t, co,
// ci * kpv + combined_of t): one warp per output, lane l taking splits
// l, l + 32, ..., then a fixed-order warp sum (deterministic).
__global__ void __launch_bounds__(kBlockThreads)
    sum_partials_kernel(const float* __restrict__ partials, Partials layout, float* __restrict__ dw,
                        PhaseSplitGeometry g, int64_t total) {
  const int64_t kv = g.k[0] * g.k[1] * g.k[2], kpv = g.kp[0] * g.kp[1] * g.kp[2];
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; i < total; i += warps) {
    const int64_t t = i % kv, co = i / kv % g.cout, ci = i / (kv * g.cout);
    const int64_t t2 = t % g.k[2], t1 = t / g.k[2] % g.k[1], t0 = t / (g.k[2] * g.k[1]);
    const int64_t r = (g.phase_of[0][t0] * g.s[1] + g.phase_of[1][t1]) * g.s[2] + g.phase_of[2][t2];
    const int64_t u = (g.combined_of[0][t0] * g.kp[1] + g.combined_of[1][t1]) * g.kp[2] + g.combined_of[2][t2];
    const float* p = partials + r * layout.phase + co * layout.channel + ci * kpv + u;
    double sum = 0.0;
    for (int64_t c = lane; c < layout.splits; c += 32) sum += p[c * layout.split];
    sum = detail::warp_sum(sum);
    if (lane == 0) dw[i] = float(sum);
  }
}

MmaDims mma_dims(const PhaseSplitGeometry& g) {
  MmaDims d{};
  static_cast<PhaseGridDims&>(d) = phase_grid_dims(g);
  d.m_total = int(g.s[0] * g.s[1] * g.s[2] * g.cout);
  d.n_total = int(g.cin) * d.kpv;
  // An N tile spans columns [n0, n0 + 128): at most 127 / kpv + 2 channels.
  d.stage_channels = int(std::min<int64_t>(g.cin, (kTile - 1) / d.kpv + 2));
  return d;
}

int64_t mma_splits(const MmaDims& d) { return detail::ceil_div(d.steps, kStepsPerSplit); }

// The stages, then the staged rows' x offsets.
size_t mma_smem_bytes(const MmaDims& d, bool compensated) {
  return (size_t(stage_words(d, compensated)) * kStages + size_t(x_rows(d))) * sizeof(uint32_t);
}

}  // namespace

bool phase_mma_weight_grad_supported(const PhaseSplitGeometry& g) {
  const int64_t phases = g.s[0] * g.s[1] * g.s[2];
  if (phases > 256 || g.kp[2] > kRowPitch - kStep + 1) return false;  // tags are 8 bits; x rows fit their pitch
  if (!phases_aligned(g)) return false;
  int64_t x_pad = g.n * g.cin;
  for (int i = 0; i < 3; ++i) x_pad *= g.in[i] + g.front[i] + g.end[i];
  int64_t pooled = g.n * g.cout;  // dY at the argmax: (n, cout, q)
  for (int i = 0; i < 3; ++i) pooled *= g.q[i];
  if (x_pad >= (int64_t(1) << 31) || pooled >= (int64_t(1) << 31)) return false;  // int indices
  return mma_smem_bytes(mma_dims(g), true) <= detail::max_block_smem();
}

size_t phase_mma_weight_grad_scratch_bytes(const PhaseSplitGeometry& g) {
  const MmaDims d = mma_dims(g);
  return size_t(mma_splits(d)) * d.m_total * d.n_total * sizeof(float);
}

void phase_mma_weight_grad(const uint32_t* dy_tf32, const uint32_t* dy_residual, const float* x_pad, float* dw,
                           void* scratch, const PhaseSplitGeometry& g, cudaStream_t stream) {
  constexpr const char* op = "phase_mma_weight_grad";
  detail::require(phase_mma_weight_grad_supported(g), op, "geometry not supported (check supported() first)");
  detail::require(dy_tf32 && x_pad && dw && scratch, op, "null pointer (only dy_residual may be null)");
  const bool compensated = dy_residual != nullptr;
  const MmaDims d = mma_dims(g);
  const int64_t splits = mma_splits(d);
  detail::require(splits < (int64_t(1) << 31), op, "too many K steps");
  const dim3 grid(unsigned(splits), unsigned(detail::ceil_div(d.m_total, kTile)),
                  unsigned(detail::ceil_div(d.n_total, kTile)));
  detail::require(grid.y <= 65535 && grid.z <= 65535, op, "too many output channels");
  const size_t smem = mma_smem_bytes(d, compensated);
  auto* partials = static_cast<float*>(scratch);
  const auto kernel = compensated ? mma_wgrad_kernel<true> : mma_wgrad_kernel<false>;
  ANVIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, kBlockThreads, smem, stream>>>(dy_tf32, dy_residual, x_pad, partials, d);
  ANVIL_CHECK_LAUNCH();
  const Partials layout{int64_t(g.cout) * d.n_total, d.n_total, int64_t(d.m_total) * d.n_total, splits};
  const int64_t total = g.cin * g.cout * g.k[0] * g.k[1] * g.k[2];
  sum_partials_kernel<<<detail::grid_stride_blocks(total * 32), kBlockThreads, 0, stream>>>(partials, layout, dw, g,
                                                                                            total);
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
