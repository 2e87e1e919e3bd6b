// anvil's direct conv fused with its epilogue (kernels/cuda/direct_conv.hpp)
// on odd geometries: batch 1, one channel, a channel count that leaves a
// partial group, strides 1 to 3, padding, dilation, a kernel larger than the
// input, the largest K (512), several blocks per plane and of channels, a
// tile narrowed to fit shared memory, and each pool: none, a tiled max,
// overlapping padded max and average windows. Inputs are fresh
// uniform [-1, 1] floats (never 0) and every output is poisoned (NaN) first.
// Checked: the conv output it saves for backward against the CPU reference in
// float64, and everything after the conv against chain_pool.hpp's kernel
// (itself tested against the CPU reference) run on that same Y: the same ops
// in the same order, so the same bits; for a chain of leaky_relus, the codes
// saved in Y's place and the backward from them against the backward from Y.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "fused_conv_checks.hpp"
#include "gpu_test_util.hpp"
#include "kernels/cpu/conv.hpp"
#include "kernels/cuda/chain_pool.hpp"
#include "kernels/cuda/direct_conv.hpp"

namespace anvil::testing {
namespace {

namespace gpu = anvil::cuda;
using Dims = std::array<int64_t, 3>;

struct Case {
  std::string label;
  int64_t n, cin, cout;
  Dims x, k, stride, pad, dilation;
  gpu::ChainPool pool;
  Dims pk{1, 1, 1}, ps{1, 1, 1}, pp{0, 0, 0};
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.label; }

gpu::DirectConvGeometry geometry_of(const Case& c) {
  gpu::DirectConvGeometry g;
  g.cin = c.cin, g.x = c.x, g.k = c.k, g.stride = c.stride, g.pad = c.pad, g.dilation = c.dilation;
  g.out.n = c.n;
  g.out.c = c.cout;
  for (int a = 0; a < 3; ++a) g.out.y[a] = (c.x[a] + 2 * c.pad[a] - c.dilation[a] * (c.k[a] - 1) - 1) / c.stride[a] + 1;
  g.out.pool = c.pool;
  g.out.k = c.pk, g.out.stride = c.ps, g.out.pad = c.pp;
  return g;
}

// A table, a case a row: clang-format would put each field on a line of its own.
// clang-format off
const Case kCases[] = {
    // label, n, cin, cout, x, k, stride, pad, dilation, pool, window, stride, padding
    {"gray_k3_s3_tiled_max", 2, 1, 9, {1, 14, 20}, {1, 3, 3}, {1, 3, 3}, {0, 0, 0}, {1, 1, 1}, gpu::ChainPool::Max,
     {1, 2, 2}, {1, 2, 2}},
    {"rgb_k4_s2_p1_avg3_s2_p1", 2, 3, 13, {1, 10, 14}, {1, 4, 4}, {1, 2, 2}, {0, 1, 1}, {1, 1, 1},
     gpu::ChainPool::Avg, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}},
    {"batch1_channel1_3d_no_pool", 1, 1, 1, {5, 6, 7}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1},
     gpu::ChainPool::None},
    {"dilated_3d_max3_s2_p1", 2, 2, 5, {6, 7, 9}, {2, 3, 2}, {1, 1, 2}, {1, 2, 0}, {2, 2, 1}, gpu::ChainPool::Max,
     {3, 3, 3}, {2, 2, 2}, {1, 1, 1}},
    {"cout20_avg2_s1_overlap", 1, 4, 20, {1, 9, 11}, {1, 3, 2}, {1, 1, 2}, {0, 2, 0}, {1, 2, 1}, gpu::ChainPool::Avg,
     {1, 2, 2}, {1, 1, 1}},
    {"k512_kernel_beyond_input", 2, 32, 8, {1, 3, 3}, {1, 4, 4}, {1, 1, 1}, {0, 2, 2}, {1, 1, 1},
     gpu::ChainPool::Max, {1, 2, 2}, {1, 2, 2}},
    {"several_blocks_per_plane", 1, 2, 3, {1, 70, 90}, {1, 3, 3}, {1, 1, 1}, {0, 1, 1}, {1, 1, 1},
     gpu::ChainPool::Avg, {1, 2, 2}, {1, 2, 2}},
    // 70 channels: 9 groups of 8, two blocks of channels per tile, the second with one group of 6.
    {"cout70_two_channel_blocks", 2, 3, 70, {1, 21, 76}, {1, 4, 4}, {1, 2, 2}, {0, 1, 1}, {1, 1, 1},
     gpu::ChainPool::Max, {1, 2, 2}, {1, 2, 2}},
    // A ResNet-style k7 s2 RGB stem under an overlapping max pool: its tile takes 53 KiB, past the
    // 48 KiB every device gives, so the kernel runs with opted-in shared memory.
    {"rgb_k7_s2_max3_s2_p1_opt_in_smem", 1, 3, 20, {1, 20, 130}, {1, 7, 7}, {1, 2, 2}, {0, 3, 3}, {1, 1, 1},
     gpu::ChainPool::Max, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}},
    // K = 512 and 24 channels: their weights alone leave room for one group a block.
    {"k512_cout24_one_group_a_block", 1, 32, 24, {1, 5, 6}, {1, 4, 4}, {1, 1, 1}, {0, 1, 1}, {1, 1, 1},
     gpu::ChainPool::Max, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}},
};
// clang-format on

class DirectConv : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override { ANVIL_REQUIRE_GPU_OR_SKIP(); }
};

