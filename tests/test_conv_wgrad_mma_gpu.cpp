// anvil's tensor-core filter gradient of any convolution
// (kernels/cuda/conv_wgrad_mma.hpp) against the CPU reference in float64,
// in 3xTF32 and in TF32, on conv_mma_cases.hpp's geometries (one has a K
// long enough to be split many ways). Inputs are fresh uniform
// [-1, 1] floats (never 0) and the output is poisoned (NaN) first. In TF32 the
// reference takes the operands rounded to TF32 as the kernel takes them, so
// both forms must reach float32 accuracy: what is checked is the GEMM.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "conv_mma_cases.hpp"
#include "gpu_test_util.hpp"
#include "kernels/cpu/conv.hpp"
#include "kernels/cuda/conv_wgrad_mma.hpp"
#include "kernels/cuda/tensor_cores.hpp"

namespace anvil::testing {
namespace {

class ConvWgradMma : public ::testing::TestWithParam<std::tuple<ConvMmaCase, bool>> {
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
  const std::vector<double> a64 = mma_operand(a_, compensated_), db64 = mma_operand(db_, compensated_);
  std::vector<double> want(dw.size());
  cpu::conv_backward_filter(a64.data(), db64.data(), want.data(), g_);
  expect_float32_close(dw, want, compensated_ ? "3xTF32" : "TF32");

  d_dw.poison();
  cuda::conv_mma_weight_grad(d_a.get(), d_db.get(), d_dw.get(), scratch.get(), compensated_, g_, nullptr);
  EXPECT_EQ(std::memcmp(d_dw.download_all().data(), dw.data(), dw.size() * sizeof(float)), 0) << "a rerun differs";
}

INSTANTIATE_TEST_SUITE_P(Geometries, ConvWgradMma,
                         ::testing::Combine(::testing::ValuesIn(kConvMmaCases), ::testing::Bool()),
                         [](const auto& info) {
                           return std::get<0>(info.param).label + (std::get<1>(info.param) ? "_3xtf32" : "_tf32");
                         });

TEST(ConvWgradMma, RefusesIndicesBeyondInt) {
  EXPECT_FALSE(cuda::conv_mma_weight_grad_supported(geometry_beyond_int()));
}

// As the forward kernel's: a geometry without taps, channels or positions is refused, not planned
// (its plan divided by zero on the host).
TEST(ConvWgradMma, RefusesEmptyGeometries) {
  for (const cpu::ConvGeometry& g : empty_geometries()) EXPECT_FALSE(cuda::conv_mma_weight_grad_supported(g));
}

}  // namespace
}  // namespace anvil::testing
