// The losses and optimizers (kernels/loss_math.hpp, kernels/optimizer_math.hpp
// and their CPU and CUDA kernels).
//
// CPU: loss gradients against float64 central finite differences, the lr
// schedules against hand-computed values, and the optimizers in float against
// the double instantiation and against a plain double loop written here from
// the textbook formulas. CUDA: begin_step, the updates and the losses against
// the CPU float results, bitwise (both sides use the same math with no fused
// multiply-adds), with every output buffer poisoned (NaN) first.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "anvil/error.hpp"
#include "gpu_test_util.hpp"
#include "kernels/cpu/loss.hpp"
#include "kernels/cpu/optimizer.hpp"
#include "kernels/cuda/loss.hpp"
#include "kernels/cuda/optimizer.hpp"

namespace {

namespace cpu = anvil::cpu;
namespace gpu = anvil::cuda;
using anvil::AdamHyper;
using anvil::LossKind;
using anvil::LossParams;
using anvil::LrSchedule;
using anvil::SgdHyper;
using anvil::StepState;
using anvil::testing::DeviceBuffer;
using anvil::testing::random_floats;

LossParams loss_params(LossKind kind, float beta = 1.f) {
  LossParams p;
  p.kind = kind;
  p.beta = beta;
  return p;
}

std::string describe(const LossParams& p) {
  const char* names[] = {"mse", "l1", "smooth_l1"};
  return std::string(names[int(p.kind)]) + " beta=" + std::to_string(p.beta) + " ";
}

// mse, l1, smooth_l1 with beta 1 and 0.5, and beta 0 (torch treats it as l1).
const std::vector<LossParams> kLosses = {loss_params(LossKind::Mse), loss_params(LossKind::L1),
                                         loss_params(LossKind::SmoothL1, 1.f), loss_params(LossKind::SmoothL1, 0.5f),
                                         loss_params(LossKind::SmoothL1, 0.f)};

// ---------------------------------------------------------------------------
// CPU losses
// ---------------------------------------------------------------------------

TEST(LossCpu, ValuesByHand) {
  const std::vector<double> pred = {0.2, -1.0, 3.0}, target = {0.0, 0.0, 1.0};  // d = 0.2, -1, 2
  const double mse = (0.04 + 1.0 + 4.0) / 3, l1 = (0.2 + 1.0 + 2.0) / 3;
  const double smooth_half = (0.5 * 0.04 / 0.5 + (1.0 - 0.25) + (2.0 - 0.25)) / 3;
  auto loss = [&](const LossParams& p) {
    return cpu::loss_forward_backward<double>(p, pred.data(), target.data(), nullptr, 3);
  };
  EXPECT_NEAR(loss(loss_params(LossKind::Mse)), mse, 1e-15);
  EXPECT_NEAR(loss(loss_params(LossKind::L1)), l1, 1e-15);
  EXPECT_NEAR(loss(loss_params(LossKind::SmoothL1, 0.5f)), smooth_half, 1e-15);
  EXPECT_NEAR(loss(loss_params(LossKind::SmoothL1, 0.f)), l1, 1e-15);
}

TEST(LossCpu, L1GradientIsZeroWhereEqual) {
  const std::vector<double> pred = {1.0, 2.0, 0.5}, target = {1.0, 1.0, 1.0};
  for (const LossParams& p : {loss_params(LossKind::L1), loss_params(LossKind::SmoothL1, 0.f)}) {
    std::vector<double> dpred(3);
    cpu::loss_forward_backward<double>(p, pred.data(), target.data(), dpred.data(), 3);
    EXPECT_EQ(dpred[0], 0.0) << describe(p);
    EXPECT_EQ(dpred[1], 1.0 / 3) << describe(p);
    EXPECT_EQ(dpred[2], -1.0 / 3) << describe(p);
  }
}

// Random pred and target with d = pred - target at least `gap` away from 0 and
// from +-beta, so that a central difference of step h << gap never straddles a kink.
void kink_free_pair(std::mt19937& rng, double beta, double gap, double& pred, double& target) {
  std::uniform_real_distribution<double> dist(-2.0, 2.0);
  do {
    pred = dist(rng);
    target = dist(rng);
  } while (std::fabs(pred - target) < gap || std::fabs(std::fabs(pred - target) - beta) < gap);
}

TEST(LossCpu, GradientMatchesFiniteDifferences) {
  std::mt19937 rng(11);
  const double h = 1e-6;
  for (const LossParams& p : kLosses) {
    for (int64_t count : {1, 7, 33}) {
      std::vector<double> pred(count), target(count), dpred(count);
      for (int64_t i = 0; i < count; ++i) kink_free_pair(rng, p.beta, 0.05, pred[i], target[i]);
      cpu::loss_forward_backward<double>(p, pred.data(), target.data(), dpred.data(), count);
      for (int64_t i = 0; i < count; ++i) {
        std::vector<double> moved = pred;
        moved[i] = pred[i] + h;
        const double up = cpu::loss_forward_backward<double>(p, moved.data(), target.data(), nullptr, count);
        moved[i] = pred[i] - h;
        const double down = cpu::loss_forward_backward<double>(p, moved.data(), target.data(), nullptr, count);
        const double numeric = (up - down) / (2 * h);
        EXPECT_NEAR(dpred[i], numeric, 1e-7 * (1 + std::fabs(numeric)))
            << describe(p) << "count " << count << " element " << i;
      }
    }
  }
}

TEST(LossCpu, FloatMatchesDouble) {
  std::mt19937 rng(12);
  for (const LossParams& p : kLosses) {
    const int64_t count = 1001;
    const std::vector<float> pred = random_floats(count, rng), target = random_floats(count, rng);
    std::vector<float> dpred(count);
    std::vector<double> pred_d(pred.begin(), pred.end()), target_d(target.begin(), target.end()), dpred_d(count);
    const float loss = cpu::loss_forward_backward<float>(p, pred.data(), target.data(), dpred.data(), count);
    const double loss_d = cpu::loss_forward_backward<double>(p, pred_d.data(), target_d.data(), dpred_d.data(), count);
    EXPECT_NEAR(loss, loss_d, 1e-6 * std::fabs(loss_d)) << describe(p);
    for (int64_t i = 0; i < count; ++i)
      EXPECT_NEAR(dpred[i], dpred_d[i], 1e-6 * std::fabs(dpred_d[i])) << describe(p) << "element " << i;
  }
}

// ---------------------------------------------------------------------------
// Schedules
// ---------------------------------------------------------------------------

// A partial batch padded to the full one: the loss of the valid prefix, bitwise, and no gradient beyond it.
TEST(LossCpu, ValidCountMasksThePadding) {
  std::mt19937 rng(17);
  for (const LossParams& p : kLosses) {
    const int64_t count = 35, valid = 21;
    const std::vector<float> pred = random_floats(count, rng), target = random_floats(count, rng);
    std::vector<float> prefix_d(valid), masked_d(count, NAN);
    const float prefix = cpu::loss_forward_backward<float>(p, pred.data(), target.data(), prefix_d.data(), valid);
    const float masked =
        cpu::loss_forward_backward<float>(p, pred.data(), target.data(), masked_d.data(), count, valid);
    EXPECT_EQ(masked, prefix) << describe(p);
    for (int64_t i = 0; i < count; ++i) EXPECT_EQ(masked_d[i], i < valid ? prefix_d[i] : 0.f) << describe(p) << i;
  }
}

TEST(LrSchedule, ConstantAndStep) {
  LrSchedule s;
  s.base_lr = 0.1;
  EXPECT_EQ(anvil::scheduled_lr(s, 0), 0.1);
  EXPECT_EQ(anvil::scheduled_lr(s, 7), 0.1);
  s.kind = LrSchedule::Kind::Step;
  s.step_size = 2;
  s.gamma = 0.5;
  const double want[] = {0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125};
  for (int64_t t = 0; t < 7; ++t) EXPECT_DOUBLE_EQ(anvil::scheduled_lr(s, t), want[t]) << "t " << t;
}

TEST(LrSchedule, CosineWithWarmup) {
  LrSchedule s;
  s.kind = LrSchedule::Kind::Cosine;
  s.base_lr = 1e-3;
  s.warmup_steps = 2;
  s.total_steps = 5;
  s.min_lr = 1e-4;
  // Warmup 1/2, 2/2 of base; then cosine over T = 3 steps: cos(0), cos(pi/3),
  // cos(2pi/3), cos(pi) (the floor), and on, periodically: cos(4pi/3), cos(2pi).
  const double want[] = {
      5e-4, 1e-3, 1e-3, 1e-4 + 9e-4 * 0.75, 1e-4 + 9e-4 * 0.25, 1e-4, 1e-4 + 9e-4 * 0.25, 1e-4 + 9e-4 * 0.75, 1e-3};
  for (int64_t t = 0; t < 9; ++t) EXPECT_NEAR(anvil::scheduled_lr(s, t), want[t], 1e-15) << "t " << t;
}

TEST(LrSchedule, CosineWithoutWarmup) {
  LrSchedule s;
  s.kind = LrSchedule::Kind::Cosine;
  s.base_lr = 0.2;
  s.total_steps = 4;
  const double want[] = {0.2, 0.2 * (1 + std::sqrt(0.5)) / 2, 0.1, 0.2 * (1 - std::sqrt(0.5)) / 2, 0.0};
  for (int64_t t = 0; t < 5; ++t) EXPECT_NEAR(anvil::scheduled_lr(s, t), want[t], 1e-15) << "t " << t;
}

TEST(LrSchedule, BeginStep) {
  LrSchedule s;
  s.kind = LrSchedule::Kind::Step;
  s.base_lr = 0.1;
  s.step_size = 1;
  s.gamma = 0.5;
  StepState state;
  for (int i = 0; i < 3; ++i) anvil::begin_step(state, s, 0.9f, 0.999f);
  EXPECT_EQ(state.step, 3);
  EXPECT_EQ(state.lr, 0.025f);  // the lr of 0-based step 2
  EXPECT_EQ(state.bias_correction1, float(1 - std::pow(double(0.9f), 3)));
  EXPECT_EQ(state.bias_correction2_sqrt, float(std::sqrt(1 - std::pow(double(0.999f), 3))));
  StepState sgd;
  anvil::begin_step(sgd, s, 0.f, 0.f);
  EXPECT_EQ(sgd.bias_correction1, 1.f);
  EXPECT_EQ(sgd.bias_correction2_sqrt, 1.f);
}

// ---------------------------------------------------------------------------
// CPU optimizers
// ---------------------------------------------------------------------------

constexpr int kSteps = 5;

LrSchedule step_schedule() {
  LrSchedule s;
  s.kind = LrSchedule::Kind::Step;
  s.base_lr = 0.05;
  s.step_size = 2;
  s.gamma = 0.5;
  return s;
}

LrSchedule cosine_schedule() {
  LrSchedule s;
  s.kind = LrSchedule::Kind::Cosine;
  s.base_lr = 0.01;
  s.warmup_steps = 2;
  s.total_steps = 5;
  s.min_lr = 1e-4;
  return s;
}

std::vector<SgdHyper> sgd_configs() {
  std::vector<SgdHyper> configs(4);
  configs[1].momentum = 0.9f;
  configs[1].dampening = 0.1f;
  configs[1].weight_decay = 1e-3f;
  configs[2].momentum = 0.8f;
  configs[2].nesterov = true;
  configs[2].weight_decay = 1e-2f;
  configs[3].weight_decay = 1e-2f;
  return configs;
}

std::vector<AdamHyper> adam_configs() {
  std::vector<AdamHyper> configs(4);
  configs[1].weight_decay = 1e-2f;  // Adam's coupled decay
  configs[2].weight_decay = 1e-2f;
  configs[2].decoupled_weight_decay = true;  // AdamW
  configs[2].beta1 = 0.8f;
  configs[2].eps = 1e-6f;
  configs[3].beta1 = 0.f;  // as GANs use it: betas (0, 0.99)
  configs[3].beta2 = 0.99f;
  return configs;
}

std::string describe(const SgdHyper& h) {
  return "sgd momentum=" + std::to_string(h.momentum) + " dampening=" + std::to_string(h.dampening) +
         " wd=" + std::to_string(h.weight_decay) + " nesterov=" + std::to_string(h.nesterov) + " ";
}

std::string describe(const AdamHyper& h) {
  return std::string(h.decoupled_weight_decay ? "adamw" : "adam") + " beta1=" + std::to_string(h.beta1) +
         " wd=" + std::to_string(h.weight_decay) + " ";
}

// A gradient per step, fixed by the seed.
std::vector<std::vector<float>> gradients(size_t n, std::mt19937& rng) {
  std::vector<std::vector<float>> g;
  for (int s = 0; s < kSteps; ++s) g.push_back(random_floats(n, rng));
  return g;
}

template <class T>
std::vector<T> convert(const std::vector<float>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// kSteps SGD steps with the kernels of precision T; the buffer starts as NaN (step 1 must not read it).
template <class T>
std::vector<T> run_sgd_cpu(const std::vector<float>& p0, const std::vector<std::vector<float>>& grads,
                           const SgdHyper& h, const LrSchedule& sched) {
  std::vector<T> p = convert<T>(p0), buf(p0.size(), T(NAN));
  StepState state;
  for (const auto& g : grads) {
    anvil::begin_step(state, sched, 0.f, 0.f);
    cpu::sgd_update<T>(p.data(), convert<T>(g).data(), h.momentum != 0.f ? buf.data() : nullptr, int64_t(p.size()), h,
                       state);
  }
  return p;
}

// kSteps Adam steps with the kernels of precision T; m and v start as NaN (step 1 must not read them).
template <class T>
std::vector<T> run_adam_cpu(const std::vector<float>& p0, const std::vector<std::vector<float>>& grads,
                            const AdamHyper& h, const LrSchedule& sched) {
  std::vector<T> p = convert<T>(p0), m(p0.size(), T(NAN)), v(p0.size(), T(NAN));
  StepState state;
  for (const auto& g : grads) {
    anvil::begin_step(state, sched, h.beta1, h.beta2);
    cpu::adam_update<T>(p.data(), convert<T>(g).data(), m.data(), v.data(), int64_t(p.size()), h, state);
  }
  return p;
}

// torch.optim.SGD as its documentation writes it, in double.
std::vector<double> plain_sgd(const std::vector<float>& p0, const std::vector<std::vector<float>>& grads,
                              const SgdHyper& h, const LrSchedule& sched) {
  std::vector<double> p = convert<double>(p0), buf(p0.size(), 0.0);
  for (int t = 0; t < kSteps; ++t) {
    const double lr = anvil::scheduled_lr(sched, t);
    for (size_t i = 0; i < p.size(); ++i) {
      double d = grads[t][i] + double(h.weight_decay) * p[i];
      if (h.momentum != 0.f) {
        buf[i] = t == 0 ? d : h.momentum * buf[i] + (1 - double(h.dampening)) * d;
        d = h.nesterov ? d + h.momentum * buf[i] : buf[i];
      }
      p[i] -= lr * d;
    }
  }
  return p;
}

// Adam / AdamW from the paper's formulas (bias-corrected moments), in double.
std::vector<double> plain_adam(const std::vector<float>& p0, const std::vector<std::vector<float>>& grads,
                               const AdamHyper& h, const LrSchedule& sched) {
  const double b1 = h.beta1, b2 = h.beta2, eps = h.eps, wd = h.weight_decay;
  std::vector<double> p = convert<double>(p0), m(p0.size(), 0.0), v(p0.size(), 0.0);
  for (int t = 0; t < kSteps; ++t) {
    const double lr = anvil::scheduled_lr(sched, t);
    for (size_t i = 0; i < p.size(); ++i) {
      double g = grads[t][i];
      if (h.decoupled_weight_decay)
        p[i] *= 1 - lr * wd;
      else
        g += wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      const double m_hat = m[i] / (1 - std::pow(b1, t + 1)), v_hat = v[i] / (1 - std::pow(b2, t + 1));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
  return p;
}

template <class T>
void expect_close(const std::vector<T>& got, const std::vector<double>& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(double(got[i]), want[i], tol * (1 + std::fabs(want[i]))) << what << "element " << i;
}

TEST(OptimizerCpu, SgdMatchesPlainDoubleLoop) {
  std::mt19937 rng(21);
  const size_t n = 37;
  for (const SgdHyper& h : sgd_configs()) {
    const std::vector<float> p0 = random_floats(n, rng);
    const auto grads = gradients(n, rng);
    const std::vector<double> want = plain_sgd(p0, grads, h, step_schedule());
    // The double kernels differ from the plain loop only by the float lr of StepState.
    expect_close(run_sgd_cpu<double>(p0, grads, h, step_schedule()), want, 1e-8, describe(h) + "double ");
    expect_close(run_sgd_cpu<float>(p0, grads, h, step_schedule()), want, 1e-6, describe(h) + "float ");
  }
}

TEST(OptimizerCpu, AdamMatchesPlainDoubleLoop) {
  std::mt19937 rng(22);
  const size_t n = 37;
  for (const AdamHyper& h : adam_configs()) {
    for (const LrSchedule& sched : {cosine_schedule(), step_schedule()}) {
      const std::vector<float> p0 = random_floats(n, rng);
      const auto grads = gradients(n, rng);
      const std::vector<double> want = plain_adam(p0, grads, h, sched);
      // The double kernels differ from the plain loop only by StepState's float lr and bias corrections.
      expect_close(run_adam_cpu<double>(p0, grads, h, sched), want, 1e-8, describe(h) + "double ");
      expect_close(run_adam_cpu<float>(p0, grads, h, sched), want, 1e-6, describe(h) + "float ");
    }
  }
}

// A gradient that shrinks a millionfold between steps, with beta1 <= 0.5:
// torch's lerp takes the first moment from the gradient's end, so with
// beta1 = 0 it is the gradient exactly. From the other end it kept the old
// moment's rounding (1.22e-4 for a gradient of 1e-4 after one of 1000) and
// moved the parameter by 0.11 where torch moves it by 5e-5.
TEST(OptimizerCpu, AdamWithASmallBeta1TakesTheMomentFromTheGradient) {
  std::mt19937 rng(23);
  const size_t n = 5;
  const std::vector<float> p0 = random_floats(n, rng);
  std::vector<std::vector<float>> grads = gradients(n, rng);
  for (int s = 0; s < kSteps; ++s)
    for (size_t i = 0; i < n; ++i) grads[s][i] *= (s + i) % 2 ? 1e-4f : 1e3f;
  LrSchedule sched;
  sched.base_lr = 0.5;
  for (float beta1 : {0.f, 0.25f, 0.5f}) {
    for (float beta2 : {0.f, 0.99f}) {
      AdamHyper h;
      h.beta1 = beta1;
      h.beta2 = beta2;
      const std::string what = "beta1=" + std::to_string(beta1) + " beta2=" + std::to_string(beta2) + " ";
      std::vector<float> p = p0, m(n, NAN), v(n, NAN);
      StepState state;
      for (const auto& g : grads) {
        anvil::begin_step(state, sched, h.beta1, h.beta2);
        cpu::adam_update<float>(p.data(), g.data(), m.data(), v.data(), int64_t(n), h, state);
        if (beta1 == 0.f) {
          EXPECT_EQ(m, g) << what << "step " << state.step;
        }
      }
      expect_close(p, plain_adam(p0, grads, h, sched), 1e-6, what);
    }
  }
}

// ---------------------------------------------------------------------------
// Launcher checks (they throw before touching the device, so they run anywhere)
// ---------------------------------------------------------------------------

TEST(LossOptimizerCuda, LaunchersRejectBadArguments) {
  float* x = reinterpret_cast<float*>(alignof(double) * 64);  // never dereferenced
  EXPECT_THROW(gpu::loss_scratch_bytes(0), anvil::Error);
  EXPECT_THROW(gpu::loss_forward_backward(LossParams{}, x, x, x, x, 8, nullptr, nullptr), anvil::Error);
  EXPECT_THROW(gpu::loss_forward_backward(LossParams{}, x, nullptr, x, x, 8, x, nullptr), anvil::Error);
  EXPECT_THROW(gpu::loss_forward_backward(loss_params(LossKind::SmoothL1, -1.f), x, x, x, x, 8, x, nullptr),
               anvil::Error);
  LrSchedule bad_step = step_schedule();
  bad_step.step_size = 0;
  LrSchedule bad_cosine = cosine_schedule();
  bad_cosine.total_steps = bad_cosine.warmup_steps;
  auto* state = reinterpret_cast<StepState*>(x);
  EXPECT_THROW(gpu::begin_step(nullptr, LrSchedule{}, 0.f, 0.f, nullptr), anvil::Error);
  EXPECT_THROW(gpu::begin_step(state, bad_step, 0.f, 0.f, nullptr), anvil::Error);
  EXPECT_THROW(gpu::begin_step(state, bad_cosine, 0.f, 0.f, nullptr), anvil::Error);
  SgdHyper momentum;
  momentum.momentum = 0.9f;
  EXPECT_THROW(gpu::sgd_update(x, x, nullptr, 8, momentum, state, nullptr), anvil::Error);
  EXPECT_THROW(gpu::sgd_update(x, x, x, 0, momentum, state, nullptr), anvil::Error);
  EXPECT_THROW(gpu::sgd_update(x, x, x, 8, momentum, nullptr, nullptr), anvil::Error);
  EXPECT_THROW(gpu::adam_update(x, x, nullptr, x, 8, AdamHyper{}, state, nullptr), anvil::Error);
  EXPECT_THROW(gpu::adam_update(x, x, x, x, -1, AdamHyper{}, state, nullptr), anvil::Error);
}

// ---------------------------------------------------------------------------
// CUDA against CPU
// ---------------------------------------------------------------------------

// Odd and multiple-of-4 sizes, and offsets (in floats) that run the scalar
// heads and tails, the vector paths and the all-scalar path (pointers
// misaligned differently).
const std::vector<int64_t> kGpuCounts = {1, 3, 4, 7, 33, 1001, 4099, 70001};
const std::vector<std::vector<size_t>> kGpuOffsets = {{0, 0, 0, 0}, {1, 1, 1, 1}, {0, 1, 2, 3}, {3, 0, 0, 1}};
constexpr size_t kSlack = 4;

void expect_bitwise(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) == 0) continue;
    if (++bad <= 3) ADD_FAILURE() << what << "[" << i << "] got " << got[i] << " want " << want[i];
  }
  EXPECT_EQ(bad, 0u) << what << bad << " of " << got.size() << " differ";
}

TEST(LossOptimizerCuda, LossMatchesCpu) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(31);
  for (const LossParams& p : kLosses) {
    for (int64_t count : kGpuCounts) {
      const std::vector<float> pred = random_floats(count, rng), target = random_floats(count, rng);
      std::vector<float> want_d(count);
      const float want = cpu::loss_forward_backward<float>(p, pred.data(), target.data(), want_d.data(), count);
      float first = NAN;
      for (const auto& o : kGpuOffsets) {
        const std::string what = describe(p) + "count " + std::to_string(count) + " offsets " + std::to_string(o[0]) +
                                 std::to_string(o[1]) + std::to_string(o[2]) + ": ";
        DeviceBuffer<float> bp(count + kSlack), bt(count + kSlack), bd(count + kSlack), bl(1);
        DeviceBuffer<unsigned char> scratch(gpu::loss_scratch_bytes(count));
        bp.upload(pred, o[0]);
        bt.upload(target, o[1]);
        bd.poison();
        bl.poison();
        scratch.poison();
        gpu::loss_forward_backward(p, bp.get() + o[0], bt.get() + o[1], bd.get() + o[2], bl.get(), count, scratch.get(),
                                   nullptr);
        expect_bitwise(bd.download(o[2], count), want_d, what + "dpred ");
        const float loss = bl.download(0, 1)[0];
        EXPECT_NEAR(loss, want, 1e-6 * std::fabs(want)) << what << "loss";
        if (std::isnan(first)) first = loss;
        EXPECT_EQ(loss, first) << what << "loss differs from the first layout's";  // one summation order
        bl.poison();
        gpu::loss_forward_backward(p, bp.get() + o[0], bt.get() + o[1], nullptr, bl.get(), count, scratch.get(),
                                   nullptr);  // evaluation only
        EXPECT_EQ(bl.download(0, 1)[0], first) << what << "loss without dpred";
      }
    }
  }
}

