// The phase-split conv and the fused epilogue in one kernel (see phase_conv_mma.hpp).
//
// As an implicit GEMM: Y[q, n] = sum over k of X[q, k] * W[n, k], with
//   q = (image, position) of the phase grid, n = phase * cout8 + co (every
//   phase and channel, <= 256; cout8 is cout rounded up to 8), k = u * cin + ci
//   (<= 128), X[q, k] = x_pad[image, ci, q + u].
// With k tap-major, a K step of 8 spans one or two taps u, and the 3xTF32 form
// skips a phase whose combined weight is structurally zero there (its
// sub-convolution has no such tap: 37 of 64 (phase, tap) pairs for the
// headline layer).
// A block stays resident (one per SM: the combined weight fills most of its
// shared memory) and takes tiles of two 32-position steps of the grid in turn.
// An 8-column MMA tile is thus one phase of 8 channels. Each warp computes 16
// positions x 8 channels x every phase (m16n8k8 TF32 MMAs), so every thread
// holds all phases of its 4 (position, channel) outputs and the epilogue's max
// over phases runs in registers: Y never leaves them. x is double-buffered:
// the next tile's is copied (cp.async) while this one computes.
//
// Compensated: both operands are split into TF32 value and residual and each
// product takes 3 MMAs; the products of every 32 k are summed apart and added
// in float32 (the tensor cores' accumulator truncates), as in the weight
// gradient's kernel.
#include <utility>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/epilogue_chain.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/phase_conv_mma.hpp"
#include "kernels/cuda/tensor_cores.hpp"

namespace anvil::cuda {
namespace {

constexpr int kBlock = 512;    // 16 warps: enough to hide latency at one block per SM
constexpr int kCols = 256;     // every output channel of every phase (phases * cout8)
constexpr int kMaxPhases = 8;  // MMA tiles per warp: one per phase
constexpr int kMaxK = 128;
constexpr int kSegs = 2;     // grid steps per tile
constexpr int kXPitch = 40;  // = 8 mod 32: an A fragment's 4 channels x 8 positions hit 32 banks

struct FwdDims : PhaseGridDims {
  int phases, cout8, k_total, k_pad, w_pitch;
  int seg_words;             // one step's x rows and a zero row
  StepStride tile_stride;    // gridDim.x tiles
  uint32_t live[kMaxK / 8];  // per K step: bit j set when phase j has a real tap in it
};

// Shared memory, in 4-byte words: the weight [kCols][w_pitch], x [2 buffers][kSegs][seg_words],
// k -> x byte offset [k_pad], staged row -> x_pad offset [cin * rows].
__host__ __device__ inline int w_words(const FwdDims& d) { return kCols * d.w_pitch; }
__host__ __device__ inline int x_words(const FwdDims& d) { return kSegs * d.seg_words; }

#if ANVIL_HAS_TENSOR_CORES  // the kernel's helpers: unused where its body is a trap
// A tile's two steps, and whether each exists. The first tile is sought
// (divisions); later ones advance by the grid's stride of tiles.
struct Tile {
  StepCursor at[kSegs];
  bool valid[kSegs];
  __device__ void seek(int t, const FwdDims& d) {
    at[0].seek(t * kSegs, d);
    set(t, d);
  }
  __device__ void advance(int t, const FwdDims& d) {
    at[0].advance(d.tile_stride, d);
    set(t, d);
  }

