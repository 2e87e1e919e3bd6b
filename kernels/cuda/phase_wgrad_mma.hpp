// The sparse phase-split weight gradient on the tensor cores (phase_wgrad_mma.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/phase_split.hpp"

namespace anvil::cuda {

// The weight gradient of the phase-split conv when dY comes from a max pool
// whose windows are the phases: each (n, co, q) has one non-zero phase, its
// argmax. A TF32 tensor-core GEMM (M = phases * cout, N = cin * kpv,
// K = n * q) builds its A tiles from dY at the argmax alone, so no dY tensor
// is ever materialised; the sum is deterministic. dy_tf32 and
// dy_residual are per pooled element (n, cout, q), as the phase epilogue's
// backward writes them (PhaseGradOutputs). With dy_residual the kernel also
// splits x into TF32 value and residual and runs 3 MMAs per product, which
// makes every product float32-accurate ("compensated"); without, it is TF32
// and takes x_pad as already rounded to TF32 (phase_pad_input's round_tf32).
bool phase_mma_weight_grad_supported(const PhaseSplitGeometry& g);
size_t phase_mma_weight_grad_scratch_bytes(const PhaseSplitGeometry& g);
void phase_mma_weight_grad(const uint32_t* dy_tf32, const uint32_t* dy_residual, const float* x_pad, float* dw,
                           void* scratch, const PhaseSplitGeometry& g, cudaStream_t stream);

}  // namespace anvil::cuda
