// The fused headline pattern, built by the fusion pass (never named in JSON):
//   conv / conv_transpose (+bias) -> leaky_relu -> channel_scale -> leaky_relu -> max_pool
// cuDNN computes the bias-free convolution into a workspace Y; one kernel then
// adds the bias, applies the activations and pools, saving per pooled element
// only the argmax and y there. Backward rebuilds dY from those in one kernel,
// which also reduces dbias and dm, then cuDNN computes dW (and dx).
// CUDA only: the CPU backend runs the layers unfused.
#pragma once

#include <memory>

#include "kernels/cuda/epilogue.hpp"
#include "layers/convolution.hpp"

namespace anvil {

// Shared by both fused layers: the conv's parameters, then the multiplier of
// shape (C, 1, 1[, 1]) named after the merged channel_scale layer.
std::vector<ParamSpec> fused_param_specs(const Convolution& conv, const std::string& scale_name);
// The fusion pass runs only for CUDA engines; a fused layer on the CPU is an engine bug.
[[noreturn]] void fused_layer_has_no_cpu_path(const Layer& layer);

class FusedConvEpilogue : public Layer {
 public:
  // The conv must already be set up; slopes and pool kernel come from the merged layers.
  FusedConvEpilogue(std::unique_ptr<Convolution> conv, float slope1, std::string scale_name, float slope2,
                    std::vector<int64_t> pool_kernel, std::string name);

  std::vector<ParamSpec> param_specs() const override;
  size_t saved_bytes() const override;
  void set_gradient_needs(bool backward, bool input_grad) override { conv_->set_gradient_needs(backward, input_grad); }
  void build_cuda(CudaContext& ctx, const BuildSettings& settings) override;
  size_t forward_workspace_bytes(Device device) const override;
  size_t backward_workspace_bytes(Device device) const override;
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
  size_t y_bytes() const;  // the full-resolution conv output, in the workspace
  int64_t pooled_count() const { return numel(output_shape()); }

  std::unique_ptr<Convolution> conv_;
  float slope1_, slope2_;
  std::string scale_name_;
  std::vector<int64_t> pool_kernel_;
};

}  // namespace anvil
