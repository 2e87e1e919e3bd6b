// A conv and its epilogue on Hopper's warpgroup MMAs (see wgmma_conv.hpp).
//
// As an implicit GEMM: Y[r, n] = sum over k of X[r, k] W[n, k], with r one of
// the kRows conv outputs of a tile (t0 x t1 x t2 of them, each t a multiple of
// the pool's window, so a tile holds whole windows), n an output channel of
// the block's group (N of them) and k = tap * kc + ci (kc: in_channels
// rounded up to 8, or to 4 for at most 4, when a K step of 8 takes two taps;
// the extra channels are zeros in both operands).
//
// Shared memory: W as B's core matrices, [k / 4][n / 8][8][4]; the group's
// bias; each K step's offsets in the box (its first and second 4 k); a table
// of the box's rows; one or two boxes of x, [cb][b0][b1][bw] (cb: kc
// channels, or 8 where an odd last tap leaves half a K step, which reads zero
// channels 4 to 7; b = (t - 1) x stride + the kernel's dilated extent, b2
// widened to whole 16-byte chunks where x's rows allow 16-byte copies) with a
// channel pitch of 8 mod 32 words, so an A fragment's 4 channels x 8 rows hit
// 32 banks. Under a stride s along W a box row is stored de-interleaved, its
// s phases one after another (bw = s x ceil(b2 / s)): a tap's x for
// consecutive conv outputs is then consecutive words, not s apart (which
// would put two of a fragment's rows in one bank). With two boxes, the
// next tile's is copied (cp.async) while this one computes. Blocks stay
// resident (as many as fit an SM; the weight often fills most of its shared
// memory) and take tiles in turn.
// The weight image: wgmma_weight_image_kernel writes, once per call, each
// group's W (rounded to TF32; zeros for the padded k and for the channels
// past out_channels) then bias (past out_channels, the last channel's) as a
// block keeps them in shared memory: N x k_pad + N floats (k_pad: K rounded
// up to whole steps of 8), a whole number of 16-byte chunks, one group after
// another in the workspace. A block copies its group's (cp.async, 16 bytes a
// thread at a time) while it computes its tables: every resident block used
// to read and scatter w itself, a quarter of the kernel's stalls (ncu).
// Warpgroup w takes rows 64 w to 64 w + 63. Per K step of 8, each thread
// loads its 4 A elements from the box at its row's offset + the step's two
// offsets + its channel, and one m64nNk8 wgmma runs; the warpgroup issues 4
// steps, then loads the next 4 steps' fragments while they run.
// The epilogue puts the accumulators in shared memory as Ytile[n][r] over the
// box just read; each thread then takes one pooled position of every tile
// (and one conv output, for Y) for a fixed share of the channels: bias, chain
// and window in PoolWindow's order, as chain_pool.cu does, so P has
// chain_pool's bits for the Y saved.
#include "kernels/cuda/wgmma_conv.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/epilogue_chain.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/pool_window.cuh"
#include "kernels/cuda/tensor_cores.hpp"
#include "kernels/cuda/wgmma.cuh"

namespace anvil::cuda {
namespace {

constexpr int kThreads = 256;       // two warpgroups
constexpr int kRows = 128;          // conv outputs of a tile: 64 a warpgroup
constexpr int kYPitch = kRows + 4;  // Ytile's words a channel, 4 mod 32: a warp's stores of D hit 32 banks
constexpr int kMaxN = 128;          // output channels of a group
constexpr int kGroup = 4;           // K steps a warpgroup issues between two waits
constexpr int kWays = 4;            // channels the epilogue pools at once

struct WgDims {
  int32_t cin, kc, cb, cout, taps, ksteps, kgroups;  // kc: K's channels a tap; cb: the box's channels
  int32_t k1, k2, dil[3], s[3];                      // kernel, dilation, stride
  int32_t x[3], y[3], out[3], pad[3], pk[3];
  int32_t t[3], b[3], tn[3];  // the tile (conv outputs), its box (x it reads), tiles along each axis
  int32_t rows_used, pooled_used, box_rows;
  int32_t cs;        // the box's words a channel
  bool saves_codes;  // the kernel's `saved` is the chain's codes, else Y (when not null)
  // The box's rows are copied in chunks of vec floats (4: 16-byte copies, where
  // x's rows and the tiles' columns keep them aligned; else 1), starting shift
  // floats before the tile's first x column, so a row is b2 = chunks x vec.
  int32_t vec, shift, chunks;
  int32_t bw, phase;  // a box row's words, and its phases' (b2 when the stride along W is 1)
  int32_t buf_words, stages, tiles;
  uint32_t x_plane, y_plane, p_plane;
  double divisor;
  bool transposed;

