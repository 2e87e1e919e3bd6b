// Tests of the CPU reference kernels (kernels/cpu).
//
// Every backward is checked in float64 against central finite differences of
// its forward, for L = sum(out * R) with a fixed random R. Forwards are checked
// independently: conv against a naive formula and adjoint identities, pooling
// and the loss against hand-made examples, SGD against a scalar re-statement of
// torch.optim.SGD and hand-computed trajectories. Outputs are poisoned before
// each call to show overwrite versus accumulate. Inputs are never all zero.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/add.hpp"
#include "kernels/cpu/channel.hpp"
#include "kernels/cpu/conv.hpp"
#include "kernels/cpu/pointwise.hpp"
#include "kernels/cpu/pool.hpp"

namespace {

using anvil::PointwiseOp;
using anvil::cpu::ConvGeometry;
using anvil::cpu::Dims3;
using anvil::cpu::PoolGeometry;
namespace cpu = anvil::cpu;

using VecD = std::vector<double>;
using VecF = std::vector<float>;

constexpr double kFdStep = 1e-6;
constexpr double kFdRtol = 1e-6;
constexpr float kPoison = 12345.f;

int64_t vol(const Dims3& d) { return d[0] * d[1] * d[2]; }

VecD random_vec(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  VecD v(static_cast<size_t>(n));
  for (double& x : v) x = u(rng);
  return v;
}

VecF to_float(const VecD& v) { return VecF(v.begin(), v.end()); }
// The double image of float-rounded values, so float and double runs see the same inputs.
VecD rounded(const VecD& v) {
  VecD r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = static_cast<float>(v[i]);
  return r;
}

double dot(const VecD& a, const VecD& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central differences of loss() with respect to every element of x (perturbed in place).
VecD numeric_grad(VecD& x, const std::function<double()>& loss, double h = kFdStep) {
  VecD g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double orig = x[i];
    x[i] = orig + h;
    const double lp = loss();
    x[i] = orig - h;
    const double lm = loss();
    x[i] = orig;
    g[i] = (lp - lm) / (2 * h);
  }
  return g;
}

// |got - want| <= rtol * max(1, |want|) element-wise; reports the first few misses.
template <class A, class B>
void expect_all_near(const std::vector<A>& got, const std::vector<B>& want, double rtol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int misses = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    const double tol = rtol * std::max(1.0, std::abs(w));
    if (!(std::abs(g - w) <= tol)) {
      if (++misses <= 5) ADD_FAILURE() << what << ": element " << i << " got " << g << " want " << w;
    }
  }
  EXPECT_EQ(misses, 0) << what << ": " << misses << " of " << got.size() << " elements differ";
}

// Checks that write(out) overwrites every element: identical, finite results
// whether out starts as NaN or as a large poison value.
template <class T>
void expect_overwrites(size_t n, const std::function<void(T*)>& write, const std::string& what) {
  std::vector<T> from_nan(n, std::numeric_limits<T>::quiet_NaN()), from_poison(n, static_cast<T>(kPoison));
  write(from_nan.data());
  write(from_poison.data());
  int misses = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(from_nan[i]) || from_nan[i] != from_poison[i]) {
      if (++misses <= 5)
        ADD_FAILURE() << what << ": element " << i << " not overwritten (" << from_nan[i] << " vs " << from_poison[i]
                      << ")";
    }
  }
  EXPECT_EQ(misses, 0) << what;
}

// Checks accumulate semantics: write(out, false) overwrites a NaN buffer, and
// write(out, true) on a non-zero buffer P gives P + (the overwritten result).
template <class T>
void expect_accumulates(size_t n, const std::function<void(T*, bool)>& write, double rtol, const std::string& what) {
  expect_overwrites<T>(
      n, [&](T* out) { write(out, false); }, what + " (accumulate=false)");
  std::vector<T> fresh(n, std::numeric_limits<T>::quiet_NaN());
  write(fresh.data(), false);
  const VecD base = random_vec(static_cast<int64_t>(n), 999);
  std::vector<T> acc(n);
  VecD want(n);
  for (size_t i = 0; i < n; ++i) {
    acc[i] = static_cast<T>(base[i] + 3.0);  // in [2, 4]: non-zero, and float keeps precision
    want[i] = static_cast<double>(acc[i]) + static_cast<double>(fresh[i]);
  }
  write(acc.data(), true);
  expect_all_near(acc, want, rtol, what + " (accumulate=true)");
}

// ---------------------------------------------------------------------------
// Convolution

struct ConvCase {
  std::string name;
  ConvGeometry g;
};

Dims3 conv_out(const Dims3& a, const Dims3& k, const Dims3& s, const Dims3& p, const Dims3& d) {
  Dims3 b{};
  for (int i = 0; i < 3; ++i) b[i] = (a[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) / s[i] + 1;
  return b;
}

// A conv: A (input) of size a, B (output) derived.
ConvCase conv_case(std::string name, int64_t n, int64_t ca, int64_t cb, Dims3 a, Dims3 k, Dims3 s, Dims3 p, Dims3 d) {
  ConvGeometry g;
  g.n = n, g.ca = ca, g.cb = cb, g.a = a, g.k = k, g.stride = s, g.pad = p, g.dilation = d;
  g.b = conv_out(a, k, s, p, d);
  return {std::move(name), g};
}

// A transposed conv: B (input) of size b, A (output) as torch's ConvTranspose with output_padding op.
ConvCase transposed_case(std::string name, int64_t n, int64_t ca, int64_t cb, Dims3 b, Dims3 k, Dims3 s, Dims3 p,
                         Dims3 d, Dims3 op) {
  ConvGeometry g;
  g.n = n, g.ca = ca, g.cb = cb, g.b = b, g.k = k, g.stride = s, g.pad = p, g.dilation = d;
  for (int i = 0; i < 3; ++i) g.a[i] = (b[i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1 + op[i];
  // The same relation must hold read forwards.
  EXPECT_EQ(conv_out(g.a, k, s, p, d), b) << name;
  return {std::move(name), g};
}

std::vector<ConvCase> conv_cases() {
  return {
      conv_case("3d_plain", 2, 3, 5, {3, 4, 5}, {2, 3, 2}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}),
      conv_case("3d_stride_pad_dilation", 3, 1, 3, {5, 6, 7}, {3, 2, 3}, {2, 1, 3}, {1, 0, 1}, {1, 2, 1}),
      conv_case("3d_kernel4_pad2", 2, 3, 1, {4, 5, 6}, {4, 4, 3}, {1, 2, 1}, {2, 2, 1}, {1, 1, 2}),
      conv_case("3d_stride3_leaves_gaps", 2, 3, 3, {4, 5, 7}, {2, 2, 2}, {3, 3, 3}, {0, 0, 0}, {1, 1, 1}),
      conv_case("2d_lifted", 2, 5, 3, {1, 7, 6}, {1, 4, 3}, {1, 2, 2}, {0, 2, 1}, {1, 1, 2}),
      conv_case("2d_lifted_1x1", 3, 5, 1, {1, 3, 5}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}),
      transposed_case("transposed_3d_k3_s2_outpad1", 2, 3, 5, {2, 3, 3}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1},
                      {1, 1, 1}),
      transposed_case("transposed_2d_lifted_dilated", 3, 1, 3, {1, 3, 4}, {1, 3, 2}, {1, 2, 3}, {0, 1, 0}, {1, 2, 1},
                      {0, 1, 2}),
  };
}

