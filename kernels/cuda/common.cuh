// Shared helpers of the CUDA kernels: argument checks, grid sizing, 16-byte
// vector access and a deterministic block reduction.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "engine/src/cuda/check.hpp"
#include "kernels/tf32.hpp"

// Device code for sm_80 or newer, which has the TF32 tensor-core MMA, cp.async
// and cvt to TF32. 0 in the host pass and for older targets, where anvil's
// tensor-core kernels compile to a trap (tensor_cores.hpp keeps callers away).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define ANVIL_HAS_TENSOR_CORES 1
#else
#define ANVIL_HAS_TENSOR_CORES 0
#endif

namespace anvil::cuda::detail {

// Every kernel of anvil runs 256-thread blocks.
constexpr int kThreads = 256;

// ---------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Throws anvil::Error("anvil::cuda::<op>: <what>") unless ok.
inline void require(bool ok, const char* op, const char* what) {
  if (!ok) throw Error(std::string("anvil::cuda::") + op + ": " + what);
}

inline uintptr_t address(const void* p) { return reinterpret_cast<uintptr_t>(p); }
inline bool aligned_to(const void* p, uintptr_t bytes) { return (address(p) & (bytes - 1)) == 0; }

// A device attribute of the current device, cached per device.
template <cudaDeviceAttr kAttr>
int device_attribute() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // zero-initialised (static storage)
  int dev = 0;
  ANVIL_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= 0 && dev < kMaxDevices) {
    const int cached = cache[dev].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int value = 0;
  ANVIL_CUDA_CHECK(cudaDeviceGetAttribute(&value, kAttr, dev));
  if (value < 1) value = 1;
  if (dev >= 0 && dev < kMaxDevices) cache[dev].store(value, std::memory_order_relaxed);
  return value;
}

inline int sm_count() { return device_attribute<cudaDevAttrMultiProcessorCount>(); }
// The most shared memory one block may opt in to (227 KiB on the H100).
inline size_t max_block_smem() { return size_t(device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>()); }

// Blocks for a grid-stride loop over `work` items, one item per thread per
// iteration: enough blocks to fill the device several times over, no more.
inline unsigned grid_stride_blocks(int64_t work) {
  const int64_t cap = int64_t(sm_count()) * 32;
  const int64_t blocks = std::min(std::max<int64_t>(ceil_div(work, kThreads), 1), cap);
  return static_cast<unsigned>(blocks);
}

// The split of a flat float array into a scalar head, 16-byte vectors and a
// scalar tail, for kernels where every pointer is indexed by the same flat
// index. Vectors are used only when all the pointers share their address
// modulo 16 (then the same head aligns all of them); otherwise everything is
// a scalar head.
struct VecSplit {
  int64_t head = 0;  // scalars [0, head)
  int64_t nvec = 0;  // float4s at head + 4 v, v in [0, nvec)
  int64_t tail = 0;  // scalars [head + 4 nvec, head + 4 nvec + tail)
};

inline VecSplit vec_split(int64_t count, std::initializer_list<const void*> ptrs) {
  VecSplit s;
  const uintptr_t mis = address(*ptrs.begin()) & 15;
  bool same = (mis & 3) == 0;
  for (const void* p : ptrs)
    if (p != nullptr && (address(p) & 15) != mis) same = false;
  if (!same) {
    s.head = count;
    return s;
  }
  s.head = std::min<int64_t>(count, int64_t((16 - mis) & 15) / 4);
  s.nvec = (count - s.head) / 4;
  s.tail = count - s.head - 4 * s.nvec;
  return s;
}

// ---------------------------------------------------------------------------
// Device side
// ---------------------------------------------------------------------------

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 ldg4(const float* p) { return __ldg(reinterpret_cast<const float4*>(p)); }
__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }

// TF32 keeps 10 of float32's 23 mantissa bits. tf32_bits rounds to nearest
// (ties away) and clears the 13 dropped bits, which may then carry a tag: the
// tensor cores ignore them. Before sm_80 there is no cvt to TF32.
__device__ __forceinline__ uint32_t tf32_bits(float x) {
#if ANVIL_HAS_TENSOR_CORES
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r & ~kTf32DroppedBits;
#else
  return tf32_round_bits(__float_as_uint(x));
#endif
}

// Sum of v over a warp, into lane 0. Fixed shuffle order: deterministic.
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of v over a block of kThreads threads, returned in thread 0 (other
// threads get an unspecified value). Fixed tree: bitwise deterministic. Every
// thread of the block must call it; it can be called again right away.
__device__ __forceinline__ double block_sum(double v) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block size");
  constexpr int kWarps = kThreads / 32;
  __shared__ double warp_totals[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) warp_totals[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? warp_totals[lane] : 0.0;
    v = warp_sum(v);
  }
  __syncthreads();  // warp_totals may be reused by the next call
  return v;
}

// The final pass of the per-channel reductions: out[ch] = float(sum over j of
// partials[ch * per + j]), summed by one warp per channel in a fixed order.
// Launch with ceil(c / (kThreads / 32)) blocks of kThreads threads.
__device__ __forceinline__ void finalize_channels(const double* __restrict__ partials, int64_t per, int64_t c,
                                                  float* __restrict__ out) {
  const int64_t ch = int64_t(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  if (ch >= c) return;  // the whole warp leaves together, so the shuffles below stay full-warp
  const int lane = threadIdx.x & 31;
  const double* row = partials + ch * per;
  double s = 0.0;
  for (int64_t j = lane; j < per; j += 32) s += row[j];
  s = warp_sum(s);
  if (lane == 0) out[ch] = static_cast<float>(s);
}

inline unsigned finalize_blocks(int64_t c) { return static_cast<unsigned>(ceil_div(c, kThreads / 32)); }

}  // namespace anvil::cuda::detail
