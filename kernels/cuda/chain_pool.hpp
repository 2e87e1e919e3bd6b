// The general fused epilogue of a conv:
//   conv output Y -> + bias -> the chain (epilogue_chain.hpp) -> a pool, or none
// for every pool the tiled max of epilogue.hpp does not cover: max or
// average, any window (max: up to 255 elements), stride and padding, with
// PyTorch's semantics as in the CPU reference (max pads with -inf and routes
// the gradient to the first maximum; average divides by the whole window,
// count_include_pad). Forward reads Y once and writes the output P and, for
// a max pool in training, each window's argmax. Backward reads Y again (the
// caller keeps it), or, for a chain of leaky_relus, the one-byte codes a conv
// forward wrote in its place (epilogue_chain.hpp), computes dY in one pass (each element gathers from the
// windows that hold it) and reduces dbias and the multipliers' gradients per
// channel, deterministically; where windows overlap, it stages the windows
// over a tile of Y in shared memory if they fit, so that they read global
// memory once.
// The add_ forms take Y as the sum of two tensors (a residual join, fused by
// the add rule) and read both where the others read Y.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/epilogue_chain.hpp"

namespace anvil::cuda {

enum class ChainPool { None, Max, Avg };

// A max pool's argmax is a byte; this value marks a window of padding only.
constexpr int kMaxPoolWindow = 255;

struct ChainPoolGeometry {
  int64_t n = 1, c = 1;
  std::array<int64_t, 3> y{1, 1, 1};  // conv output spatial dims (D, H, W); D = 1 in 2-D
  ChainPool pool = ChainPool::None;
  // The pool's window; 1, 1 and 0 along lifted dims and without a pool.
  std::array<int64_t, 3> k{1, 1, 1}, stride{1, 1, 1}, pad{0, 0, 0};
};

// P's spatial dims: (y + 2 pad - k) / stride + 1 (Y's own without a pool).
std::array<int64_t, 3> chain_pool_output(const ChainPoolGeometry& g);
// Why the pool kernels cannot run this geometry, or null where they can.
const char* chain_pool_geometry_error(const ChainPoolGeometry& g);

// How a pool's backward finds each Y element's windows: where they do not
// overlap (k <= stride along every axis), its one window by a division per
// axis; else by tiles of Y, staging the windows' dP and argmax over a tile in
// shared memory, or, where a tile's would not fit, gathered from global
// memory. The same bits every way.
enum class PoolBackwardPath { Disjoint, Tiled, Gathered };
PoolBackwardPath chain_pool_backward_path(const ChainPoolGeometry& g);  // Gathered without a pool

// bias may be null; argmax (one byte per output element) only with a max
// pool, and null in inference.
void chain_pool_forward(const float* y, const float* bias, const EpilogueChain& chain, float* p, uint8_t* argmax,
                        const ChainPoolGeometry& g, cudaStream_t stream);

size_t chain_pool_backward_scratch_bytes(const ChainPoolGeometry& g, const EpilogueChain& chain);
// dp is P's gradient; y, bias and argmax as forward had them (y may be null
// for an empty chain without bias: a plain pool). accumulate adds into dy.
void chain_pool_backward(const float* dp, const float* y, const float* bias, const uint8_t* argmax,
                         const EpilogueChain& chain, float* dy, bool accumulate, const ChainGrads& grads, void* scratch,
                         const ChainPoolGeometry& g, cudaStream_t stream);

// The same from the chain's codes (chain_codes_supported), one byte per Y
// element as a conv forward wrote them in place of Y: neither Y nor the bias
// is read.
void chain_pool_backward_from_codes(const float* dp, const uint8_t* codes, const uint8_t* argmax,
                                    const EpilogueChain& chain, float* dy, bool accumulate, const ChainGrads& grads,
                                    void* scratch, const ChainPoolGeometry& g, cudaStream_t stream);

// The same with Y = y + addend (no bias): P = pool(chain(y + addend)). dy is
// the sum's gradient, which is each addend's. The backward takes y and the
// addend together, or neither for an empty chain.
void add_chain_pool_forward(const float* y, const float* addend, const EpilogueChain& chain, float* p, uint8_t* argmax,
                            const ChainPoolGeometry& g, cudaStream_t stream);
void add_chain_pool_backward(const float* dp, const float* y, const float* addend, const uint8_t* argmax,
                             const EpilogueChain& chain, float* dy, bool accumulate, const ChainGrads& grads,
                             void* scratch, const ChainPoolGeometry& g, cudaStream_t stream);

}  // namespace anvil::cuda