  // A group's weight image in words: W and bias.
  __host__ __device__ int64_t image_words(int n) const { return int64_t(n) * ksteps * 8 + n; }
  // Shared memory in words: the weight image, each K step's two offsets in the box
  // (whole groups of steps), the box rows' (channel, depth << 16 | row), the boxes.
  __host__ __device__ int64_t smem_words(int n) const {
    return image_words(n) + 2 * int64_t(kgroups) * kGroup + 2 * int64_t(box_rows) + int64_t(stages) * buf_words;
  }
};

// A tile's image and first conv output along each axis.
__device__ __forceinline__ int tile_origin(int t, const WgDims& d, int (&o)[3]) {
  o[2] = t % d.tn[2] * d.t[2];
  t /= d.tn[2];
  o[1] = t % d.tn[1] * d.t[1];
  t /= d.tn[1];
  o[0] = t % d.tn[0] * d.t[0];
  return t / d.tn[0];
}

// Where column j of a box row is stored: its phase's run, then its place in it.
__device__ __forceinline__ int box_column(int j, const WgDims& d) {
  return d.s[2] == 1 ? j : j % d.s[2] * d.phase + j / d.s[2];
}

// Writes every group's weight image (the top of this file), a float a thread at a time: the k and n of a W
// word from its place among B's core matrices, [k / 4][n / 8][8][4]; a transposed conv's w (in, out, taps)
// read with in and out swapped and the taps reversed.
template <int N>
__global__ void __launch_bounds__(kThreads)
    wgmma_weight_image_kernel(const float* __restrict__ w, const float* __restrict__ bias, float* __restrict__ image,
                              WgDims d) {
  const int w_words = N * d.ksteps * 8, group_words = int(d.image_words(N));
  const int64_t words = int64_t(group_words) * ((d.cout + N - 1) / N);
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < words; i += int64_t(gridDim.x) * kThreads) {
    const int group = int(i / group_words), e = int(i - int64_t(group) * group_words), co_first = group * N;
    float v;
    if (e >= w_words) {
      v = bias_at(bias, min(co_first + e - w_words, d.cout - 1));  // past the last channel: computed, never stored
    } else {
      const int core = e / 32, n = core % (N / 8) * 8 + e % 32 / 4, k = core / (N / 8) * 4 + e % 4;
      const int tap = k / d.kc, ci = k - tap * d.kc, co = co_first + n;
      v = 0.f;  // padded k (channels past in_channels, taps past the last) and channels past out_channels
      if (ci < d.cin && tap < d.taps && co < d.cout) {
        const int64_t src = d.transposed ? (int64_t(ci) * d.cout + co) * d.taps + (d.taps - 1 - tap)
                                         : (int64_t(co) * d.cin + ci) * d.taps + tap;
        v = __uint_as_float(detail::tf32_bits(__ldg(w + src)));
      }
    }
    image[i] = v;
  }
}

template <class Chain, ChainPool kPool, bool kSaveMax, int N>
__global__ void __launch_bounds__(kThreads, 1)
    wgmma_conv_kernel(const float* __restrict__ x, const float* __restrict__ weight_image, const EpilogueChain chain,
                      float* __restrict__ p, uint8_t* __restrict__ argmax, float* __restrict__ y_at_max,
                      void* __restrict__ saved, WgDims d) {
#if ANVIL_HAS_WGMMA
  extern __shared__ float4 smem4[];
  const int k_pad = d.ksteps * 8;
  float* ws = reinterpret_cast<float*>(smem4);
  float* bs = ws + N * k_pad;
  int2* koff = reinterpret_cast<int2*>(bs + N);  // 16-byte aligned: N * (k_pad + 1) is a multiple of 4
  int2* rowtab = koff + d.kgroups * kGroup;
  float* xs = reinterpret_cast<float*>(rowtab + d.box_rows);
  const int tid = threadIdx.x, lane = tid % 32, g = lane / 4, tig = lane % 4;
  const int co_first = blockIdx.y * N;

  // The group's weight image, W and bias (ws and bs, one after the other), copied while the tables below are
  // computed. Its commit group is waited for before the first box's copies, which count their own.
  const int group_words = int(d.image_words(N));
  const float* group_image = weight_image + int64_t(blockIdx.y) * group_words;
  for (int i = 4 * tid; i < group_words; i += 4 * kThreads) copy_async16(ws + i, group_image + i, true);
  copy_async_commit();
  // Step ks's k = 8 ks + tig (.x) and 8 ks + 4 + tig (.y): the offsets of their tap and channel 0 or 4 in
  // the box, with tig's channel added per thread. A second half past the last tap reads zero channels 4 to 7.
  auto k_offset = [&](int k) {
    const int tap = k / d.kc, u0 = tap / (d.k1 * d.k2), u1 = tap / d.k2 % d.k1, u2 = tap % d.k2;
    return (u0 * d.dil[0] * d.b[1] + u1 * d.dil[1]) * d.bw + box_column(u2 * d.dil[2], d) + k % d.kc * d.cs;
  };
  for (int ks = tid; ks < d.kgroups * kGroup; ks += kThreads) {  // steps past the last: offset 0, never issued
    const int lo = ks < d.ksteps ? k_offset(8 * ks) : 0;
    koff[ks] = make_int2(lo, ks >= d.ksteps ? 0 : (8 * ks + 4) / d.kc < d.taps ? k_offset(8 * ks + 4) : lo + 4 * d.cs);
  }
  for (int r = tid; r < d.box_rows; r += kThreads) {
    const int ci = r / (d.b[0] * d.b[1]), rest = r - ci * d.b[0] * d.b[1];
    rowtab[r] = make_int2(ci, rest / d.b[1] << 16 | rest % d.b[1]);
  }
  copy_async_wait<0>();  // this thread's chunks of the image in
  wgmma_smem_fence();    // ws as written by this thread, to the wgmmas that read it through the async proxy
  __syncthreads();

  // Copies tile t's box into dst, a chunk of a row per thread at a time: a
  // chunk is all in x's row or all out of it (zeros), as the 16-byte chunks
  // are aligned with x's rows.
  const int chunk_rows = kThreads / d.chunks, chunk_cols = kThreads % d.chunks;
  auto stage = [&](int t, float* dst) {
    int o[3];
    const int image = tile_origin(t, d, o);
    const float* xi = x + int64_t(image) * d.cin * d.x_plane;
    const int xd0 = o[0] * d.s[0] - d.pad[0], xh0 = o[1] * d.s[1] - d.pad[1], xw0 = o[2] * d.s[2] - d.pad[2] - d.shift;
    int r = tid / d.chunks, c = tid % d.chunks;
    for (; r < d.box_rows; r += chunk_rows) {
      const int2 row = rowtab[r];
      const int bz = row.y >> 16, by = row.y & 0xFFFF, xd = xd0 + bz, xh = xh0 + by, xw = xw0 + c * d.vec;
      const bool in = row.x < d.cin && uint32_t(xd) < uint32_t(d.x[0]) && uint32_t(xh) < uint32_t(d.x[1]) &&
                      uint32_t(xw) < uint32_t(d.x[2]);
      const float* src = in ? xi + row.x * int(d.x_plane) + (xd * d.x[1] + xh) * d.x[2] + xw : x;
      float* out = dst + row.x * d.cs + (bz * d.b[1] + by) * d.bw + box_column(c * d.vec, d);
      if (d.vec == 4)
        copy_async16(out, src, in);
      else
        copy_async(out, src, in);
      if ((c += chunk_cols) >= d.chunks) {
        c -= d.chunks;
        ++r;
      }
    }
  };

  // This thread's two rows of A (g and g + 8 of its warp's 16), as offsets in a box; a row past the tile reads
  // the box's first word and is never stored.
  auto box_offset = [&](int r) {
    if (r >= d.rows_used) return 0;
    const int rz = r / (d.t[1] * d.t[2]), ry = r / d.t[2] % d.t[1], rx = r % d.t[2];
    return (rz * d.s[0] * d.b[1] + ry * d.s[1]) * d.bw + d.shift + rx;
  };
  const int r0 = tid / 128 * 64 + tid / 32 % 4 * 16 + g;
  const int xo0 = box_offset(r0) + tig * d.cs, xo1 = box_offset(r0 + 8) + tig * d.cs;
  const uint64_t desc0 = wgmma_descriptor(ws, N * 16, 128);  // core matrices: N / 8 x 128 bytes along K, 128 along n

  // The epilogue's fixed share of every tile: conv output y_r (Y) and pooled position p_r (P) of the tile, for
  // the channels y_c0, y_c0 + y_cstep, ... (p_c0, ...); a thread past the last full share has none.
  const int y_cstep = kThreads / d.rows_used, y_r = tid % d.rows_used, y_c0 = tid / d.rows_used;
  const int yz = y_r / (d.t[1] * d.t[2]), yy = y_r / d.t[2] % d.t[1], yx = y_r % d.t[2];
  const int p_cstep = kThreads / d.pooled_used, p_r = tid % d.pooled_used, p_c0 = tid / d.pooled_used;
  const int pt1 = d.t[1] / d.pk[1], pt2 = d.t[2] / d.pk[2];
  const int pz = p_r / (pt1 * pt2), py = p_r / pt2 % pt1, px = p_r % pt2;
  const int window0 = (pz * d.pk[0] * d.t[1] + py * d.pk[1]) * d.t[2] + px * d.pk[2];

  float acc[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) acc[i] = 0.f;

  int buf = 0;
  if (d.stages == 2 && int(blockIdx.x) < d.tiles) stage(blockIdx.x, xs);
  copy_async_commit();
  for (int t = blockIdx.x; t < d.tiles; t += gridDim.x) {
    if (d.stages == 2) {
      if (t + int(gridDim.x) < d.tiles) stage(t + gridDim.x, xs + (buf ^ 1) * d.buf_words);
      copy_async_commit();
      copy_async_wait<1>();
    } else {
      stage(t, xs);
      copy_async_commit();
      copy_async_wait<0>();
    }
    __syncthreads();  // this tile's box in
    const float* xb = xs + buf * d.buf_words;
    const float *a_row0 = xb + xo0, *a_row1 = xb + xo1;
    // kGroup steps' fragments at a time, in two register sets: one group's
    // are loaded while the other's wgmmas run, and rewritten only after those
    // have completed.
    uint32_t a0[kGroup][4], a1[kGroup][4];
    auto load_group = [&](uint32_t(&a)[kGroup][4], int gi) {
      const int4* steps = reinterpret_cast<const int4*>(koff) + 2 * gi;  // two steps' offsets an int4
      const int4 o01 = steps[0], o23 = steps[1];
      const int lo[kGroup] = {o01.x, o01.z, o23.x, o23.z}, hi[kGroup] = {o01.y, o01.w, o23.y, o23.w};
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        a[j][0] = __float_as_uint(a_row0[lo[j]]);
        a[j][1] = __float_as_uint(a_row1[lo[j]]);
        a[j][2] = __float_as_uint(a_row0[hi[j]]);
        a[j][3] = __float_as_uint(a_row1[hi[j]]);
      }
    };
    auto issue_group = [&](const uint32_t(&a)[kGroup][4], int gi) {
      wgmma_fence();
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        const int ks = gi * kGroup + j;
        if (ks < d.ksteps) Wgmma<N>::mma(acc, a[j], desc0 + uint64_t(ks) * (2 * N), ks > 0);
      }
      wgmma_commit();
    };
    load_group(a0, 0);
    for (int gi = 0; gi < d.kgroups; gi += 2) {
      issue_group(a0, gi);
      wgmma_wait<1>();  // group gi - 1 has completed: a1 is free
      if (gi + 1 < d.kgroups) {
        load_group(a1, gi + 1);
        issue_group(a1, gi + 1);
      }
      wgmma_wait<1>();  // group gi has completed: a0 is free
      if (gi + 2 < d.kgroups) load_group(a0, gi + 2);
    }
    wgmma_wait<0>();
    __syncthreads();  // both warpgroups are done with the box: Ytile goes over it

