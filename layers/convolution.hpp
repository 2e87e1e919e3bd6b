// The machinery shared by conv*d and conv_transpose*d (not a layer type of its own).
//
// Both are the same linear relation B = conv(A, W) between a tensor A with W's
// second-axis channels and a tensor B with its first-axis channels:
//   conv:           A = input,  B = output, W is (out, in, k...)
//   conv_transpose: A = output, B = input,  W is (in, out, k...)   (PyTorch's layouts)
// so cuDNN's three calls serve both with the roles swapped, as in Caffe's
// cudnn deconvolution layer:
//                  conv                        conv_transpose
//   forward        ConvolutionForward          ConvolutionBackwardData
//   dx             ConvolutionBackwardData     ConvolutionForward
//   dW             BackwardFilter(x, dy)       BackwardFilter(dy, x)
#pragma once

#include <memory>
#include <vector>

#include "kernels/cpu/geometry.hpp"
#include "layers/layer.hpp"

namespace anvil {

class ConfigReader;
struct LayerInfo;

class Convolution : public Layer {
 public:
  Convolution(ConfigReader& cfg, const LayerInfo& info, int dims, bool transposed);
  ~Convolution() override;

  std::vector<ParamSpec> param_specs() const override;
  void build_cuda(CudaContext& ctx, const BuildSettings& settings) override;
  size_t forward_workspace_bytes(Device device) const override;
  size_t backward_workspace_bytes(Device device) const override;
  void choose_algorithms(CudaContext& ctx, const LayerArgs& forward, const LayerArgs& backward) override;
  std::string describe_cuda() const override;

  // Bias-free pieces, reused by the fused layer. Workspace sizes are those of cuDNN alone.
  bool has_bias() const { return bias_; }
  bool transposed() const { return transposed_; }
  size_t cudnn_forward_workspace() const;
  size_t cudnn_backward_workspace() const;
  void run_forward(CudaContext& ctx, const float* x, const float* w, float* y, void* ws, size_t ws_bytes);
  // dx may be null (no input gradient); dw is overwritten.
  void run_backward(CudaContext& ctx, const float* x, const float* dy, const float* w, float* dx, bool accumulate,
                    float* dw, void* ws, size_t ws_bytes);
  cpu::ConvGeometry geometry() const;

  void set_gradient_needs(bool backward, bool input_grad) override {
    needs_backward_ = backward;
    needs_input_grad_ = input_grad;
  }
  const std::vector<int64_t>& kernel() const { return kernel_; }
  const std::vector<int64_t>& stride() const { return stride_; }
  const std::vector<int64_t>& padding() const { return padding_; }
  const std::vector<int64_t>& output_padding() const { return output_padding_; }
  const std::vector<int64_t>& dilation() const { return dilation_; }
  int64_t in_channels() const { return in_channels_; }
  int64_t out_channels() const { return out_channels_; }
  bool needs_input_grad() const { return needs_backward_ && needs_input_grad_; }

 protected:
  Shape infer_shape(const std::vector<Shape>& inputs) override;
  void forward_cpu(const LayerArgs& args) override;
  void backward_cpu(const LayerArgs& args) override;
  void forward_cuda(CudaContext& ctx, const LayerArgs& args) override;
  void backward_cuda(CudaContext& ctx, const LayerArgs& args) override;

 private:
  struct Cudnn;
  size_t bias_scratch_bytes() const;

  int dims_;
  bool transposed_;
  int64_t in_channels_, out_channels_;
  std::vector<int64_t> kernel_, stride_, padding_, output_padding_, dilation_;
  bool bias_;
  bool needs_backward_ = true, needs_input_grad_ = true;
  std::unique_ptr<Cudnn> cudnn_;
};

}  // namespace anvil