// The reduced-size network's 3-D transposed conv: (2,16,4,8,8) -> (2,32,8,16,16).
ConvGeometry reduced_transposed_geometry() {
  return transposed_case("reduced_net", 2, 32, 16, {4, 8, 8}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}).g;
}

struct ConvData {
  VecD a, w, b;  // input, weight, and a random tensor shaped like the output
};
ConvData conv_data(const ConvGeometry& g, uint32_t seed) {
  return {random_vec(g.n * g.ca * vol(g.a), seed), random_vec(g.cb * g.ca * vol(g.k), seed + 1),
          random_vec(g.n * g.cb * vol(g.b), seed + 2)};
}

// Direct evaluation of the defining relation, loop by loop, with bounds checks.
VecD naive_conv(const VecD& a, const VecD& w, const ConvGeometry& g) {
  VecD b(static_cast<size_t>(g.n * g.cb * vol(g.b)), 0.0);
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t cb = 0; cb < g.cb; ++cb)
      for (int64_t od = 0; od < g.b[0]; ++od)
        for (int64_t oh = 0; oh < g.b[1]; ++oh)
          for (int64_t ow = 0; ow < g.b[2]; ++ow) {
            double s = 0;
            for (int64_t ca = 0; ca < g.ca; ++ca)
              for (int64_t td = 0; td < g.k[0]; ++td)
                for (int64_t th = 0; th < g.k[1]; ++th)
                  for (int64_t tw = 0; tw < g.k[2]; ++tw) {
                    const int64_t id = od * g.stride[0] - g.pad[0] + td * g.dilation[0];
                    const int64_t ih = oh * g.stride[1] - g.pad[1] + th * g.dilation[1];
                    const int64_t iw = ow * g.stride[2] - g.pad[2] + tw * g.dilation[2];
                    if (id < 0 || id >= g.a[0] || ih < 0 || ih >= g.a[1] || iw < 0 || iw >= g.a[2]) continue;
                    s += a[(((n * g.ca + ca) * g.a[0] + id) * g.a[1] + ih) * g.a[2] + iw] *
                         w[(((cb * g.ca + ca) * g.k[0] + td) * g.k[1] + th) * g.k[2] + tw];
                  }
            b[(((n * g.cb + cb) * g.b[0] + od) * g.b[1] + oh) * g.b[2] + ow] = s;
          }
  return b;
}

VecD conv_fwd(const VecD& a, const VecD& w, const ConvGeometry& g) {
  VecD b(static_cast<size_t>(g.n * g.cb * vol(g.b)));
  cpu::conv_forward(a.data(), w.data(), b.data(), g);
  return b;
}
VecD conv_bwd_data(const VecD& db, const VecD& w, const ConvGeometry& g) {
  VecD da(static_cast<size_t>(g.n * g.ca * vol(g.a)));
  cpu::conv_backward_data(db.data(), w.data(), da.data(), g, false);
  return da;
}
VecD conv_bwd_filter(const VecD& a, const VecD& db, const ConvGeometry& g) {
  VecD dw(static_cast<size_t>(g.cb * g.ca * vol(g.k)));
  cpu::conv_backward_filter(a.data(), db.data(), dw.data(), g);
  return dw;
}

TEST(CpuReferenceConv, ForwardMatchesNaiveFormula) {
  uint32_t seed = 10;
  for (const ConvCase& c : conv_cases()) {
    SCOPED_TRACE(c.name);
    const ConvData d = conv_data(c.g, seed += 10);
    expect_all_near(conv_fwd(d.a, d.w, c.g), naive_conv(d.a, d.w, c.g), 1e-12, "conv_forward vs naive");
  }
}

TEST(CpuReferenceConv, BackwardDataIsAdjointOfForward) {
  std::vector<ConvCase> cases = conv_cases();
  cases.push_back({"reduced_net", reduced_transposed_geometry()});
  uint32_t seed = 100;
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(c.name);
    const ConvData d = conv_data(c.g, seed += 10);
    // <conv(a), b> == <a, conv^T(b)>
    const double lhs = dot(conv_fwd(d.a, d.w, c.g), d.b);
    const double rhs = dot(d.a, conv_bwd_data(d.b, d.w, c.g));
    EXPECT_NEAR(lhs, rhs, 1e-10 * std::max(1.0, std::abs(lhs)));
  }
}

TEST(CpuReferenceConv, BackwardFilterIsAdjointOfForwardInWeight) {
  std::vector<ConvCase> cases = conv_cases();
  cases.push_back({"reduced_net", reduced_transposed_geometry()});
  uint32_t seed = 200;
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(c.name);
    const ConvData d = conv_data(c.g, seed += 10);
    // <conv(a, w), b> == <w, dW(a, b)>
    const double lhs = dot(conv_fwd(d.a, d.w, c.g), d.b);
    const double rhs = dot(d.w, conv_bwd_filter(d.a, d.b, c.g));
    EXPECT_NEAR(lhs, rhs, 1e-10 * std::max(1.0, std::abs(lhs)));
  }
}

