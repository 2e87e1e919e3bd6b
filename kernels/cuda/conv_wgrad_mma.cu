// The weight gradient of any convolution on the tensor cores (see conv_wgrad_mma.hpp).
//
// As a GEMM: dW[m, n] = sum over k of G[m, k] * F[k, n], with
//   m = cb               (a channel of B),
//   n = ca * taps + t    (a channel of A and a tap),
//   k = (image, o)       (a position of B),
//   G[m, k] = dB[image, cb, o],
//   F[k, n] = A[image, ca, o * stride - pad + t * dilation], 0 outside A.
// A block owns a BM x BN tile of dW and a fixed run of K steps of 32
// positions. cp.async gathers each step's G rows and F columns into shared
// memory kStages steps ahead, zero-filled outside the tensors; 8 warps run
// m16n8k8 TF32 MMAs, each on a 32 x (8 kFragsN) sub-tile and on every
// kWarpsK-th k-slice of a step. In a thin tile (32 rows, or 64 rows and 64
// columns) warps split along k rather than all loading the same rows of G:
// with 8 warps along N, relu_avgpool_2d's 32 x 48 filter gradient issued 8
// copies of every G fragment and was bound by issuing instructions
// (bench/RESULTS.md v41). The block's kWarpsK partial tiles are summed in a
// fixed order through shared memory, and block partials in a fixed order by a
// second kernel: the result is deterministic.
//
// Compensated: each operand is a TF32 value plus a TF32 residual, and
// big*small + small*big + big*big gives float32-accurate products. The tensor
// cores' accumulator truncates, so each step's products are summed apart and
// added to the running sums with ordinary float32 adds (as in
// phase_wgrad_mma.cu).
#include "kernels/cuda/conv_mma.cuh"
#include "kernels/cuda/conv_wgrad_mma.hpp"
#include "kernels/cuda/mma.cuh"