 private:
  __device__ void set(int t, const FwdDims& d) {
    for (int s = 1; s < kSegs; ++s) {
      at[s] = at[s - 1];
      at[s].next(d);
    }
    for (int s = 0; s < kSegs; ++s) valid[s] = t * kSegs + s < d.steps;
  }
};

// Issues the copies of a tile's x rows. row_off[r]: the offset of staged row
// r (x row, channel) from a step's x start.
__device__ __forceinline__ void stage_tile(const Tile& tile, float* xs, const int* row_off,
                                           const float* __restrict__ x_pad, const FwdDims& d) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool second = lane + 32 < kGridStep + d.kp2 - 1;  // a row is 32 + kp2 - 1 <= kXPitch floats
  for (int s = 0; s < kSegs; ++s) {
    const StepCursor& at = tile.at[s];
    const float* src = x_pad + (tile.valid[s] ? at.x_index(d) : 0);
    const int in_row = tile.valid[s] ? d.x2 - at.w0 : 0;  // x_pad's floats from w0 on: later ones are zero
    float* dst = xs + s * d.seg_words + lane;
    for (int r = warp; r < d.cin * d.rows; r += kBlock / 32) {
      const float* row = src + row_off[r] + lane;
      copy_async(dst + r * kXPitch, lane < in_row ? row : x_pad, lane < in_row);
      if (second) copy_async(dst + r * kXPitch + 32, lane + 32 < in_row ? row + 32 : x_pad, lane + 32 < in_row);
    }
  }
}
#endif  // ANVIL_HAS_TENSOR_CORES

template <class Chain, bool kCompensated, int kPhases>
__global__ void __launch_bounds__(kBlock, 1)
    fused_forward_kernel(const float* __restrict__ x_pad, const float* __restrict__ wp, const float* __restrict__ bias,
                         const EpilogueChain chain, float* __restrict__ p, uint8_t* __restrict__ argmax,
                         float* __restrict__ y_at_max, FwdDims d) {
#if ANVIL_HAS_TENSOR_CORES
  extern __shared__ float smem_f[];
  float* ws = smem_f;
  float* xs = ws + w_words(d);
  int* koff = reinterpret_cast<int*>(xs + 2 * x_words(d));  // k -> byte offset in a tile's x (one add per use)
  int* row_off = koff + d.k_pad;
  for (int r = threadIdx.x; r < d.cin * d.rows; r += kBlock) {  // staged rows are (x row, channel)
    const int ci = r % d.cin, u0 = r / d.cin / d.kp1, u1 = r / d.cin % d.kp1;
    row_off[r] = ((ci * d.x0 + u0) * d.x1 + u1) * d.x2;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, grp = lane / 4, tig = lane % 4;

  // The weight: row n = (phase, channel), column k = u * cin + ci, from wp
  // (phases * cout, cin, kpv). Lanes take columns, whose source offsets they
  // work out once (a division per element cost more than the rest of the fill).
  constexpr int kLaneCols = (kMaxK + 4 + 31) / 32;  // w_pitch <= kMaxK + 4
  int src_of[kLaneCols];
#pragma unroll
  for (int i = 0; i < kLaneCols; ++i) {
    const int k = lane + 32 * i;
    src_of[i] = k < d.k_total ? k % d.cin * d.kpv + k / d.cin : -1;
  }
  for (int n = warp; n < kCols; n += kBlock / 32) {
    const int ph = n / d.cout8, co = n % d.cout8;
    const bool real = ph < d.phases && co < d.cout;
    const float* src = wp + (real ? (ph * d.cout + co) * d.cin * d.kpv : 0);
#pragma unroll
    for (int i = 0; i < kLaneCols; ++i) {
      const int k = lane + 32 * i;
      if (k >= d.w_pitch) break;
      const float v = real && src_of[i] >= 0 ? __ldg(src + src_of[i]) : 0.f;
      ws[n * d.w_pitch + k] = kCompensated ? v : __uint_as_float(detail::tf32_bits(v));  // TF32: round once, here
    }
  }
  for (int k = threadIdx.x; k < d.k_pad; k += kBlock) {
    const int u = k / d.cin, ci = k % d.cin;
    const int u0 = u / (d.kp1 * d.kp2), u1 = u / d.kp2 % d.kp1, u2 = u % d.kp2;
    const int word = k < d.k_total ? ((u0 * d.kp1 + u1) * d.cin + ci) * kXPitch + u2 : d.cin * d.rows * kXPitch;
    koff[k] = word * int(sizeof(float));
  }
  for (int s = 0; s < 2 * kSegs; ++s)  // the zero rows that padded k reads
    for (int w = threadIdx.x; w < kXPitch; w += kBlock) xs[s * d.seg_words + d.cin * d.rows * kXPitch + w] = 0.f;

  const int mt = warp % 4, seg = mt / 2;  // this warp's 16 positions: (mt % 2) * 16 on in step seg
  const int pos0 = mt % 2 * 16;
  const int xw_off = seg * d.seg_words + pos0 + grp;
  const int groups = d.cout8 / 8;
  const int tiles = int((d.steps + kSegs - 1) / kSegs);
  const int q_count = d.q0 * d.q1 * d.q2;        // int indices: supported() keeps the output below 2^31
  const bool monotone = Chain::monotone(chain);  // every activation strictly rising
  __syncthreads();                               // row_off
  Tile tile;
  tile.seek(blockIdx.x, d);
  stage_tile(tile, xs, row_off, x_pad, d);
  copy_async_commit();
  for (int t = blockIdx.x, buf = 0; t < tiles; t += gridDim.x, buf ^= 1) {
    Tile next = tile;  // its x is copied into the other buffer during this tile
    next.advance(t + gridDim.x, d);
    if (t + int(gridDim.x) < tiles) stage_tile(next, xs + (buf ^ 1) * x_words(d), row_off, x_pad, d);
    copy_async_commit();
    copy_async_wait<1>();
    __syncthreads();  // this tile's x in; on the first tile, the weight and tables too
    const float* xw = xs + buf * x_words(d) + xw_off;
    // tile.at[seg], picked by compile-time indices: a runtime one puts the tile on the stack.
    StepCursor at = tile.at[0];
    bool valid = tile.valid[0];
#pragma unroll
    for (int s = 1; s < kSegs; ++s)
      if (s == seg) {
        at = tile.at[s];
        valid = tile.valid[s];
      }
    const int out0 = valid ? (at.image * d.cout * d.q0 + at.qd) * d.q1 * d.q2 + at.qh * d.q2 + at.w0 : 0;
    for (int g = warp / 4; g < groups; g += kBlock / 32 / 4) {
      // This lane's ldmatrix row of the weight for each pair of phases (2 jp,
      // 2 jp + 1); a phase past the last reads row 0, unused.
      constexpr int kPairs = (kPhases + 1) / 2;
      const float* wrow[kPairs];
#pragma unroll
      for (int jp = 0; jp < kPairs; ++jp) {
        const int j = 2 * jp + lane / 16, row = j < kPhases ? j * d.cout8 + g * 8 + lane % 8 : 0;
        wrow[jp] = ws + row * d.w_pitch + lane / 8 % 2 * 4;
      }
      float acc[kPhases][4] = {};
      float part[kPhases][4];
#pragma unroll 4
      for (int ks = 0; ks < d.k_pad / 8; ++ks) {
        if (kCompensated && ks % 4 == 0)
#pragma unroll
          for (int j = 0; j < kPhases; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) part[j][r] = 0.f;
        const int k = ks * 8 + tig;
        const float* x0 = reinterpret_cast<const float*>(reinterpret_cast<const char*>(xw) + koff[k]);
        const float* x1 = reinterpret_cast<const float*>(reinterpret_cast<const char*>(xw) + koff[k + 4]);
        uint32_t a[4], as[4];
        const float va[4] = {x0[0], x0[8], x1[0], x1[8]};
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          a[r] = kCompensated ? detail::tf32_bits(va[r]) : __float_as_uint(va[r]);  // TF32: x_pad is rounded
          if (kCompensated) as[r] = detail::tf32_bits(va[r] - __uint_as_float(a[r]));
        }
        const uint32_t live = d.live[ks];
#pragma unroll
        for (int jp = 0; jp < kPairs; ++jp) {
          uint32_t bb[4];  // the B fragments of phases 2 jp and 2 jp + 1
          load_matrix_x4(bb, wrow[jp] + ks * 8);
#pragma unroll
          for (int jh = 0; jh < 2; ++jh) {
            const int ph = 2 * jp + jh;
            // A structural zero of the combined weight. Skipped in 3xTF32 only: in
            // TF32 the branches cost more than the MMAs they save (H100, RESULTS.md).
            if (ph >= kPhases || (kCompensated && !(live >> ph & 1u))) continue;
            uint32_t b[2] = {bb[2 * jh], bb[2 * jh + 1]}, bs[2];
            if (kCompensated)
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                const float v = __uint_as_float(b[h]);
                b[h] = detail::tf32_bits(v);
                bs[h] = detail::tf32_bits(v - __uint_as_float(b[h]));
              }
            if (kCompensated) {
              mma_tf32(part[ph], a, bs);
              mma_tf32(part[ph], as, b);
              mma_tf32(part[ph], a, b);
            } else {
              mma_tf32(acc[ph], a, b);
            }
          }
        }
        if (kCompensated && (ks % 4 == 3 || ks == d.k_pad / 8 - 1))
#pragma unroll
          for (int j = 0; j < kPhases; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[j][r] += part[j][r];
      }

      // The epilogue: accumulator (j, r) is phase j at position pos0 + grp + 8 (r / 2), channel g*8 + 2 tig + r % 2.
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int pos = pos0 + grp + 8 * (r / 2), co = g * 8 + 2 * tig + r % 2;
        if (!valid || at.w0 + pos >= d.q2 || co >= d.cout) continue;
        const float b0 = bias_at(bias, co);
        const typename Chain::Channel cm = Chain::at(chain, co);
        float best = 0.f, best_v = 0.f;
        uint32_t best_i = 0;
        if (monotone && Chain::monotone_at(chain, cm) && isfinite(b0)) {
          // The chain is monotone in the accumulator here (rising when the
          // multipliers' product is positive, else falling), so the window's
          // max is the chain of its max (min) accumulator: one compare per
          // phase. (Distinct accumulators that round to one z pick the
          // larger; a NaN wins as below.)
          const float sign = Chain::monotone_sign(chain, cm);
          float key = acc[0][r] * sign;
#pragma unroll
          for (int j = 1; j < kPhases; ++j) {
            const float kj = acc[j][r] * sign;
            const bool take = epi_better(kj, key);
            key = take ? kj : key;
            best_i = take ? uint32_t(j) : best_i;
          }
          best_v = key * sign + b0;
          best = Chain::forward(chain, cm, best_v);
        } else {
#pragma unroll
          for (int j = 0; j < kPhases; ++j) {
            const float v = acc[j][r] + b0;
            const float z = Chain::forward(chain, cm, v);
            if (j == 0 || epi_better(z, best)) {
              best = z;
              best_v = v;
              best_i = uint32_t(j);
            }
          }
        }
        const int out = out0 + co * q_count + pos;
        p[out] = best;
        if (argmax != nullptr) {
          argmax[out] = uint8_t(best_i);
          y_at_max[out] = best_v;
        }
      }
    }
    __syncthreads();  // every warp is done with this buffer before the next tile refills it
    tile = next;
  }
  copy_async_wait<0>();
#else
  __trap();  // built for a target before sm_80: tensor_core_kernels_available() is false there
#endif
}