TEST(CpuReferenceConv, ConvGradientsMatchFiniteDifferences) {
  uint32_t seed = 300;
  for (const ConvCase& c : conv_cases()) {
    SCOPED_TRACE(c.name);
    ConvData d = conv_data(c.g, seed += 10);
    const VecD& r = d.b;  // L = sum(conv(a, w) * r)
    auto loss = [&] { return dot(conv_fwd(d.a, d.w, c.g), r); };
    const VecD da = conv_bwd_data(r, d.w, c.g);
    const VecD dw = conv_bwd_filter(d.a, r, c.g);
    expect_all_near(da, numeric_grad(d.a, loss), kFdRtol, "dL/dA");
    expect_all_near(dw, numeric_grad(d.w, loss), kFdRtol, "dL/dW");
  }
}

// Used as a transposed conv, conv_backward_data is the forward; its gradients
// are conv_forward (input) and conv_backward_filter with A and B swapped in role.
TEST(CpuReferenceConv, TransposedConvGradientsMatchFiniteDifferences) {
  uint32_t seed = 400;
  for (const ConvCase& c : conv_cases()) {
    SCOPED_TRACE(c.name);
    ConvData d = conv_data(c.g, seed += 10);
    VecD x = d.b;         // transposed-conv input, shaped like B
    const VecD& r = d.a;  // L = sum(convT(x, w) * r), r shaped like A
    auto loss = [&] { return dot(conv_bwd_data(x, d.w, c.g), r); };
    const VecD dx = conv_fwd(r, d.w, c.g);
    const VecD dw = conv_bwd_filter(r, x, c.g);
    expect_all_near(dx, numeric_grad(x, loss), kFdRtol, "dL/dx");
    expect_all_near(dw, numeric_grad(d.w, loss), kFdRtol, "dL/dW");
  }
}

TEST(CpuReferenceConv, OutputsAreOverwrittenAndForwardAndBackwardDataAccumulate) {
  uint32_t seed = 500;
  for (const ConvCase& c : conv_cases()) {
    SCOPED_TRACE(c.name);
    const ConvData d = conv_data(c.g, seed += 10);
    const VecF a = to_float(d.a), w = to_float(d.w), b = to_float(d.b);
    const ConvGeometry& g = c.g;
    expect_overwrites<float>(
        b.size(), [&](float* out) { cpu::conv_forward(a.data(), w.data(), out, g); }, "conv_forward");
    expect_overwrites<float>(
        w.size(), [&](float* out) { cpu::conv_backward_filter(a.data(), b.data(), out, g); }, "conv_backward_filter");
    expect_accumulates<float>(
        a.size(), [&](float* out, bool acc) { cpu::conv_backward_data(b.data(), w.data(), out, g, acc); }, 1e-6,
        "conv_backward_data");
    expect_accumulates<float>(
        b.size(), [&](float* out, bool acc) { cpu::conv_forward(a.data(), w.data(), out, g, acc); }, 1e-6,
        "conv_forward");
    expect_accumulates<double>(
        d.a.size(), [&](double* out, bool acc) { cpu::conv_backward_data(d.b.data(), d.w.data(), out, g, acc); }, 1e-14,
        "conv_backward_data<double>");
  }
}

// The forward and the adjoint in A sum an output plane a box of at most 2^14
// elements at a time (kernels/cpu/conv.cpp): planes of several boxes of whole
// slabs, of whole rows, and of pieces of rows, each with a short last box.
TEST(CpuReferenceConv, PlanesOfSeveralBoxesMatchTheNaiveFormulaAdjointAndAccumulate) {
  const std::vector<ConvCase> cases = {
      conv_case("boxes_of_slabs", 2, 2, 2, {61, 23, 29}, {3, 2, 3}, {2, 1, 1}, {1, 0, 2}, {1, 2, 1}),
      conv_case("boxes_of_rows", 1, 2, 1, {2, 150, 131}, {1, 3, 2}, {1, 1, 1}, {0, 1, 0}, {1, 1, 2}),
      conv_case("pieces_of_rows", 1, 1, 2, {1, 3, 40001}, {1, 2, 3}, {1, 1, 1}, {0, 1, 1}, {1, 1, 1}),
      conv_case("pieces_of_rows_strided", 1, 1, 1, {1, 2, 50000}, {1, 1, 4}, {1, 1, 3}, {0, 0, 2}, {1, 1, 2}),
  };
  uint32_t seed = 700;
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(c.name);
    ASSERT_GT(vol(c.g.b), int64_t{1} << 14);
    ASSERT_GT(vol(c.g.a), int64_t{1} << 14);
    const ConvData d = conv_data(c.g, seed += 10);
    const VecD want = naive_conv(d.a, d.w, c.g);
    expect_all_near(conv_fwd(d.a, d.w, c.g), want, 1e-12, "conv_forward vs naive");
    const double lhs = dot(want, d.b), rhs = dot(d.a, conv_bwd_data(d.b, d.w, c.g));
    EXPECT_NEAR(lhs, rhs, 1e-10 * std::max(1.0, std::abs(lhs)));
    // Accumulating: onto the random b, then onto the random a.
    VecD b = d.b, a = d.a;
    cpu::conv_forward(d.a.data(), d.w.data(), b.data(), c.g, true);
    VecD b_want = d.b;
    for (size_t i = 0; i < b_want.size(); ++i) b_want[i] += want[i];
    expect_all_near(b, b_want, 1e-12, "conv_forward accumulating");
    cpu::conv_backward_data(d.b.data(), d.w.data(), a.data(), c.g, true);
    VecD a_want = conv_bwd_data(d.b, d.w, c.g);
    for (size_t i = 0; i < a_want.size(); ++i) a_want[i] += d.a[i];
    expect_all_near(a, a_want, 1e-12, "conv_backward_data accumulating");
  }
}

// A plane with no elements has nothing to sum: the kernels return (they once divided by its size).
TEST(CpuReferenceConv, EmptyPlanesAreNoWork) {
  for (const Dims3& empty : {Dims3{0, 3, 4}, Dims3{2, 0, 4}, Dims3{2, 3, 0}}) {
    ConvGeometry g;
    g.n = 1, g.ca = 2, g.cb = 2, g.a = empty, g.b = empty;
    const std::vector<float> w(static_cast<size_t>(g.ca * g.cb), 1.f);
    float a = 1.f, b = 2.f;  // one element each, never touched
    cpu::conv_forward(&a, w.data(), &b, g);
    cpu::conv_backward_data(&b, w.data(), &a, g, false);
    EXPECT_EQ(a, 1.f);
    EXPECT_EQ(b, 2.f);
  }
}

