// CPU reference pointwise activations: a loop over the op's functor.
#include "kernels/cpu/pointwise.hpp"

#include <cstdint>

#include "kernels/cpu/parallel.hpp"

namespace anvil::cpu {

template <class T>
void pointwise_forward(PointwiseOp op, T param, const T* x, T* y, int64_t n) {
  visit_pointwise_op(op, [&](auto functor) {
    using Op = decltype(functor);
    ANVIL_OMP_PARALLEL_FOR_IF(n)
    for (int64_t i = 0; i < n; ++i) y[i] = Op::forward(x[i], param);
  });
}

template <class T>
void pointwise_backward(PointwiseOp op, T param, const T* x, const T* y, const T* dy, T* dx, int64_t n,
                        bool accumulate) {
  visit_pointwise_op(op, [&](auto functor) {
    using Op = decltype(functor);
    const T* saved = Op::kBackwardUsesOutput ? y : x;
    ANVIL_OMP_PARALLEL_FOR_IF(n)
    for (int64_t i = 0; i < n; ++i) {
      const T g = pointwise::backward_from_saved<Op>(saved[i], dy[i], param);
      dx[i] = accumulate ? dx[i] + g : g;
    }
  });
}

#define ANVIL_INSTANTIATE_POINTWISE(T)                                       \
  template void pointwise_forward<T>(PointwiseOp, T, const T*, T*, int64_t); \
  template void pointwise_backward<T>(PointwiseOp, T, const T*, const T*, const T*, T*, int64_t, bool);

ANVIL_INSTANTIATE_POINTWISE(float)
ANVIL_INSTANTIATE_POINTWISE(double)

}  // namespace anvil::cpu
