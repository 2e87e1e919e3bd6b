// A convolution with few taps per output (in_channels x kernel volume <=
// kDirectConvMaxK) fused with its epilogue in one kernel (direct_conv.cu):
//   x -> conv (float32 FMA on the CUDA cores) -> + bias -> the chain
//   (epilogue_chain.hpp) -> a pool, or none
// with chain_pool.hpp's pool semantics. A block stages the x its windows read
// in shared memory and each thread computes its pooled outputs' windows of the
// conv output in registers, so Y is written only where backward asks for it.
// Such convs (an RGB or gray stem: 3 or 1 input channels) are a bad GEMM:
// cuDNN converts them to NHWC and back and writes Y, which the epilogue reads
// again, several times the cost of the FMA work.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstdint>

#include "kernels/cuda/chain_pool.hpp"
#include "kernels/cuda/epilogue_chain.hpp"

namespace anvil::cuda {

constexpr int64_t kDirectConvMaxK = 512;

struct DirectConvGeometry {
  int64_t cin = 1;
  std::array<int64_t, 3> x{1, 1, 1};  // input spatial dims; 1 along lifted axes
  std::array<int64_t, 3> k{1, 1, 1}, stride{1, 1, 1}, pad{0, 0, 0}, dilation{1, 1, 1};  // the conv's
  ChainPoolGeometry out;  // n, c = out_channels, y = the conv output's dims, and the pool
};

// Whether the kernel runs this geometry: in_channels x kernel volume <=
// kDirectConvMaxK, 31-bit sizes, a pool whose windows leave no conv output
// outside them (backward reads Y whole), and a block's x tile and weights
// within 48 KiB of shared memory (96 KiB where the current device lets a
// block opt in to that much; only then is the device asked). Sets why_not
// otherwise.
bool direct_conv_supported(const DirectConvGeometry& g, const char** why_not = nullptr);

// w is PyTorch's (out, in, k...); bias may be null. p: the pooled output.
// Saved for backward, each null when not wanted: argmax (a max pool's window
// index, a byte), y_at_max (y + bias at the argmax: epilogue.hpp's backward)
// and y (the bias-free conv output, whole: chain_pool.hpp's backward), or,
// for a chain of leaky_relus (chain_codes_supported), in y's place its codes
// (a byte an element: chain_pool_backward_from_codes).
void direct_conv_forward(const float* x, const float* w, const float* bias, const EpilogueChain& chain, float* p,
                         uint8_t* argmax, float* y_at_max, float* y, uint8_t* codes, const DirectConvGeometry& g,
                         cudaStream_t stream);

}  // namespace anvil::cuda