TEST(CpuReferenceConv, BackwardDataWritesZeroWhereNoTapReaches) {
  // Stride 3 with kernel 2: A positions w = 2, 5, 6 feed no output.
  const ConvCase c = conv_cases()[3];
  ASSERT_EQ(c.name, "3d_stride3_leaves_gaps");
  const ConvData d = conv_data(c.g, 77);
  const VecF w = to_float(d.w), b = to_float(d.b);
  VecF da(d.a.size(), std::numeric_limits<float>::quiet_NaN());
  cpu::conv_backward_data(b.data(), w.data(), da.data(), c.g, false);
  for (size_t i = 0; i < da.size(); ++i) {
    const int64_t iw = static_cast<int64_t>(i) % c.g.a[2];
    const int64_t ih = (static_cast<int64_t>(i) / c.g.a[2]) % c.g.a[1];
    const int64_t id = (static_cast<int64_t>(i) / (c.g.a[2] * c.g.a[1])) % c.g.a[0];
    const bool reached = iw % 3 < 2 && iw < 5 && ih % 3 < 2 && ih < 5 && id % 3 < 2 && id < 2;
    if (reached)
      EXPECT_NE(da[i], 0.f) << i;
    else
      EXPECT_EQ(da[i], 0.f) << i;
  }
}

TEST(CpuReferenceConv, FloatMatchesDouble) {
  std::vector<ConvCase> cases = conv_cases();
  cases.push_back({"reduced_net", reduced_transposed_geometry()});
  uint32_t seed = 600;
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(c.name);
    ConvData d = conv_data(c.g, seed += 10);
    d.a = rounded(d.a), d.w = rounded(d.w), d.b = rounded(d.b);
    const VecF a = to_float(d.a), w = to_float(d.w), b = to_float(d.b);
    VecF bf(b.size()), af(a.size()), wf(w.size());
    cpu::conv_forward(a.data(), w.data(), bf.data(), c.g);
    cpu::conv_backward_data(b.data(), w.data(), af.data(), c.g, false);
    cpu::conv_backward_filter(a.data(), b.data(), wf.data(), c.g);
    expect_all_near(bf, conv_fwd(d.a, d.w, c.g), 1e-6, "conv_forward<float>");
    expect_all_near(af, conv_bwd_data(d.b, d.w, c.g), 1e-6, "conv_backward_data<float>");
    expect_all_near(wf, conv_bwd_filter(d.a, d.b, c.g), 1e-6, "conv_backward_filter<float>");
  }
}

// ---------------------------------------------------------------------------
// Bias

TEST(CpuReferenceBias, ForwardAddsPerChannel) {
  const int64_t n = 2, c = 3, s = 5;
  const VecD y0 = random_vec(n * c * s, 1), bias = random_vec(c, 2);
  VecD y = y0;
  cpu::bias_forward(y.data(), bias.data(), n, c, s);
  for (int64_t i = 0; i < n * c * s; ++i) EXPECT_EQ(y[i], y0[i] + bias[(i / s) % c]) << i;
}

TEST(CpuReferenceBias, BackwardMatchesFiniteDifferences) {
  struct Shape {
    int64_t n, c, s;
  };
  uint32_t seed = 20;
  for (const Shape sh : {Shape{2, 3, 60}, Shape{3, 5, 7}, Shape{1, 1, 9}, Shape{2, 5, 1}}) {
    SCOPED_TRACE(std::to_string(sh.n) + "x" + std::to_string(sh.c) + "x" + std::to_string(sh.s));
    const VecD y0 = random_vec(sh.n * sh.c * sh.s, seed++), r = random_vec(sh.n * sh.c * sh.s, seed++);
    VecD bias = random_vec(sh.c, seed++);
    auto loss = [&] {
      VecD y = y0;
      cpu::bias_forward(y.data(), bias.data(), sh.n, sh.c, sh.s);
      return dot(y, r);
    };
    VecD db(bias.size());
    cpu::bias_backward(r.data(), db.data(), sh.n, sh.c, sh.s);
    expect_all_near(db, numeric_grad(bias, loss), kFdRtol, "dL/dbias");

    const VecF rf = to_float(rounded(r));
    expect_overwrites<float>(
        bias.size(), [&](float* out) { cpu::bias_backward(rf.data(), out, sh.n, sh.c, sh.s); }, "bias_backward");
    VecF dbf(bias.size());
    cpu::bias_backward(rf.data(), dbf.data(), sh.n, sh.c, sh.s);
    VecD dbd(bias.size());
    const VecD rr = rounded(r);
    cpu::bias_backward(rr.data(), dbd.data(), sh.n, sh.c, sh.s);
    expect_all_near(dbf, dbd, 1e-6, "bias_backward<float>");
  }
}

// ---------------------------------------------------------------------------
// Pointwise activations: every op of ANVIL_POINTWISE_OPS, through one
// parameterised suite. A new op needs only its formula in reference_forward.

// The op's forward written directly with std:: functions, in double.
double reference_forward(PointwiseOp op, double x, double param) {
  switch (op) {
    case PointwiseOp::LeakyRelu: return x > 0 ? x : param * x;
    case PointwiseOp::Sigmoid: return 1.0 / (1.0 + std::exp(-x));
    case PointwiseOp::Tanh: return std::tanh(x);
  }
  ADD_FAILURE() << "no reference formula for " << anvil::pointwise_op_name(op);
  return 0;
}

// Slopes for leaky_relu (relu is 0); the other ops ignore them.
constexpr double kPointwiseParams[] = {0.0, 0.01, 0.2, 1.5};

// Random values in [-scale, scale], none within 1e-3 of leaky_relu's kink at 0.
VecD pointwise_inputs(int64_t n, uint32_t seed, double scale = 4.0) {
  VecD x = random_vec(n, seed);
  for (double& v : x) v = (v < 0 ? std::min(v, -1e-3) : std::max(v, 1e-3)) * scale;
  return x;
}

template <class T>
std::vector<T> pointwise_fwd(PointwiseOp op, T param, const std::vector<T>& x) {
  std::vector<T> y(x.size());
  cpu::pointwise_forward(op, param, x.data(), y.data(), static_cast<int64_t>(x.size()));
  return y;
}

