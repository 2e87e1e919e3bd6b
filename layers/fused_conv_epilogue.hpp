// The fused conv epilogue, made by a fusion rule (lower/fusion_rules.cpp), never named in JSON:
//   conv / conv_transpose (+bias) -> leaky_relu -> channel_scale -> leaky_relu -> max_pool
// cuDNN computes the bias-free convolution into a buffer Y; one kernel then
// adds the bias, applies the activations and pools, saving per pooled element
// only the argmax and y there. Backward rebuilds dY from those in one kernel,
// which also reduces dbias and dm, then cuDNN computes dW (and dx).
// CUDA only: the CPU backend runs the layers unfused.
#pragma once

#include <memory>
#include <optional>

#include "engine/src/lower/fusion_rules.hpp"
#include "kernels/cuda/epilogue.hpp"
#include "layers/convolution.hpp"

namespace anvil {

// The chain the epilogue kernels compute: leaky(slope1) -> * m[c] -> leaky(slope2).
struct EpilogueChain {
  float slope1 = 0, slope2 = 0;
  std::string scale_name;  // the channel_scale layer: its parameter's name
};
// The epilogue chain of these layers, if they are one (relu counts as leaky with slope 0).
std::optional<EpilogueChain> epilogue_chain(const std::vector<const LayerSpec*>& pointwise);
// A non-overlapping max pool that tiles the conv output exactly, windows of at most 256 elements.
bool pool_tiles_output(const PoolSpec& pool, const Shape& conv_output);

// Shared by both fused layers: the conv's parameters, then the multiplier of
// shape (C, 1, 1[, 1]) named after the merged channel_scale layer.
std::vector<ParamSpec> fused_param_specs(const Convolution& conv, const std::string& scale_name);
// The conv of a fused chain, set up on its input.
std::unique_ptr<Convolution> fused_chain_conv(const FusedChainSpecs& specs);
// The fusion rules run only for CUDA engines; a fused layer on the CPU is an engine bug.
[[noreturn]] void fused_layer_has_no_cpu_path(const Layer& layer);

class FusedConvEpilogue : public Layer {
 public:
  explicit FusedConvEpilogue(const FusedChainSpecs& specs);
  OpKind kind() const override { return OpKind::Fused; }

  std::vector<ParamSpec> param_specs() const override;
  void set_gradient_needs(bool backward, bool input_grad) override { conv_->set_gradient_needs(backward, input_grad); }
  void build_cuda(CudaContext& ctx, const BuildSettings& settings) override;
  std::vector<BufferRequest> buffers(Device device) const override;
  void choose_algorithms(CudaContext& ctx, const LayerArgs& forward, const LayerArgs& backward) override;
  std::string describe_cuda() const override { return conv_->describe_cuda(); }

 protected:
  Shape infer_shape(const std::vector<Shape>& inputs) override;
  void forward_cpu(const LayerArgs& args) override;
  void backward_cpu(const LayerArgs& args) override;
  void forward_cuda(CudaContext& ctx, const LayerArgs& args) override;
  void backward_cuda(CudaContext& ctx, const LayerArgs& args) override;

 private:
  cuda::EpilogueGeometry epilogue_geometry() const;
  size_t y_bytes() const;  // the full-resolution conv output
  int64_t pooled_count() const { return numel(output_shape()); }

  std::unique_ptr<Convolution> conv_;
  EpilogueChain chain_;
  std::vector<int64_t> pool_kernel_;
};

}  // namespace anvil