namespace anvil::cuda {
namespace {

constexpr int kStep = kMmaStep, kStages = kMmaStages, kPitch = kRowWords;
constexpr int64_t kTargetBlocks = 1024;             // blocks the K split aims at
constexpr int64_t kMaxPartials = int64_t(1) << 24;  // floats of block partials (64 MiB) at most

// The GEMM's rows are cb and its columns W's (ca, t): d.cb x d.columns.
struct WgradDims : ConvDims {
  int steps, steps_per_split;  // K steps of kStep positions, in all and per block
};

// Issues the copies of K step `step` into `stage`: BM rows of G, then BN
// columns of F, each kPitch words with the step's 32 positions first.
template <int BM, int BN>
__device__ __forceinline__ void stage_step(int step, uint32_t* stage, const Column* cols, const float* __restrict__ a,
                                           const float* __restrict__ db, int m0, const WgradDims& d) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int k = step * kStep + lane;
  const bool in_k = k < d.positions;
  const Origin at = origin_of(in_k ? k : 0, d);
  // G: lanes along positions (contiguous in dB), warps along rows.
  const float* g = db + at.b_index + m0 * d.b_volume;
  for (int r = warp; r < BM; r += kWarps) {
    const bool ok = in_k && m0 + r < d.cb;
    copy_async(stage + r * kPitch + lane, ok ? g + r * d.b_volume : db, ok);
  }
  // F: one gathered value per column.
  uint32_t* f = stage + BM * kPitch + lane;
  for (int c = warp; c < BN; c += kWarps) {
    const Column col = cols[c];
    const bool ok = in_k && inside(at, col, d);
    copy_async(f + c * kPitch, ok ? a + at.offset + col.offset : a, ok);
  }
}

template <int kWarpsM, int kFragsN, int kWarpsK, bool kCompensated>
__global__ void __launch_bounds__(detail::kThreads)
    conv_wgrad_kernel(const float* __restrict__ a, const float* __restrict__ db, float* __restrict__ partials,
                      WgradDims d) {
#if ANVIL_HAS_TENSOR_CORES
  constexpr int kWarpsN = kWarps / (kWarpsM * kWarpsK);
  constexpr int BM = 32 * kWarpsM, BN = 8 * kFragsN * kWarpsN;
  constexpr int kStageWords = (BM + BN) * kPitch;
  static_assert(kWarpsM * kWarpsN * kWarpsK == kWarps && (kStep / 8) % kWarpsK == 0, "the warps tile the block");
  static_assert(kWarpsK == 1 || kWarpsK * BM * BN <= kStages * kStageWords, "the k-partials fit the stages");
  extern __shared__ __align__(16) uint32_t smem[];
  Column* cols = reinterpret_cast<Column*>(smem + kStages * kStageWords);
  const int m0 = blockIdx.y * BM, n0 = blockIdx.z * BN;
  for (int c = threadIdx.x; c < BN; c += detail::kThreads) cols[c] = column_of(n0 + c, d);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, grp = lane / 4, tig = lane % 4;
  // The warp's sub-tile in the block's, and its k-slices of each step: kq, kq + kWarpsK, ...
  const int wm = warp % kWarpsM * 32, wn = warp / kWarpsM % kWarpsN * 8 * kFragsN, kq = warp / (kWarpsM * kWarpsN);

  float acc[2][kFragsN][4] = {};
  const int first = blockIdx.x * d.steps_per_split;
  const int count = min(d.steps_per_split, d.steps - first);
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < count) stage_step<BM, BN>(first + i, smem + i * kStageWords, cols, a, db, m0, d);
    copy_async_commit();
  }
  for (int step = 0; step < count; ++step) {
    copy_async_wait<kStages - 2>();
    __syncthreads();  // this step's stage is in; every warp is done with the stage refilled next
    if (step + kStages - 1 < count)
      stage_step<BM, BN>(first + step + kStages - 1, smem + (step + kStages - 1) % kStages * kStageWords, cols, a, db,
                         m0, d);
    copy_async_commit();

    const float* gs = reinterpret_cast<const float*>(smem + step % kStages * kStageWords);
    const float* fs = gs + BM * kPitch;
    float part[2][kFragsN][4] = {};  // this step's 3xTF32 products (compensated)
#pragma unroll
    for (int slice = 0; slice < kStep / 8 / kWarpsK; ++slice) {
      const int k = (slice * kWarpsK + kq) * 8 + tig;
      // Fragments (mma.cuh): a = G(grp, k), G(grp+8, k), G(grp, k+4), G(grp+8, k+4); b = F(k, grp), F(k+4, grp).
      uint32_t ab[2][4], as[2][4], bb[kFragsN][2], bs[kFragsN][2];
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int r = 0; r < 4; ++r)
          split_tf32<kCompensated>(gs[(wm + i * 16 + grp + 8 * (r % 2)) * kPitch + k + 4 * (r / 2)], ab[i][r],
                                   as[i][r]);
#pragma unroll
      for (int j = 0; j < kFragsN; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          split_tf32<kCompensated>(fs[(wn + j * 8 + grp) * kPitch + k + 4 * h], bb[j][h], bs[j][h]);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) {
          if (kCompensated) {
            mma_tf32(part[i][j], ab[i], bs[j]);
            mma_tf32(part[i][j], as[i], bb[j]);
            mma_tf32(part[i][j], ab[i], bb[j]);
          } else {
            mma_tf32(acc[i][j], ab[i], bb[j]);
          }
        }
    }
    if (kCompensated) {
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < kFragsN; ++j)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[i][j][r] += part[i][j][r];
    }
  }

  // Accumulator (i, j, r) sits at row grp + 8 (r / 2), column 2 tig + r % 2 of MMA tile (i, j).
  float* out = partials + int64_t(blockIdx.x) * d.cb * d.columns;
  if constexpr (kWarpsK == 1) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < kFragsN; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int m = m0 + wm + i * 16 + grp + 8 * (r / 2), n = n0 + wn + j * 8 + 2 * tig + r % 2;
          if (m < d.cb && n < d.columns) out[int64_t(m) * d.columns + n] = acc[i][j][r];
        }
  } else {
    // The kWarpsK partial tiles through the stages' memory (every copy is in,
    // every warp done with them), then summed in the order of kq.
    copy_async_wait<0>();
    __syncthreads();
    float* tiles = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < kFragsN; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r)
          tiles[(kq * BM + wm + i * 16 + grp + 8 * (r / 2)) * BN + wn + j * 8 + 2 * tig + r % 2] = acc[i][j][r];
    __syncthreads();
    for (int e = threadIdx.x; e < BM * BN; e += detail::kThreads) {
      const int m = m0 + e / BN, n = n0 + e % BN;
      float sum = tiles[e];
#pragma unroll
      for (int q = 1; q < kWarpsK; ++q) sum += tiles[q * BM * BN + e];
      if (m < d.cb && n < d.columns) out[int64_t(m) * d.columns + n] = sum;
    }
  }
#else
  __trap();  // built for a target before sm_80: tensor_core_kernels_available() is false there
#endif
}

// dw[i] = the sum of the splits' partials of output i in double, in a fixed
// order: a block takes 32 outputs, one per lane, so every load is one
// coalesced row of partials; warp w adds splits w, w + 8, ..., and lane l of
// warp 0 then adds the 8 warps' sums in order. (One thread per output
// summing every split itself took 63 us for relu_avgpool_2d's 1536 outputs
// of 1024 splits; one warp per output, 34 us for relu_avgpool_3d's 27648 of 256.)
constexpr int kGroups = detail::kThreads / 32;

__global__ void __launch_bounds__(detail::kThreads)
    sum_splits_kernel(const float* __restrict__ partials, float* __restrict__ dw, int64_t outputs, int splits) {
  __shared__ double group_sums[kGroups][32];
  const int lane = threadIdx.x % 32, group = threadIdx.x / 32;
  for (int64_t first = blockIdx.x * int64_t(32); first < outputs; first += int64_t(gridDim.x) * 32) {
    const int64_t i = first + lane;
    double sum = 0.0;
    if (i < outputs)
      for (int s = group; s < splits; s += kGroups) sum += partials[int64_t(s) * outputs + i];
    group_sums[group][lane] = sum;
    __syncthreads();
    if (group == 0 && i < outputs) {
      double total = 0.0;
      for (int g = 0; g < kGroups; ++g) total += group_sums[g][lane];
      dw[i] = float(total);
    }
    __syncthreads();
  }
}

