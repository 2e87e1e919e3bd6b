// The forward relation of any convolution on the tensor cores (see conv_fprop_mma.hpp).
//
// As a GEMM: B[m, n] = sum over k of G[m, k] * W[n, k], with
//   m = (image, o)      (a position of B),
//   n = cb              (a channel of B),
//   k = ca * taps + t   (a channel of A and a tap),
//   G[m, k] = A[image, ca, o * stride - pad + t * dilation], 0 outside A.
// A block owns BM positions x BN channels of B and runs over all of K in
// steps of 32 columns. cp.async gathers each step's G columns (lanes along
// positions, which a stride-1 row keeps consecutive in A; each warp's columns
// found by cursors and a table of the taps, without divisions) and W rows
// (lanes along k, 16 bytes a copy where the rows allow) into shared memory
// kStages steps ahead, zero-filled outside the tensors; 8 warps run m16n8k8
// TF32 MMAs, each on a 32 x (8 kFragsN) sub-tile (W's fragments by
// ldmatrix), and store B straight from their accumulators: each store is 8
// consecutive positions of 4 channels, whole 32-byte sectors. The MMAs take
// the staged floats as they are: the tensor cores read TF32's 19 bits of each
// and drop the rest (truncation; PTX does not promise it, so the kernel's test
// holds the result to a truncating reference at float32 accuracy, which
// rounding would miss by about 50 times). The TF32 form is bound by its
// instructions (ncu: issue slots 62% busy, the ALU pipe the busiest); its
// first version, which rounded each fragment (cvt.rna), found each column by
// division and copied and loaded W 4 bytes at a time, took 1.4x as long.
// Compensated (3xTF32), each fragment is split after its load into a rounded
// TF32 value and the residual's, and the three products go into the one
// accumulator, the small ones first.
#include <cstdint>

#include "kernels/cuda/conv_fprop_mma.hpp"
#include "kernels/cuda/conv_mma.cuh"
#include "kernels/cuda/mma.cuh"

