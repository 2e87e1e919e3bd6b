// anvil's conv fused with its epilogue on Hopper's wgmma
// (kernels/cuda/wgmma_conv.hpp) on odd geometries: batch 1, 1 to 4 channels
// (two taps a K step, with and without an odd last tap), 5 to 7 (zero
// channels of padding in K), out_channels of 1 to 200 (two groups, the
// second partial), even and dilated kernels, strides of 2 and 3 (along W: the
// de-interleaved box; along D or H only: strided box rows, 16-byte copies
// kept), padding per axis, outputs that
// leave rows and columns outside every window, tiles that do not fill their
// 128 rows, ragged last tiles, a transposed conv's weight, x copied 4 and 16
// bytes at a time, and each pool: none, max and average. Inputs are fresh uniform [-1, 1] floats
// (never 0), and every output and the workspace (the weight images) are poisoned (NaN) first.
// Checked: the conv output it saves for backward against the CPU reference in
// float64, with the operands as the tensor cores read them (x truncated to
// TF32, w rounded to nearest), to float32 accuracy; and everything after the
// conv against chain_pool.hpp's kernel run on that same Y, bitwise.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "anvil/error.hpp"
#include "contains.hpp"
#include "conv_mma_cases.hpp"
#include "fused_conv_checks.hpp"
#include "gpu_test_util.hpp"
#include "kernels/cpu/conv.hpp"
#include "kernels/cuda/chain_pool.hpp"
#include "kernels/cuda/wgmma_conv.hpp"
#include "kernels/tf32.hpp"

