// The per-element math of the losses, shared by the CPU and CUDA kernels.
// Semantics are torch's F.mse_loss, F.l1_loss and F.smooth_l1_loss with
// reduction='mean': the loss is the mean of loss_element over the elements,
// and the gradient of that mean is loss_element_gradient.
#pragma once

#include "kernels/host_device.hpp"

namespace anvil {

enum class LossKind { Mse, L1, SmoothL1 };

struct LossParams {
  LossKind kind = LossKind::Mse;
  float beta = 1.f;  // smooth_l1 only: the width of the quadratic zone (>= 0)
};

// -1, 0 or 1: torch's sign, so the l1 gradient is 0 at d == 0.
template <class T>
ANVIL_HD inline T sign_of(T x) {
  return T((x > T(0)) - (x < T(0)));
}

template <class T>
ANVIL_HD inline T magnitude(T x) {
  return x < T(0) ? -x : x;
}

// The loss of one element before the mean; d = pred - target.
template <class T>
ANVIL_HD inline T loss_element(const LossParams& p, T d) {
  if (p.kind == LossKind::Mse) return d * d;
  const T a = magnitude(d);
  if (p.kind == LossKind::L1) return a;
  const T beta = T(p.beta);
  // With beta == 0 there is no quadratic zone and this is l1, as torch's special case.
  return a < beta ? T(0.5) * a * a / beta : a - T(0.5) * beta;
}

// d loss_element / d pred.
template <class T>
ANVIL_HD inline T loss_element_derivative(const LossParams& p, T d) {
  if (p.kind == LossKind::Mse) return T(2) * d;
  if (p.kind == LossKind::SmoothL1 && magnitude(d) < T(p.beta)) return d / T(p.beta);
  return sign_of(d);
}

// One element of the gradient of the mean over count elements; inv_count = T(1.0 / count).
// (For mse this rounds as float(2 / count) * d: scaling by 2 is exact.)
template <class T>
ANVIL_HD inline T loss_element_gradient(const LossParams& p, T d, T inv_count) {
  return loss_element_derivative(p, d) * inv_count;
}

}  // namespace anvil