FwdDims fwd_dims(const PhaseSplitGeometry& g) {
  FwdDims d{};
  static_cast<PhaseGridDims&>(d) = phase_grid_dims(g);
  d.phases = int(g.s[0] * g.s[1] * g.s[2]);
  d.cout8 = int(detail::ceil_div(d.cout, 8) * 8);
  d.k_total = d.cin * d.kpv;
  d.k_pad = int(detail::ceil_div(d.k_total, 8) * 8);
  d.w_pitch = int(detail::ceil_div(d.k_pad, 32) * 32 + 4);  // = 4 mod 32: B fragments hit 32 banks
  d.seg_words = (d.cin * d.rows + 1) * kXPitch;
  for (int k = 0; k < d.k_total; ++k) {
    const int u = k / d.cin, uk[3] = {u / (d.kp1 * d.kp2), u / d.kp2 % d.kp1, u % d.kp2};
    for (int j = 0; j < d.phases; ++j) {
      const int64_t r[3] = {j / (g.s[1] * g.s[2]), j / g.s[2] % g.s[1], j % g.s[2]};
      bool real = true;
      for (int i = 0; i < 3; ++i) real = real && g.tap[i][r[i] * g.kp[i] + uk[i]] >= 0;
      if (real) d.live[k / 8] |= 1u << j;
    }
  }
  return d;
}

