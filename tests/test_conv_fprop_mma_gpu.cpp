// anvil's tensor-core forward relation of any convolution
// (kernels/cuda/conv_fprop_mma.hpp) against the CPU reference in float64, in
// 3xTF32 and in TF32, on conv_mma_cases.hpp's geometries and two more (a
// 64 -> 64 k3 block over several position tiles, 200 channels over two
// channel tiles). In TF32 the reference takes the operands truncated to TF32
// as the kernel's MMAs read them; in 3xTF32 it takes them as they are. Either
// way the result must reach float32 accuracy: what is checked is the GEMM and
// its gather. Inputs are fresh uniform [-1, 1] floats (never 0); the output is
// poisoned (NaN) first, or holds random values to add to.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "conv_mma_cases.hpp"
#include "gpu_test_util.hpp"
#include "kernels/cpu/conv.hpp"
#include "kernels/cuda/conv_fprop_mma.hpp"
#include "kernels/cuda/tensor_cores.hpp"
#include "kernels/tf32.hpp"

namespace anvil::testing {
namespace {

// The operands as the MMAs read them: the 13 bits TF32 drops, cleared.
std::vector<double> truncated_to_tf32(const std::vector<float>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], sizeof bits);
    bits &= ~kTf32DroppedBits;
    float x;
    std::memcpy(&x, &bits, sizeof x);
    out[i] = x;
  }
  return out;
}

std::vector<ConvMmaCase> fprop_cases() {
  std::vector<ConvMmaCase> cases = kConvMmaCases;
  // label, n, ca, cb, a, k, stride, pad, dilation
  cases.push_back({"block64_k3_three_images", 3, 64, 64, {1, 13, 17}, {1, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}});
  cases.push_back({"cb200_two_channel_tiles", 2, 6, 200, {3, 5, 7}, {3, 2, 3}, {1, 1, 2}, {1, 0, 1}, {1, 1, 1}});
  return cases;
}

class ConvFpropMma : public ::testing::TestWithParam<std::tuple<ConvMmaCase, bool>> {
 protected:
  void SetUp() override {
    ANVIL_REQUIRE_GPU_OR_SKIP();
    if (!cuda::tensor_core_kernels_available()) GTEST_SKIP() << "needs sm_80 or newer";
    g_ = geometry_of(std::get<0>(GetParam()));
    compensated_ = std::get<1>(GetParam());
    ASSERT_TRUE(cuda::conv_mma_forward_supported(g_));
    std::mt19937 rng(31);
    a_ = random_floats(size_t(g_.n * g_.ca * cpu::volume(g_.a)), rng);
    w_ = random_floats(size_t(g_.cb * g_.ca * cpu::volume(g_.k)), rng);
    b0_ = random_floats(size_t(g_.n * g_.cb * cpu::volume(g_.b)), rng);
    d_a_.emplace(a_.size());
    d_w_.emplace(w_.size());
    d_a_->upload(a_);
    d_w_->upload(w_);
  }
  // The float64 reference of conv(A, W), added to b0_ where accumulate.
  std::vector<double> reference(bool accumulate) const {
    const std::vector<double> a64 = compensated_ ? mma_operand(a_, true) : truncated_to_tf32(a_),
                              w64 = compensated_ ? mma_operand(w_, true) : truncated_to_tf32(w_);
    std::vector<double> want(b0_.begin(), b0_.end());
    cpu::conv_forward(a64.data(), w64.data(), want.data(), g_, accumulate);
    return want;
  }
  cpu::ConvGeometry g_;
  bool compensated_ = true;
  std::vector<float> a_, w_, b0_;
  std::optional<DeviceBuffer<float>> d_a_, d_w_;
};

// B from A and W, then again: bitwise the same.
TEST_P(ConvFpropMma, MatchesFloat64AndRepeatsBitwise) {
  DeviceBuffer<float> d_b(b0_.size());
  d_b.poison();
  cuda::conv_mma_forward(d_a_->get(), d_w_->get(), d_b.get(), false, compensated_, g_, nullptr);
  const std::vector<float> b = d_b.download_all();
  expect_float32_close(b, reference(false), compensated_ ? "3xTF32" : "TF32");

  d_b.poison();
  cuda::conv_mma_forward(d_a_->get(), d_w_->get(), d_b.get(), false, compensated_, g_, nullptr);
  EXPECT_EQ(std::memcmp(d_b.download_all().data(), b.data(), b.size() * sizeof(float)), 0) << "a rerun differs";
}

// accumulate adds conv(A, W) to what B holds (a gradient's fan-out).
TEST_P(ConvFpropMma, AccumulateAddsToB) {
  DeviceBuffer<float> d_b(b0_.size());
  d_b.upload(b0_);
  cuda::conv_mma_forward(d_a_->get(), d_w_->get(), d_b.get(), true, compensated_, g_, nullptr);
  expect_float32_close(d_b.download_all(), reference(true), "accumulated");
}

INSTANTIATE_TEST_SUITE_P(Geometries, ConvFpropMma,
                         ::testing::Combine(::testing::ValuesIn(fprop_cases()), ::testing::Bool()),
                         [](const auto& info) {
                           return std::get<0>(info.param).label + (std::get<1>(info.param) ? "_3xtf32" : "_tf32");
                         });

TEST(ConvFpropMma, RefusesIndicesBeyondInt) { EXPECT_FALSE(cuda::conv_mma_forward_supported(geometry_beyond_int())); }

// The library is called directly too: a geometry without taps, channels or positions is refused, not divided by.
TEST(ConvFpropMma, RefusesEmptyGeometries) {
  for (const cpu::ConvGeometry& g : empty_geometries()) EXPECT_FALSE(cuda::conv_mma_forward_supported(g));
}

}  // namespace
}  // namespace anvil::testing
