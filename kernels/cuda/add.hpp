// CUDA element-wise sum and gradient fan-out (the add layer). Outputs may
// alias inputs (in place).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace anvil::cuda {

void add_forward(const float* a, const float* b, float* y, int64_t count, cudaStream_t stream);
// dst = src, or dst += src when accumulate.
void copy_or_accumulate(const float* src, float* dst, int64_t count, bool accumulate, cudaStream_t stream);

}  // namespace anvil::cuda
