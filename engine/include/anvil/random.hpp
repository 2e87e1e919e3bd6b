// Counter-based random numbers, written once here and once in
// tools/make_reference.py so that both sides produce the same tensors.
//
//   stream(seed, name) = splitmix64(seed ^ fnv1a64(name))
//   bits(stream, i)    = splitmix64(stream + (i + 1) * 0x9E3779B97F4A7C15)   (mod 2^64)
//   uniform01(i)       = (bits >> 40) * 2^-24                               exact float in [0, 1)
//   uniform(lo, hi)    = float(lo + (hi - lo) * uniform01(i))                 in double, then rounded
//   normal(i)          = float(sqrt(-2 log(1 - u(2i))) * cos(2 pi u(2i+1)))  Box-Muller in double
#pragma once

#include <cstdint>
#include <string>

namespace anvil {

uint64_t splitmix64(uint64_t x);
uint64_t fnv1a64(const std::string& text);
uint64_t random_stream(uint64_t seed, const std::string& name);
uint64_t random_bits(uint64_t stream, uint64_t index);  // bits(stream, i) above

float uniform01(uint64_t stream, uint64_t index);
// Values first .. first + n - 1 of the stream (a rank's rows of a seeded global batch); InputError
// where first is negative or the last index would pass 2^63 - 1, or lo and hi are not finite with
// lo <= hi.
void fill_uniform(float* out, int64_t n, uint64_t stream, double lo, double hi, int64_t first = 0);
void fill_normal(float* out, int64_t n, uint64_t stream);

}  // namespace anvil