// 32, 64 or 128 rows (as many as M needs) and 64 or 128 columns. Warps split
// k in tiles of 32 rows (4 ways up to 64 columns, else 2) and of 64 rows and
// 64 columns (2 ways), so that at most 2 warps share a G fragment.
MmaTile tile_for(int64_t m, int64_t n) {
  if (m <= 32) return {1, 4, n <= 64 ? 4 : 2};
  if (m <= 64) return n <= 64 ? MmaTile{2, 4, 2} : MmaTile{2, 4, 1};
  return {4, 4, 1};
}

size_t smem_bytes(const MmaTile& t) {
  return size_t(kStages) * (t.rows() + t.cols()) * kPitch * sizeof(uint32_t) + size_t(t.cols()) * sizeof(Column);
}

struct Plan {
  WgradDims d;
  MmaTile tile;
  int64_t row_blocks, col_blocks, splits;
};

// The launch for g, a function of the shapes alone (so the sums' order is too).
Plan plan_for(const cpu::ConvGeometry& g) {
  Plan p{};
  WgradDims& d = p.d;
  static_cast<ConvDims&>(d) = conv_dims(g);
  d.steps = int(detail::ceil_div(d.positions, kStep));
  p.tile = tile_for(d.cb, d.columns);
  p.row_blocks = detail::ceil_div(d.cb, p.tile.rows());
  p.col_blocks = detail::ceil_div(d.columns, p.tile.cols());
  const int64_t outputs = int64_t(d.cb) * d.columns;
  int64_t splits = std::max<int64_t>(1, detail::ceil_div(kTargetBlocks, p.row_blocks * p.col_blocks));
  splits = std::min({splits, std::max<int64_t>(1, kMaxPartials / outputs), int64_t(d.steps)});
  d.steps_per_split = int(detail::ceil_div(d.steps, splits));
  p.splits = detail::ceil_div(d.steps, d.steps_per_split);
  return p;
}

template <int kWarpsM, int kFragsN, int kWarpsK>
void launch(const Plan& p, bool compensated, const float* a, const float* db, float* partials, cudaStream_t stream) {
  const auto kernel = compensated ? conv_wgrad_kernel<kWarpsM, kFragsN, kWarpsK, true>
                                  : conv_wgrad_kernel<kWarpsM, kFragsN, kWarpsK, false>;
  const size_t smem = smem_bytes(p.tile);
  ANVIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(unsigned(p.splits), unsigned(p.row_blocks), unsigned(p.col_blocks));
  kernel<<<grid, detail::kThreads, smem, stream>>>(a, db, partials, p.d);
  ANVIL_CHECK_LAUNCH();
}

}  // namespace

bool conv_mma_weight_grad_supported(const cpu::ConvGeometry& g) {
  if (!conv_geometry_nonempty(g) || !conv_indices_fit(g)) return false;
  const Plan p = plan_for(g);
  return p.row_blocks <= 65535 && p.col_blocks <= 65535 && smem_bytes(p.tile) <= detail::max_block_smem();
}

size_t conv_mma_weight_grad_scratch_bytes(const cpu::ConvGeometry& g) {
  const Plan p = plan_for(g);
  return size_t(p.splits) * p.d.cb * p.d.columns * sizeof(float);
}

void conv_mma_weight_grad(const float* a, const float* db, float* dw, void* scratch, bool compensated,
                          const cpu::ConvGeometry& g, cudaStream_t stream) {
  constexpr const char* op = "conv_mma_weight_grad";
  detail::require(conv_mma_weight_grad_supported(g), op, "geometry not supported (check supported() first)");
  detail::require(a && db && dw && scratch, op, "null pointer");
  const Plan p = plan_for(g);
  auto* partials = static_cast<float*>(scratch);
  // tile_for's tiles: a kernel of another shape would not match the plan's blocks and shared memory.
  detail::require(p.tile.frags_n == 4, op, "no kernel for the planned tile");
  switch (p.tile.warps_m * 10 + p.tile.warps_k) {
    case 14: launch<1, 4, 4>(p, compensated, a, db, partials, stream); break;
    case 12: launch<1, 4, 2>(p, compensated, a, db, partials, stream); break;
    case 22: launch<2, 4, 2>(p, compensated, a, db, partials, stream); break;
    case 21: launch<2, 4, 1>(p, compensated, a, db, partials, stream); break;
    case 41: launch<4, 4, 1>(p, compensated, a, db, partials, stream); break;
    default: detail::require(false, op, "no kernel for the planned tile");
  }
  const int64_t outputs = int64_t(p.d.cb) * p.d.columns;
  const unsigned blocks = detail::grid_stride_blocks(outputs * kGroups);  // 32 outputs per block
  sum_splits_kernel<<<blocks, detail::kThreads, 0, stream>>>(partials, dw, outputs, int(p.splits));
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
