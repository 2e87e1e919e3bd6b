// kernels/fast_div.hpp against the division operator: every divisor up to
// 4096 and powers of two, with dividends at the ends of the range, around
// multiples of the divisor and at random.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "kernels/fast_div.hpp"

namespace {

constexpr uint32_t kMaxDividend = 0x7fffffffu;  // the documented range is [0, 2^31)

std::vector<uint32_t> divisors() {
  std::vector<uint32_t> d;
  for (uint32_t v = 1; v <= 4096; ++v) d.push_back(v);
  for (uint32_t shift = 12; shift < 31; ++shift) {
    d.push_back(1u << shift);
    d.push_back((1u << shift) - 1);
    d.push_back((1u << shift) + 1);
  }
  d.push_back(kMaxDividend);
  return d;
}

void expect_exact(const anvil::FastDiv& f, uint32_t n) {
  const uint32_t d = f.divisor();
  ASSERT_EQ(f.div(n), n / d) << n << " / " << d;
  ASSERT_EQ(f.mod(n), n % d) << n << " % " << d;
}

TEST(FastDiv, MatchesDivisionAtEdgesAndMultiples) {
  for (uint32_t d : divisors()) {
    const anvil::FastDiv f(d);
    for (uint32_t n : {0u, 1u, 2u, d - 1, d, d + 1, kMaxDividend, kMaxDividend - 1, kMaxDividend - d})
      expect_exact(f, n);
    // Around the largest multiples of d below 2^31, where rounding errors would show first.
    const uint32_t top = kMaxDividend / d * d;
    for (uint32_t k = 0; k < 4 && top >= k * d + 1; ++k) {
      expect_exact(f, top - k * d);
      expect_exact(f, top - k * d - 1);
    }
  }
}

TEST(FastDiv, MatchesDivisionOnRandomDividends) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> dividend(0, kMaxDividend);
  std::uniform_int_distribution<uint32_t> divisor(1, kMaxDividend);
  for (int i = 0; i < 200000; ++i) {
    const uint32_t d = i % 2 == 0 ? divisor(rng) : 1 + divisor(rng) % 300;
    expect_exact(anvil::FastDiv(d), dividend(rng));
  }
}

}  // namespace
