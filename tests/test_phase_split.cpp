// The phase-split derivation, checked on the CPU: the one stride-1 convolution
// it describes (padded input, combined weight, s^d * Cout channels) must give
// the transposed convolution's output, phase by phase. Runs without a GPU.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <random>
#include <tuple>

#include "kernels/cpu/conv.hpp"
#include "layers/fused_phase_conv_epilogue.hpp"
#include "tests/conv_transpose_fixture.hpp"

namespace anvil {
namespace {

struct Geometry {
  std::vector<int64_t> k, s, p, op, in;
};

// k3x3x3_s2x2x2_p1x1x1_op1x1x1_in3x4x5: test names and gtest's printout (stable, unlike the bytes).
std::string label(const Geometry& g) {
  auto dims = [](const std::vector<int64_t>& v) {
    std::string text;
    for (int64_t x : v) text += (text.empty() ? "" : "x") + std::to_string(x);
    return text;
  };
  return "k" + dims(g.k) + "_s" + dims(g.s) + "_p" + dims(g.p) + "_op" + dims(g.op) + "_in" + dims(g.in);
}
void PrintTo(const Geometry& g, std::ostream* os) { *os << label(g); }

std::unique_ptr<Convolution> conv_transpose(const Geometry& g, int64_t cin, int64_t cout, int64_t n) {
  return testing::make_conv_transpose(g.k, g.s, g.p, g.op, g.in, cin, cout, n);
}

std::vector<float> random_vector(int64_t count, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(count);
  for (auto& x : v) x = u(rng);
  return v;
}

// The one stride-1 convolution g describes (B padded, the combined weight,
// s^d * A's channels), computed here from the tables, with its phases read
// back at their shifts: it must give the backward-data relation A from B (a
// transposed conv's output, a conv's input gradient), every element of A.
void expect_combined_conv_reproduces_the_relation(const Convolution& conv, const cuda::PhaseSplitGeometry& g) {
  std::mt19937 rng(42);
  const bool transposed = conv.transposed();
  const Shape& bs = transposed ? conv.input_shapes()[0] : conv.output_shape();
  const Shape& as = transposed ? conv.output_shape() : conv.input_shapes()[0];
  const int64_t n = bs[0], cin = g.cin, cout = g.cout;
  ASSERT_EQ(cin, bs[1]);
  ASSERT_EQ(cout, as[1]);
  const std::vector<float> x = random_vector(numel(bs), rng);
  const std::vector<float> w = random_vector(numel(conv.param_specs()[0].shape), rng);
  std::vector<float> y(numel(as), NAN);
  cpu::conv_backward_data(x.data(), w.data(), y.data(), conv.geometry(), false);

  // Every original tap serves exactly one (phase, combined tap).
  for (int d = 0; d < 3; ++d)
    for (int64_t t = 0; t < g.k[d]; ++t)
      EXPECT_EQ(g.tap[d][g.phase_of[d][t] * g.kp[d] + g.combined_of[d][t]], t) << "dim " << d << " tap " << t;

  // The padded input and the combined weight, built here from the tables.
  const int64_t phases = cuda::phase_count(g);
  const cpu::Dims3 pad = {g.in[0] + g.front[0] + g.end[0], g.in[1] + g.front[1] + g.end[1],
                          g.in[2] + g.front[2] + g.end[2]};
  std::vector<float> x_pad(n * cin * pad[0] * pad[1] * pad[2], 0.f);
  for (int64_t pl = 0; pl < n * cin; ++pl)
    for (int64_t d = 0; d < g.in[0]; ++d)
      for (int64_t h = 0; h < g.in[1]; ++h)
        for (int64_t v = 0; v < g.in[2]; ++v)
          x_pad[((pl * pad[0] + d + g.front[0]) * pad[1] + h + g.front[1]) * pad[2] + v + g.front[2]] =
              x[((pl * g.in[0] + d) * g.in[1] + h) * g.in[2] + v];
  const int64_t kpv = g.kp[0] * g.kp[1] * g.kp[2];
  std::vector<float> wp(phases * cout * cin * kpv, 0.f);
  for (int64_t r = 0; r < phases; ++r)
    for (int64_t co = 0; co < cout; ++co)
      for (int64_t ci = 0; ci < cin; ++ci)
        for (int64_t u = 0; u < kpv; ++u) {
          const int64_t rr[3] = {r / (g.s[1] * g.s[2]), r / g.s[2] % g.s[1], r % g.s[2]};
          const int64_t uu[3] = {u / (g.kp[1] * g.kp[2]), u / g.kp[2] % g.kp[1], u % g.kp[2]};
          int64_t t[3];
          bool used = true;
          for (int d = 0; d < 3; ++d) used = used && (t[d] = g.tap[d][rr[d] * g.kp[d] + uu[d]]) >= 0;
          if (used)
            wp[((r * cout + co) * cin + ci) * kpv + u] =
                w[(((ci * cout + co) * g.k[0] + t[0]) * g.k[1] + t[1]) * g.k[2] + t[2]];
        }
  cpu::ConvGeometry pg;
  pg.n = n;
  pg.ca = cin;
  pg.cb = phases * cout;
  pg.a = pad;
  pg.b = {pad[0] - g.kp[0] + 1, pad[1] - g.kp[1] + 1, pad[2] - g.kp[2] + 1};
  pg.k = {g.kp[0], g.kp[1], g.kp[2]};
  const cpu::Dims3 y3 = cpu::lift_dims({as.begin() + 2, as.end()}, 1);
  for (int d = 0; d < 3; ++d) {
    ASSERT_EQ(g.out[d], y3[d]) << "dim " << d;
    ASSERT_EQ(g.q[d], (y3[d] + g.s[d] - 1) / g.s[d]) << "phase grid of dim " << d;
    for (int64_t r = 0; r < g.s[d]; ++r)
      ASSERT_LE(g.q[d] + g.shift[d][r], pg.b[d]) << "dim " << d << " phase " << r << " reads past the combined output";
  }
  std::vector<float> yp(n * phases * cout * pg.b[0] * pg.b[1] * pg.b[2], NAN);
  cpu::conv_forward(x_pad.data(), wp.data(), yp.data(), pg);

  // y[n, co, q * s + r] == yp[n, r * cout + co, q + shift of r]
  double max_err = 0, max_ref = 0;
  for (int64_t nn = 0; nn < n; ++nn)
    for (int64_t co = 0; co < cout; ++co)
      for (int64_t o0 = 0; o0 < y3[0]; ++o0)
        for (int64_t o1 = 0; o1 < y3[1]; ++o1)
          for (int64_t o2 = 0; o2 < y3[2]; ++o2) {
            const int64_t rr[3] = {o0 % g.s[0], o1 % g.s[1], o2 % g.s[2]};
            const int64_t r = (rr[0] * g.s[1] + rr[1]) * g.s[2] + rr[2];
            const int64_t q0 = o0 / g.s[0] + g.shift[0][rr[0]], q1 = o1 / g.s[1] + g.shift[1][rr[1]],
                          q2 = o2 / g.s[2] + g.shift[2][rr[2]];  // where phase r's output sits in Yp
            const int64_t q = (q0 * pg.b[1] + q1) * pg.b[2] + q2;
            const float want = y[(((nn * cout + co) * y3[0] + o0) * y3[1] + o1) * y3[2] + o2];
            const float got = yp[((nn * phases + r) * cout + co) * (pg.b[0] * pg.b[1] * pg.b[2]) + q];
            max_err = std::max(max_err, std::fabs(double(got) - want));
            max_ref = std::max(max_ref, std::fabs(double(want)));
          }
  ASSERT_GT(max_ref, 0.0);
  EXPECT_LE(max_err, 1e-5 * max_ref) << "max |diff| " << max_err;
}

// Both forms: phases aligned (anvil's tensor-core kernels) and shifted (cuDNN's path).
class PhaseSplitDerivation : public ::testing::TestWithParam<std::tuple<Geometry, bool>> {};

TEST_P(PhaseSplitDerivation, CombinedConvolutionReproducesTheTransposedConvolution) {
  const auto& [geo, shifted] = GetParam();
  const int64_t n = 2, cin = 3, cout = 2;
  auto conv = conv_transpose(geo, cin, cout, n);
  cuda::PhaseSplitGeometry g, aligned;
  ASSERT_EQ(FusedPhaseConvEpilogue::derive(*conv, geo.s, g, shifted), std::nullopt);
  ASSERT_EQ(FusedPhaseConvEpilogue::derive(*conv, geo.s, aligned, false), std::nullopt);
  for (int d = 0; d < 3; ++d) {  // one padded input serves both forms
    EXPECT_EQ(g.front[d], aligned.front[d]) << "dim " << d;
    EXPECT_EQ(g.end[d], aligned.end[d]) << "dim " << d;
    EXPECT_LE(g.kp[d], aligned.kp[d]) << "dim " << d;
  }
  if (!shifted) {
    EXPECT_TRUE(cuda::phases_aligned(g));
  }
  expect_combined_conv_reproduces_the_relation(*conv, g);
}

INSTANTIATE_TEST_SUITE_P(
    Geometries, PhaseSplitDerivation,
    ::testing::Combine(
        ::testing::Values(Geometry{{3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}, {3, 4, 5}},  // the headline layer
                          Geometry{{3, 4, 3}, {2, 2, 1}, {1, 1, 0}, {1, 0, 0}, {3, 5, 4}},  // odd_sizes
                          Geometry{{2, 2, 2}, {2, 2, 2}, {0, 0, 0}, {0, 0, 0}, {2, 3, 4}},
                          Geometry{{4, 5, 3}, {2, 3, 3}, {1, 2, 1}, {0, 2, 2}, {3, 3, 4}},
                          Geometry{{3, 3}, {2, 2}, {1, 1}, {1, 1}, {5, 7}},                 // 2-D
                          Geometry{{1, 2, 3}, {3, 2, 1}, {0, 0, 1}, {2, 0, 0}, {2, 3, 5}},  // kernel < stride
                          Geometry{{4, 6, 5}, {2, 2, 3}, {1, 3, 1}, {0, 0, 0}, {3, 2, 4}},  // shifts save taps
                          Geometry{{2, 3}, {2, 3}, {1, 2}, {0, 1}, {4, 3}}),                // one tap per phase
        ::testing::Bool()),
    [](const auto& info) {
      return label(std::get<0>(info.param)) + (std::get<1>(info.param) ? "_shifted" : "_aligned");
    });

// The relation alone (Convolution::phase_split, no pool): outputs that are
// not a multiple of the stride (the last phases one output short) and a
// strided conv's input gradient, whose input may have positions no window
// reads (they get zeros). Transposed or not, each form.
class PhaseSplitRelation : public ::testing::TestWithParam<std::tuple<Geometry, bool, bool>> {};

TEST_P(PhaseSplitRelation, CombinedConvolutionReproducesTheBackwardDataRelation) {
  const auto& [geo, transposed, shifted] = GetParam();
  auto conv = testing::make_convolution(transposed, geo.k, geo.s, geo.p,
                                        transposed ? geo.op : std::vector<int64_t>(geo.k.size(), 0), geo.in, 3, 2, 2);
  cuda::PhaseSplitGeometry g;
  ASSERT_EQ(conv->phase_split(g, shifted), std::nullopt);
  expect_combined_conv_reproduces_the_relation(*conv, g);
}

INSTANTIATE_TEST_SUITE_P(
    Geometries, PhaseSplitRelation,
    ::testing::Combine(
        ::testing::Values(Geometry{{3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {0, 0, 0}, {5, 6, 7}},   // ragged
                          Geometry{{4, 2, 4}, {2, 2, 2}, {1, 0, 0}, {1, 0, 0}, {4, 5, 6}},   // random_6's kind
                          Geometry{{3, 4}, {2, 2}, {1, 1}, {1, 0}, {6, 7}},                  // 2-D, odd sizes
                          Geometry{{5, 3, 2}, {3, 2, 2}, {2, 1, 0}, {2, 1, 1}, {7, 5, 6}},   // stride 3, ragged
                          Geometry{{2, 3}, {3, 3}, {0, 1}, {1, 0}, {8, 10}},                 // kernel < stride
                          Geometry{{1, 3, 3}, {1, 2, 1}, {0, 1, 1}, {0, 1, 0}, {3, 9, 4}}),  // one strided dim
        ::testing::Bool(), ::testing::Bool()),
    [](const auto& info) {
      return label(std::get<0>(info.param)) + (std::get<1>(info.param) ? "_transposed" : "_conv") +
             (std::get<2>(info.param) ? "_shifted" : "_aligned");
    });

// A dilated relation has no phase split, nor one of a stride past the phase
// tables (the largest a network may give: refused at once, not tabled).
TEST(PhaseSplitRelation, RefusesWhatItCannotExpress) {
  auto refusal = [](const std::vector<int64_t>& stride, const std::vector<int64_t>& dilation) {
    ConvSpec spec;
    spec.dims = 2;
    spec.in_channels = 2;
    spec.out_channels = 3;
    spec.kernel = {3, 3};
    spec.stride = stride;
    spec.padding = {1, 1};
    spec.output_padding = {0, 0};
    spec.dilation = dilation;
    Convolution conv(LayerSpec{"conv2d", "c", "layers[0]", {}, spec}, spec);
    conv.setup({{1, 2, 9, 9}});
    cuda::PhaseSplitGeometry g;
    return conv.phase_split(g, true);
  };
  EXPECT_EQ(refusal({2, 2}, {2, 1}), "dilated");
  EXPECT_EQ(refusal({2, kMaxDimension}, {1, 1}), "too many taps per phase");
  EXPECT_EQ(refusal({65, 1}, {1, 1}), "too many taps per phase");
}

TEST(PhaseSplitDerivation, RefusesWhereItDoesNotApply) {
  cuda::PhaseSplitGeometry g;
  auto conv = conv_transpose({{3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}, {3, 4, 5}}, 3, 2, 1);
  EXPECT_EQ(FusedPhaseConvEpilogue::derive(*conv, {2, 2, 1}, g, false), "the pool kernel differs from the stride");
  EXPECT_EQ(FusedPhaseConvEpilogue::derive(*conv, {4, 4, 4}, g, true), "the pool kernel differs from the stride");
}

// k4 s2 p1 (DCGAN's upsampling): each phase has 2 taps per dim, offsets -1..0
// and 0..1. Aligned, the combined kernel spans 3; shifted, 2, and the second
// phase reads one further on.
TEST(PhaseSplitDerivation, ShiftedPhasesDropTheZeroTaps) {
  auto conv = conv_transpose({{4, 4, 4}, {2, 2, 2}, {1, 1, 1}, {0, 0, 0}, {3, 4, 5}}, 3, 2, 1);
  cuda::PhaseSplitGeometry aligned, shifted;
  ASSERT_EQ(FusedPhaseConvEpilogue::derive(*conv, {2, 2, 2}, aligned, false), std::nullopt);
  ASSERT_EQ(FusedPhaseConvEpilogue::derive(*conv, {2, 2, 2}, shifted, true), std::nullopt);
  for (int d = 0; d < 3; ++d) {
    EXPECT_EQ(aligned.kp[d], 3);
    EXPECT_EQ(shifted.kp[d], 2);
    EXPECT_EQ(shifted.shift[d][0], 0);
    EXPECT_EQ(shifted.shift[d][1], 1);
    EXPECT_EQ(shifted.front[d], 1);
  }
  EXPECT_FALSE(cuda::phases_aligned(shifted));
}

}  // namespace
}  // namespace anvil
