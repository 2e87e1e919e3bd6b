// CPU reference loss and optimizer (training.cpp), float and double. The
// other CPU kernels have a header each, named after their source file.
#pragma once

#include <cstdint>

#include "anvil/optimizer.hpp"

namespace anvil::cpu {

// loss = mean((pred - target)^2); dpred = 2 (pred - target) / count. Returns the loss.
template <class T> T mse_forward_backward(const T* pred, const T* target, T* dpred, int64_t count);

// torch.optim.SGD, one step over a flat slab. first_step: the momentum buffer
// is initialised to the gradient, as torch does on its first step.
template <class T> void sgd_step(T* param, const T* grad, T* momentum_buf, int64_t count, const SgdParams& p,
                                 bool first_step);

}  // namespace anvil::cpu
