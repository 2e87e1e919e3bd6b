// Whether anvil's tensor-core kernels (phase_conv_mma.hpp, phase_wgrad_mma.hpp)
// can run here. They need sm_80 or newer; built for an older target they trap.
#pragma once

namespace anvil::cuda {

// The current device's compute capability as major * 10 + minor (75, 80, 90).
int device_sm();

// True when the current device is sm_80 or newer and the code this build
// carries for it was compiled for sm_80 or newer (CMAKE_CUDA_ARCHITECTURES).
// Defined in phase_conv_mma.cu, next to the kernel it probes.
bool tensor_core_kernels_available();

}  // namespace anvil::cuda