    float* yt = xs + buf * d.buf_words;
#pragma unroll
    for (int j = 0; j < N / 8; ++j) {
      const int col = 8 * j + 2 * tig;
      yt[col * kYPitch + r0] = acc[4 * j];
      yt[(col + 1) * kYPitch + r0] = acc[4 * j + 1];
      yt[col * kYPitch + r0 + 8] = acc[4 * j + 2];
      yt[(col + 1) * kYPitch + r0 + 8] = acc[4 * j + 3];
    }
    // The next tile's first wgmma ignores acc's values, but its asm reads them: zeros let the epilogue below
    // have acc's registers rather than keep these values live across it.
#pragma unroll
    for (int i = 0; i < N / 2; ++i) acc[i] = 0.f;
    __syncthreads();

    int o[3];
    const int image = tile_origin(t, d, o);
    const int yd = o[0] + yz, yh = o[1] + yy, yw = o[2] + yx;
    if (saved != nullptr && y_c0 < y_cstep && yd < d.y[0] && yh < d.y[1] && yw < d.y[2]) {
      const int64_t at = (int64_t(image) * d.cout + co_first) * d.y_plane + (uint32_t(yd) * d.y[1] + yh) * d.y[2] + yw;
      for (int c = y_c0; c < N && co_first + c < d.cout; c += y_cstep) {
        const float yc = yt[c * kYPitch + y_r];
        save_for_backward<Chain>(saved, d.saves_codes, at + int64_t(c) * d.y_plane, yc, yc + bs[c], chain);
      }
    }
    const int q0 = o[0] / d.pk[0] + pz, q1 = o[1] / d.pk[1] + py, q2 = o[2] / d.pk[2] + px;
    if (p_c0 < p_cstep && q0 < d.out[0] && q1 < d.out[1] && q2 < d.out[2]) {
      const int64_t at0 =
          (int64_t(image) * d.cout + co_first) * d.p_plane + (uint32_t(q0) * d.out[1] + q1) * d.out[2] + q2;
      // kWays of this thread's channels at a time: their windows are independent chains of compares or
      // (double) adds, which one channel at a time left waiting on each other's latency.
      const int channels = min(N, d.cout - co_first);
      for (int c = p_c0; c < channels; c += kWays * p_cstep) {
        typename Chain::Channel cm[kWays];
        const float* yc[kWays];
        float b[kWays];
#pragma unroll
        for (int u = 0; u < kWays; ++u) {
          const int cu = min(c + u * p_cstep, channels - 1);  // past the last channel: a copy of it, not stored
          cm[u] = Chain::at(chain, co_first + cu);
          yc[u] = yt + cu * kYPitch + window0;
          b[u] = bs[cu];
        }
        PoolWindow<kPool> window[kWays];
        int wi = 0;
        for (int w0 = 0; w0 < d.pk[0]; ++w0)
          for (int w1 = 0; w1 < d.pk[1]; ++w1)
            for (int w2 = 0; w2 < d.pk[2]; ++w2, ++wi) {
              const int offset = (w0 * d.t[1] + w1) * d.t[2] + w2;
#pragma unroll
              for (int u = 0; u < kWays; ++u) {
                const float v = yc[u][offset] + b[u];
                window[u].take(Chain::forward(chain, cm[u], v), v, wi);
              }
            }
#pragma unroll
        for (int u = 0; u < kWays; ++u) {
          if (c + u * p_cstep >= channels) break;
          const int64_t at = at0 + int64_t(c + u * p_cstep) * d.p_plane;
          p[at] = window[u].result(d.divisor);
          if constexpr (kSaveMax) {
            if (argmax != nullptr) argmax[at] = uint8_t(window[u].best_i);
            if (y_at_max != nullptr) y_at_max[at] = window[u].best_v;
          }
        }
      }
    }
    __syncthreads();  // Ytile read before its box is refilled
    if (d.stages == 2) buf ^= 1;
  }
  copy_async_wait<0>();
