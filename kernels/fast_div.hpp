// Division by a divisor fixed at launch, as a multiply-high and a shift
// (Granlund and Montgomery; CUTLASS's FastDivmod). A 32-bit integer division
// is a ~20-instruction sequence on the GPU, and the pool kernels need several
// per element to find an element's coordinates and windows.
#pragma once

#include <cstdint>

#include "kernels/host_device.hpp"

namespace anvil {

class FastDiv {
 public:
  FastDiv() = default;
  // divisor in [1, 2^31); quotients are exact for dividends in [0, 2^31).
  explicit FastDiv(uint32_t divisor) : divisor_(divisor) {
    if (divisor_ <= 1) return;  // mul_ = 0 marks the identity
    uint32_t log2_ceil = 0;
    while ((uint64_t(1) << log2_ceil) < divisor_) ++log2_ceil;
    const uint32_t p = 31 + log2_ceil;
    mul_ = uint32_t(((uint64_t(1) << p) + divisor_ - 1) / divisor_);
    shift_ = p - 32;
  }

  ANVIL_HD uint32_t divisor() const { return divisor_; }
  ANVIL_HD uint32_t div(uint32_t n) const { return mul_ == 0 ? n : mul_high(n, mul_) >> shift_; }
  ANVIL_HD uint32_t mod(uint32_t n) const { return n - div(n) * divisor_; }

 private:
  ANVIL_HD static uint32_t mul_high(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
    return __umulhi(a, b);
#else
    return uint32_t((uint64_t(a) * b) >> 32);
#endif
  }

  uint32_t divisor_ = 1, mul_ = 0, shift_ = 0;
};

}  // namespace anvil
