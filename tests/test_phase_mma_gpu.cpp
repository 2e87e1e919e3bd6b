// The tensor-core kernels of the phase-split conv against float64 references
// computed here from the same operands: the fused forward (conv + epilogue)
// and the weight gradient over dY at the argmax, in TF32 and 3xTF32, on the
// headline geometry and odd ones (partial K steps, three-tap phases, 2-D,
// several M and N tiles, an odd phase count), the forward with and without a
// monotone chain, and the padded input both take. Inputs are fresh uniform
// [-1, 1] floats (never 0), outputs are poisoned (NaN) first. In TF32 the
// reference uses the operands rounded to TF32 exactly as the kernels take them,
// so both forms must reach float32 accuracy: what is checked is the GEMM, not
// TF32 rounding.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "gpu_test_util.hpp"
#include "kernels/cuda/epilogue.hpp"
#include "kernels/cuda/phase_conv_mma.hpp"
#include "kernels/cuda/phase_split.hpp"
#include "kernels/cuda/phase_wgrad_mma.hpp"
#include "layers/fused_phase_conv_epilogue.hpp"
#include "tests/conv_transpose_fixture.hpp"

namespace anvil::testing {
namespace {

struct Case {
  std::string label;
  int64_t n, cin, cout;
  std::vector<int64_t> k, s, p, op, in;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.label; }  // gtest names a case by its label

class PhaseMma : public ::testing::TestWithParam<std::tuple<Case, bool>> {
 protected:
  void SetUp() override {
    const Case& c = std::get<0>(GetParam());
    conv_ = testing::make_conv_transpose(c.k, c.s, c.p, c.op, c.in, c.cin, c.cout, c.n);
    ASSERT_EQ(FusedPhaseConvEpilogue::derive(*conv_, c.s, g_, false), std::nullopt);
    phases_ = g_.s[0] * g_.s[1] * g_.s[2];
    kpv_ = g_.kp[0] * g_.kp[1] * g_.kp[2];
    for (int d = 0; d < 3; ++d) {
      xp_[d] = g_.in[d] + g_.front[d] + g_.end[d];
      q_[d] = g_.q[d];
      ASSERT_GE(xp_[d] - g_.kp[d] + 1, q_[d]) << "x_pad too short along dim " << d;
    }
    q_count_ = q_[0] * q_[1] * q_[2];
  }

  // x_pad[n, ci, (q + u)] for combined tap u.
  int64_t x_at(int64_t n, int64_t ci, int64_t q, int64_t u) const {
    const int64_t u0 = u / (g_.kp[1] * g_.kp[2]), u1 = u / g_.kp[2] % g_.kp[1], u2 = u % g_.kp[2];
    const int64_t a = q / (q_[1] * q_[2]), b = q / q_[2] % q_[1], c = q % q_[2];
    return (((n * g_.cin + ci) * xp_[0] + a + u0) * xp_[1] + b + u1) * xp_[2] + c + u2;
  }

  // The x_pad that both kernels take is x placed at the front padding, zeros
  // around it, and under TF32 every value rounded: checked exactly.
  void expect_padded(const std::vector<float>& x, const std::vector<float>& x_pad, bool rounded) const {
    int64_t wrong = 0;
    for (int64_t i = 0; i < int64_t(x_pad.size()); ++i) {
      int64_t rest = i, at[3];
      for (int d = 2; d >= 0; --d) {
        at[d] = rest % xp_[d] - g_.front[d];
        rest /= xp_[d];
      }
      bool inside = true;
      for (int d = 0; d < 3; ++d) inside = inside && at[d] >= 0 && at[d] < g_.in[d];
      const float v = inside ? x[((rest * g_.in[0] + at[0]) * g_.in[1] + at[1]) * g_.in[2] + at[2]] : 0.f;
      wrong += x_pad[i] != (rounded ? tf32(v) : v);
    }
    EXPECT_EQ(wrong, 0) << "of " << x_pad.size() << " x_pad values";
  }

