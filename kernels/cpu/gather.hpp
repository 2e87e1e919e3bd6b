// CPU minibatch gather, the twin of kernels/cuda/gather.hpp with the cursor
// and the valid count in host memory.
#pragma once

#include <cstdint>

namespace anvil::cpu {

// dst row b = src row order[cursor * batch + b] for the rows that exist; the rest are zero.
void gather_batch(const float* src, int64_t row_floats, const int64_t* order, int64_t count, int64_t cursor,
                  int64_t batch, float* dst);

// The rows of batch `cursor` that exist: min(batch, count - cursor * batch), at least 0.
int64_t valid_rows(int64_t count, int64_t cursor, int64_t batch);

}  // namespace anvil::cpu
