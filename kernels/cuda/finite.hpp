// CUDA check for non-finite values (NaN, +-Inf): --check-finite and the
// traced step that finds where one first appears.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace anvil::cuda {

// Sets *flag to 1 when any of x[0, count) is NaN or infinite; leaves it alone otherwise
// (the caller zeroes it, so several checks can share one flag).
void flag_non_finite(const float* x, int64_t count, unsigned* flag, cudaStream_t stream);

}  // namespace anvil::cuda
