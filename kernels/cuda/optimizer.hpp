// CUDA optimizer updates (see kernels/optimizer_math.hpp for the math).
//
// The StepState lives in device memory: begin_step advances it on the device
// once per optimizer step, before the updates of that step, so a captured CUDA
// graph replays valid steps. Start it as a copy of StepState{} (step 0).
// Launch-only: no host sync, no allocation.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/optimizer_math.hpp"

namespace anvil::cuda {

// One-thread kernel: anvil::begin_step on *state. SGD passes beta1 = beta2 = 0.
void begin_step(StepState* state, const LrSchedule& schedule, float beta1, float beta2, cudaStream_t stream);

// One torch.optim.SGD step over a flat slab; buf: the momentum buffer, null without momentum.
void sgd_update(float* p, const float* g, float* buf, int64_t n, const SgdHyper& hyper, const StepState* state,
                cudaStream_t stream);

// One torch.optim.Adam / AdamW step over a flat slab; m and v are read as zero on step 1.
void adam_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& hyper,
                 const StepState* state, cudaStream_t stream);

}  // namespace anvil::cuda
