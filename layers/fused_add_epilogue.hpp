// The fused residual join, made by the add rule (lower/fusion_rules.cpp), never named in JSON:
//   add(a, b) -> a chain of activations and channel_scales -> a pool, or none
// One kernel (chain_pool.hpp's add_ forms) reads a and b where the unfused
// add would write their sum and the next op read it back: the sum never
// reaches memory. Training saves a max pool's argmax and keeps a and b where
// the chain's derivative needs the sum (a non-empty chain). Backward computes
// the sum's gradient once, into one input's gradient, and hands it to the
// other. In inference its addends may both be channels-last
// (lower/channels_last.cpp; channels_last_pool.hpp's add_ form), and then its
// output too. CUDA only: the CPU backend runs the layers unfused.
#pragma once

#include <optional>

#include "engine/src/lower/fusion_rules.hpp"
#include "layers/fused_chain.hpp"

namespace anvil {

class FusedAddEpilogue : public FusedLayer {
 public:
  explicit FusedAddEpilogue(const FusedChainSpecs& specs);
  // Whether the kernels can run this chain after the add: two inputs, at most
  // 8 ops, a pool anvil's pool kernel takes, sizes chain_pool takes for sum (the add's output).
  static bool applies(const FusedChainSpecs& specs, const Shape& sum);

  int num_inputs() const override { return 2; }
  bool backward_needs_inputs() const override { return chain_.ops.ops > 0; }
  std::vector<ParamSpec> param_specs() const override;
  void set_gradient_needs(bool backward, bool input_grad) override;
  std::vector<BufferRequest> buffers(Device device) const override;
  std::string describe_cuda() const override;
  bool takes_layouts(const std::vector<bool>& inputs, bool output) const override;

 protected:
  Shape infer_shape(const std::vector<Shape>& inputs) override;
  void forward_cuda(CudaContext& ctx, const LayerArgs& args) override;
  void backward_cuda(CudaContext& ctx, const LayerArgs& args) override;

 private:
  cuda::ChainPoolGeometry geometry() const;

  FusedChain chain_;
  std::optional<PoolSpec> pool_;
  bool backward_ = false;
  bool input_grad_ = false;  // an input's gradient is wanted
};

}  // namespace anvil