namespace anvil::testing {
namespace {

namespace gpu = anvil::cuda;
using Dims = std::array<int64_t, 3>;

struct Case {
  std::string label;
  int64_t n, cin, cout;
  Dims x, k, pad, dilation;
  gpu::ChainPool pool;
  Dims pk{1, 1, 1};
  bool transposed = false;  // w is a conv_transpose's (cin, cout, k...) and pad the transposed conv's
  int x_offset = 0;         // floats between a 256-byte boundary and x: 1 keeps the kernel off 16-byte copies
  Dims stride{1, 1, 1};     // the conv's (a transposed conv's stays 1)
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.label; }

Dims conv_output(const Case& c) {
  Dims y{};
  for (int a = 0; a < 3; ++a) {
    const int64_t extent = c.dilation[a] * (c.k[a] - 1);
    y[a] = c.transposed ? c.x[a] + extent - 2 * c.pad[a] : (c.x[a] + 2 * c.pad[a] - extent - 1) / c.stride[a] + 1;
  }
  return y;
}

gpu::WgmmaConvGeometry geometry_of(const Case& c) {
  gpu::WgmmaConvGeometry g;
  g.conv.cin = c.cin, g.conv.x = c.x, g.conv.k = c.k, g.conv.dilation = c.dilation, g.conv.stride = c.stride;
  for (int a = 0; a < 3; ++a) g.conv.pad[a] = c.transposed ? c.dilation[a] * (c.k[a] - 1) - c.pad[a] : c.pad[a];
  g.conv.out.n = c.n;
  g.conv.out.c = c.cout;
  g.conv.out.y = conv_output(c);
  g.conv.out.pool = c.pool;
  if (c.pool != gpu::ChainPool::None) g.conv.out.k = g.conv.out.stride = c.pk;
  g.transposed_weight = c.transposed;
  return g;
}

// A table, a case a row: clang-format would put each field on a line of its own.
// clang-format off
const Case kCases[] = {
    // label, n, cin, cout, x, k, pad, dilation, pool, window
    {"relu_avgpool_3d_like_odd", 2, 16, 64, {5, 9, 67}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, gpu::ChainPool::Avg,
     {2, 2, 2}},
    {"transposed_3d_max2", 1, 32, 32, {4, 6, 10}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, gpu::ChainPool::Max, {2, 2, 2},
     true},
    {"batch1_channel1_2d_no_pool", 1, 1, 1, {1, 7, 9}, {1, 3, 3}, {0, 1, 1}, {1, 1, 1}, gpu::ChainPool::None},
    {"cout200_two_groups_k4_max2", 1, 3, 200, {1, 11, 13}, {1, 4, 4}, {0, 2, 1}, {1, 1, 1}, gpu::ChainPool::Max,
     {1, 2, 2}},
    {"dilated_3d_avg_1x2x2", 2, 5, 20, {4, 8, 9}, {2, 3, 3}, {1, 2, 0}, {2, 1, 2}, gpu::ChainPool::Avg, {1, 2, 2}},
    {"cout48_ragged_tiles_max2", 3, 24, 48, {1, 33, 70}, {1, 3, 3}, {0, 1, 1}, {1, 1, 1}, gpu::ChainPool::Max,
     {1, 2, 2}},
    {"window3_126_rows_avg", 1, 8, 16, {1, 13, 50}, {1, 3, 3}, {0, 1, 1}, {1, 1, 1}, gpu::ChainPool::Avg, {1, 3, 3}},
    // Windows 8 wide (a tile of 4 windows, 4 x 32), rows of 8 + 3 conv outputs (ragged tiles along W), and a
    // dilated 3-D kernel over 5 input channels (3 zero channels of padding in K).
    {"wide_windows_1x4x8_max", 2, 6, 40, {1, 17, 35}, {1, 3, 3}, {0, 1, 1}, {1, 1, 1}, gpu::ChainPool::Max,
     {1, 4, 8}},
    {"rows_of_8_plus_3_avg2", 1, 11, 64, {1, 20, 19}, {1, 3, 3}, {0, 1, 1}, {1, 1, 1}, gpu::ChainPool::Avg,
     {1, 2, 2}},
    {"dilated_3d_cin5_avg2", 1, 5, 40, {6, 12, 14}, {2, 3, 3}, {1, 2, 0}, {2, 1, 2}, gpu::ChainPool::Avg,
     {2, 2, 2}},
    {"transposed_2d_k2_no_pool", 2, 9, 40, {1, 10, 12}, {1, 2, 2}, {0, 0, 1}, {1, 1, 1}, gpu::ChainPool::None, {1, 1, 1},
     true},
    // Rows of x a multiple of 4 floats and tiles of whole 16-byte chunks: the box is copied 16 bytes at a
    // time, starting 3, 2 or 0 floats before the tile's first column (padding 1, 2, 0).
    {"vec4_shift3_cout70_max2", 2, 12, 70, {3, 10, 40}, {1, 3, 3}, {0, 1, 1}, {1, 1, 1}, gpu::ChainPool::Max,
     {1, 2, 2}},
    {"vec4_shift2_k5_no_pool", 1, 4, 33, {1, 9, 24}, {1, 5, 5}, {0, 2, 2}, {1, 1, 1}, gpu::ChainPool::None},
    {"vec4_shift0_ragged_rows_avg", 2, 8, 16, {2, 6, 32}, {2, 3, 1}, {0, 1, 0}, {1, 1, 1}, gpu::ChainPool::Avg,
     {1, 2, 2}},
    // More tiles than an H200 has SMs (132), so blocks take several in turn: 192 tiles with two input tiles a
    // block (the next one copied while this one computes), the same read 4 bytes at a time, 192 tiles with one
    // input tile a block (a 147 KiB weight), and 135 3-D tiles of 128 channels with one.
    {"multi_tile_two_buffers_max2", 6, 16, 64, {1, 64, 60}, {1, 3, 3}, {0, 1, 1}, {1, 1, 1}, gpu::ChainPool::Max,
     {1, 2, 2}},
    {"multi_tile_two_buffers_4_byte_copies", 6, 16, 64, {1, 64, 60}, {1, 3, 3}, {0, 1, 1}, {1, 1, 1},
     gpu::ChainPool::Max, {1, 2, 2}, false, 1},
    {"multi_tile_one_buffer_cin64_avg2", 6, 64, 64, {1, 64, 60}, {1, 3, 3}, {0, 1, 1}, {1, 1, 1}, gpu::ChainPool::Avg,
     {1, 2, 2}},
    {"multi_tile_3d_cout96_one_buffer_no_pool", 3, 8, 96, {9, 20, 28}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1},
     gpu::ChainPool::None},
    // Strided convs. relu_avgpool_2d's stem (k4 s2 p1, 3 -> 32, average 2) on an odd image whose last conv
    // row and column lie outside every window, over 162 tiles; a gray k3 s3 stem with a max pool 2 and x off
    // 16-byte alignment; stride 3 along W with a dilated kernel (phases of unequal length) and no pool; a
    // 3-D k3 s2 conv, padding 2 along H only, with an average pool over 2 groups of channels; stride 2 along
    // H only, whose box rows are strided but still copied 16 bytes at a time.
    {"stem_k4_s2_avg2_odd", 3, 3, 32, {1, 67, 81}, {1, 4, 4}, {0, 1, 1}, {1, 1, 1}, gpu::ChainPool::Avg, {1, 2, 2},
     false, 0, {1, 2, 2}},
    {"gray_k3_s3_max2_unaligned", 2, 1, 24, {1, 40, 37}, {1, 3, 3}, {0, 0, 0}, {1, 1, 1}, gpu::ChainPool::Max,
     {1, 2, 2}, false, 1, {1, 3, 3}},
    {"stride3_w_dilated_no_pool", 1, 7, 33, {1, 9, 50}, {1, 2, 3}, {0, 1, 2}, {1, 1, 2}, gpu::ChainPool::None,
     {1, 1, 1}, false, 0, {1, 1, 3}},
    {"3d_k3_s2_avg_1x2x2_cout72", 2, 6, 72, {7, 15, 17}, {3, 3, 3}, {1, 2, 0}, {1, 1, 1}, gpu::ChainPool::Avg,
     {1, 2, 2}, false, 0, {2, 2, 2}},
    {"stride2_h_only_vec4_max2", 2, 5, 40, {1, 21, 32}, {1, 3, 3}, {0, 1, 1}, {1, 1, 1}, gpu::ChainPool::Max,
     {1, 2, 2}, false, 0, {1, 2, 1}},
    // Two input channels, 8 taps: two taps a K step with no zero half (a box of 4 channels).
    {"cin2_k2x2x2_s2_avg2", 2, 2, 17, {6, 14, 18}, {2, 2, 2}, {1, 0, 1}, {1, 1, 1}, gpu::ChainPool::Avg,
     {1, 2, 2}, false, 0, {2, 1, 2}},
};
// clang-format on

std::vector<double> tf32_operand(const std::vector<float>& v, bool round) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], sizeof bits);
    bits = round ? tf32_round_bits(bits) : bits & ~kTf32DroppedBits;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    out[i] = f;
  }
  return out;
}