TEST_P(DirectConv, MatchesTheCpuConvAndTheChainPoolKernelBitwise) {
  const Case& c = GetParam();
  const gpu::DirectConvGeometry g = geometry_of(c);
  const char* why = nullptr;
  ASSERT_TRUE(gpu::direct_conv_supported(g, &why)) << why;
  const size_t x_count = size_t(c.n * c.cin * c.x[0] * c.x[1] * c.x[2]),
               y_count = size_t(c.n * c.cout * g.out.y[0] * g.out.y[1] * g.out.y[2]),
               w_count = size_t(c.cout * c.cin * c.k[0] * c.k[1] * c.k[2]);
  std::mt19937 rng(2027);
  const std::vector<float> x = random_floats(x_count, rng), w = random_floats(w_count, rng);

  // The conv in float64 on the CPU.
  cpu::ConvGeometry cg;
  cg.n = c.n, cg.ca = c.cin, cg.cb = c.cout, cg.a = c.x, cg.b = g.out.y, cg.k = c.k, cg.stride = c.stride,
  cg.pad = c.pad, cg.dilation = c.dilation;
  std::vector<double> y_ref(y_count);
  const std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end());
  cpu::conv_forward<double>(xd.data(), wd.data(), y_ref.data(), cg);

  DeviceBuffer<float> dx(x_count), dw(w_count);
  dx.upload(x);
  dw.upload(w);
  check_fused_forward(
      g.out,
      [&](const float* b, const gpu::EpilogueChain& ec, float* p, uint8_t* argmax, float* y_at_max, float* y,
          uint8_t* codes) {
        gpu::direct_conv_forward(dx.get(), dw.get(), b, ec, p, argmax, y_at_max, y, codes, g, nullptr);
      },
      [&](const std::vector<float>& y_got) {
        EXPECT_LE(rel_l2(y_got, y_ref), 1e-6);
        int64_t far = 0;
        for (size_t i = 0; i < y_got.size(); ++i)
          far += !(std::abs(y_got[i] - y_ref[i]) <= 1e-5 * (1 + std::abs(y_ref[i])));
        EXPECT_EQ(far, 0) << "conv outputs off the float64 reference, of " << y_got.size();
      },
      rng);
}

INSTANTIATE_TEST_SUITE_P(OddGeometries, DirectConv, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return info.param.label; });

TEST(DirectConvLimits, RefusesWhatItCannotRun) {
  gpu::DirectConvGeometry ok = geometry_of(kCases[0]);
  ASSERT_TRUE(gpu::direct_conv_supported(ok));
  const char* why = nullptr;
  gpu::DirectConvGeometry wide = geometry_of(kCases[5]);  // K = 512, the most
  ASSERT_TRUE(gpu::direct_conv_supported(wide));
  wide.cin = 33;
  EXPECT_FALSE(gpu::direct_conv_supported(wide, &why));
  EXPECT_STREQ(why, "more than 512 input channels x kernel taps");
  gpu::DirectConvGeometry gaps = ok;
  gaps.out.stride = {1, 3, 3};  // windows of 2 every 3: conv outputs outside every window
  EXPECT_FALSE(gpu::direct_conv_supported(gaps, &why));
  EXPECT_STREQ(why, "a pool that leaves conv outputs outside its windows");
  gpu::DirectConvGeometry short_tail = ok;
  short_tail.out.y = {1, 5, 6};
  EXPECT_FALSE(gpu::direct_conv_supported(short_tail, &why));
  EXPECT_STREQ(why, "the output dims are not the conv's");
  gpu::DirectConvGeometry odd = ok;
  odd.x = {1, 15, 20};  // y = 5 rows: the 2-row windows leave the last out
  odd.out.y = {1, 5, 6};
  EXPECT_FALSE(gpu::direct_conv_supported(odd, &why));
  EXPECT_STREQ(why, "a pool that leaves conv outputs outside its windows");
  // The first output row's window starts 40000 rows into the padding: -40000 x 60000 overflows 31 bits.
  gpu::DirectConvGeometry padded = ok;
  padded.x = {1, 1, 60000};
  padded.pad = {0, 40000, 0};
  padded.stride = {1, 40000, 1};
  padded.out.y = {1, 2, 59998};
  padded.out.k = {1, 2, 2};
  padded.out.stride = {1, 2, 2};
  EXPECT_FALSE(gpu::direct_conv_supported(padded, &why));
  EXPECT_STREQ(why, "sizes beyond 31 bits");
  // Lanes 200 x 2 columns apart: their windows' x is more than a block's shared memory.
  gpu::DirectConvGeometry strided = ok;
  strided.x = {1, 14, 4000};
  strided.stride = {1, 3, 200};
  strided.out.y = {1, 4, 20};
  EXPECT_FALSE(gpu::direct_conv_supported(strided, &why));
  EXPECT_STREQ(why, "the input its windows read does not fit in shared memory");
  gpu::DirectConvGeometry negative = ok;
  negative.pad = {0, -1, 0};
  EXPECT_FALSE(gpu::direct_conv_supported(negative, &why));
}

TEST(DirectConvLimits, ForwardThrowsOnBadArguments) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const gpu::DirectConvGeometry avg = geometry_of(kCases[1]);  // an average pool
  gpu::DirectConvGeometry wide = geometry_of(kCases[5]);
  wide.cin = 33;  // more than 512 input channels x taps
  DeviceBuffer<float> buf(4096);
  expect_fused_forward_refuses_bad_arguments(
      [&](const float* x, const gpu::EpilogueChain& chain, uint8_t* argmax, bool good, float* y, uint8_t* codes) {
        gpu::direct_conv_forward(x, buf.get(), nullptr, chain, buf.get(), argmax, nullptr, y, codes, good ? avg : wide,
                                 nullptr);
      });
}

}  // namespace
}  // namespace anvil::testing