#else
  __trap();  // built for a target without wgmma: wgmma_conv_available() is false there
#endif
}

// Output channels of a group: the wgmma's N.
int group_columns(int64_t cout) { return cout <= 32 ? 32 : cout <= 64 ? 64 : kMaxN; }

// K's channels a tap: in_channels rounded up to 8, or to 4 for at most 4, where a K step takes two taps of 4
// (half the MMAs of a tap a step for a 1 to 3 channel stem).
int64_t k_channels(int64_t cin) { return cin <= 4 ? 4 : detail::ceil_div(cin, 8) * 8; }

// The checks of wgmma_conv_supported but the device's, and the dims the kernel
// takes; vec_aligned: x is 16-byte aligned.
const char* wg_dims(const WgmmaConvGeometry& wg, bool vec_aligned, WgDims& d) {
  constexpr int64_t kMax31 = std::numeric_limits<int32_t>::max();
  const DirectConvGeometry& g = wg.conv;
  const ChainPoolGeometry& pg = g.out;
  if (const char* why = chain_pool_geometry_error(pg)) return why;
  if (g.cin < 1 || pg.c < 1) return "no input or output channels";
  if (g.cin > kMax31) return "sizes beyond 31 bits";  // so that each product below stays within 62 bits
  const std::array<int64_t, 3> out = chain_pool_output(pg);
  int64_t taps = 1, x_plane = 1, y_plane = 1, p_plane = 1, window = 1;
  for (int a = 0; a < 3; ++a) {
    if (g.x[a] < 1 || g.k[a] < 1 || g.stride[a] < 1 || g.dilation[a] < 1 || g.pad[a] < 0)
      return "non-positive sizes or negative padding";
    if (g.x[a] > kMax31 || g.k[a] > kMax31 || g.dilation[a] > kMax31 || g.pad[a] > kMax31 || g.stride[a] > kMax31)
      return "sizes beyond 31 bits";
    const int64_t span = g.x[a] + 2 * g.pad[a] - (g.k[a] - 1) * g.dilation[a];  // x's extent the taps sweep
    if (span > kMax31) return "sizes beyond 31 bits";  // a tile's first x, output x stride, stays an int
    if (span < 1 || pg.y[a] != (span - 1) / g.stride[a] + 1) return "the output dims are not the conv's";
    const int64_t pk = pg.pool == ChainPool::None ? 1 : pg.k[a];
    if (pg.stride[a] != pk || pg.pad[a] != 0) return "a pool whose windows overlap, leave gaps or take padding";
    taps *= g.k[a];
    window *= pk;
    x_plane *= g.x[a];
    y_plane *= pg.y[a];
    p_plane *= out[a];
    if (taps * g.cin > kMax31 || x_plane * g.cin > kMax31 || y_plane > kMax31) return "sizes beyond 31 bits";
    d.x[a] = int32_t(g.x[a]);
    d.y[a] = int32_t(pg.y[a]);
    d.out[a] = int32_t(out[a]);
    d.pad[a] = int32_t(g.pad[a]);
    d.dil[a] = int32_t(g.dilation[a]);
    d.s[a] = int32_t(g.stride[a]);
    d.pk[a] = int32_t(pk);
  }
  if (window > kRows) return "a pool window of more than 128 conv outputs";
  d.cin = int32_t(g.cin);
  d.kc = int32_t(k_channels(g.cin));
  d.cb = d.kc == 4 && taps % 2 == 1 ? 8 : d.kc;  // an odd last tap's second half reads channels 4 to 7
  d.cout = int32_t(pg.c);
  d.taps = int32_t(taps);
  d.k1 = int32_t(g.k[1]);
  d.k2 = int32_t(g.k[2]);
  d.x_plane = uint32_t(x_plane);
  d.y_plane = uint32_t(y_plane);
  d.p_plane = uint32_t(p_plane);
  d.divisor = double(window);
  d.transposed = wg.transposed_weight;

  // The tile: whole windows, widened along W, then H, then D while kRows hold them and the output has more.
  for (int a = 0; a < 3; ++a) d.t[a] = d.pk[a];
  for (int a = 2; a >= 0; --a) {
    const int64_t extent = detail::ceil_div(d.y[a], d.pk[a]) * d.pk[a];
    while (d.t[a] + d.pk[a] <= extent && int64_t(d.t[0]) * d.t[1] * d.t[2] / d.t[a] * (d.t[a] + d.pk[a]) <= kRows)
      d.t[a] += d.pk[a];
  }
  d.rows_used = d.t[0] * d.t[1] * d.t[2];
  d.pooled_used = d.rows_used / int32_t(window);
  // 16-byte chunks where every tile's box starts at the same offset from a
  // 16-byte boundary of x's rows (then shift floats before it), and a box row
  // is stored as it is read (stride 1 along W).
  d.vec = d.x[2] % 4 == 0 && d.t[2] % 4 == 0 && d.s[2] == 1 && vec_aligned ? 4 : 1;
  d.shift = d.vec == 4 ? (4 - d.pad[2] % 4) % 4 : 0;
  double box = 1;
  for (int a = 0; a < 3; ++a) {
    double extent = double(d.t[a] - 1) * double(d.s[a]) + double(g.k[a] - 1) * double(g.dilation[a]) + 1;
    if (a == 2) extent = std::ceil((extent + d.shift) / d.vec) * d.vec;
    if (extent > kMax31) return "the weights and an input tile exceed shared memory";
    d.b[a] = int32_t(extent);
    d.tn[a] = int32_t(detail::ceil_div(d.y[a], d.t[a]));
    if (a == 2) {
      d.phase = int32_t(detail::ceil_div(d.b[2], d.s[2]));
      extent = double(d.phase) * d.s[2];
      if (extent > kMax31) return "the weights and an input tile exceed shared memory";
      d.bw = int32_t(extent);
    }
    box *= extent;
  }
  d.chunks = d.b[2] / d.vec;
  const int n = group_columns(d.cout);
  if (detail::ceil_div(d.cout, n) > 65535) return "more than 65535 groups of output channels (a grid's y)";
  const double k_pad = std::ceil(double(taps) * double(d.kc) / 8) * 8;
  const double budget = double(detail::max_block_smem()) / sizeof(float);
  if (box * d.cb > budget || k_pad * n > budget) return "the weights and an input tile exceed shared memory";
  if (d.b[0] > 0x7FFF || d.b[1] > 0xFFFF) return "the weights and an input tile exceed shared memory";
  const int vol = int(box);
  d.cs = vol + (40 - vol % 32) % 32;  // 8 mod 32
  d.ksteps = int32_t(k_pad / 8);
  d.kgroups = int32_t(detail::ceil_div(d.ksteps, kGroup));
  d.box_rows = d.cb * d.b[0] * d.b[1];
  d.buf_words = std::max(d.cb * d.cs, n * kYPitch);
  d.stages = 2;
  if (double(d.smem_words(n)) > budget) d.stages = 1;
  if (double(d.smem_words(n)) > budget) return "the weights and an input tile exceed shared memory";
  // The tile loop adds the grid (at most 65535 blocks) to a tile index in int.
  const int64_t tiles = pg.n * int64_t(d.tn[0]) * d.tn[1] * d.tn[2];
  if (tiles > kMax31 - 65536) return "sizes beyond 31 bits";
  d.tiles = int32_t(tiles);
  return nullptr;
}