class WgmmaConv : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    ANVIL_REQUIRE_GPU_OR_SKIP();
    if (!gpu::wgmma_conv_available()) GTEST_SKIP() << "needs an sm_90 GPU";
  }
};

TEST_P(WgmmaConv, MatchesTheCpuConvAndTheChainPoolKernelBitwise) {
  const Case& c = GetParam();
  const gpu::WgmmaConvGeometry g = geometry_of(c);
  const char* why = nullptr;
  ASSERT_TRUE(gpu::wgmma_conv_supported(g, &why)) << why;
  const Dims y_dims = conv_output(c);
  const size_t x_count = size_t(c.n * c.cin * c.x[0] * c.x[1] * c.x[2]),
               y_count = size_t(c.n * c.cout * y_dims[0] * y_dims[1] * y_dims[2]),
               w_count = size_t(c.cout * c.cin * c.k[0] * c.k[1] * c.k[2]);
  std::mt19937 rng(2029);
  const std::vector<float> x = random_floats(x_count, rng), w = random_floats(w_count, rng);

  // The conv in float64 on the CPU, on the operands as the MMAs read them; a
  // transposed conv as the adjoint of the conv from its output to its input.
  const std::vector<double> xd = tf32_operand(x, false), wd = tf32_operand(w, true);
  std::vector<double> y_ref(y_count);
  cpu::ConvGeometry cg;
  cg.n = c.n, cg.k = c.k, cg.stride = c.stride, cg.pad = c.pad, cg.dilation = c.dilation;
  if (c.transposed) {
    cg.ca = c.cout, cg.cb = c.cin, cg.a = y_dims, cg.b = c.x;
    cpu::conv_backward_data<double>(xd.data(), wd.data(), y_ref.data(), cg, false);
  } else {
    cg.ca = c.cin, cg.cb = c.cout, cg.a = c.x, cg.b = y_dims;
    cpu::conv_forward<double>(xd.data(), wd.data(), y_ref.data(), cg);
  }

  DeviceBuffer<float> dx(x_count + size_t(c.x_offset)), dw(w_count);
  dx.upload(x, size_t(c.x_offset));
  dw.upload(w);
  const size_t image_floats = gpu::wgmma_conv_workspace_bytes(g) / sizeof(float);
  DeviceBuffer<float> workspace(image_floats + kFusedSlack);
  check_fused_forward(
      g.conv.out,
      [&](const float* b, const gpu::EpilogueChain& ec, float* p, uint8_t* argmax, float* y_at_max, float* y,
          uint8_t* codes) {
        // NaN: a word of the weight images the kernel reads but the call left unwritten turns outputs to NaN.
        workspace.poison();
        gpu::wgmma_conv_forward(dx.get() + c.x_offset, dw.get(), b, ec, p, argmax, y_at_max, y, codes, workspace.get(),
                                g, nullptr);
        expect_poisoned_after(workspace, image_floats, "the weight images");
      },
      [&](const std::vector<float>& y_got) { expect_float32_close(y_got, y_ref, "the conv output"); }, rng);
}

