// The optimizer updates (see optimizer.hpp): flat grid-stride kernels over
// float4s with a scalar head and tail (detail::VecSplit), each element through
// the shared math of kernels/optimizer_math.hpp. No __restrict__ and no
// read-only-cache loads: the caller's buffers may alias.
#include "kernels/cuda/optimizer.hpp"

#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace anvil::cuda {
namespace {

using detail::kThreads;
using detail::VecSplit;

__global__ void begin_step_kernel(StepState* state, LrSchedule schedule, float beta1, float beta2) {
  begin_step(*state, schedule, beta1, beta2);
}

// Runs element(i) over every index of the split: a float4 group at a time
// through element4, then the scalar head and tail.
template <class Element4, class Element>
__device__ __forceinline__ void for_each_split(const VecSplit& split, Element4 element4, Element element) {
  const int64_t tid = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t v = tid; v < split.nvec; v += stride) element4(split.head + 4 * v);
  for (int64_t i = tid; i < split.head; i += stride) element(i);
  const int64_t tail0 = split.head + 4 * split.nvec;
  for (int64_t i = tail0 + tid; i < tail0 + split.tail; i += stride) element(i);
}

__global__ void __launch_bounds__(kThreads)
    sgd_kernel(float* param, const float* grad, float* buf, VecSplit split, SgdHyper hyper, const StepState* state) {
  const StepState s = *state;
  const bool use_momentum = hyper.momentum != 0.f;
  auto element4 = [&](int64_t i) {
    float4 p = detail::load4(param + i);
    const float4 g = detail::load4(grad + i);
    float4 b = use_momentum ? detail::load4(buf + i) : make_float4(0.f, 0.f, 0.f, 0.f);
    sgd_element(p.x, g.x, b.x, hyper, s);
    sgd_element(p.y, g.y, b.y, hyper, s);
    sgd_element(p.z, g.z, b.z, hyper, s);
    sgd_element(p.w, g.w, b.w, hyper, s);
    detail::store4(param + i, p);
    if (use_momentum) detail::store4(buf + i, b);
  };
  auto element = [&](int64_t i) {
    float b = use_momentum ? buf[i] : 0.f;
    sgd_element(param[i], grad[i], b, hyper, s);
    if (use_momentum) buf[i] = b;
  };
  for_each_split(split, element4, element);
}

__global__ void __launch_bounds__(kThreads) adam_kernel(float* param, const float* grad, float* m, float* v,
                                                        VecSplit split, AdamHyper hyper, const StepState* state) {
  const StepState s = *state;
  auto element4 = [&](int64_t i) {
    float4 p = detail::load4(param + i), mm = detail::load4(m + i), vv = detail::load4(v + i);
    const float4 g = detail::load4(grad + i);
    adam_element(p.x, g.x, mm.x, vv.x, hyper, s);
    adam_element(p.y, g.y, mm.y, vv.y, hyper, s);
    adam_element(p.z, g.z, mm.z, vv.z, hyper, s);
    adam_element(p.w, g.w, mm.w, vv.w, hyper, s);
    detail::store4(param + i, p);
    detail::store4(m + i, mm);
    detail::store4(v + i, vv);
  };
  auto element = [&](int64_t i) { adam_element(param[i], grad[i], m[i], v[i], hyper, s); };
  for_each_split(split, element4, element);
}

unsigned update_blocks(const VecSplit& split) {
  return detail::grid_stride_blocks(std::max(split.nvec, split.head + split.tail));
}

}  // namespace

void begin_step(StepState* state, const LrSchedule& schedule, float beta1, float beta2, cudaStream_t stream) {
  constexpr const char* op = "begin_step";
  using Kind = LrSchedule::Kind;
  detail::require(state != nullptr, op, "null state");
  detail::require(schedule.kind != Kind::Step || schedule.step_size >= 1, op, "step schedule needs step_size >= 1");
  detail::require(schedule.kind != Kind::Cosine ||
                      (schedule.warmup_steps >= 0 && schedule.total_steps - schedule.warmup_steps >= 1),
                  op, "cosine schedule needs 0 <= warmup_steps < total_steps");
  begin_step_kernel<<<1, 1, 0, stream>>>(state, schedule, beta1, beta2);
  ANVIL_CHECK_LAUNCH();
}

void sgd_update(float* p, const float* g, float* buf, int64_t n, const SgdHyper& hyper, const StepState* state,
                cudaStream_t stream) {
  constexpr const char* op = "sgd_update";
  detail::require(p != nullptr && g != nullptr && state != nullptr, op, "null pointer");
  detail::require(n > 0, op, "count must be positive");
  const bool use_momentum = hyper.momentum != 0.f;
  detail::require(!use_momentum || buf != nullptr, op, "momentum != 0 needs a momentum buffer");
  float* used_buf = use_momentum ? buf : nullptr;
  const VecSplit split = detail::vec_split(n, {p, g, used_buf});
  sgd_kernel<<<update_blocks(split), kThreads, 0, stream>>>(p, g, used_buf, split, hyper, state);
  ANVIL_CHECK_LAUNCH();
}

void adam_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& hyper,
                 const StepState* state, cudaStream_t stream) {
  constexpr const char* op = "adam_update";
  detail::require(p != nullptr && g != nullptr && m != nullptr && v != nullptr && state != nullptr, op, "null pointer");
  detail::require(n > 0, op, "count must be positive");
  const VecSplit split = detail::vec_split(n, {p, g, m, v});
  adam_kernel<<<update_blocks(split), kThreads, 0, stream>>>(p, g, m, v, split, hyper, state);
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
