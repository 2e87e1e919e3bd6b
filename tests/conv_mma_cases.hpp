// The geometries and checks shared by the tests of anvil's tensor-core conv
// kernels (test_conv_wgrad_mma_gpu.cpp, test_conv_fprop_mma_gpu.cpp), chosen
// to reach every tile shape and edge: batch 1, one channel, odd sizes,
// strides 1 to 3, padding, dilation, a kernel larger than the input, several
// M and N tiles, a last K step that is partial, and a long K.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "gpu_test_util.hpp"
#include "kernels/cpu/geometry.hpp"

namespace anvil::testing {

struct ConvMmaCase {
  std::string label;
  int64_t n, ca, cb;
  cpu::Dims3 a, k, stride, pad, dilation;
};
inline void PrintTo(const ConvMmaCase& c, std::ostream* os) { *os << c.label; }

inline cpu::ConvGeometry geometry_of(const ConvMmaCase& c) {
  cpu::ConvGeometry g;
  g.n = c.n, g.ca = c.ca, g.cb = c.cb, g.a = c.a, g.k = c.k, g.stride = c.stride, g.pad = c.pad,
  g.dilation = c.dilation;
  for (int i = 0; i < 3; ++i) g.b[i] = (c.a[i] + 2 * c.pad[i] - c.dilation[i] * (c.k[i] - 1) - 1) / c.stride[i] + 1;
  return g;
}

inline const std::vector<ConvMmaCase> kConvMmaCases = {
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

// A geometry whose indices would pass int: the kernels refuse it (the layer then runs cuDNN's).
inline cpu::ConvGeometry geometry_beyond_int() {
  cpu::ConvGeometry g;
  g.n = 1 << 16, g.ca = 1 << 8, g.cb = 1;
  g.a = {1, 1 << 8, 1 << 8};
  g.b = g.a;
  return g;
}

// The library is called directly too: geometries without taps, channels,
// images or positions, each from the first case with one size set to 0.
inline std::vector<cpu::ConvGeometry> empty_geometries() {
  std::vector<cpu::ConvGeometry> out;
  for (int which = 0; which < 5; ++which) {
    cpu::ConvGeometry g = geometry_of(kConvMmaCases[0]);
    int64_t* size[] = {&g.k[1], &g.ca, &g.cb, &g.n, &g.b[2]};
    *size[which] = 0;
    out.push_back(g);
  }
  return out;
}

// The operands as the kernels multiply them: rounded to TF32 unless compensated.
inline std::vector<double> mma_operand(const std::vector<float>& v, bool compensated) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = compensated ? double(v[i]) : double(tf32(v[i]));
  return out;
}

// Float32 accuracy: in the relative L2 norm, and no single value far off.
inline void expect_float32_close(const std::vector<float>& got, const std::vector<double>& want,
                                 const std::string& what) {
  EXPECT_LE(rel_l2(got, want), 1e-5) << what;
  int64_t far = 0;
  for (size_t i = 0; i < want.size(); ++i) far += !(std::abs(got[i] - want[i]) <= 1e-4 * (1 + std::abs(want[i])));
  EXPECT_EQ(far, 0) << what << ": of " << want.size() << " values";
}

}  // namespace anvil::testing
