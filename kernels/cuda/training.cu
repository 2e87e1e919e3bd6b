// The loss and the optimizer (see training.hpp).
//
// mse_forward_backward: block b of `blocks` (a function of count alone) takes
// the fixed range [b * chunk_len, (b + 1) * chunk_len), writes dpred there
// (as float(2 / count) * (pred - target), the CPU reference's rounding) and
// sums (pred - target)^2 in double, each thread over fixed 4-element groups
// (float4 loads where the range is aligned, scalars otherwise: same order
// either way) and then a fixed shuffle tree, into scratch[b]; a one-block
// kernel sums the partials in a fixed order and writes *loss. Bitwise
// deterministic, no atomics.
//
// sgd_step: one flat float4 kernel (scalar head and tail) doing
// torch.optim.SGD's update with each product and sum rounded on its own (no
// fused multiply-add), in the order of the CPU reference.
#include "kernels/cuda/training.hpp"

#include <cstdint>
#include <limits>

#include "kernels/cuda/common.cuh"

namespace anvil::cuda {
namespace {

using detail::kThreads;
using detail::VecSplit;

// ===========================================================================
// Kernels
// ===========================================================================

__global__ void __launch_bounds__(kThreads)
    mse_partial_kernel(const float* __restrict__ pred, const float* __restrict__ target, float* __restrict__ dpred,
                       double* __restrict__ partials, int64_t count, int64_t chunk_len, float scale) {
  const int64_t v0 = int64_t(blockIdx.x) * chunk_len;
  const int64_t len = min(count, v0 + chunk_len) - v0;  // may be <= 0 for a trailing block
  double acc = 0.0;
  auto grad = [&](float d) { return scale * d; };  // scale = float(2 / count), as the CPU reference
  if (len > 0) {
    const bool vec = detail::aligned16(pred + v0) && detail::aligned16(target + v0) && detail::aligned16(dpred + v0);
    const int64_t groups = len >> 2;
    for (int64_t gi = threadIdx.x; gi < groups; gi += kThreads) {
      const int64_t i = v0 + 4 * gi;
      float4 d;
      if (vec) {
        const float4 p = detail::ldg4(pred + i), t = detail::ldg4(target + i);
        d = make_float4(p.x - t.x, p.y - t.y, p.z - t.z, p.w - t.w);
      } else {
        d = make_float4(__ldg(pred + i) - __ldg(target + i), __ldg(pred + i + 1) - __ldg(target + i + 1),
                        __ldg(pred + i + 2) - __ldg(target + i + 2), __ldg(pred + i + 3) - __ldg(target + i + 3));
      }
      acc = fma(double(d.x), double(d.x), acc);
      acc = fma(double(d.y), double(d.y), acc);
      acc = fma(double(d.z), double(d.z), acc);
      acc = fma(double(d.w), double(d.w), acc);
      const float4 gr = make_float4(grad(d.x), grad(d.y), grad(d.z), grad(d.w));
      if (vec) {
        detail::store4(dpred + i, gr);
      } else {
        dpred[i] = gr.x;
        dpred[i + 1] = gr.y;
        dpred[i + 2] = gr.z;
        dpred[i + 3] = gr.w;
      }
    }
    const int64_t t = 4 * groups + threadIdx.x;
    if (t < len) {
      const int64_t i = v0 + t;
      const float d = __ldg(pred + i) - __ldg(target + i);
      acc = fma(double(d), double(d), acc);
      dpred[i] = grad(d);
    }
  }
  const double total = detail::block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

__global__ void __launch_bounds__(kThreads)
    mse_final_kernel(const double* __restrict__ partials, int64_t blocks, double count, float* __restrict__ loss) {
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < blocks; j += kThreads) s += partials[j];
  s = detail::block_sum(s);
  if (threadIdx.x == 0) *loss = static_cast<float>(s / count);
}

struct SgdArgs {
  float lr, momentum, one_minus_dampening, weight_decay;
  bool use_momentum, nesterov, first_step;
};

// One element of torch.optim.SGD; b is the momentum buffer (unused without momentum).
__device__ __forceinline__ float sgd_update(float p, float g, float& b, const SgdArgs& a) {
  float d = g;
  if (a.weight_decay != 0.f) d = __fadd_rn(d, __fmul_rn(a.weight_decay, p));
  if (a.use_momentum) {
    b = a.first_step ? d : __fadd_rn(__fmul_rn(a.momentum, b), __fmul_rn(a.one_minus_dampening, d));
    d = a.nesterov ? __fadd_rn(d, __fmul_rn(a.momentum, b)) : b;
  }
  return __fsub_rn(p, __fmul_rn(a.lr, d));
}

__global__ void __launch_bounds__(kThreads)
    sgd_kernel(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ buf, VecSplit split,
               SgdArgs a) {
  const int64_t tid = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const bool read_buf = a.use_momentum && !a.first_step;
  for (int64_t v = tid; v < split.nvec; v += stride) {
    const int64_t i = split.head + 4 * v;
    float4 p = detail::load4(param + i);
    const float4 g = detail::ldg4(grad + i);
    float4 b = read_buf ? detail::load4(buf + i) : make_float4(0.f, 0.f, 0.f, 0.f);
    p.x = sgd_update(p.x, g.x, b.x, a);
    p.y = sgd_update(p.y, g.y, b.y, a);
    p.z = sgd_update(p.z, g.z, b.z, a);
    p.w = sgd_update(p.w, g.w, b.w, a);
    detail::store4(param + i, p);
    if (a.use_momentum) detail::store4(buf + i, b);
  }
  auto scalar = [&](int64_t i) {
    float b = read_buf ? buf[i] : 0.f;
    param[i] = sgd_update(param[i], __ldg(grad + i), b, a);
    if (a.use_momentum) buf[i] = b;
  };
  for (int64_t i = tid; i < split.head; i += stride) scalar(i);
  const int64_t tail0 = split.head + 4 * split.nvec;
  for (int64_t i = tail0 + tid; i < tail0 + split.tail; i += stride) scalar(i);
}

// ===========================================================================
// Launchers
// ===========================================================================

constexpr int64_t kMseMinChunk = 16384;  // elements per block, at least (where there are that many)
constexpr int64_t kMseMaxBlocks = 1024;

struct MsePlan {
  int64_t blocks = 1, chunk_len = 1;
};

MsePlan mse_plan(const char* op, int64_t count) {
  detail::require(count > 0, op, "count must be positive");
  MsePlan p;
  p.blocks = std::min(detail::ceil_div(count, kMseMinChunk), kMseMaxBlocks);
  p.chunk_len = detail::ceil_div(count, p.blocks);
  return p;
}

}  // namespace

size_t mse_scratch_bytes(int64_t count) {
  return size_t(mse_plan("mse_scratch_bytes", count).blocks) * sizeof(double);
}

void mse_forward_backward(const float* pred, const float* target, float* dpred, float* loss, int64_t count,
                          void* scratch, cudaStream_t stream) {
  constexpr const char* op = "mse_forward_backward";
  detail::require(pred != nullptr && target != nullptr && dpred != nullptr && loss != nullptr, op, "null pointer");
  detail::require(scratch != nullptr, op, "null scratch (size it with mse_scratch_bytes)");
  detail::require(detail::aligned_to(scratch, alignof(double)), op, "scratch must be 8-byte aligned");
  const MsePlan p = mse_plan(op, count);
  auto* partials = static_cast<double*>(scratch);
  const float scale = static_cast<float>(2.0 / static_cast<double>(count));
  mse_partial_kernel<<<unsigned(p.blocks), kThreads, 0, stream>>>(pred, target, dpred, partials, count, p.chunk_len,
                                                                    scale);
  ANVIL_CHECK_LAUNCH();
  mse_final_kernel<<<1, kThreads, 0, stream>>>(partials, p.blocks, static_cast<double>(count), loss);
  ANVIL_CHECK_LAUNCH();
}

void sgd_step(float* param, const float* grad, float* momentum_buf, int64_t count, const SgdParams& p, bool first_step,
              cudaStream_t stream) {
  constexpr const char* op = "sgd_step";
  detail::require(param != nullptr && grad != nullptr, op, "null pointer");
  detail::require(count > 0, op, "count must be positive");
  const bool use_momentum = p.momentum != 0.f;
  detail::require(!use_momentum || momentum_buf != nullptr, op, "momentum != 0 needs a momentum buffer");
  const float one_minus_dampening = static_cast<float>(1.0 - static_cast<double>(p.dampening));
  const SgdArgs a{p.lr, p.momentum, one_minus_dampening, p.weight_decay, use_momentum, p.nesterov, first_step};
  float* buf = use_momentum ? momentum_buf : nullptr;
  const VecSplit split = detail::vec_split(count, {param, grad, buf});
  const int64_t work = std::max(split.nvec, split.head + split.tail);
  sgd_kernel<<<detail::grid_stride_blocks(work), kThreads, 0, stream>>>(param, grad, buf, split, a);
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