TEST(LossOptimizerCuda, ValidCountMatchesCpu) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(37);
  for (const LossParams& p : kLosses)
    for (int64_t count : kGpuCounts) {
      const int64_t valid = std::max<int64_t>(1, count / 3);
      const std::vector<float> pred = random_floats(count, rng), target = random_floats(count, rng);
      std::vector<float> want_d(count);
      const float want = cpu::loss_forward_backward<float>(p, pred.data(), target.data(), want_d.data(), count, valid);
      const std::string what = describe(p) + "count " + std::to_string(count) + " valid " + std::to_string(valid);
      DeviceBuffer<float> bp(count), bt(count), bd(count), bl(1);
      DeviceBuffer<int64_t> bv(1);
      DeviceBuffer<unsigned char> scratch(gpu::loss_scratch_bytes(count));
      bp.upload(pred, 0);
      bt.upload(target, 0);
      bv.upload(std::vector<int64_t>{valid}, 0);
      bd.poison();
      bl.poison();
      gpu::loss_forward_backward(p, bp.get(), bt.get(), bd.get(), bl.get(), count, scratch.get(), nullptr, bv.get());
      expect_bitwise(bd.download(0, count), want_d, what + " dpred ");
      EXPECT_NEAR(bl.download(0, 1)[0], want, 1e-6 * std::fabs(want)) << what;
    }
}

