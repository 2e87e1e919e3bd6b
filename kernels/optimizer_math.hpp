// The per-element math of the optimizers and the learning-rate schedules,
// shared by the CPU and CUDA kernels. The updates follow torch.optim.SGD, Adam
// and AdamW's single-tensor path (foreach=False) operation by operation.
//
// The values that change every step live in StepState. On CUDA it sits in
// device memory and begin_step runs on the device, so a captured CUDA graph
// replays valid steps without the host writing anything per step.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/host_device.hpp"

namespace anvil {

struct LrSchedule {
  enum class Kind { Constant, Step, Cosine } kind = Kind::Constant;
  double base_lr = 0.01;
  int64_t step_size = 1;                      // Step: steps between decays (>= 1)
  double gamma = 0.1;                         // Step: the decay factor
  int64_t warmup_steps = 0, total_steps = 1;  // Cosine: total_steps - warmup_steps >= 1
  double min_lr = 0;                          // Cosine: the floor
};

// The lr of 0-based optimizer step t.
//   Step: torch's StepLR (scheduler.step() after each optimizer step).
//   Cosine: a linear warmup base * (t + 1) / W for t < W (torch's LinearLR from
//   1/W to 1 over W - 1 steps), then CosineAnnealingLR's closed form over
//   T = total_steps - W steps, periodic past total_steps as torch's is.
ANVIL_HD inline double scheduled_lr(const LrSchedule& s, int64_t t) {
  using Kind = LrSchedule::Kind;
  if (s.kind == Kind::Step) return s.base_lr * std::pow(s.gamma, double(t / s.step_size));
  if (s.kind == Kind::Cosine) {
    constexpr double kPi = 3.14159265358979323846;
    const int64_t w = s.warmup_steps;
    if (t < w) return s.base_lr * double(t + 1) / double(w);
    const double period = double(s.total_steps - w);
    return s.min_lr + (s.base_lr - s.min_lr) * (1 + std::cos(kPi * double(t - w) / period)) / 2;
  }
  return s.base_lr;
}

struct SgdHyper {
  float momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
};

struct AdamHyper {
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0;
  bool decoupled_weight_decay = false;  // AdamW
};

struct StepState {
  int64_t step = 0;  // 1-based once begin_step has run
  float lr = 0;
  float bias_correction1 = 1, bias_correction2_sqrt = 1;
};

// Advances to the next step: its lr and Adam's bias corrections (in double, as
// torch computes them in Python floats). SGD passes beta1 = beta2 = 0.
ANVIL_HD inline void begin_step(StepState& s, const LrSchedule& sched, float beta1, float beta2) {
  s.step += 1;
  s.lr = float(scheduled_lr(sched, s.step - 1));
  s.bias_correction1 = float(1.0 - std::pow(double(beta1), double(s.step)));
  s.bias_correction2_sqrt = float(std::sqrt(1.0 - std::pow(double(beta2), double(s.step))));
}

// One element of torch.optim.SGD. buf is the momentum buffer: unused without
// momentum, and on step 1 set to the gradient without being read (torch's
// first step), so it needs no clearing. Weight decay is skipped when zero, as
// in torch (0 * inf would poison the step).
template <class T>
ANVIL_HD inline void sgd_element(T& p, T g, T& buf, const SgdHyper& h, const StepState& s) {
  T d = g;
  if (h.weight_decay != 0.f) d = d + T(h.weight_decay) * p;
  if (h.momentum != 0.f) {
    buf = s.step == 1 ? d : T(h.momentum) * buf + T(1.0 - double(h.dampening)) * d;
    d = h.nesterov ? d + T(h.momentum) * buf : buf;
  }
  p = p - T(s.lr) * d;
}

// One element of torch.optim.Adam / AdamW. m and v are the moment estimates;
// on step 1 they are read as zero (torch's initial state), so they need no
// clearing. The scalar factors are formed in double and rounded once, as torch
// forms them in Python floats.
template <class T>
ANVIL_HD inline void adam_element(T& p, T g, T& m, T& v, const AdamHyper& h, const StepState& s) {
  if (h.weight_decay != 0.f) {
    if (h.decoupled_weight_decay)
      p = p * T(1.0 - double(s.lr) * double(h.weight_decay));
    else
      g = g + T(h.weight_decay) * p;
  }
  const T m_old = s.step == 1 ? T(0) : m, v_old = s.step == 1 ? T(0) : v;
  // torch's lerp_(g, w): from the nearer end, so that beta1 = 0 gives m = g exactly.
  const T w = T(1.0 - double(h.beta1));
  m = w < T(0.5) ? m_old + w * (g - m_old) : g - (g - m_old) * (T(1) - w);
  v = T(h.beta2) * v_old + T(1.0 - double(h.beta2)) * g * g;
  const T denom = std::sqrt(v) / T(s.bias_correction2_sqrt) + T(h.eps);
  const T step_size = T(double(s.lr) / double(s.bias_correction1));
  p = p - step_size * m / denom;
}

}  // namespace anvil
