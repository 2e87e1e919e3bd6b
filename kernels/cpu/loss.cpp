#include "kernels/cpu/loss.hpp"

namespace anvil::cpu {

template <class T>
T loss_forward_backward(const LossParams& params, const T* pred, const T* target, T* dpred, int64_t count,
                        int64_t valid_count) {
  const int64_t valid = valid_count < 0 ? count : valid_count;
  const T inv_count = static_cast<T>(1.0 / static_cast<double>(valid));
  double sum = 0.0;
  for (int64_t i = 0; i < valid; ++i) {
    const T d = pred[i] - target[i];
    sum += loss_element(params, static_cast<double>(d));
    if (dpred) dpred[i] = loss_element_gradient(params, d, inv_count);
  }
  if (dpred)
    for (int64_t i = valid; i < count; ++i) dpred[i] = T(0);
  return static_cast<T>(sum / static_cast<double>(valid));
}

template float loss_forward_backward<float>(const LossParams&, const float*, const float*, float*, int64_t, int64_t);
template double loss_forward_backward<double>(const LossParams&, const double*, const double*, double*, int64_t,
                                              int64_t);

}  // namespace anvil::cpu