INSTANTIATE_TEST_SUITE_P(OddGeometries, WgmmaConv, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return info.param.label; });

TEST(WgmmaConvLimits, RefusesWhatItCannotRun) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const char* why = nullptr;
  const gpu::WgmmaConvGeometry ok = geometry_of(kCases[0]);
  if (!gpu::wgmma_conv_available()) {
    EXPECT_FALSE(gpu::wgmma_conv_supported(ok, &why));
    EXPECT_STREQ(why, "needs an sm_90 GPU (Hopper's wgmma)");
    GTEST_SKIP() << "needs an sm_90 GPU for the rest";
  }
  ASSERT_TRUE(gpu::wgmma_conv_supported(ok));
  gpu::WgmmaConvGeometry strided = ok;  // a stride the output dims do not follow
  strided.conv.stride = {1, 2, 2};
  EXPECT_FALSE(gpu::wgmma_conv_supported(strided, &why));
  EXPECT_STREQ(why, "the output dims are not the conv's");
  gpu::WgmmaConvGeometry overlap = ok;
  overlap.conv.out.stride = {1, 1, 1};  // windows of 2 every 1
  EXPECT_FALSE(gpu::wgmma_conv_supported(overlap, &why));
  EXPECT_STREQ(why, "a pool whose windows overlap, leave gaps or take padding");
  gpu::WgmmaConvGeometry wrong = ok;
  wrong.conv.out.y = {5, 9, 66};
  EXPECT_FALSE(gpu::wgmma_conv_supported(wrong, &why));
  EXPECT_STREQ(why, "the output dims are not the conv's");
  gpu::WgmmaConvGeometry huge = ok;  // 4096 input channels x 27 taps: the weight alone is 7 MiB
  huge.conv.cin = 4096;
  EXPECT_FALSE(gpu::wgmma_conv_supported(huge, &why));
  EXPECT_STREQ(why, "the weights and an input tile exceed shared memory");
  gpu::WgmmaConvGeometry wide = ok;
  wide.conv.x = {5, 9, int64_t(1) << 31};
  EXPECT_FALSE(gpu::wgmma_conv_supported(wide, &why));
  EXPECT_STREQ(why, "sizes beyond 31 bits");
  gpu::WgmmaConvGeometry far = ok;  // padding and stride of 2^30: the last tile's first x is 2^31 along W
  far.conv.pad[2] = far.conv.stride[2] = int64_t(1) << 30;
  far.conv.out.y = {5, 9, 3};
  EXPECT_FALSE(gpu::wgmma_conv_supported(far, &why));
  EXPECT_STREQ(why, "sizes beyond 31 bits");
  gpu::WgmmaConvGeometry negative = ok;
  negative.conv.pad[1] = -1;  // the other axes keep the conv's dims
  EXPECT_FALSE(gpu::wgmma_conv_supported(negative, &why));
  EXPECT_STREQ(why, "non-positive sizes or negative padding");
  gpu::WgmmaConvGeometry empty = ok;
  empty.conv.cin = 0;
  EXPECT_FALSE(gpu::wgmma_conv_supported(empty, &why));
  EXPECT_STREQ(why, "no input or output channels");
  gpu::WgmmaConvGeometry channels = ok;  // taps x in_channels and x's plane x in_channels would pass 62 bits
  channels.conv.cin = int64_t(1) << 40;
  EXPECT_FALSE(gpu::wgmma_conv_supported(channels, &why));
  EXPECT_STREQ(why, "sizes beyond 31 bits");
  gpu::WgmmaConvGeometry groups = ok;  // 65537 groups of 128 output channels: past a grid's y
  groups.conv.out.n = 1;
  groups.conv.out.c = 65536 * 128 + 1;
  EXPECT_FALSE(gpu::wgmma_conv_supported(groups, &why));
  EXPECT_STREQ(why, "more than 65535 groups of output channels (a grid's y)");
  gpu::WgmmaConvGeometry strided_none = geometry_of(kCases[2]);  // no pool, but a stride of 2
  ASSERT_TRUE(gpu::wgmma_conv_supported(strided_none));
  strided_none.conv.out.stride = {1, 2, 2};
  EXPECT_FALSE(gpu::wgmma_conv_supported(strided_none, &why));
  EXPECT_STREQ(why, "a pool whose windows overlap, leave gaps or take padding");
}

