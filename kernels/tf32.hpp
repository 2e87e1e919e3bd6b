// TF32 rounding in integer arithmetic, for the host and for devices older than
// sm_80, which lack cvt.rna.tf32.f32 (kernels/cuda/common.cuh's tf32_bits uses
// the instruction where it exists and this elsewhere; the two agree bit for bit).
#pragma once

#include <cstdint>

#include "kernels/host_device.hpp"

namespace anvil {

// TF32 keeps 10 of float32's 23 mantissa bits: the 13 it drops.
constexpr uint32_t kTf32DroppedBits = 0x1fffu;

// The float32 with bits `bits` rounded to TF32 (nearest, ties away from zero),
// as bits with the 13 dropped bits cleared. Adding half a TF32 ulp to the
// magnitude and truncating is exactly that rounding: a carry into the exponent
// is the next binade, one past the largest finite value is Inf. Inf and NaN
// are truncated, as by the instruction (so a NaN whose payload lies only in
// the dropped bits becomes Inf there too).
ANVIL_HD inline uint32_t tf32_round_bits(uint32_t bits) {
  constexpr uint32_t kExponent = 0x7f800000u, kHalfUlp = 0x1000u;
  if ((bits & kExponent) == kExponent) return bits & ~kTf32DroppedBits;
  return (bits + kHalfUlp) & ~kTf32DroppedBits;
}

}  // namespace anvil
