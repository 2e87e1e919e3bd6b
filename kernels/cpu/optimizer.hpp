// CPU optimizer updates (see kernels/optimizer_math.hpp for the math): one
// step of torch.optim.SGD or Adam/AdamW over a flat slab of n parameters.
// The caller advances the StepState with begin_step once per step first.
#pragma once

#include <cstdint>

#include "kernels/optimizer_math.hpp"

namespace anvil::cpu {

// buf: the momentum buffer, null without momentum.
template <class T>
void sgd_update(T* p, const T* g, T* buf, int64_t n, const SgdHyper& hyper, const StepState& state);

// m, v: the first and second moment estimates (read as zero on step 1).
template <class T>
void adam_update(T* p, const T* g, T* m, T* v, int64_t n, const AdamHyper& hyper, const StepState& state);

}  // namespace anvil::cpu
