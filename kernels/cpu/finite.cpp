#include "kernels/cpu/finite.hpp"

#include <cstring>

namespace anvil::cpu {

// On the bits (exponent all ones: NaN or infinity), so no compiler flag can fold the test away.
bool all_finite(const float* x, int64_t count) {
  bool finite = true;
  for (int64_t i = 0; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    finite &= (bits & 0x7f800000u) != 0x7f800000u;
  }
  return finite;
}

}  // namespace anvil::cpu
