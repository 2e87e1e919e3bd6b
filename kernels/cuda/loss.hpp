// CUDA losses (see kernels/loss_math.hpp for the math): mse, l1 and smooth_l1,
// mean over the elements.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/loss_math.hpp"

namespace anvil::cuda {

size_t loss_scratch_bytes(int64_t count);

// *loss (a device scalar) = the mean loss of pred against target; dpred, unless
// null (evaluation only), = its gradient w.r.t. pred, bitwise as the CPU's.
// dpred may be pred itself. scratch: loss_scratch_bytes(count), 8-byte aligned.
// Bitwise deterministic; no host sync, no allocation.
// valid_count (device, in [1, count]; null: count): only the first *valid_count
// elements count; the others get a zero gradient (a partial batch padded to the full batch).
void loss_forward_backward(const LossParams& params, const float* pred, const float* target, float* dpred, float* loss,
                           int64_t count, void* scratch, cudaStream_t stream, const int64_t* valid_count = nullptr);

}  // namespace anvil::cuda
