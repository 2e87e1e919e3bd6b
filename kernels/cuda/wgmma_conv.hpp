// A convolution fused with its epilogue on Hopper's warpgroup MMAs
// (wgmma_conv.cu), for tf32:
//   x -> conv (TF32 tensor cores) -> + bias -> the chain (epilogue_chain.hpp)
//   -> a pool whose windows tile the conv output, or none
// with direct_conv.hpp's outputs: the pooled output, and what backward reads
// (the argmax and y there, or Y whole) only where asked. An implicit GEMM:
// a block stages the x its tile of conv outputs reads in shared memory, keeps
// the whole weight there, and its two warpgroups form their A fragments from
// the staged x by per-tap offsets; Y stays in registers and shared memory.
// A first small kernel writes the weight (rounded to TF32) and the bias once
// per call, into a workspace, as each group of output channels' image of
// that shared memory; every block then copies its group's image whole.
// Built for sm_90a alone (CMakeLists.txt): it runs on sm_90 devices only.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/direct_conv.hpp"
#include "kernels/cuda/epilogue_chain.hpp"

namespace anvil::cuda {

struct WgmmaConvGeometry {
  DirectConvGeometry conv;  // any stride; a stride-1 transposed conv as its equivalent conv (below)
  // w is a stride-1 conv_transpose's (in, out, k...): the equivalent conv reads
  // it with in and out swapped and the taps reversed (its padding is
  // dilation x (k - 1) - the transposed conv's).
  bool transposed_weight = false;
};

// Whether the current device runs the kernel: an sm_90 GPU, and this build's
// sm_90a code for it.
bool wgmma_conv_available();

// Whether the kernel runs this geometry on the current device. It needs
// wgmma_conv_available(), a pool (if any) whose window is
// its stride and has no padding, 31-bit sizes, and the weight (out_channels in
// groups of at most 128) with one input tile within a block's shared memory.
// Sets why_not otherwise.
bool wgmma_conv_supported(const WgmmaConvGeometry& g, const char** why_not = nullptr);

// Whether the formulation rule should take the kernel over cuDNN's conv for a
// supported geometry: a stride of 1, a block holds two input tiles (one is
// copied while the other computes) and out_channels is above 32 (the wgmma's
// N is 64 or 128). Measured (docs/performance.md): faster than cuDNN's conv
// with its epilogue at 64 channels double-buffered, slower at 32 channels with
// one buffer; strided, slower than the direct conv on relu_avgpool_2d's stem.
bool wgmma_conv_preferred(const WgmmaConvGeometry& g);

// The bytes of wgmma_conv_forward's workspace: the weight images of all the
// groups of output channels, each N x (k_pad + 1) floats, where N (the
// group's channels) is 32, 64 or 128 as out_channels is at most 32, 64 or
// above, k_pad = 8 x ceil(taps x kc / 8) and kc is in_channels rounded up to
// 8 (to 4 for at most 4). Needs no GPU. Throws anvil::Error where these
// cannot be counted: no input or output channels, a kernel size below 1,
// in_channels x taps beyond 31 bits or more than 65535 groups (which
// wgmma_conv_supported refuses too); sizes any other geometry, run or not.
size_t wgmma_conv_workspace_bytes(const WgmmaConvGeometry& g);

// As direct_conv_forward, with the conv's products in TF32: x truncated, w
// rounded to nearest. p: the pooled output; argmax and y_at_max (a max pool
// only) and y (the bias-free conv output, whole) or in its place the chain's
// codes may be null. workspace: scratch of the call, device memory of
// wgmma_conv_workspace_bytes(g), 16-byte aligned (null or misaligned: throws
// anvil::Error), where a first kernel on stream writes the weight images.
void wgmma_conv_forward(const float* x, const float* w, const float* bias, const EpilogueChain& chain, float* p,
                        uint8_t* argmax, float* y_at_max, float* y, uint8_t* codes, void* workspace,
                        const WgmmaConvGeometry& g, cudaStream_t stream);

}  // namespace anvil::cuda