StepState download_state(const DeviceBuffer<StepState>& state) { return state.download(0, 1)[0]; }

void expect_same_state(const StepState& got, const StepState& want, const std::string& what) {
  EXPECT_EQ(got.step, want.step) << what;
  EXPECT_EQ(got.lr, want.lr) << what;
  EXPECT_EQ(got.bias_correction1, want.bias_correction1) << what;
  EXPECT_EQ(got.bias_correction2_sqrt, want.bias_correction2_sqrt) << what;
}

TEST(LossOptimizerCuda, SgdMatchesCpu) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(32);
  for (const SgdHyper& h : sgd_configs()) {
    for (int64_t count : kGpuCounts) {
      const std::vector<float> p0 = random_floats(count, rng);
      const auto grads = gradients(count, rng);
      for (const auto& o : kGpuOffsets) {
        const std::string what = describe(h) + "count " + std::to_string(count) + " offsets " + std::to_string(o[0]) +
                                 std::to_string(o[1]) + std::to_string(o[2]) + ": ";
        const bool momentum = h.momentum != 0.f;
        std::vector<float> p = p0, buf(count, NAN);
        StepState cpu_state;
        DeviceBuffer<float> bp(count + kSlack), bg(count + kSlack), bb(count + kSlack);
        DeviceBuffer<StepState> state(1);
        state.upload({StepState{}});
        bp.poison();
        bb.poison();  // step 1 must not read the momentum buffer
        bp.upload(p0, o[0]);
        for (int s = 0; s < kSteps; ++s) {
          anvil::begin_step(cpu_state, step_schedule(), 0.f, 0.f);
          cpu::sgd_update<float>(p.data(), grads[s].data(), momentum ? buf.data() : nullptr, count, h, cpu_state);
          bg.poison();
          bg.upload(grads[s], o[1]);
          gpu::begin_step(state.get(), step_schedule(), 0.f, 0.f, nullptr);
          gpu::sgd_update(bp.get() + o[0], bg.get() + o[1], momentum ? bb.get() + o[2] : nullptr, count, h, state.get(),
                          nullptr);
          const std::string at = what + "step " + std::to_string(s + 1) + " ";
          expect_same_state(download_state(state), cpu_state, at + "state ");
          expect_bitwise(bp.download(o[0], count), p, at + "param ");
          if (momentum) expect_bitwise(bb.download(o[2], count), buf, at + "buf ");
        }
      }
    }
  }
}

