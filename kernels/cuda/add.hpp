// CUDA element-wise sum and gradient fan-out (the add layer). Outputs may
// alias inputs (in place), within the limits below.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace anvil::cuda {

// y = inputs[0] + inputs[1] + ..., added left to right as the CPU reference
// does (so the two agree bit for bit), up to four inputs a pass: one pass
// moves n + 1 tensors where pairwise adds would move 3 (n - 1). At least two
// inputs; y may alias the first two only (the reference writes y = a + b
// before it reads the third).
void add_forward(const std::vector<const float*>& inputs, float* y, int64_t count, cudaStream_t stream);
// dst = src, or dst += src when accumulate.
void copy_or_accumulate(const float* src, float* dst, int64_t count, bool accumulate, cudaStream_t stream);

}  // namespace anvil::cuda
