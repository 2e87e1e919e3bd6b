// The fused phase-split conv + epilogue forward on the tensor cores (phase_conv_mma.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/epilogue_chain.hpp"
#include "kernels/cuda/phase_split.hpp"

namespace anvil::cuda {

// The phase-split conv fused with the epilogue (epilogue.hpp) in one TF32
// tensor-core kernel: an implicit GEMM in which each thread holds every phase
// of its outputs (phases <= 8, phases * cout rounded up to 8 <= 256,
// cin * kpv <= 128), so the max over phases happens in registers and Y is
// never written. x_pad and wp as the cuDNN path's; p, argmax and y_at_max as
// phase_epilogue_forward's (the last two may be null together). compensated:
// 3xTF32, float32-accurate products; otherwise TF32, with x_pad already
// rounded to TF32 (phase_pad_input's round_tf32).
bool phase_fused_forward_supported(const PhaseSplitGeometry& g);
void phase_fused_forward(const float* x_pad, const float* wp, const float* bias, const EpilogueChain& chain, float* p,
                         uint8_t* argmax, float* y_at_max, bool compensated, const PhaseSplitGeometry& g,
                         cudaStream_t stream);

}  // namespace anvil::cuda
