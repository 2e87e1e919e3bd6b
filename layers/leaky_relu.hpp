// leaky_relu (negative_slope, PyTorch's default 0.01) and relu (slope 0).
#pragma once

#include "engine/src/spec/layer_spec.hpp"
#include "layers/layer.hpp"

namespace anvil {

class LeakyRelu : public Layer {
 public:
  LeakyRelu(const LayerSpec& spec, const PointwiseSpec& pointwise);
  OpKind kind() const override { return OpKind::Pointwise; }
  float slope() const { return slope_; }

 protected:
  Shape infer_shape(const std::vector<Shape>& inputs) override { return inputs[0]; }
  void forward_cpu(const LayerArgs& args) override;
  void backward_cpu(const LayerArgs& args) override;
  void forward_cuda(CudaContext& ctx, const LayerArgs& args) override;
  void backward_cuda(CudaContext& ctx, const LayerArgs& args) override;

 private:
  float slope_;
};

}  // namespace anvil