template <class Chain, ChainPool kPool, bool kSaveMax, int N>
void launch(const float* x, const float* w, const float* bias, float* weight_image, const EpilogueChain& chain,
            float* p, uint8_t* argmax, float* y_at_max, void* saved, const WgDims& d, cudaStream_t stream) {
  const int64_t image_words = d.image_words(N) * detail::ceil_div(d.cout, N);
  wgmma_weight_image_kernel<N>
      <<<detail::grid_stride_blocks(image_words), kThreads, 0, stream>>>(w, bias, weight_image, d);
  const size_t smem = size_t(d.smem_words(N)) * sizeof(float);
  const auto kernel = wgmma_conv_kernel<Chain, kPool, kSaveMax, N>;
  ANVIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  // As many blocks as are resident at once: a small weight and box leave room for several an SM, each
  // block's copies and epilogue then overlapping another's MMAs.
  int per_sm = 0;
  ANVIL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  const int64_t resident = int64_t(detail::sm_count()) * std::max(per_sm, 1);
  const dim3 grid(unsigned(std::min<int64_t>({d.tiles, resident, 65535})), unsigned(detail::ceil_div(d.cout, N)));
  kernel<<<grid, kThreads, smem, stream>>>(x, weight_image, chain, p, argmax, y_at_max, saved, d);
}

}  // namespace

