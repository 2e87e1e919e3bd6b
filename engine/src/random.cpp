// Counter-based random numbers. tools/make_reference.py implements the same
// algorithm in Python, so any change here must be made there too:
//
//   fnv1a64(text)      = FNV-1a over the bytes of text: h = 14695981039346656037;
//                        for each byte b: h = (h ^ b) * 1099511628211   (mod 2^64)
//   splitmix64(x)      = the SplitMix64 finalizer only (no increment inside):
//                        z = x; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
//                        z = (z ^ (z >> 27)) * 0x94D049BB133111EB; return z ^ (z >> 31)
//   stream(seed, name) = splitmix64(seed ^ fnv1a64(name))
//   bits(stream, i)    = splitmix64(stream + (i + 1) * 0x9E3779B97F4A7C15)   (mod 2^64)
//   uniform01(i)       = float((bits >> 40) * 2^-24)          exact, in [0, 1)
//   uniform(lo, hi)    = float(lo + (hi - lo) * uniform01(i))   computed in double, then rounded
//   normal(i)          = float(sqrt(-2 log(1 - u1)) * cos(2 pi u2)), u1 = uniform01(2i),
//                        u2 = uniform01(2i + 1)                  Box-Muller in double, then rounded
#include "anvil/random.hpp"

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "anvil/error.hpp"

namespace anvil {

namespace {
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
constexpr double kPi = 3.141592653589793;  // == Python's math.pi

void require_buffer(const char* function, const float* out, int64_t n) {
  if (n < 0) throw InputError(std::string(function) + ": a negative count, " + std::to_string(n));
  if (n > 0 && out == nullptr) throw InputError(std::string(function) + ": a null buffer");
}
}  // namespace

uint64_t splitmix64(uint64_t x) {
  uint64_t z = x;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

uint64_t fnv1a64(const std::string& text) {
  uint64_t h = 14695981039346656037ULL;
  for (unsigned char byte : text) {
    h ^= byte;
    h *= 1099511628211ULL;
  }
  return h;
}

uint64_t random_stream(uint64_t seed, const std::string& name) { return splitmix64(seed ^ fnv1a64(name)); }

uint64_t random_bits(uint64_t stream, uint64_t index) { return splitmix64(stream + (index + 1) * kGolden); }

float uniform01(uint64_t stream, uint64_t index) {
  // 24 bits fit a float's mantissa exactly, so the value never rounds up to 1.
  return static_cast<float>(random_bits(stream, index) >> 40) * (1.0f / 16777216.0f);
}

void fill_uniform(float* out, int64_t n, uint64_t stream, double lo, double hi, int64_t first) {
  require_buffer("fill_uniform", out, n);
  // The indices first .. first + n - 1 must exist: no negative start, no sum past int64.
  if (first < 0 || (n > 0 && n - 1 > std::numeric_limits<int64_t>::max() - first))
    throw InputError("fill_uniform: values " + std::to_string(first) + " .. " + std::to_string(first) + " + " +
                     std::to_string(n) + " - 1 reach outside 0 .. 2^63 - 1");
  if (!(std::isfinite(lo) && std::isfinite(hi) && lo <= hi)) {
    char text[96];  // %g: 1e-09 stays readable; nan without a sign
    std::snprintf(text, sizeof text, "lo %g, hi %g", std::isnan(lo) ? NAN : lo, std::isnan(hi) ? NAN : hi);
    throw InputError(std::string("fill_uniform: the bounds must be finite with lo <= hi, got ") + text);
  }
  for (int64_t i = 0; i < n; ++i) {
    const double u = uniform01(stream, static_cast<uint64_t>(first + i));
    out[i] = static_cast<float>(lo + (hi - lo) * u);
  }
}

void fill_normal(float* out, int64_t n, uint64_t stream) {
  require_buffer("fill_normal", out, n);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t k = 2 * static_cast<uint64_t>(i);
    const double u1 = uniform01(stream, k);
    const double u2 = uniform01(stream, k + 1);
    // 1 - u1 lies in [2^-24, 1], so the log is finite.
    out[i] = static_cast<float>(std::sqrt(-2.0 * std::log(1.0 - u1)) * std::cos(2.0 * kPi * u2));
  }
}

}  // namespace anvil