// The kernel for a phase count (compile-time, so the accumulators stay in registers).
template <class Chain, bool kCompensated, int... kPhases>
auto fused_forward_kernel_for(int phases, std::integer_sequence<int, kPhases...>) {
  constexpr decltype(&fused_forward_kernel<Chain, kCompensated, 1>) kernels[] = {
      fused_forward_kernel<Chain, kCompensated, kPhases + 1>...};
  return kernels[phases - 1];
}

size_t fwd_smem_bytes(const FwdDims& d) {
  return (size_t(w_words(d)) + 2 * size_t(x_words(d)) + d.k_pad + size_t(d.cin) * d.rows) * sizeof(float);
}

}  // namespace

int device_sm() {
  int dev = 0, major = 0, minor = 0;
  ANVIL_CUDA_CHECK(cudaGetDevice(&dev));
  ANVIL_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  ANVIL_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  return major * 10 + minor;
}

// A build for older targets alone still runs on a newer device, JIT-compiled
// from its PTX, so the device's sm is not enough: ptxVersion is the
// architecture the code the device would run was compiled for.
bool tensor_core_kernels_available() {
  if (device_sm() < 80) return false;
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, fused_forward_kernel<ProgramChain, false, 1>) != cudaSuccess) {
    (void)cudaGetLastError();  // no code for this device: an answer, not an error to report later
    return false;
  }
  return attr.ptxVersion >= 80;
}