namespace anvil::cuda {
namespace {

constexpr int kStep = kMmaStep, kStages = kMmaStages, kWPitch = kRowWords;
constexpr int kColumnsPerWarp = kStep / kWarps;  // the G columns each warp gathers a step
constexpr int kMaxTaps = 1024;                   // the tap table's entries in shared memory, at most

struct FpropDims : ConvDims {
  int steps;            // K steps of kStep columns
  int step_ca, step_t;  // kStep columns as whole channels and taps
};

// Column k = ca * taps + t of W's flattened axis, moved on a step at a time
// without divisions. Where it reads comes from a table of the taps (column_of
// of the first channel's columns), so a step costs no division either.
struct ColumnCursor {
  int ca, t;
  __device__ void seek(int k, const FpropDims& d) {
    ca = k / d.taps;
    t = k % d.taps;
  }
  __device__ void advance(const FpropDims& d) {
    ca += d.step_ca;
    t += d.step_t;
    if (t >= d.taps) t -= d.taps, ++ca;
  }
  __device__ Column column(const Column* taps, const FpropDims& d) const {
    if (ca >= d.ca) return {0, kOutsideColumn, 0, 0};
    Column c = taps[t];
    c.offset += ca * d.a_volume;
    return c;
  }
};

// A stage of a tile of BM rows and BN columns, in words. G is staged
// [k][position]: a pitch of BM + 8 (= 8 mod 32) puts an A fragment's 4 columns
// x 8 positions in 32 distinct banks. W follows, staged [channel][k], as the
// weight gradient stages G.
constexpr int g_pitch(int rows) { return rows + 8; }
constexpr int stage_words(int rows, int cols) { return kStep * g_pitch(rows) + cols * kWPitch; }

// A block tile of MmaTile's shape.
template <int kWarpsM, int kFragsN>
struct FpropTile {
  static constexpr int kRows = 32 * kWarpsM;
  static constexpr int kCols = 8 * kFragsN * (kWarps / kWarpsM);
  static constexpr int kPerLane = kRows / 32;  // positions each lane gathers
  static constexpr int kGPitch = g_pitch(kRows);
  static constexpr int kGWords = kStep * kGPitch;
  static constexpr int kStageWords = stage_words(kRows, kCols);
};

// Issues the copies of K step `step` into `stage` and moves the cursors on
// to the next step. at[i]: the lane's i-th position of the block (one never
// inside A past the last position); cursors[j]: the warp's j-th column.
template <class T>
__device__ __forceinline__ void stage_step(int step, uint32_t* stage, const Origin (&at)[T::kPerLane],
                                           ColumnCursor (&cursors)[kColumnsPerWarp], const Column* taps,
                                           const float* __restrict__ a, const float* __restrict__ w, bool w_vec, int n0,
                                           const FpropDims& d) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int k = step * kStep + lane;
  // G: warp w gathers columns w, w + 8, ... of the step, lanes along positions.
#pragma unroll
  for (int j = 0; j < kColumnsPerWarp; ++j) {
    const Column col = cursors[j].column(taps, d);
    cursors[j].advance(d);
    uint32_t* row = stage + (warp + kWarps * j) * T::kGPitch + lane;
#pragma unroll
    for (int i = 0; i < T::kPerLane; ++i) {
      const bool ok = inside(at[i], col, d);
      copy_async(row + 32 * i, ok ? a + at[i].offset + col.offset : a, ok);
    }
  }
  // W: along k (contiguous in W); 16 bytes a copy where W's rows allow.
  uint32_t* ws = stage + T::kGWords;
  if (w_vec) {
    for (int q = threadIdx.x; q < T::kCols * (kStep / 4); q += detail::kThreads) {
      const int r = q / (kStep / 4), kq = step * kStep + q % (kStep / 4) * 4;
      const bool ok = kq < d.columns && n0 + r < d.cb;
      copy_async16(ws + r * kWPitch + kq % kStep, ok ? w + (n0 + r) * d.columns + kq : w, ok);
    }
    return;
  }
  for (int r = warp; r < T::kCols; r += kWarps) {
    const bool ok = k < d.columns && n0 + r < d.cb;
    copy_async(ws + r * kWPitch + lane, ok ? w + (n0 + r) * d.columns + k : w, ok);
  }
}

template <int kWarpsM, int kFragsN, bool kCompensated>
__global__ void __launch_bounds__(detail::kThreads)
    conv_fprop_kernel(const float* __restrict__ a, const float* __restrict__ w, float* __restrict__ b, bool accumulate,
                      bool w_vec, FpropDims d) {
#if ANVIL_HAS_TENSOR_CORES
  using T = FpropTile<kWarpsM, kFragsN>;
  extern __shared__ __align__(16) uint32_t smem[];
  const int m0 = blockIdx.x * T::kRows, n0 = blockIdx.y * T::kCols;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, grp = lane / 4, tig = lane % 4;
  const int wm = warp % kWarpsM * 32, wn = warp / kWarpsM * 8 * kFragsN;  // the warp's sub-tile in the block's

  Column* taps = reinterpret_cast<Column*>(smem + kStages * T::kStageWords);
  for (int t = threadIdx.x; t < d.taps; t += detail::kThreads) taps[t] = column_of(t, d);
  __syncthreads();
  ColumnCursor cursors[kColumnsPerWarp];
#pragma unroll
  for (int j = 0; j < kColumnsPerWarp; ++j) cursors[j].seek(warp + kWarps * j, d);

  Origin at[T::kPerLane];
#pragma unroll
  for (int i = 0; i < T::kPerLane; ++i) {
    const int m = m0 + 32 * i + lane;
    at[i] = origin_of(m < d.positions ? m : 0, d);
    if (m >= d.positions) at[i].h = -kOutsideColumn;  // taps reach < 2^30 (conv_indices_fit): never inside
  }

  float acc[2][kFragsN][4] = {};
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < d.steps) stage_step<T>(i, smem + i * T::kStageWords, at, cursors, taps, a, w, w_vec, n0, d);
    copy_async_commit();
  }
  for (int step = 0; step < d.steps; ++step) {
    copy_async_wait<kStages - 2>();
    __syncthreads();  // this step's stage is in; every warp is done with the stage refilled next
    if (step + kStages - 1 < d.steps)
      stage_step<T>(step + kStages - 1, smem + (step + kStages - 1) % kStages * T::kStageWords, at, cursors, taps, a, w,
                    w_vec, n0, d);
    copy_async_commit();

    const float* gs = reinterpret_cast<const float*>(smem + step % kStages * T::kStageWords);
    const float* ws = gs + T::kGWords;
#pragma unroll
    for (int ks = 0; ks < kStep / 8; ++ks) {
      const int k = ks * 8 + tig;
      // Fragments (mma.cuh): a = G(grp, k), G(grp+8, k), G(grp, k+4), G(grp+8, k+4); b = W(k, grp), W(k+4, grp).
      uint32_t af[2][4], bf[kFragsN][2];
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int r = 0; r < 4; ++r)
          af[i][r] = __float_as_uint(gs[(k + 4 * (r / 2)) * T::kGPitch + wm + i * 16 + grp + 8 * (r % 2)]);
      if constexpr (kFragsN % 2 == 0) {
        // Two fragments a load: matrix q of lane l's row is (fragment j + q / 2, half q % 2).
#pragma unroll
        for (int j = 0; j < kFragsN; j += 2) {
          const int q = lane / 8;
          uint32_t r[4];
          load_matrix_x4(r, ws + (wn + (j + q / 2) * 8 + lane % 8) * kWPitch + ks * 8 + 4 * (q % 2));
          bf[j][0] = r[0], bf[j][1] = r[1], bf[j + 1][0] = r[2], bf[j + 1][1] = r[3];
        }
      } else {
#pragma unroll
        for (int j = 0; j < kFragsN; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h) bf[j][h] = __float_as_uint(ws[(wn + j * 8 + grp) * kWPitch + k + 4 * h]);
      }
      if constexpr (kCompensated) {
        // 3xTF32: each operand as a TF32 value and its residual; the small products first.
        uint32_t as[2][4], bs[kFragsN][2];
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int r = 0; r < 4; ++r) split_tf32<true>(__uint_as_float(af[i][r]), af[i][r], as[i][r]);
#pragma unroll
        for (int j = 0; j < kFragsN; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h) split_tf32<true>(__uint_as_float(bf[j][h]), bf[j][h], bs[j][h]);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < kFragsN; ++j) {
            mma_tf32(acc[i][j], af[i], bs[j]);
            mma_tf32(acc[i][j], as[i], bf[j]);
            mma_tf32(acc[i][j], af[i], bf[j]);
          }
      } else {
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < kFragsN; ++j) mma_tf32(acc[i][j], af[i], bf[j]);
      }
    }
  }

  // Accumulator (i, j, r) sits at row grp + 8 (r / 2), column 2 tig + r % 2 of MMA tile (i, j).
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = m0 + wm + i * 16 + grp + 8 * half;
      if (m >= d.positions) continue;
      float* out = b + (m / d.b_volume * d.cb * d.b_volume + m % d.b_volume);