  std::unique_ptr<Convolution> conv_;
  cuda::PhaseSplitGeometry g_;
  int64_t phases_ = 1, kpv_ = 1, q_count_ = 1;
  int64_t xp_[3] = {1, 1, 1}, q_[3] = {1, 1, 1};
};

class PhaseMmaWeightGrad : public PhaseMma {};
class PhaseMmaForward : public PhaseMma {
 protected:
  void check(float s1, float s2, bool sigmoid_tail = false, bool minus_inf_bias = false);
};

TEST_P(PhaseMmaWeightGrad, MatchesFloat64) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const bool compensated = std::get<1>(GetParam());
  ASSERT_TRUE(cuda::phase_mma_weight_grad_supported(g_));
  std::mt19937 rng(11);
  const std::vector<float> x = random_floats(numel(conv_->input_shapes()[0]), rng);
  const std::vector<float> dy = random_floats(g_.n * g_.cout * q_count_, rng);
  const int64_t pooled = g_.n * g_.cout * q_count_;
  std::vector<uint8_t> argmax(pooled);
  std::vector<uint32_t> dy_tf32(pooled), residual(pooled);
  for (int64_t i = 0; i < pooled; ++i) {
    argmax[i] = static_cast<uint8_t>(rng() % phases_);
    const float big = tf32(dy[i]), small = tf32(dy[i] - big);
    std::memcpy(&dy_tf32[i], &big, 4);
    std::memcpy(&residual[i], &small, 4);
    dy_tf32[i] |= argmax[i];
  }
  const int64_t nx_pad = g_.n * g_.cin * xp_[0] * xp_[1] * xp_[2];
  const int64_t nw = numel(conv_->param_specs()[0].shape);
  DeviceBuffer<float> d_x(x.size()), d_x_pad(nx_pad), d_dw(nw);
  DeviceBuffer<uint32_t> d_dy(pooled), d_res(pooled);
  DeviceBuffer<char> scratch(cuda::phase_mma_weight_grad_scratch_bytes(g_));
  d_x.upload(x);
  d_dy.upload(dy_tf32);
  d_res.upload(residual);
  d_dw.poison();
  d_x_pad.poison();
  cuda::phase_pad_input(d_x.get(), d_x_pad.get(), !compensated, g_, nullptr);
  cuda::phase_mma_weight_grad(d_dy.get(), compensated ? d_res.get() : nullptr, d_x_pad.get(), d_dw.get(), scratch.get(),
                              g_, nullptr);
  const std::vector<float> x_pad = d_x_pad.download_all(), dw = d_dw.download_all();
  expect_padded(x, x_pad, !compensated);

