// What the fused layers (fused_conv_epilogue, fused_phase_conv_epilogue,
// fused_add_epilogue) share: the pointwise chain a fusion rule found
// (lower/fusion_rules.cpp), the pool after it, and their base class.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "kernels/cuda/chain_pool.hpp"
#include "kernels/cuda/epilogue_chain.hpp"
#include "layers/layer.hpp"
#include "engine/src/spec/layer_spec.hpp"

namespace anvil {

// The pointwise chain of a fused layer, as the fusion rule found it.
struct FusedChain {
  cuda::EpilogueChain ops;               // multiplier pointers are bound per call (bind_chain)
  std::vector<std::string> scale_names;  // one per multiplier op, in chain order: its parameter's name
};
// The chain of these activation and channel_scale layers, if the kernels can run it (at most 8 ops).
std::optional<FusedChain> fused_chain(const std::vector<const LayerSpec*>& pointwise);
// The chain with its multipliers: params[first + j] is the j-th multiplier.
cuda::EpilogueChain bind_chain(const FusedChain& chain, const std::vector<float*>& params, size_t first);
// Where its backward writes: dparams[first + j] is the j-th multiplier's gradient (none when dparams is short).
cuda::ChainGrads chain_grads(const FusedChain& chain, const std::vector<float*>& dparams, size_t first, float* dbias);
// One multiplier of shape (C, 1, 1[, 1]) per channel_scale of a chain over y, named after it.
std::vector<ParamSpec> chain_param_specs(const Shape& y, const std::vector<std::string>& scale_names);

// A max pool that tiles the conv output exactly, windows of at most 256 elements.
bool pool_tiles_output(const PoolSpec& pool, const Shape& conv_output);
// Whether the fused kernels can run this pool after a conv with this output.
bool fusable_pool(const PoolSpec& pool, const Shape& conv_output);
// chain_pool.hpp's geometry of a chain over y and then the pool, if any.
cuda::ChainPoolGeometry chain_pool_geometry(const Shape& y, const std::optional<PoolSpec>& pool);
// The shape that chain and pool give y.
Shape chain_pool_output_shape(const Shape& y, const std::optional<PoolSpec>& pool);

// The base of every fused layer. The fusion rules run only for CUDA engines,
// so a fused layer has no CPU path: reaching one is an engine bug.
class FusedLayer : public Layer {
 public:
  using Layer::Layer;
  OpKind kind() const final { return OpKind::Fused; }

 protected:
  void forward_cpu(const LayerArgs& args) final;
  void backward_cpu(const LayerArgs& args) final;
};

}  // namespace anvil
