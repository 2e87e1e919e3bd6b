// The pointwise chain a fused conv epilogue runs on v = conv output + bias:
// up to kMaxChainOps ops, each an activation of kernels/pointwise_ops.hpp
// (with its param: leaky_relu's slope) or a per-channel multiplier. Kernels
// take it by value; the multipliers are device pointers of C floats.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/pointwise_ops.hpp"

namespace anvil::cuda {

constexpr int kMaxChainOps = 8;

struct EpilogueChain {
  int ops = 0;
  bool is_scale[kMaxChainOps] = {};           // a multiplier, else an activation
  PointwiseOp activation[kMaxChainOps] = {};  // activations only
  float param[kMaxChainOps] = {};             // activations only
  const float* scale[kMaxChainOps] = {};      // multipliers only: (C) on the device
};

// Where a chain's backward puts its per-channel sums; every pointer may be null.
struct ChainGrads {
  float* dbias = nullptr;
  float* dscale[kMaxChainOps] = {};  // op i's multiplier gradient (multipliers only)
};

// Throws anvil::Error naming `op` unless the chain is well formed (0..kMaxChainOps
// ops, a multiplier pointer for every multiplier op).
void require_chain(const char* op, const EpilogueChain& c);
// Whether any gradient of the chain's sums is asked for.
bool chain_grads_wanted(const EpilogueChain& c, const ChainGrads& grads);

// leaky_relu -> multiplier -> leaky_relu (any slopes): the chain the kernels run inline.
inline bool is_leaky_scale_leaky(const EpilogueChain& c) {
  return c.ops == 3 && !c.is_scale[0] && c.activation[0] == PointwiseOp::LeakyRelu && c.is_scale[1] && !c.is_scale[2] &&
         c.activation[2] == PointwiseOp::LeakyRelu;
}

// One leaky_relu (or relu, slope 0): the other chain the kernels run inline.
inline bool is_leaky(const EpilogueChain& c) {
  return c.ops == 1 && !c.is_scale[0] && c.activation[0] == PointwiseOp::LeakyRelu;
}

// One multiplier (a conv's gain): a third chain the kernels run inline.
inline bool is_scale_alone(const EpilogueChain& c) { return c.ops == 1 && c.is_scale[0]; }

// Whether the chain's backward can run from codes in place of Y: it is 1 to
// kMaxChainOps leaky_relus (relu is slope 0), and nothing else. Bit i of an
// element's code is whether op i's input was above 0, which is all op i's
// backward reads; a multiplier's gradient would need the values themselves.
bool chain_codes_supported(const EpilogueChain& c);

// Throws anvil::Error naming `op` where a conv forward is asked for both Y and
// the codes, or for codes of a chain that has none.
void require_codes_or_y(const char* op, const EpilogueChain& c, const float* y, const uint8_t* codes);

// The partial sums a chain backward leaves for the final reduction: arrays
// of (channels, per) doubles, one for dbias and one per op.
size_t chain_partials_bytes(const EpilogueChain& c, int64_t channels, int64_t per);
// grads[ch] = the sum over j of the partials, one fixed order: bitwise deterministic.
void finalize_chain_grads(const double* partials, const EpilogueChain& c, int64_t channels, int64_t per,
                          const ChainGrads& grads, cudaStream_t stream);

}  // namespace anvil::cuda
