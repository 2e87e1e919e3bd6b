// The fused epilogue of a conv followed by a pointwise chain and a max pool
// that tiles its output:
//   conv output Y -> + bias -> the chain (epilogue_chain.hpp) -> max pool
// with a pool whose stride equals its kernel, no padding, and Y's spatial
// dims divisible by the kernel. Forward reads Y once and writes the pooled P
// plus, per pooled element, what backward needs: the argmax's index inside
// its window and y (bias included) there. Backward writes the whole dY (zeros
// off the argmax) and reduces dbias and the multipliers' gradients per channel
// in the same pass. Other pools, and no pool, are chain_pool.hpp's.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/epilogue_chain.hpp"

namespace anvil::cuda {

struct EpilogueGeometry {
  int64_t n = 1, c = 1;
  std::array<int64_t, 3> y{1, 1, 1};  // conv output spatial dims (D, H, W); D = 1 in 2-D
  std::array<int64_t, 3> k{1, 1, 1};  // pool kernel = stride; k[0] * k[1] * k[2] <= 256
};

// bias may be null; argmax and y_at_max may both be null (inference: nothing saved for backward).
void fused_epilogue_forward(const float* y, const float* bias, const EpilogueChain& chain, float* p, uint8_t* argmax,
                            float* y_at_max, const EpilogueGeometry& g, cudaStream_t stream);

size_t fused_epilogue_backward_scratch_bytes(const EpilogueGeometry& g, const EpilogueChain& chain);
void fused_epilogue_backward(const float* dp, const uint8_t* argmax, const float* y_at_max, const EpilogueChain& chain,
                             float* dy, const ChainGrads& grads, void* scratch, const EpilogueGeometry& g,
                             cudaStream_t stream);

}  // namespace anvil::cuda

namespace anvil::cuda {

// The same epilogue over the phase-split layout of a stride-s transposed conv
// whose pool kernel equals its stride: Yp is (n, phases * c, z) with channel
// phase * c + ch, and pooled element e = (e0, e1, e2) of plane (n, ch) takes
// its window from the `phases` values Yp[n, w * c + ch, (e0 * z1 + e1) * z2 +
// e2 + offset[w]] (window index w). dYp likewise; where z exceeds q, the
// elements no phase reads get zero gradient.
struct PhaseEpilogueGeometry {
  int64_t n = 1, c = 1;
  int64_t phases = 1;                 // s0 * s1 * s2 <= 256
  std::array<int64_t, 3> q{1, 1, 1};  // the phase grid: the pooled dims
  std::array<int64_t, 3> z{1, 1, 1};  // Yp's spatial dims, >= q
  std::array<int64_t, 256> offset{};  // phase w's element (0, 0, 0) in a Yp plane
};

void phase_epilogue_forward(const float* yp, const float* bias, const EpilogueChain& chain, float* p, uint8_t* argmax,
                            float* y_at_max, const PhaseEpilogueGeometry& g, cudaStream_t stream);
size_t phase_epilogue_backward_scratch_bytes(const PhaseEpilogueGeometry& g, const EpilogueChain& chain);
// What the phase epilogue's backward writes; every output may be null.
struct PhaseGradOutputs {
  float* dyp = nullptr;  // the whole phase-domain dY
  // dY at each pooled element's argmax (n, c, q), all a sparse weight gradient
  // needs: as TF32 bits with the argmax in the 13 low bits TF32 drops, and the
  // TF32-rounded remainder dY - that value.
  uint32_t* dy_tf32 = nullptr;
  uint32_t* dy_residual = nullptr;
  ChainGrads grads;
};
void phase_epilogue_backward(const float* dp, const uint8_t* argmax, const float* y_at_max, const EpilogueChain& chain,
                             const PhaseGradOutputs& out, void* scratch, const PhaseEpilogueGeometry& g,
                             cudaStream_t stream);

}  // namespace anvil::cuda
