// Launchers for the unfused pointwise and per-channel CUDA kernels.
// Each asserts its preconditions, computes its grid, launches on the given
// stream and checks the launch. Reductions are deterministic: block partials
// in a caller-provided scratch buffer, then a fixed-order final pass.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace anvil::cuda {

void leaky_relu_forward(const float* x, float* y, int64_t count, float slope, cudaStream_t stream);
void leaky_relu_backward(const float* x, const float* dy, float* dx, int64_t count, float slope, bool accumulate,
                         cudaStream_t stream);

void copy_or_accumulate(const float* src, float* dst, int64_t count, bool accumulate, cudaStream_t stream);
void add_forward(const float* a, const float* b, float* y, int64_t count, cudaStream_t stream);

// Scratch for the per-channel reductions below.
size_t channel_reduce_scratch_bytes(int64_t n, int64_t c, int64_t spatial);

void bias_forward(float* y, const float* bias, int64_t n, int64_t c, int64_t spatial, cudaStream_t stream);
// dbias[c] = sum over n, s of dy. Overwrites dbias.
void bias_backward(const float* dy, float* dbias, int64_t n, int64_t c, int64_t spatial, void* scratch,
                   cudaStream_t stream);

void channel_scale_forward(const float* x, const float* m, float* y, int64_t n, int64_t c, int64_t spatial,
                           cudaStream_t stream);
// dx = dy * m[c] (skipped when dx is null; added when accumulate); dm[c] = sum of dy * x (overwrites dm).
void channel_scale_backward(const float* x, const float* m, const float* dy, float* dx, float* dm, int64_t n,
                            int64_t c, int64_t spatial, bool accumulate, void* scratch, cudaStream_t stream);

}  // namespace anvil::cuda
