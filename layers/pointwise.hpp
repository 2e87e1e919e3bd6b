// The pointwise activations (leaky_relu, relu, sigmoid, tanh and whatever
// kernels/pointwise_ops.hpp lists): one layer class over the functor family.
// Backward reads the op's input or its output, whichever the functor needs.
// Element-wise, it runs in either layout where its input and output share it
// (lower/channels_last.cpp).
#pragma once

#include "engine/src/spec/layer_spec.hpp"
#include "layers/layer.hpp"

namespace anvil {

class Pointwise : public Layer {
 public:
  Pointwise(const LayerSpec& spec, const PointwiseSpec& pointwise);
  OpKind kind() const override { return OpKind::Pointwise; }
  bool backward_needs_inputs() const override { return !uses_output_; }
  bool backward_needs_output() const override { return uses_output_; }

 protected:
  Shape infer_shape(const std::vector<Shape>& inputs) override { return inputs[0]; }
  void forward_cpu(const LayerArgs& args) override;
  void backward_cpu(const LayerArgs& args) override;
#if ANVIL_WITH_CUDA
 public:
  bool takes_layouts(const std::vector<bool>& inputs, bool output) const override {
    return elementwise_layouts(inputs, output);
  }
  std::string describe_cuda() const override { return output_channels_last() ? "channels-last in and out" : ""; }

 protected:
  void forward_cuda(CudaContext& ctx, const LayerArgs& args) override;
  void backward_cuda(CudaContext& ctx, const LayerArgs& args) override;
#endif

 private:
  PointwiseSpec spec_;
  bool uses_output_;
};

}  // namespace anvil
