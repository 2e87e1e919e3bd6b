// CUDA pointwise activations: the element-wise map (elementwise.cuh) over the
// op's functor, one kernel instantiation per op. Memory-bound: float4 loads
// and stores where the pointers allow. Built with --fmad=false (CMakeLists.txt)
// so that products are rounded on their own, as in the CPU reference.
#include "kernels/cuda/pointwise.hpp"

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.cuh"

namespace anvil::cuda {
namespace {

template <class Op>
struct Forward {
  float param;
  __device__ float operator()(float x) const { return Op::forward(x, param); }
};

template <class Op>
struct Backward {
  float param;
  __device__ float operator()(float saved, float dy) const {
    return pointwise::backward_from_saved<Op>(saved, dy, param);
  }
};

}  // namespace

void pointwise_forward(PointwiseOp op, float param, const float* x, float* y, int64_t n, cudaStream_t stream) {
  detail::require(x != nullptr && y != nullptr, "pointwise_forward", "null pointer");
  detail::require(n > 0, "pointwise_forward", "count must be positive");
  visit_pointwise_op(
      op, [&](auto functor) { detail::launch_map<false>(y, n, stream, Forward<decltype(functor)>{param}, x); });
}

void pointwise_backward(PointwiseOp op, float param, const float* x, const float* y, const float* dy, float* dx,
                        int64_t n, bool accumulate, cudaStream_t stream) {
  const float* saved = pointwise_backward_uses_output(op) ? y : x;
  detail::require(saved != nullptr && dy != nullptr && dx != nullptr, "pointwise_backward", "null pointer");
  detail::require(n > 0, "pointwise_backward", "count must be positive");
  visit_pointwise_op(op, [&](auto functor) {
    const Backward<decltype(functor)> f{param};
    if (accumulate) {
      detail::launch_map<true>(dx, n, stream, f, saved, dy);
    } else {
      detail::launch_map<false>(dx, n, stream, f, saved, dy);
    }
  });
}

}  // namespace anvil::cuda
