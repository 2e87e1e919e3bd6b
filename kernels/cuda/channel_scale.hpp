// CUDA per-channel scale of an (n, c, spatial) tensor: y = x * m[c].
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace anvil::cuda {

// y may be x (in place).
void channel_scale_forward(const float* x, const float* m, float* y, int64_t n, int64_t c, int64_t spatial,
                           cudaStream_t stream);

// Scratch for channel_scale_backward; depends on (n, c, spatial) alone.
size_t channel_scale_backward_scratch_bytes(int64_t n, int64_t c, int64_t spatial);
// dx = dy * m[c] (skipped when dx is null; added when accumulate); dm[c] = sum of dy * x (overwrites dm).
// dx must not overlap x or dy. Deterministic (channel_reduce.cuh).
void channel_scale_backward(const float* x, const float* m, const float* dy, float* dx, float* dm, int64_t n, int64_t c,
                            int64_t spatial, bool accumulate, void* scratch, cudaStream_t stream);

}  // namespace anvil::cuda