// dx for (x, y, dy), with the tensor the op does not read poisoned with NaN,
// so that a wrong kBackwardUsesOutput shows.
template <class T>
std::vector<T> pointwise_bwd(PointwiseOp op, T param, const std::vector<T>& x, const std::vector<T>& y,
                             const std::vector<T>& dy) {
  const std::vector<T> nan(x.size(), std::numeric_limits<T>::quiet_NaN());
  const bool uses_y = anvil::pointwise_backward_uses_output(op);
  std::vector<T> dx(x.size());
  cpu::pointwise_backward(op, param, uses_y ? nan.data() : x.data(), uses_y ? y.data() : nan.data(), dy.data(),
                          dx.data(), static_cast<int64_t>(x.size()), false);
  return dx;
}

class CpuReferencePointwise : public ::testing::TestWithParam<PointwiseOp> {};

TEST_P(CpuReferencePointwise, ForwardMatchesFormula) {
  const PointwiseOp op = GetParam();
  const int64_t count = 1001;
  const VecD x = rounded(pointwise_inputs(count, 31, 8.0));
  for (double param : kPointwiseParams) {
    SCOPED_TRACE(param);
    VecD want(x.size());
    for (size_t i = 0; i < x.size(); ++i) want[i] = reference_forward(op, x[i], param);
    expect_all_near(pointwise_fwd(op, param, x), want, 1e-15, "forward<double>");
    expect_all_near(pointwise_fwd(op, static_cast<float>(param), to_float(x)), want, 1e-6, "forward<float>");
  }
}

TEST_P(CpuReferencePointwise, BackwardMatchesFiniteDifferences) {
  const PointwiseOp op = GetParam();
  const int64_t count = 3 * 5 * 7;
  uint32_t seed = 32;
  for (double param : kPointwiseParams) {
    SCOPED_TRACE(param);
    VecD x = pointwise_inputs(count, seed++);
    const VecD r = random_vec(count, seed++);
    auto loss = [&] { return dot(pointwise_fwd(op, param, x), r); };
    const VecD dx = pointwise_bwd(op, param, x, pointwise_fwd(op, param, x), r);
    expect_all_near(dx, numeric_grad(x, loss), kFdRtol, "dL/dx");
  }
}

TEST_P(CpuReferencePointwise, FloatMatchesDouble) {
  const PointwiseOp op = GetParam();
  const int64_t count = 257;
  const VecD x = rounded(pointwise_inputs(count, 33)), dy = rounded(random_vec(count, 34));
  for (double param : kPointwiseParams) {
    SCOPED_TRACE(param);
    const float pf = static_cast<float>(param);
    const VecF yf = pointwise_fwd(op, pf, to_float(x));
    expect_all_near(pointwise_bwd(op, pf, to_float(x), yf, to_float(dy)),
                    pointwise_bwd(op, param, x, pointwise_fwd(op, param, x), dy), 1e-6, "backward<float>");
  }
}

TEST_P(CpuReferencePointwise, OverwriteAccumulateAndInPlace) {
  const PointwiseOp op = GetParam();
  const int64_t count = 37;
  const VecF x = to_float(pointwise_inputs(count, 35)), dy = to_float(random_vec(count, 36));
  const VecF y = pointwise_fwd(op, 0.1f, x);
  expect_overwrites<float>(
      count, [&](float* out) { cpu::pointwise_forward(op, 0.1f, x.data(), out, count); }, "pointwise_forward");
  expect_accumulates<float>(
      count,
      [&](float* out, bool acc) { cpu::pointwise_backward(op, 0.1f, x.data(), y.data(), dy.data(), out, count, acc); },
      1e-6, "pointwise_backward");
  // In place: y over x, dx over dy.
  VecF io = x;
  cpu::pointwise_forward(op, 0.1f, io.data(), io.data(), count);
  EXPECT_EQ(io, y);
  io = dy;
  cpu::pointwise_backward(op, 0.1f, x.data(), y.data(), io.data(), io.data(), count, false);
  EXPECT_EQ(io, pointwise_bwd(op, 0.1f, x, y, dy));
}

TEST_P(CpuReferencePointwise, ExtremeInputsGiveFiniteResults) {
  const PointwiseOp op = GetParam();
  const VecD x{-1e4, -104.0, -100.0, -89.0, 89.0, 100.0, 1e4};
  const VecD dy(x.size(), 1.0);
  for (double v : pointwise_bwd(op, 0.1, x, pointwise_fwd(op, 0.1, x), dy)) EXPECT_TRUE(std::isfinite(v)) << v;
  const VecF xf = to_float(x), dyf = to_float(dy), yf = pointwise_fwd(op, 0.1f, xf);
  for (float v : yf) EXPECT_TRUE(std::isfinite(v)) << v;
  for (float v : pointwise_bwd(op, 0.1f, xf, yf, dyf)) EXPECT_TRUE(std::isfinite(v)) << v;
}

TEST_P(CpuReferencePointwise, NameRoundTrips) {
  const PointwiseOp op = GetParam();
  EXPECT_EQ(anvil::pointwise_op_from_name(anvil::pointwise_op_name(op)), op);
}

INSTANTIATE_TEST_SUITE_P(AllOps, CpuReferencePointwise, ::testing::ValuesIn(anvil::kAllPointwiseOps),
                         [](const ::testing::TestParamInfo<PointwiseOp>& info) {
                           return std::string(anvil::pointwise_op_name(info.param));
                         });

TEST(CpuReferencePointwiseNames, UnknownNameHasNoOp) {
  EXPECT_FALSE(anvil::pointwise_op_from_name("relu").has_value());  // leaky_relu with slope 0, not an op of its own
  EXPECT_FALSE(anvil::pointwise_op_from_name("").has_value());
}

TEST(CpuReferenceLeakyRelu, ZeroInputTakesSlopeBranchAsInPyTorch) {
  const VecD x{0.0, -0.0, 1.5, -2.0, 1e-30, -1e-30};
  const VecD dy{3.0, 3.0, 3.0, 3.0, 3.0, 3.0};
  const VecD y = pointwise_fwd(PointwiseOp::LeakyRelu, 0.1, x);
  const VecD dx = pointwise_bwd(PointwiseOp::LeakyRelu, 0.1, x, y, dy);
  const VecD want_y{0.0, 0.0, 1.5, -0.2, 1e-30, -1e-31};
  const VecD want_dx{0.3, 0.3, 3.0, 0.3, 3.0, 0.3};
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_DOUBLE_EQ(y[i], want_y[i]) << i;
    EXPECT_DOUBLE_EQ(dx[i], want_dx[i]) << i;
  }
  // relu (slope 0) passes no gradient at exactly 0.
  const VecD dx0 = pointwise_bwd(PointwiseOp::LeakyRelu, 0.0, x, y, dy);
  EXPECT_EQ(dx0[0], 0.0);
  EXPECT_EQ(dx0[2], 3.0);
}

