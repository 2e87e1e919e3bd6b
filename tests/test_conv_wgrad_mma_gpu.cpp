// anvil's tensor-core filter gradient of any convolution
// (kernels/cuda/conv_wgrad_mma.hpp) against the CPU reference in float64,
// in 3xTF32 and in TF32, on geometries chosen to reach every tile shape and
// edge: batch 1, one channel, odd sizes, strides 1 to 3, padding, dilation,
// a kernel larger than the input, several M and N tiles, a last K step that is
// partial, and a K long enough to be split many ways. Inputs are fresh uniform
// [-1, 1] floats (never 0) and the output is poisoned (NaN) first. In TF32 the
// reference takes the operands rounded to TF32 as the kernel takes them, so
// both forms must reach float32 accuracy: what is checked is the GEMM.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_util.hpp"
#include "kernels/cpu/conv.hpp"
#include "kernels/cuda/conv_wgrad_mma.hpp"
#include "kernels/cuda/tensor_cores.hpp"

namespace anvil::testing {
namespace {

struct Case {
  std::string label;
  int64_t n, ca, cb;
  cpu::Dims3 a, k, stride, pad, dilation;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.label; }

cpu::ConvGeometry geometry_of(const Case& c) {
  cpu::ConvGeometry g;
  g.n = c.n, g.ca = c.ca, g.cb = c.cb, g.a = c.a, g.k = c.k, g.stride = c.stride, g.pad = c.pad, g.dilation = c.dilation;
  for (int i = 0; i < 3; ++i) g.b[i] = (c.a[i] + 2 * c.pad[i] - c.dilation[i] * (c.k[i] - 1) - 1) / c.stride[i] + 1;
  return g;
}

const std::vector<Case> kCases = {
    // label, n, ca, cb, a, k, stride, pad, dilation
    {"conv3d_k3_p1", 2, 5, 7, {6, 9, 11}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
    {"one_channel_2d_k4_s2", 1, 1, 1, {1, 13, 17}, {1, 4, 4}, {1, 2, 2}, {0, 1, 1}, {1, 1, 1}},
    {"stride3_dilated_2d_m40", 3, 3, 40, {1, 23, 19}, {1, 3, 2}, {1, 3, 1}, {0, 2, 0}, {1, 2, 3}},
    {"m130_three_n_tiles", 2, 9, 130, {5, 7, 9}, {2, 3, 3}, {2, 1, 2}, {1, 1, 0}, {1, 1, 1}},
    {"wide_n_1080", 1, 40, 20, {4, 6, 5}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
    {"long_k_partial_step", 4, 2, 3, {1, 63, 70}, {1, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
    {"kernel_beyond_input", 2, 3, 65, {1, 3, 3}, {1, 5, 5}, {1, 1, 1}, {0, 2, 2}, {1, 1, 1}},
    {"m64_n64_3d_dilated", 2, 4, 64, {7, 6, 8}, {2, 2, 4}, {1, 2, 1}, {1, 0, 3}, {3, 1, 2}},
};

// The operands as the kernel multiplies them: rounded to TF32 unless compensated.
std::vector<double> operand(const std::vector<float>& v, bool compensated) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = compensated ? double(v[i]) : double(tf32(v[i]));
  return out;
}

// Float32 accuracy: in the relative L2 norm, and no single value far off.
void expect_close(const std::vector<float>& got, const std::vector<double>& want, bool compensated) {
  EXPECT_LE(rel_l2(got, want), 1e-5) << (compensated ? "3xTF32" : "TF32");
  int64_t far = 0;
  for (size_t i = 0; i < want.size(); ++i) far += !(std::abs(got[i] - want[i]) <= 1e-4 * (1 + std::abs(want[i])));
  EXPECT_EQ(far, 0) << "of " << want.size() << " values";
}

class ConvWgradMma : public ::testing::TestWithParam<std::tuple<Case, bool>> {
 protected:
  void SetUp() override {
    ANVIL_REQUIRE_GPU_OR_SKIP();
    if (!cuda::tensor_core_kernels_available()) GTEST_SKIP() << "needs sm_80 or newer";
    g_ = geometry_of(std::get<0>(GetParam()));
    compensated_ = std::get<1>(GetParam());
    std::mt19937 rng(29);
    a_ = random_floats(size_t(g_.n * g_.ca * cpu::volume(g_.a)), rng);
    db_ = random_floats(size_t(g_.n * g_.cb * cpu::volume(g_.b)), rng);
  }
  cpu::ConvGeometry g_;
  bool compensated_ = true;
  std::vector<float> a_, db_;
};

// dW from A and dB, then again: bitwise the same.
TEST_P(ConvWgradMma, MatchesFloat64AndRepeatsBitwise) {
  ASSERT_TRUE(cuda::conv_mma_weight_grad_supported(g_));
  DeviceBuffer<float> d_a(a_.size()), d_db(db_.size()), d_dw(size_t(g_.cb * g_.ca * cpu::volume(g_.k)));
  DeviceBuffer<char> scratch(cuda::conv_mma_weight_grad_scratch_bytes(g_));
  d_a.upload(a_);
  d_db.upload(db_);
  d_dw.poison();
  scratch.poison();
  cuda::conv_mma_weight_grad(d_a.get(), d_db.get(), d_dw.get(), scratch.get(), compensated_, g_, nullptr);
  const std::vector<float> dw = d_dw.download_all();
  const std::vector<double> a64 = operand(a_, compensated_), db64 = operand(db_, compensated_);
  std::vector<double> want(dw.size());
  cpu::conv_backward_filter(a64.data(), db64.data(), want.data(), g_);
  expect_close(dw, want, compensated_);

  d_dw.poison();
  cuda::conv_mma_weight_grad(d_a.get(), d_db.get(), d_dw.get(), scratch.get(), compensated_, g_, nullptr);
  EXPECT_EQ(std::memcmp(d_dw.download_all().data(), dw.data(), dw.size() * sizeof(float)), 0) << "a rerun differs";
}

INSTANTIATE_TEST_SUITE_P(Geometries, ConvWgradMma, ::testing::Combine(::testing::ValuesIn(kCases), ::testing::Bool()),
                         [](const auto& info) {
                           return std::get<0>(info.param).label + (std::get<1>(info.param) ? "_3xtf32" : "_tf32");
                         });

// A geometry whose indices would pass int is refused (the layer then runs cuDNN's).
TEST(ConvWgradMma, RefusesIndicesBeyondInt) {
  cpu::ConvGeometry g;
  g.n = 1 << 16, g.ca = 1 << 8, g.cb = 1;
  g.a = {1, 1 << 8, 1 << 8};
  g.b = g.a;
  EXPECT_FALSE(cuda::conv_mma_weight_grad_supported(g));
}

}  // namespace
}  // namespace anvil::testing
