// The general fused epilogue's forward (chain_pool.hpp) over a conv output
// stored channels-last: Y is (N, D, H, W, C), as cuDNN's tensor-core kernels
// write it natively (in NCDHW they add a transpose pass over Y).
//   Y -> + bias -> the chain (epilogue_chain.hpp) -> a pool, or none -> P
// P, and a max pool's argmax and y there, come out in the packed NCDHW
// layout, with the bits of chain_pool_forward (P, argmax) and
// fused_epilogue_forward (y_at_max; a tiled max pool), so either backward
// takes them; or P alone channels-last, the same bits (for a channels-last
// consumer in inference). Forward only: a backward that reads Y gets the packed Y.
// The add_ form reads two channels-last addends (a residual join between
// channels-last activations, lower/channels_last.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/chain_pool.hpp"

namespace anvil::cuda {

enum class PLayout { Packed, ChannelsLast };
inline PLayout p_layout(bool channels_last) { return channels_last ? PLayout::ChannelsLast : PLayout::Packed; }

// Why the kernel cannot run this geometry, or null where it can.
const char* channels_last_pool_geometry_error(const ChainPoolGeometry& g);
// bias may be null; argmax only with a max pool and a packed P, y_at_max
// only with argmax (both null in inference).
void channels_last_pool_forward(const float* y, const float* bias, const EpilogueChain& chain, float* p,
                                PLayout p_layout, uint8_t* argmax, float* y_at_max, const ChainPoolGeometry& g,
                                cudaStream_t stream);
// The same with Y = y + addend, both channels-last (no bias), as chain_pool's add_ forms.
void add_channels_last_pool_forward(const float* y, const float* addend, const EpilogueChain& chain, float* p,
                                    PLayout p_layout, uint8_t* argmax, const ChainPoolGeometry& g, cudaStream_t stream);

}  // namespace anvil::cuda