// relu (slope 0) of -inf is zero, not 0 * -inf = NaN (torch.relu(-inf) is 0),
// and the same zero as relu of a finite x < 0; a non-zero slope keeps -inf;
// NaN stays NaN. The gradient at -inf is slope * dy.
template <class T>
void expect_leaky_relu_infinities_and_nan() {
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  const std::vector<T> x{-inf, T(-1), inf, nan};
  const std::vector<T> dy(x.size(), T(3));
  const std::vector<T> relu = pointwise_fwd(PointwiseOp::LeakyRelu, T(0), x);
  EXPECT_EQ(relu[0], T(0));
  EXPECT_EQ(std::signbit(relu[0]), std::signbit(relu[1]));  // the -0 of 0 * -1
  EXPECT_EQ(relu[2], inf);
  EXPECT_TRUE(std::isnan(relu[3]));
  const std::vector<T> relu_dx = pointwise_bwd(PointwiseOp::LeakyRelu, T(0), x, relu, dy);
  EXPECT_EQ(relu_dx[0], T(0));
  EXPECT_EQ(relu_dx[2], T(3));
  const T slope = T(0.2);
  const std::vector<T> leaky = pointwise_fwd(PointwiseOp::LeakyRelu, slope, x);
  EXPECT_EQ(leaky[0], -inf);
  EXPECT_EQ(leaky[1], slope * T(-1));
  EXPECT_EQ(leaky[2], inf);
  EXPECT_TRUE(std::isnan(leaky[3]));
  const std::vector<T> leaky_dx = pointwise_bwd(PointwiseOp::LeakyRelu, slope, x, leaky, dy);
  EXPECT_EQ(leaky_dx[0], slope * T(3));
  // A slope of -0 (negative_slope: -0.0) is a relu too.
  const std::vector<T> neg_zero = pointwise_fwd(PointwiseOp::LeakyRelu, T(-0.0), x);
  EXPECT_EQ(neg_zero[0], T(0));
  EXPECT_EQ(std::signbit(neg_zero[0]), std::signbit(neg_zero[1]));
  EXPECT_TRUE(std::isnan(neg_zero[3]));
}

TEST(CpuReferenceLeakyRelu, ReluOfMinusInfIsZeroAndNaNStaysNaN) {
  {
    SCOPED_TRACE("float");
    expect_leaky_relu_infinities_and_nan<float>();
  }
  {
    SCOPED_TRACE("double");
    expect_leaky_relu_infinities_and_nan<double>();
  }
}

TEST(CpuReferenceSigmoid, SaturatesWithoutOverflow) {
  const VecF y = pointwise_fwd(PointwiseOp::Sigmoid, 0.f, VecF{-100.f, 100.f});
  EXPECT_EQ(y[1], 1.f);
  EXPECT_GT(y[0], 0.f);  // exp(-100) is a float denormal: still resolved
  EXPECT_NEAR(y[0], std::exp(-100.0), 2e-45);
  const VecD yd = pointwise_fwd(PointwiseOp::Sigmoid, 0.0, VecD{-100.0, 100.0});
  EXPECT_NEAR(yd[0], std::exp(-100.0), 1e-15 * std::exp(-100.0));
  EXPECT_EQ(yd[1], 1.0);
}

// ---------------------------------------------------------------------------
// Channel scale

TEST(CpuReferenceChannelScale, BackwardMatchesFiniteDifferences) {
  struct Shape {
    int64_t n, c, s;
  };
  uint32_t seed = 50;
  for (const Shape sh : {Shape{2, 3, 60}, Shape{3, 5, 7}, Shape{1, 1, 9}}) {
    SCOPED_TRACE(std::to_string(sh.n) + "x" + std::to_string(sh.c) + "x" + std::to_string(sh.s));
    const int64_t count = sh.n * sh.c * sh.s;
    VecD x = random_vec(count, seed++), m = random_vec(sh.c, seed++);
    const VecD r = random_vec(count, seed++);
    auto loss = [&] {
      VecD y(x.size());
      cpu::channel_scale_forward(x.data(), m.data(), y.data(), sh.n, sh.c, sh.s);
      return dot(y, r);
    };
    VecD dx(x.size()), dm(m.size());
    cpu::channel_scale_backward(x.data(), m.data(), r.data(), dx.data(), dm.data(), sh.n, sh.c, sh.s, false);
    expect_all_near(dx, numeric_grad(x, loss), kFdRtol, "dL/dx");
    expect_all_near(dm, numeric_grad(m, loss), kFdRtol, "dL/dm");

    // Without dx only dm is produced, and it is the same.
    VecD dm_only(m.size());
    cpu::channel_scale_backward(x.data(), m.data(), r.data(), static_cast<double*>(nullptr), dm_only.data(), sh.n, sh.c,
                                sh.s, false);
    EXPECT_EQ(dm_only, dm);
  }
}