bool phase_fused_forward_supported(const PhaseSplitGeometry& g) {
  const int64_t phases = g.s[0] * g.s[1] * g.s[2];
  const int64_t cout8 = detail::ceil_div(g.cout, 8) * 8;
  if (phases > kMaxPhases || phases * cout8 > kCols || g.cin * g.kp[0] * g.kp[1] * g.kp[2] > kMaxK) return false;
  if (g.kp[2] > kXPitch - 32 + 1 || !phases_aligned(g)) return false;
  int64_t x_pad = g.n * g.cin, pooled = g.n * g.cout;
  for (int i = 0; i < 3; ++i) {
    x_pad *= g.in[i] + g.front[i] + g.end[i];
    pooled *= g.q[i];
  }
  if (x_pad >= (int64_t(1) << 31) || pooled >= (int64_t(1) << 31)) return false;  // int indices and steps
  return fwd_smem_bytes(fwd_dims(g)) <= detail::max_block_smem();
}

void phase_fused_forward(const float* x_pad, const float* wp, const float* bias, const EpilogueChain& chain, float* p,
                         uint8_t* argmax, float* y_at_max, bool compensated, const PhaseSplitGeometry& g,
                         cudaStream_t stream) {
  constexpr const char* op = "phase_fused_forward";
  detail::require(phase_fused_forward_supported(g), op, "geometry not supported (check supported() first)");
  detail::require(x_pad && wp && p, op, "null pointer (only bias, argmax and y_at_max may be null)");
  require_chain(op, chain);
  detail::require((argmax == nullptr) == (y_at_max == nullptr), op, "argmax and y_at_max go together");
  FwdDims d = fwd_dims(g);
  const size_t smem = fwd_smem_bytes(d);
  const int64_t tiles = detail::ceil_div(d.steps, kSegs);
  const unsigned blocks = unsigned(std::min<int64_t>(tiles, detail::sm_count()));
  d.tile_stride = step_stride(int64_t(blocks) * kSegs, d);
  with_chain_policy(chain, [&](auto policy) {
    using Chain = decltype(policy);
    constexpr auto kPhaseCounts = std::make_integer_sequence<int, kMaxPhases>();
    const auto kernel = compensated ? fused_forward_kernel_for<Chain, true>(d.phases, kPhaseCounts)
                                    : fused_forward_kernel_for<Chain, false>(d.phases, kPhaseCounts);
    ANVIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<blocks, kBlock, smem, stream>>>(x_pad, wp, bias, chain, p, argmax, y_at_max, d);
  });
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
