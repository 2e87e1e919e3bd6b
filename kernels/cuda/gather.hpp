// Minibatch gather for a dataset resident in device memory. Everything that
// changes from step to step (which batch of the epoch is next, how many of its
// rows are real) is read from or written to device memory, so these launches
// can be captured once in a CUDA graph and replayed every step.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace anvil::cuda {

// The batch at *cursor of an epoch whose sample order is order[0 .. count):
// dst row b = src row order[*cursor * batch + b] for the rows that exist
// (b < valid = min(batch, count - *cursor * batch)); the rows beyond are zero.
// A row is row_floats floats. src and dst must not overlap.
void gather_batch(const float* src, int64_t row_floats, const int64_t* order, int64_t count, const int64_t* cursor,
                  int64_t batch, float* dst, cudaStream_t stream);

// After the batch's gathers: *valid_elements = valid * elements_per_row (what
// the loss averages over) and the cursor moves to the next batch.
void finish_batch(int64_t* cursor, int64_t count, int64_t batch, int64_t elements_per_row, int64_t* valid_elements,
                  cudaStream_t stream);

}  // namespace anvil::cuda