bool wgmma_conv_available() {
  if (device_sm() != 90) return false;
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, wgmma_conv_kernel<EmptyChain, ChainPool::Max, false, 64>) != cudaSuccess) {
    (void)cudaGetLastError();  // no code for this device: an answer, not an error to report later
    return false;
  }
  return true;
}

constexpr const char* kNeedsSm90 = "needs an sm_90 GPU (Hopper's wgmma)";

bool wgmma_conv_supported(const WgmmaConvGeometry& g, const char** why_not) {
  const char* why = wgmma_conv_available() ? nullptr : kNeedsSm90;
  WgDims d;
  if (why == nullptr) why = wg_dims(g, true, d);  // the wider box of 16-byte copies: the scalar one fits where it does
  if (why_not != nullptr) *why_not = why;
  return why == nullptr;
}

bool wgmma_conv_preferred(const WgmmaConvGeometry& g) {
  WgDims d;
  const bool stride1 = g.conv.stride == std::array<int64_t, 3>{1, 1, 1};
  return stride1 && wgmma_conv_available() && wg_dims(g, true, d) == nullptr && d.stages == 2 &&
         group_columns(d.cout) >= 64;
}

size_t wgmma_conv_workspace_bytes(const WgmmaConvGeometry& g) {
  constexpr const char* op = "wgmma_conv_workspace_bytes";
  constexpr int64_t kMax31 = std::numeric_limits<int32_t>::max();
  const int64_t cin = g.conv.cin, cout = g.conv.out.c;
  detail::require(cin >= 1 && cout >= 1, op, "no input or output channels");
  detail::require(cin <= kMax31, op, "sizes beyond 31 bits");
  int64_t taps = 1;
  for (const int64_t k : g.conv.k) {
    detail::require(k >= 1, op, "non-positive sizes or negative padding");
    detail::require(k <= kMax31 && taps * cin * k <= kMax31, op, "sizes beyond 31 bits");  // as wg_dims checks
    taps *= k;
  }
  detail::require(cout <= int64_t(65535) * kMaxN, op, "more than 65535 groups of output channels (a grid's y)");
  // As the kernel's: k_pad = ksteps x 8 and image_words (WgDims); at most 2^23 channels x 2^33 words.
  const int64_t n = group_columns(cout), k_pad = detail::ceil_div(taps * k_channels(cin), 8) * 8;
  return size_t(detail::ceil_div(cout, n) * (n * k_pad + n)) * sizeof(float);
}