  // dW[ci, co, t] = sum over (n, q) whose argmax is t's phase of dy * x_pad[n, ci, q + t's combined tap].
  const int64_t kv = g_.k[0] * g_.k[1] * g_.k[2];
  std::vector<double> want(nw, 0.0);
  for (int64_t ci = 0; ci < g_.cin; ++ci)
    for (int64_t co = 0; co < g_.cout; ++co)
      for (int64_t t = 0; t < kv; ++t) {
        const int64_t t0 = t / (g_.k[1] * g_.k[2]), t1 = t / g_.k[2] % g_.k[1], t2 = t % g_.k[2];
        const int64_t r = (g_.phase_of[0][t0] * g_.s[1] + g_.phase_of[1][t1]) * g_.s[2] + g_.phase_of[2][t2];
        const int64_t ut =
            (g_.combined_of[0][t0] * g_.kp[1] + g_.combined_of[1][t1]) * g_.kp[2] + g_.combined_of[2][t2];
        double sum = 0;
        for (int64_t n = 0; n < g_.n; ++n)
          for (int64_t q = 0; q < q_count_; ++q) {
            const int64_t at = (n * g_.cout + co) * q_count_ + q;
            if (argmax[at] != r) continue;
            const double d = compensated ? double(dy[at]) : double(tf32(dy[at]));
            sum += d * x_pad[x_at(n, ci, q, ut)];
          }
        want[(ci * g_.cout + co) * kv + t] = sum;
      }
  EXPECT_LE(rel_l2(dw, want), 1e-5) << (compensated ? "3xTF32" : "TF32");
}

// The chain leaky(s1) -> * m -> leaky(s2) [-> sigmoid]; minus_inf_bias: a bias
// of -inf in every third channel (0, 3, ...), where y is -inf.
void PhaseMmaForward::check(float s1, float s2, bool sigmoid_tail, bool minus_inf_bias) {
  const bool compensated = std::get<1>(GetParam());
  ASSERT_TRUE(cuda::phase_fused_forward_supported(g_));
  std::mt19937 rng(12);
  const std::vector<float> x = random_floats(numel(conv_->input_shapes()[0]), rng);
  const std::vector<float> w = random_floats(numel(conv_->param_specs()[0].shape), rng);
  std::vector<float> bias = random_floats(g_.cout, rng);
  std::vector<float> m = random_floats(g_.cout, rng);  // both signs
  m[0] = 0.f;                                          // every phase ties in channel 0
  if (minus_inf_bias) {
    for (int64_t co = 0; co < g_.cout; co += 3) bias[co] = -INFINITY;
    // A channel where relu -> scale -> relu is not zero throughout: two_d's 3 channels
    // drew negative multipliers, and an all-zero reference made rel_l2 0 / 0.
    if (g_.cout > 1) m[1] = std::fabs(m[1]);
  }
  const int64_t nx_pad = g_.n * g_.cin * xp_[0] * xp_[1] * xp_[2], nwp = phases_ * g_.cout * g_.cin * kpv_;
  const int64_t pooled = g_.n * g_.cout * q_count_;
  DeviceBuffer<float> d_x(x.size()), d_w(w.size()), d_b(bias.size()), d_m(m.size()), d_x_pad(nx_pad), d_wp(nwp);
  DeviceBuffer<float> d_p(pooled), d_y(pooled);
  DeviceBuffer<uint8_t> d_arg(pooled);
  d_x.upload(x);
  d_w.upload(w);
  d_b.upload(bias);
  d_m.upload(m);
  d_p.poison();
  d_y.poison();
  d_x_pad.poison();
  cuda::phase_pad_input(d_x.get(), d_x_pad.get(), !compensated, g_, nullptr);
  cuda::phase_build_weight(d_w.get(), d_wp.get(), g_, nullptr);
  cuda::EpilogueChain chain;
  chain.ops = sigmoid_tail ? 4 : 3;
  chain.param[0] = s1;
  chain.is_scale[1] = true;
  chain.scale[1] = d_m.get();
  chain.param[2] = s2;
  chain.activation[3] = PointwiseOp::Sigmoid;
  cuda::phase_fused_forward(d_x_pad.get(), d_wp.get(), d_b.get(), chain, d_p.get(), d_arg.get(), d_y.get(), compensated,
                            g_, nullptr);
  const std::vector<float> x_pad = d_x_pad.download_all(), wp = d_wp.download_all();
  const std::vector<float> p = d_p.download_all(), y_at_max = d_y.download_all();
  const std::vector<uint8_t> arg = d_arg.download_all();
  expect_padded(x, x_pad, !compensated);

  auto leaky = [](double v, double s) { return v > 0 ? v : s == 0 ? 0.0 : s * v; };  // relu(-inf) = 0
  std::vector<double> want_p(pooled), want_y(pooled);
  int64_t argmax_checked = 0, argmax_wrong = 0;
  for (int64_t n = 0; n < g_.n; ++n)
    for (int64_t co = 0; co < g_.cout; ++co)
      for (int64_t q = 0; q < q_count_; ++q) {
        double best = -INFINITY, second = -INFINITY, best_v = 0;
        int64_t best_r = 0;
        for (int64_t r = 0; r < phases_; ++r) {
          double y = bias[co];
          for (int64_t ci = 0; ci < g_.cin; ++ci)
            for (int64_t ut = 0; ut < kpv_; ++ut) {
              const float wv = wp[((r * g_.cout + co) * g_.cin + ci) * kpv_ + ut];
              y += double(compensated ? wv : tf32(wv)) * x_pad[x_at(n, ci, q, ut)];
            }
          const double z3 = leaky(leaky(y, s1) * m[co], s2);
          const double z = sigmoid_tail ? 1 / (1 + std::exp(-z3)) : z3;
          if (z > best) {
            second = best;
            best = z;
            best_v = y;
            best_r = r;
          } else if (z > second) {
            second = z;
          }
        }
        const int64_t at = (n * g_.cout + co) * q_count_ + q;
        want_p[at] = best;
        want_y[at] = best_v;
        if (best - second > 1e-4 * (1 + std::fabs(best))) {  // a clear winner: the argmax must match
          ++argmax_checked;
          argmax_wrong += arg[at] != best_r;
        }
      }
  // y at the max is -inf where the bias is: compared apart, as rel_l2 takes no infinities.
  std::vector<float> y_finite;
  std::vector<double> want_y_finite;
  int64_t inf_wrong = 0;
  for (int64_t at = 0; at < pooled; ++at) {
    if (std::isinf(want_y[at])) {
      inf_wrong += y_at_max[at] != want_y[at];
    } else {
      y_finite.push_back(y_at_max[at]);
      want_y_finite.push_back(want_y[at]);
    }
  }
  EXPECT_LE(rel_l2(p, want_p), 1e-5);  // NaN, and so failed, for a NaN in p
  EXPECT_LE(rel_l2(y_finite, want_y_finite), 1e-5);
  EXPECT_EQ(inf_wrong, 0) << "y at the max of a channel whose bias is -inf";
  // A relu ties every phase wherever it gives zero: fewer clear winners.
  EXPECT_GT(argmax_checked, minus_inf_bias ? 0 : pooled / 2);
  EXPECT_EQ(argmax_wrong, 0) << "of " << argmax_checked;
}

// Positive slopes: the chain is monotone (but for channel 0) and the kernel compares accumulators.
TEST_P(PhaseMmaForward, MatchesFloat64) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  check(0.2f, 0.1f);
}

