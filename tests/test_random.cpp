// Tests for the counter-based generator. The primitives are checked against
// published test vectors; the composed values are pinned to numbers computed
// by a separate Python implementation of the spec in anvil/random.hpp, which
// tools/make_reference.py must reproduce.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "anvil/error.hpp"
#include "anvil/random.hpp"

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

TEST(Random, Splitmix64MatchesPublishedSequence) {
  // SplitMix64 with state 1234567: each output is the finalizer of state += golden.
  const uint64_t expected[] = {6457827717110365317ULL, 3203168211198807973ULL, 9817491932198370423ULL};
  uint64_t state = 1234567;
  for (uint64_t want : expected) {
    state += kGolden;
    EXPECT_EQ(anvil::splitmix64(state), want);
  }
}

TEST(Random, Fnv1a64MatchesPublishedVectors) {
  EXPECT_EQ(anvil::fnv1a64(""), 14695981039346656037ULL);
  EXPECT_EQ(anvil::fnv1a64("a"), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(anvil::fnv1a64("foobar"), 0x85944171f73967e8ULL);
}

TEST(Random, ComposesPrimitivesAsSpecified) {
  const uint64_t stream = anvil::random_stream(7, "layer.bias");
  EXPECT_EQ(stream, anvil::splitmix64(7 ^ anvil::fnv1a64("layer.bias")));
  for (uint64_t i : {0ULL, 1ULL, 1000ULL, ~0ULL - 1}) {
    const uint64_t bits = anvil::splitmix64(stream + (i + 1) * kGolden);
    EXPECT_EQ(anvil::uniform01(stream, i), static_cast<float>(static_cast<double>(bits >> 40) / 16777216.0)) << i;
  }
}

TEST(Random, MatchesPythonReferenceValues) {
  // Computed with an independent Python implementation of the header's formulas.
  const uint64_t stream = anvil::random_stream(42, "conv1.weight");
  EXPECT_EQ(stream, 15135607617691302340ULL);
  const uint32_t mantissas[] = {14161814, 173390, 1010168, 15697140};
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(anvil::uniform01(stream, i), static_cast<float>(mantissas[i]) / 16777216.0f) << i;

  float u[4];
  anvil::fill_uniform(u, 4, stream, -1.0, 1.0);
  const float want_u[] = {0.6882197856903076f, -0.97933030128479f, -0.8795785903930664f, 0.8712449073791504f};
  for (int i = 0; i < 4; ++i) EXPECT_EQ(u[i], want_u[i]) << i;

  float z[4];
  anvil::fill_normal(z, 4, stream);
  // log and cos may differ by an ulp between math libraries; allow a few float ulps.
  const float want_z[] = {1.9239428043365479f, 0.32397910952568054f, 1.7220126390457153f, 0.634878933429718f};
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(z[i], want_z[i]) << i;
}

TEST(Random, Uniform01IsExactAndWellDistributed) {
  const uint64_t stream = anvil::random_stream(1, "uniform");
  const int n = 100000;
  double sum = 0, sum_sq = 0;
  for (int i = 0; i < n; ++i) {
    const float u = anvil::uniform01(stream, i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    const float scaled = u * 16777216.0f;  // exact: u has at most 24 significant bits
    ASSERT_EQ(scaled, std::floor(scaled)) << "not a multiple of 2^-24 at " << i;
    sum += u;
    sum_sq += static_cast<double>(u) * u;
  }
  const double mean = sum / n;
  const double var = sum_sq / n - mean * mean;
  EXPECT_NEAR(mean, 0.5, 0.005);         // ~5 standard errors
  EXPECT_NEAR(var, 1.0 / 12.0, 0.0015);  // ~6 standard errors
}

TEST(Random, DifferentNamesAndSeedsGiveDifferentStreams) {
  const uint64_t a = anvil::random_stream(1, "fc1.weight");
  const uint64_t b = anvil::random_stream(1, "fc2.weight");
  const uint64_t c = anvil::random_stream(2, "fc1.weight");
  EXPECT_NE(a, b);
  EXPECT_NE(a, c);
  int same_ab = 0, same_ac = 0;
  for (int i = 0; i < 1000; ++i) {
    same_ab += anvil::uniform01(a, i) == anvil::uniform01(b, i);
    same_ac += anvil::uniform01(a, i) == anvil::uniform01(c, i);
  }
  // Chance of a coincidence is 2^-24 per pair.
  EXPECT_LE(same_ab, 1);
  EXPECT_LE(same_ac, 1);
}

TEST(Random, FillNormalIsStandardNormal) {
  const int n = 100000;
  std::vector<float> z(n);
  anvil::fill_normal(z.data(), n, anvil::random_stream(3, "normal"));
  double sum = 0, sum_sq = 0;
  int within_one = 0;
  for (float v : z) {
    ASSERT_TRUE(std::isfinite(v));
    sum += v;
    sum_sq += static_cast<double>(v) * v;
    within_one += std::fabs(v) < 1.0f;
  }
  const double mean = sum / n;
  const double sd = std::sqrt(sum_sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.02);  // standard error 0.003
  EXPECT_NEAR(sd, 1.0, 0.015);   // standard error 0.0022
  EXPECT_NEAR(static_cast<double>(within_one) / n, 0.6827, 0.01);
}

TEST(Random, FillsAreDeterministicAndCounterBased) {
  const uint64_t stream = anvil::random_stream(99, "det");
  std::vector<float> a(500), b(500), prefix(100);
  anvil::fill_normal(a.data(), 500, stream);
  anvil::fill_normal(b.data(), 500, anvil::random_stream(99, "det"));
  EXPECT_EQ(a, b);
  // Element i depends only on (stream, i), so a shorter fill is a prefix.
  anvil::fill_normal(prefix.data(), 100, stream);
  EXPECT_TRUE(std::equal(prefix.begin(), prefix.end(), a.begin()));

  anvil::fill_uniform(a.data(), 500, stream, 0.0, 1.0);
  anvil::fill_uniform(b.data(), 500, stream, 0.0, 1.0);
  EXPECT_EQ(a, b);
  for (int i = 0; i < 500; ++i) EXPECT_EQ(a[i], anvil::uniform01(stream, i)) << i;
}

TEST(Random, FillUniformStaysInRange) {
  const int n = 100000;
  const double lo = -3.0, hi = 5.0;
  std::vector<float> x(n);
  anvil::fill_uniform(x.data(), n, anvil::random_stream(5, "range"), lo, hi);
  double sum = 0;
  for (float v : x) {
    ASSERT_GE(v, lo);
    ASSERT_LT(v, hi);
    sum += v;
  }
  EXPECT_NEAR(sum / n, 1.0, 0.04);  // standard error 0.0073
}

// A null buffer or a negative count is an error, not a store through null.
TEST(Random, FillRefusesANullBufferOrANegativeCount) {
  EXPECT_THROW(anvil::fill_uniform(nullptr, 4, 1, 0.0, 1.0), anvil::InputError);
  EXPECT_THROW(anvil::fill_normal(nullptr, 4, 1), anvil::InputError);
  std::vector<float> out(4, 5.f);
  EXPECT_THROW(anvil::fill_uniform(out.data(), -1, 1, 0.0, 1.0), anvil::InputError);
  EXPECT_NO_THROW(anvil::fill_uniform(nullptr, 0, 1, 0.0, 1.0));  // nothing to write
  EXPECT_EQ(out, std::vector<float>(4, 5.f));
}

// A start index fill_uniform cannot reach (negative, or a run past index 2^63 - 1) is an error,
// not a signed overflow; the run that ends on index 2^63 - 1 still fills.
TEST(Random, FillUniformRefusesAStartOutsideTheStream) {
  constexpr int64_t kLast = std::numeric_limits<int64_t>::max();
  std::vector<float> out(4, 5.f);
  EXPECT_THROW(anvil::fill_uniform(out.data(), 4, 1, 0.0, 1.0, -1), anvil::InputError);
  EXPECT_THROW(anvil::fill_uniform(out.data(), 4, 1, 0.0, 1.0, kLast - 2), anvil::InputError);
  EXPECT_EQ(out, std::vector<float>(4, 5.f));
  anvil::fill_uniform(out.data(), 4, 1, 0.0, 1.0, kLast - 3);
  EXPECT_EQ(out[3], anvil::uniform01(1, static_cast<uint64_t>(kLast)));  // lo 0, hi 1: the value itself
}

// Bounds that are not finite, or reversed, would fill NaN, infinities or values outside [lo, hi):
// refused, naming them, with nothing written. Equal bounds fill that value.
TEST(Random, FillUniformRefusesBoundsThatAreNotARange) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  std::vector<float> out(4, 5.f);
  const std::vector<std::pair<std::pair<double, double>, std::string>> refused = {
      {{std::nan(""), 1.0}, "lo nan, hi 1"},
      {{-std::nan(""), 1.0}, "lo nan, hi 1"},
      {{0.0, kInf}, "lo 0, hi inf"},
      {{-kInf, 0.0}, "lo -inf, hi 0"},
      {{1.0, -1e-09}, "lo 1, hi -1e-09"}};
  for (const auto& [bounds, text] : refused) {
    try {
      anvil::fill_uniform(out.data(), 4, 1, bounds.first, bounds.second);
      ADD_FAILURE() << text;
    } catch (const anvil::InputError& e) {
      EXPECT_EQ(std::string(e.what()), "fill_uniform: the bounds must be finite with lo <= hi, got " + text);
    }
  }
  EXPECT_EQ(out, std::vector<float>(4, 5.f));
  anvil::fill_uniform(out.data(), 4, 1, 0.25, 0.25);
  EXPECT_EQ(out, std::vector<float>(4, 0.25f));
}

}  // namespace
