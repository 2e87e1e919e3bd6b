// CUDA per-channel bias of an (n, c, spatial) tensor (the conv's bias).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace anvil::cuda {

// y[n, c, s] += bias[c], in place.
void bias_forward(float* y, const float* bias, int64_t n, int64_t c, int64_t spatial, cudaStream_t stream);

// Scratch for bias_backward; depends on (n, c, spatial) alone.
size_t bias_backward_scratch_bytes(int64_t n, int64_t c, int64_t spatial);
// dbias[c] = sum over n, s of dy. Overwrites dbias. Deterministic (channel_reduce.cuh).
void bias_backward(const float* dy, float* dbias, int64_t n, int64_t c, int64_t spatial, void* scratch,
                   cudaStream_t stream);

}  // namespace anvil::cuda