// A negative slope breaks monotonicity: the chain runs per phase.
TEST_P(PhaseMmaForward, MatchesFloat64NonMonotoneChain) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  check(-0.3f, 0.1f);
}

// A smooth activation at the end: not piecewise monotone, the chain runs per phase.
TEST_P(PhaseMmaForward, MatchesFloat64SmoothChain) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  check(0.2f, 0.1f, true);
}

// A bias of -inf in some channels under a relu first (slope 0): relu(-inf) is
// zero there, not 0 * -inf = NaN, in the inline chain and in the program.
TEST_P(PhaseMmaForward, MatchesFloat64ReluOfMinusInfBias) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  check(0.f, 0.1f, false, true);
  check(0.f, 0.f, false, true);
  check(0.f, 0.1f, true, true);
}

const Case kHeadline{"headline_layer", 2, 16, 32, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}, {3, 5, 33}};
const Case kThreeTaps{"k4_s2_three_taps", 1, 4, 7, {4, 4, 4}, {2, 2, 2}, {1, 1, 1}, {0, 0, 0}, {3, 4, 5}};
const Case kTwoD{"two_d", 3, 5, 3, {3, 3}, {2, 2}, {1, 1}, {1, 1}, {5, 7}};
// 3 phases: an odd count, so the forward's last ldmatrix pair is half used.
const Case kThreePhases{"three_phases", 2, 6, 9, {5, 3}, {3, 1}, {1, 1}, {0, 0}, {4, 35}};
// 8 phases x 37 channels: three M tiles and two N tiles for the weight gradient; too wide for the fused forward.
const Case kManyTiles{"odd_channels_many_tiles", 2, 19, 37, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}, {3, 2, 37}};

std::string case_name(const ::testing::TestParamInfo<std::tuple<Case, bool>>& info) {
  return std::get<0>(info.param).label + (std::get<1>(info.param) ? "_3xtf32" : "_tf32");
}

INSTANTIATE_TEST_SUITE_P(Geometries, PhaseMmaWeightGrad,
                         ::testing::Combine(::testing::Values(kHeadline, kThreeTaps, kTwoD, kThreePhases, kManyTiles),
                                            ::testing::Bool()),
                         case_name);
INSTANTIATE_TEST_SUITE_P(Geometries, PhaseMmaForward,
                         ::testing::Combine(::testing::Values(kHeadline, kThreeTaps, kTwoD, kThreePhases),
                                            ::testing::Bool()),
                         case_name);

}  // namespace
}  // namespace anvil::testing
