// Launchers for the loss and the optimizer.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "anvil/optimizer.hpp"

namespace anvil::cuda {

size_t mse_scratch_bytes(int64_t count);
// *loss = mean((pred - target)^2) (a device scalar); dpred = 2 (pred - target) / count. Deterministic.
void mse_forward_backward(const float* pred, const float* target, float* dpred, float* loss, int64_t count,
                          void* scratch, cudaStream_t stream);

// One torch.optim.SGD step over a flat slab; first_step initialises the momentum buffer to the gradient.
void sgd_step(float* param, const float* grad, float* momentum_buf, int64_t count, const SgdParams& p,
              bool first_step, cudaStream_t stream);

}  // namespace anvil::cuda