TEST(WgmmaConvLimits, ForwardThrowsOnBadArguments) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const gpu::WgmmaConvGeometry avg = geometry_of(kCases[0]);  // an average pool
  gpu::WgmmaConvGeometry overlapping = avg;
  overlapping.conv.out.stride = {1, 1, 1};
  DeviceBuffer<float> buf(4096), workspace(gpu::wgmma_conv_workspace_bytes(avg) / sizeof(float));
  expect_fused_forward_refuses_bad_arguments(
      [&](const float* x, const gpu::EpilogueChain& chain, uint8_t* argmax, bool good, float* y, uint8_t* codes) {
        gpu::wgmma_conv_forward(x, buf.get(), nullptr, chain, buf.get(), argmax, nullptr, y, codes, workspace.get(),
                                good ? avg : overlapping, nullptr);
      });
}

// The blocks copy the weight images 16 bytes at a time: a null or misaligned workspace is refused, after the
// geometry.
TEST(WgmmaConvLimits, ForwardRefusesANullOrMisalignedWorkspace) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  if (!gpu::wgmma_conv_available()) GTEST_SKIP() << "needs an sm_90 GPU";
  const Case& c = kCases[0];
  const gpu::WgmmaConvGeometry g = geometry_of(c);
  const Dims y_dims = conv_output(c);
  DeviceBuffer<float> x(size_t(c.n * c.cin * c.x[0] * c.x[1] * c.x[2])),
      w(size_t(c.cout * c.cin * c.k[0] * c.k[1] * c.k[2])), p(size_t(c.n * c.cout * y_dims[0] * y_dims[1] * y_dims[2])),
      workspace(gpu::wgmma_conv_workspace_bytes(g) / sizeof(float) + 4);
  auto refusal = [&](void* ws, const gpu::WgmmaConvGeometry& geometry) -> std::string {
    try {
      gpu::wgmma_conv_forward(x.get(), w.get(), nullptr, gpu::EpilogueChain{}, p.get(), nullptr, nullptr, nullptr,
                              nullptr, ws, geometry, nullptr);
    } catch (const anvil::Error& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_PRED_FORMAT2(Contains, refusal(nullptr, g), "wgmma_conv_forward: null workspace");
  void* misaligned = reinterpret_cast<char*>(workspace.get()) + 4;
  EXPECT_PRED_FORMAT2(Contains, refusal(misaligned, g), "wgmma_conv_forward: the workspace");
  EXPECT_PRED_FORMAT2(Contains, refusal(misaligned, g), "must be 16-byte aligned");
  gpu::WgmmaConvGeometry overlapping = g;
  overlapping.conv.out.stride = {1, 1, 1};
  EXPECT_PRED_FORMAT2(Contains, refusal(nullptr, overlapping), "a pool whose windows overlap");
}

// The weight images' bytes, which need no GPU: for each group of N output channels (32, 64 or 128 as there
// are at most 32, 64 or more), N x (k_pad + 1) floats, k_pad = taps x kc rounded up to 8 and kc = in_channels
// rounded up to 8 (to 4 for at most 4).
size_t expected_workspace_bytes(int64_t cin, int64_t cout, int64_t taps) {
  const int64_t kc = cin <= 4 ? 4 : (cin + 7) / 8 * 8, k_pad = (taps * kc + 7) / 8 * 8;
  const int64_t n = cout <= 32 ? 32 : cout <= 64 ? 64 : 128, groups = (cout + n - 1) / n;
  return size_t(groups * n * (k_pad + 1)) * sizeof(float);
}

TEST(WgmmaConvWorkspace, HoldsEveryGroupsWeightImage) {
  for (const Case& c : kCases)
    EXPECT_EQ(gpu::wgmma_conv_workspace_bytes(geometry_of(c)),
              expected_workspace_bytes(c.cin, c.cout, c.k[0] * c.k[1] * c.k[2]))
        << c.label;
  // 16 -> 64 channels, 3x3x3: one group of 64 x (27 x 16 + 1) floats.
  EXPECT_EQ(gpu::wgmma_conv_workspace_bytes(geometry_of(kCases[0])), size_t(64 * 433 * 4));
  // 3 -> 200 channels, 1x4x4: two groups of 128 x (16 x 4 + 1).
  EXPECT_EQ(gpu::wgmma_conv_workspace_bytes(geometry_of(kCases[3])), size_t(2 * 128 * 65 * 4));
  // 1 -> 1 channel, 1x3x3: 9 taps of 4 channels padded to 40.
  EXPECT_EQ(gpu::wgmma_conv_workspace_bytes(geometry_of(kCases[2])), size_t(32 * 41 * 4));
}

TEST(WgmmaConvWorkspace, ThrowsWhereTheImagesCannotBeCounted) {
  gpu::WgmmaConvGeometry empty = geometry_of(kCases[0]);
  empty.conv.cin = 0;
  EXPECT_THROW(gpu::wgmma_conv_workspace_bytes(empty), anvil::Error);
  gpu::WgmmaConvGeometry flat = geometry_of(kCases[0]);
  flat.conv.k[1] = 0;
  EXPECT_THROW(gpu::wgmma_conv_workspace_bytes(flat), anvil::Error);
  gpu::WgmmaConvGeometry channels = geometry_of(kCases[0]);  // in_channels x taps past 31 bits
  channels.conv.cin = int64_t(1) << 30;
  EXPECT_THROW(gpu::wgmma_conv_workspace_bytes(channels), anvil::Error);
  gpu::WgmmaConvGeometry groups = geometry_of(kCases[0]);  // 65536 groups of 128 output channels
  groups.conv.out.c = 65535 * 128 + 1;
  EXPECT_THROW(gpu::wgmma_conv_workspace_bytes(groups), anvil::Error);
}

}  // namespace
}  // namespace anvil::testing
