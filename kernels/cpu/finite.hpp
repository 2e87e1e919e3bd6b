// CPU check for non-finite values (NaN, +-Inf): --check-finite.
#pragma once

#include <cstdint>

namespace anvil::cpu {

bool all_finite(const float* x, int64_t count);

}  // namespace anvil::cpu