#pragma unroll
      for (int j = 0; j < kFragsN; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int n = n0 + wn + j * 8 + 2 * tig + e;
          if (n >= d.cb) continue;
          const float v = acc[i][j][2 * half + e];
          float& y = out[n * d.b_volume];
          y = accumulate ? y + v : v;
        }
    }
#else
  __trap();  // built for a target before sm_80: tensor_core_kernels_available() is false there
#endif
}

// 128 positions and as many channels as B has, up to 128: 16, 32, 64 or 128.
MmaTile tile_for(int64_t cb) {
  if (cb <= 16) return {4, 1};
  if (cb <= 32) return {4, 2};
  if (cb <= 64) return {4, 4};
  return {4, 8};
}

// The stages, then the tap table.
size_t smem_bytes(const MmaTile& t, int taps) {
  return size_t(kStages) * stage_words(t.rows(), t.cols()) * sizeof(uint32_t) + size_t(taps) * sizeof(Column);
}

struct Plan {
  FpropDims d;
  MmaTile tile;
  int64_t row_blocks, col_blocks;
};

Plan plan_for(const cpu::ConvGeometry& g) {
  Plan p{};
  static_cast<ConvDims&>(p.d) = conv_dims(g);
  p.d.steps = int(detail::ceil_div(p.d.columns, kStep));
  p.d.step_ca = kStep / p.d.taps;
  p.d.step_t = kStep % p.d.taps;
  p.tile = tile_for(g.cb);
  p.row_blocks = detail::ceil_div(p.d.positions, p.tile.rows());
  p.col_blocks = detail::ceil_div(p.d.cb, p.tile.cols());
  return p;
}

template <int kWarpsM, int kFragsN>
void launch(const Plan& p, const float* a, const float* w, float* b, bool accumulate, bool compensated,
            cudaStream_t stream) {
  const auto kernel =
      compensated ? conv_fprop_kernel<kWarpsM, kFragsN, true> : conv_fprop_kernel<kWarpsM, kFragsN, false>;
  const size_t smem = smem_bytes(p.tile, p.d.taps);
  ANVIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(unsigned(p.row_blocks), unsigned(p.col_blocks));
  const bool w_vec = p.d.columns % 4 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  kernel<<<grid, detail::kThreads, smem, stream>>>(a, w, b, accumulate, w_vec, p.d);
  ANVIL_CHECK_LAUNCH();
}

}  // namespace

bool conv_mma_forward_supported(const cpu::ConvGeometry& g) {
  if (!conv_geometry_nonempty(g) || cpu::volume(g.k) > kMaxTaps || !conv_indices_fit(g)) return false;
  const Plan p = plan_for(g);
  return p.col_blocks <= 65535 && smem_bytes(p.tile, p.d.taps) <= detail::max_block_smem();
}

void conv_mma_forward(const float* a, const float* w, float* b, bool accumulate, bool compensated,
                      const cpu::ConvGeometry& g, cudaStream_t stream) {
  constexpr const char* op = "conv_mma_forward";
  detail::require(conv_mma_forward_supported(g), op, "geometry not supported (check supported() first)");
  detail::require(a && w && b, op, "null pointer");
  const Plan p = plan_for(g);
  switch (p.tile.frags_n) {
    case 1: launch<4, 1>(p, a, w, b, accumulate, compensated, stream); break;
    case 2: launch<4, 2>(p, a, w, b, accumulate, compensated, stream); break;
    case 4: launch<4, 4>(p, a, w, b, accumulate, compensated, stream); break;
    default: launch<4, 8>(p, a, w, b, accumulate, compensated, stream); break;
  }
}

}  // namespace anvil::cuda
