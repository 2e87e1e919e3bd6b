// CPU reference loss and optimizer: mean squared error and torch.optim.SGD.
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/reference.hpp"

namespace anvil::cpu {

template <class T> T mse_forward_backward(const T* pred, const T* target, T* dpred, int64_t count) {
  // The loss sums in double in a fixed order; dpred may be null (evaluation only).
  double sum = 0.0;
  const T scale = static_cast<T>(2.0 / static_cast<double>(count));
  for (int64_t i = 0; i < count; ++i) {
    const T diff = pred[i] - target[i];
    sum += static_cast<double>(diff) * diff;
    if (dpred) dpred[i] = scale * diff;
  }
  return static_cast<T>(sum / static_cast<double>(count));
}

template <class T>
void sgd_step(T* param, const T* grad, T* momentum_buf, int64_t count, const SgdParams& p, bool first_step) {
  // Same operation order as torch.optim.SGD's single-tensor path. As in torch,
  // weight decay is skipped when zero (0 * inf would poison the step) and the
  // buffer is neither read nor written without momentum (it may be null then).
  const T lr = static_cast<T>(p.lr), momentum = static_cast<T>(p.momentum);
  const T dampening_keep = static_cast<T>(1.0 - static_cast<double>(p.dampening));
  const T weight_decay = static_cast<T>(p.weight_decay);
  for (int64_t i = 0; i < count; ++i) {
    T d = grad[i];
    if (p.weight_decay != 0.f) d = d + weight_decay * param[i];
    if (p.momentum != 0.f) {
      T& buf = momentum_buf[i];
      buf = first_step ? d : momentum * buf + dampening_keep * d;
      d = p.nesterov ? d + momentum * buf : buf;
    }
    param[i] -= lr * d;
  }
}

#define ANVIL_INSTANTIATE_TRAINING(T)                                                                          \
  template T mse_forward_backward<T>(const T*, const T*, T*, int64_t);                                         \
  template void sgd_step<T>(T*, const T*, T*, int64_t, const SgdParams&, bool);

ANVIL_INSTANTIATE_TRAINING(float)
ANVIL_INSTANTIATE_TRAINING(double)

}  // namespace anvil::cpu