TEST(LossOptimizerCuda, AdamMatchesCpu) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(33);
  for (const AdamHyper& h : adam_configs()) {
    for (int64_t count : kGpuCounts) {
      const std::vector<float> p0 = random_floats(count, rng);
      const auto grads = gradients(count, rng);
      for (const auto& o : kGpuOffsets) {
        const std::string what = describe(h) + "count " + std::to_string(count) + " offsets " + std::to_string(o[0]) +
                                 std::to_string(o[1]) + std::to_string(o[2]) + std::to_string(o[3]) + ": ";
        std::vector<float> p = p0, m(count, NAN), v(count, NAN);
        StepState cpu_state;
        DeviceBuffer<float> bp(count + kSlack), bg(count + kSlack), bm(count + kSlack), bv(count + kSlack);
        DeviceBuffer<StepState> state(1);
        state.upload({StepState{}});
        bp.poison();
        bm.poison();  // step 1 must not read the moments
        bv.poison();
        bp.upload(p0, o[0]);
        for (int s = 0; s < kSteps; ++s) {
          anvil::begin_step(cpu_state, cosine_schedule(), h.beta1, h.beta2);
          cpu::adam_update<float>(p.data(), grads[s].data(), m.data(), v.data(), count, h, cpu_state);
          bg.poison();
          bg.upload(grads[s], o[1]);
          gpu::begin_step(state.get(), cosine_schedule(), h.beta1, h.beta2, nullptr);
          gpu::adam_update(bp.get() + o[0], bg.get() + o[1], bm.get() + o[2], bv.get() + o[3], count, h, state.get(),
                           nullptr);
          const std::string at = what + "step " + std::to_string(s + 1) + " ";
          expect_same_state(download_state(state), cpu_state, at + "state ");
          expect_bitwise(bp.download(o[0], count), p, at + "param ");
          expect_bitwise(bm.download(o[2], count), m, at + "m ");
          expect_bitwise(bv.download(o[3], count), v, at + "v ");
        }
      }
    }
  }
}

}  // namespace