TEST(CpuReferenceChannelScale, OverwriteAndAccumulateDxWhileDmIsOverwritten) {
  const int64_t n = 2, c = 3, s = 11, count = n * c * s;
  const VecD xd = rounded(random_vec(count, 60)), md = rounded(random_vec(c, 61)), dyd = rounded(random_vec(count, 62));
  const VecF x = to_float(xd), m = to_float(md), dy = to_float(dyd);
  expect_overwrites<float>(
      count, [&](float* out) { cpu::channel_scale_forward(x.data(), m.data(), out, n, c, s); },
      "channel_scale_forward");
  VecF dm_scratch(c);
  expect_accumulates<float>(
      count,
      [&](float* out, bool acc) {
        cpu::channel_scale_backward(x.data(), m.data(), dy.data(), out, dm_scratch.data(), n, c, s, acc);
      },
      1e-6, "channel_scale_backward dx");
  VecF dx_scratch(count, 1.f);
  for (bool acc : {false, true})
    expect_overwrites<float>(
        c,
        [&](float* out) {
          cpu::channel_scale_backward(x.data(), m.data(), dy.data(), dx_scratch.data(), out, n, c, s, acc);
        },
        acc ? "channel_scale_backward dm (accumulate=true)" : "channel_scale_backward dm");
  // float agrees with double
  VecF yf(count), dxf(count), dmf(c);
  VecD yd(count), dxd(count), dmd(c);
  cpu::channel_scale_forward(x.data(), m.data(), yf.data(), n, c, s);
  cpu::channel_scale_forward(xd.data(), md.data(), yd.data(), n, c, s);
  cpu::channel_scale_backward(x.data(), m.data(), dy.data(), dxf.data(), dmf.data(), n, c, s, false);
  cpu::channel_scale_backward(xd.data(), md.data(), dyd.data(), dxd.data(), dmd.data(), n, c, s, false);
  expect_all_near(yf, yd, 1e-6, "channel_scale_forward<float>");
  expect_all_near(dxf, dxd, 1e-6, "channel_scale_backward<float> dx");
  expect_all_near(dmf, dmd, 1e-6, "channel_scale_backward<float> dm");
}

// ---------------------------------------------------------------------------
// Add and gradient fan-out

TEST(CpuReferenceAdd, GradientsViaCopyOrAccumulateMatchFiniteDifferences) {
  const int64_t count = 3 * 4 * 5;
  VecD a = random_vec(count, 70), b = random_vec(count, 71);
  const VecD r = random_vec(count, 72);
  auto loss = [&] {
    VecD y(a.size());
    cpu::add_forward(a.data(), b.data(), y.data(), count);
    return dot(y, r);
  };
  // The add layer's backward fans dy out to both inputs; the second input
  // already holds a gradient from elsewhere, which must be kept.
  VecD da(count), db = random_vec(count, 73);
  const VecD db_before = db;
  cpu::copy_or_accumulate(r.data(), da.data(), count, false);
  cpu::copy_or_accumulate(r.data(), db.data(), count, true);
  for (int64_t i = 0; i < count; ++i) db[i] -= db_before[i];
  expect_all_near(da, numeric_grad(a, loss), kFdRtol, "dL/da");
  expect_all_near(db, numeric_grad(b, loss), kFdRtol, "dL/db");
}

TEST(CpuReferenceAdd, ForwardAndCopyOverwriteAndAccumulate) {
  const int64_t count = 29;
  const VecF a = to_float(random_vec(count, 80)), b = to_float(random_vec(count, 81));
  expect_overwrites<float>(
      count, [&](float* out) { cpu::add_forward(a.data(), b.data(), out, count); }, "add_forward");
  VecF y(count);
  cpu::add_forward(a.data(), b.data(), y.data(), count);
  for (int64_t i = 0; i < count; ++i) EXPECT_EQ(y[i], a[i] + b[i]);
  expect_accumulates<float>(
      count, [&](float* out, bool acc) { cpu::copy_or_accumulate(a.data(), out, count, acc); }, 1e-7,
      "copy_or_accumulate");
}

// ---------------------------------------------------------------------------
// Pooling

struct PoolCase {
  std::string name;
  PoolGeometry g;
};

PoolCase pool_case(std::string name, int64_t planes, Dims3 in, Dims3 k, Dims3 s, Dims3 p) {
  PoolGeometry g;
  g.planes = planes, g.in = in, g.k = k, g.stride = s, g.pad = p;
  for (int i = 0; i < 3; ++i) g.out[i] = (in[i] + 2 * p[i] - k[i]) / s[i] + 1;
  return {std::move(name), g};
}

std::vector<PoolCase> pool_cases() {
  return {
      pool_case("3d_overlapping_padded", 6, {3, 4, 5}, {2, 3, 2}, {1, 2, 1}, {1, 1, 0}),
      pool_case("2d_lifted_padded", 5, {1, 7, 6}, {1, 3, 4}, {1, 2, 3}, {0, 1, 2}),
      pool_case("3d_k2_s2", 3, {4, 4, 6}, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}),
      pool_case("3d_stride_beyond_kernel_gaps", 2, {3, 5, 7}, {1, 2, 2}, {2, 3, 3}, {0, 0, 0}),
      pool_case("3d_k3_s2_p1", 2, {5, 5, 5}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}),
  };
}

VecD pool_fwd(bool max, const VecD& x, const PoolGeometry& g) {
  VecD y(static_cast<size_t>(g.planes * vol(g.out)));
  if (max)
    cpu::max_pool_forward(x.data(), y.data(), g);
  else
    cpu::avg_pool_forward(x.data(), y.data(), g);
  return y;
}

VecD pool_bwd(bool max, const VecD& x, const VecD& dy, const PoolGeometry& g) {
  VecD dx(x.size());
  if (max)
    cpu::max_pool_backward(x.data(), dy.data(), dx.data(), g, false);
  else
    cpu::avg_pool_backward(dy.data(), dx.data(), g, false);
  return dx;
}

TEST(CpuReferencePool, BackwardMatchesFiniteDifferences) {
  uint32_t seed = 90;
  for (bool max : {true, false})
    for (const PoolCase& c : pool_cases()) {
      SCOPED_TRACE(std::string(max ? "max " : "avg ") + c.name);
      VecD x = random_vec(c.g.planes * vol(c.g.in), seed++);
      const VecD r = random_vec(c.g.planes * vol(c.g.out), seed++);
      auto loss = [&] { return dot(pool_fwd(max, x, c.g), r); };
      expect_all_near(pool_bwd(max, x, r, c.g), numeric_grad(x, loss), kFdRtol, "dL/dx");
    }
}