void wgmma_conv_forward(const float* x, const float* w, const float* bias, const EpilogueChain& chain, float* p,
                        uint8_t* argmax, float* y_at_max, float* y, uint8_t* codes, void* workspace,
                        const WgmmaConvGeometry& g, cudaStream_t stream) {
  constexpr const char* op = "wgmma_conv_forward";
  detail::require(x != nullptr && w != nullptr && p != nullptr, op, "null x, w or p");
  require_codes_or_y(op, chain, y, codes);
  detail::require((argmax == nullptr && y_at_max == nullptr) || g.conv.out.pool == ChainPool::Max, op,
                  "argmax and y_at_max only with a max pool");
  require_chain(op, chain);
  detail::require(wgmma_conv_available(), op, kNeedsSm90);
  WgDims d;  // planned once, for the copies x's alignment allows
  if (const char* why = wg_dims(g, detail::aligned_to(x, 16), d)) detail::require(false, op, why);
  // The blocks copy their group's weight image 16 bytes at a time.
  detail::require(workspace != nullptr, op, "null workspace (the weight images)");
  detail::require(detail::aligned_to(workspace, 16), op, "the workspace (the weight images) must be 16-byte aligned");
  float* weight_image = static_cast<float*>(workspace);
  d.saves_codes = codes != nullptr;
  void* saved = codes != nullptr ? static_cast<void*>(codes) : static_cast<void*>(y);
  with_chain_policy(chain, [&](auto policy) {
    using Chain = decltype(policy);
    auto by_pool = [&](auto columns) {
      constexpr int N = decltype(columns)::value;
      if (g.conv.out.pool == ChainPool::Avg)
        launch<Chain, ChainPool::Avg, false, N>(x, w, bias, weight_image, chain, p, argmax, y_at_max, saved, d, stream);
      else if (argmax != nullptr || y_at_max != nullptr)
        launch<Chain, ChainPool::Max, true, N>(x, w, bias, weight_image, chain, p, argmax, y_at_max, saved, d, stream);
      else  // no pool: a window of one, whose "max" is the value
        launch<Chain, ChainPool::Max, false, N>(x, w, bias, weight_image, chain, p, argmax, y_at_max, saved, d, stream);
    };
    const int n = group_columns(d.cout);
    if (n == 32)
      by_pool(std::integral_constant<int, 32>{});
    else if (n == 64)
      by_pool(std::integral_constant<int, 64>{});
    else
      by_pool(std::integral_constant<int, kMaxN>{});
  });
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
