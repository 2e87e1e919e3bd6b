// kernels/tf32.hpp's integer TF32 rounding, which devices before sm_80 use in
// place of cvt.rna.tf32.f32, against a reference in double arithmetic. (The
// function also matched the instruction on all 2^32 inputs on an H200.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/tf32.hpp"

namespace {

float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
uint32_t to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

// Round to a multiple of the TF32 ulp, 2^(exponent - 10) (subnormals: that of
// the smallest normal binade), with std::round's ties away from zero. Exact in
// double; past the largest float, Inf. Inf and NaN: the instruction's truncation.
uint32_t reference_tf32(uint32_t bits) {
  const float x = from_bits(bits);
  if (!std::isfinite(x)) return bits & ~anvil::kTf32DroppedBits;
  int e = 0;
  std::frexp(double(x), &e);  // |x| = m 2^e, m in [0.5, 1)
  const double ulp = std::ldexp(1.0, std::max(e, -125) - 11);
  const double r = std::round(double(x) / ulp) * ulp;
  return to_bits(std::fabs(r) > FLT_MAX ? std::copysign(INFINITY, x) : static_cast<float>(r));
}

TEST(Tf32, RoundsEdgeValuesAsTheReference) {
  const uint32_t magnitudes[] = {0x00000000u, 0x00000001u, 0x00000fffu, 0x00001000u, 0x00001001u, 0x00002fffu,
                                 0x007ff000u, 0x007fffffu, 0x00800000u, 0x00801000u, 0x00802fffu, 0x3f800fffu,
                                 0x3f801000u, 0x3f801001u, 0x3f803000u, 0x3fffefffu, 0x3ffff000u, 0x7f7fefffu,
                                 0x7f7ff000u, 0x7f7fffffu, 0x7f800000u, 0x7f800001u, 0x7f801000u, 0x7fbfffffu,
                                 0x7fc00000u, 0x7fffffffu};
  for (uint32_t m : magnitudes)
    for (uint32_t b : {m, m | 0x80000000u}) EXPECT_EQ(anvil::tf32_round_bits(b), reference_tf32(b)) << std::hex << b;
  EXPECT_EQ(anvil::tf32_round_bits(0x3f801000u), 0x3f802000u);  // a tie rounds away from zero
  EXPECT_EQ(anvil::tf32_round_bits(0xbf801000u), 0xbf802000u);
  EXPECT_EQ(anvil::tf32_round_bits(0x7f7ff000u), 0x7f800000u);  // past the largest TF32: Inf
  EXPECT_EQ(anvil::tf32_round_bits(0x7fc00123u), 0x7fc00000u);  // NaN stays NaN
}

// Every sign and exponent, with the dropped bits at and around the halfway
// point, then random bit patterns.
TEST(Tf32, RoundsManyValuesAsTheReference) {
  std::vector<uint32_t> inputs;
  for (uint32_t top = 0; top < (1u << 9); ++top)
    for (uint32_t kept : {0u, 1u, 0x3ffu})
      for (uint32_t dropped : {0x0u, 0x1u, 0xfffu, 0x1000u, 0x1001u, 0x1fffu})
        inputs.push_back(top << 23 | kept << 13 | dropped);
  std::mt19937 rng(12345);
  for (int i = 0; i < 2000000; ++i) inputs.push_back(static_cast<uint32_t>(rng()));
  int failures = 0;
  for (uint32_t b : inputs) {
    if (anvil::tf32_round_bits(b) == reference_tf32(b)) continue;
    ADD_FAILURE() << std::hex << b << ": " << anvil::tf32_round_bits(b) << " != " << reference_tf32(b);
    if (++failures == 10) break;
  }
}

}  // namespace