TEST(CpuReferencePool, OverwriteAndAccumulateAndFloatMatchesDouble) {
  uint32_t seed = 150;
  for (const PoolCase& c : pool_cases()) {
    SCOPED_TRACE(c.name);
    const PoolGeometry& g = c.g;
    const VecD xd = rounded(random_vec(g.planes * vol(g.in), seed++));
    const VecD dyd = rounded(random_vec(g.planes * vol(g.out), seed++));
    const VecF x = to_float(xd), dy = to_float(dyd);
    expect_overwrites<float>(
        dy.size(), [&](float* out) { cpu::max_pool_forward(x.data(), out, g); }, "max_pool_forward");
    expect_overwrites<float>(
        dy.size(), [&](float* out) { cpu::avg_pool_forward(x.data(), out, g); }, "avg_pool_forward");
    expect_accumulates<float>(
        x.size(), [&](float* out, bool acc) { cpu::max_pool_backward(x.data(), dy.data(), out, g, acc); }, 1e-6,
        "max_pool_backward");
    expect_accumulates<float>(
        x.size(), [&](float* out, bool acc) { cpu::avg_pool_backward(dy.data(), out, g, acc); }, 1e-6,
        "avg_pool_backward");
    for (bool max : {true, false}) {
      VecF yf(dy.size()), dxf(x.size());
      if (max) {
        cpu::max_pool_forward(x.data(), yf.data(), g);
        cpu::max_pool_backward(x.data(), dy.data(), dxf.data(), g, false);
      } else {
        cpu::avg_pool_forward(x.data(), yf.data(), g);
        cpu::avg_pool_backward(dy.data(), dxf.data(), g, false);
      }
      expect_all_near(yf, pool_fwd(max, xd, g), 1e-6, max ? "max_pool_forward<float>" : "avg_pool_forward<float>");
      expect_all_near(dxf, pool_bwd(max, xd, dyd, g), 1e-6,
                      max ? "max_pool_backward<float>" : "avg_pool_backward<float>");
    }
  }
}

TEST(CpuReferencePool, MaxGradientGoesToFirstMaximumOnTies) {
  {
    // 2-D lifted, 2x4 plane, 2x2 windows at stride (1, 2).
    PoolGeometry g;
    g.in = {1, 2, 4}, g.k = {1, 2, 2}, g.stride = {1, 1, 2}, g.out = {1, 1, 2};
    const VecD x{5, 5, 1, 7,  //
                 5, 2, 7, 7};
    const VecD dy{2, 3};
    const VecD y = pool_fwd(true, x, g);
    EXPECT_EQ(y, (VecD{5, 7}));
    EXPECT_EQ(pool_bwd(true, x, dy, g), (VecD{2, 0, 0, 3, 0, 0, 0, 0}));
  }
  {
    // Tie across depth: window order is d, then h, then w.
    PoolGeometry g;
    g.in = {2, 1, 2}, g.k = {2, 1, 2}, g.out = {1, 1, 1};
    const VecD x{3, 4,  //
                 4, 4};
    EXPECT_EQ(pool_bwd(true, x, {1.5}, g), (VecD{0, 1.5, 0, 0}));
  }
  {
    // Overlapping windows sharing a tied maximum both route to the first one.
    PoolGeometry g;
    g.in = {1, 1, 3}, g.k = {1, 1, 2}, g.out = {1, 1, 2};
    const VecD x{1, 3, 3};
    EXPECT_EQ(pool_bwd(true, x, {0.5, 0.25}, g), (VecD{0, 0.75, 0}));
  }
}

TEST(CpuReferencePool, MaxPaddingActsAsMinusInfinityAndNanPropagates) {
  PoolGeometry g;
  g.in = {1, 2, 2}, g.k = {1, 3, 3}, g.pad = {0, 1, 1}, g.out = {1, 2, 2};
  const VecD x{-3, -2, -4, -5};
  EXPECT_EQ(pool_fwd(true, x, g), (VecD{-2, -2, -2, -2}));
  EXPECT_EQ(pool_bwd(true, x, {1, 2, 3, 4}, g), (VecD{0, 10, 0, 0}));

  PoolGeometry g1;
  g1.in = {1, 1, 3}, g1.k = {1, 1, 3}, g1.out = {1, 1, 1};
  const VecF xf{1.f, std::numeric_limits<float>::quiet_NaN(), 2.f};
  VecF y(1), dx(3);
  cpu::max_pool_forward(xf.data(), y.data(), g1);
  const VecF dy{1.f};
  cpu::max_pool_backward(xf.data(), dy.data(), dx.data(), g1, false);
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_EQ(dx, (VecF{0.f, 1.f, 0.f}));
}

TEST(CpuReferencePool, AvgDivisorCountsPadding) {
  {
    // 3x3 windows with padding 1 over a 2x2 plane: each window holds all 4 values, divisor 9.
    PoolGeometry g;
    g.in = {1, 2, 2}, g.k = {1, 3, 3}, g.pad = {0, 1, 1}, g.out = {1, 2, 2};
    const VecD y = pool_fwd(false, {1, 2, 3, 4}, g);
    for (double v : y) EXPECT_DOUBLE_EQ(v, 10.0 / 9.0);
    const VecD dx = pool_bwd(false, {1, 2, 3, 4}, {9, 18, 27, 36}, g);
    for (double v : dx) EXPECT_DOUBLE_EQ(v, 10.0);
  }
  {
    // 3-D, kernel 2, stride 2, padding 1 over 2x2x2: each window holds one value, divisor 8.
    PoolGeometry g;
    g.in = {2, 2, 2}, g.k = {2, 2, 2}, g.stride = {2, 2, 2}, g.pad = {1, 1, 1}, g.out = {2, 2, 2};
    const VecD x{1, 2, 3, 4, 5, 6, 7, 8};
    const VecD y = pool_fwd(false, x, g);
    const VecD dx = pool_bwd(false, x, x, g);
    for (size_t i = 0; i < x.size(); ++i) {
      EXPECT_DOUBLE_EQ(y[i], x[i] / 8.0);
      EXPECT_DOUBLE_EQ(dx[i], x[i] / 8.0);
    }
  }
  {
    // The largest window a network may have (1290^3 < 2^31), nearly all padding, over one
    // value: each of the 8 windows holds it, and the divisor is the whole volume.
    PoolGeometry g;
    g.in = {1, 1, 1}, g.k = {1290, 1290, 1290}, g.pad = {645, 645, 645}, g.out = {2, 2, 2};
    const double volume = 1290.0 * 1290.0 * 1290.0;
    const VecD y = pool_fwd(false, {3.5}, g);
    for (double v : y) EXPECT_DOUBLE_EQ(v, 3.5 / volume);
    const VecD dx = pool_bwd(false, {3.5}, {1, 2, 3, 4, 5, 6, 7, 8}, g);
    EXPECT_DOUBLE_EQ(dx[0], 36.0 / volume);
  }
}

}  // namespace
