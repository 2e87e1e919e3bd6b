// The losses (see loss.hpp), in the shape of mse_forward_backward in
// training.cu: block b of `blocks` (a function of count alone) takes the fixed
// range [b * chunk_len, (b + 1) * chunk_len), writes dpred there and sums the
// element losses in double, each thread over fixed 4-element groups (float4
// loads where the range is aligned, scalars otherwise: same order either way)
// and then a fixed shuffle tree, into scratch[b]; a one-block kernel sums the
// partials in a fixed order and writes *loss. Bitwise deterministic, no atomics.
// With valid_count (a device scalar, so a captured step can change it) only the
// first *valid_count elements count: the rest get a zero gradient, and the mean
// is over the valid ones (a partial last batch padded to the full batch).
// No __restrict__ and no read-only-cache loads: dpred may alias pred.
#include "kernels/cuda/loss.hpp"

#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace anvil::cuda {
namespace {

using detail::kThreads;

__global__ void __launch_bounds__(kThreads)
    loss_partial_kernel(LossParams params, const float* pred, const float* target, float* dpred, double* partials,
                        int64_t count, const int64_t* valid_count, int64_t chunk_len) {
  const int64_t valid = valid_count ? *valid_count : count;
  const float inv_count = static_cast<float>(1.0 / static_cast<double>(valid));
  const int64_t v0 = int64_t(blockIdx.x) * chunk_len;
  const int64_t len = min(count, v0 + chunk_len) - v0;  // may be <= 0 for a trailing block
  double acc = 0.0;
  int64_t i = 0;              // the element grad() is called for
  auto grad = [&](float d) {  // adds the element's loss, returns its gradient
    if (i++ >= valid) return 0.f;
    acc += loss_element(params, double(d));
    return loss_element_gradient(params, d, inv_count);
  };
  if (len > 0) {
    const bool vec = detail::aligned16(pred + v0) && detail::aligned16(target + v0) &&
                     (dpred == nullptr || detail::aligned16(dpred + v0));
    const int64_t groups = len >> 2;
    for (int64_t gi = threadIdx.x; gi < groups; gi += kThreads) {
      const int64_t e = v0 + 4 * gi;
      i = e;
      float4 d;
      if (vec) {
        const float4 p = detail::load4(pred + e), t = detail::load4(target + e);
        d = make_float4(p.x - t.x, p.y - t.y, p.z - t.z, p.w - t.w);
      } else {
        d = make_float4(pred[e] - target[e], pred[e + 1] - target[e + 1], pred[e + 2] - target[e + 2],
                        pred[e + 3] - target[e + 3]);
      }
      float4 gr;
      gr.x = grad(d.x);
      gr.y = grad(d.y);
      gr.z = grad(d.z);
      gr.w = grad(d.w);
      if (dpred == nullptr) continue;
      if (vec) {
        detail::store4(dpred + e, gr);
      } else {
        dpred[e] = gr.x;
        dpred[e + 1] = gr.y;
        dpred[e + 2] = gr.z;
        dpred[e + 3] = gr.w;
      }
    }
    const int64_t t = 4 * groups + threadIdx.x;
    if (t < len) {
      const int64_t e = v0 + t;
      i = e;
      const float g = grad(pred[e] - target[e]);
      if (dpred) dpred[e] = g;
    }
  }
  const double total = detail::block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

__global__ void __launch_bounds__(kThreads)
    loss_final_kernel(const double* partials, int64_t blocks, int64_t count, const int64_t* valid_count, float* loss) {
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < blocks; j += kThreads) s += partials[j];
  s = detail::block_sum(s);
  const int64_t valid = valid_count ? *valid_count : count;
  if (threadIdx.x == 0) *loss = static_cast<float>(s / static_cast<double>(valid));
}

constexpr int64_t kMinChunk = 16384;  // elements per block, at least (where there are that many)
constexpr int64_t kMaxBlocks = 1024;

struct LossPlan {
  int64_t blocks = 1, chunk_len = 1;
};

LossPlan loss_plan(const char* op, int64_t count) {
  detail::require(count > 0, op, "count must be positive");
  LossPlan p;
  p.blocks = std::min(detail::ceil_div(count, kMinChunk), kMaxBlocks);
  p.chunk_len = detail::ceil_div(count, p.blocks);
  return p;
}

}  // namespace

size_t loss_scratch_bytes(int64_t count) {
  return size_t(loss_plan("loss_scratch_bytes", count).blocks) * sizeof(double);
}

void loss_forward_backward(const LossParams& params, const float* pred, const float* target, float* dpred, float* loss,
                           int64_t count, void* scratch, cudaStream_t stream, const int64_t* valid_count) {
  constexpr const char* op = "loss_forward_backward";
  detail::require(pred != nullptr && target != nullptr && loss != nullptr, op, "null pointer");
  detail::require(scratch != nullptr, op, "null scratch (size it with loss_scratch_bytes)");
  detail::require(detail::aligned_to(scratch, alignof(double)), op, "scratch must be 8-byte aligned");
  detail::require(params.kind != LossKind::SmoothL1 || params.beta >= 0.f, op, "smooth_l1 needs beta >= 0");
  const LossPlan p = loss_plan(op, count);
  auto* partials = static_cast<double*>(scratch);
  loss_partial_kernel<<<unsigned(p.blocks), kThreads, 0, stream>>>(params, pred, target, dpred, partials, count,
                                                                   valid_count, p.chunk_len);
  ANVIL_CHECK_LAUNCH();
  loss_final_kernel<<<1, kThreads, 0, stream>>>(partials, p.blocks, count, valid_count, loss);
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
