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

#include "engine/src/spec/layer_spec.hpp"
#include "kernels/cpu/geometry.hpp"
#include "layers/layer.hpp"
#if ANVIL_WITH_CUDA
#include <optional>
#include <string>

#include "kernels/cuda/phase_split.hpp"
#include "layers/cudnn_graph_conv.hpp"
#endif

namespace anvil {

class Convolution : public Layer {
 public:
  Convolution(const LayerSpec& spec, const ConvSpec& conv);
  OpKind kind() const override { return OpKind::Conv; }

  std::vector<ParamSpec> param_specs() const override;
  const ConvSpec& spec() const { return spec_; }
  bool has_bias() const { return spec_.bias; }
  bool transposed() const { return spec_.transposed; }
  cpu::ConvGeometry geometry() const;

  void set_gradient_needs(bool backward, bool input_grad) override {
    needs_backward_ = backward;
    needs_input_grad_ = input_grad;
  }
  bool needs_backward() const { return needs_backward_; }
  bool needs_input_grad() const { return needs_backward_ && needs_input_grad_; }

 protected:
  Shape infer_shape(const std::vector<Shape>& inputs) override;
  void forward_cpu(const LayerArgs& args) override;
  void backward_cpu(const LayerArgs& args) override;

 private:
  ConvSpec spec_;
  bool needs_backward_ = true, needs_input_grad_ = true;

#if ANVIL_WITH_CUDA
 public:
  ~Convolution() override;
  // false: a fused layer computes the forward itself, so cuDNN's forward is neither planned nor searched.
  void set_runs_forward(bool runs) { runs_forward_ = runs; }
  // What a fused layer asks of run_forward, under tf32, through cuDNN's graph
  // API: y written channels-last, (N, spatial..., C), for an epilogue that
  // reads it so; x read channels-last, and with it w (the caller's copy,
  // (out, k..., in)); and an epilogue computed in the conv's kernel (a
  // forward conv only; it writes y channels-last). Granted whole
  // where the graph API has a tensor-core engine for it (the rule) or any
  // eligible one (autotune), or not at all: forward_request_granted() says,
  // once built. A request for y alone is tried only on ops summing at least
  // kTensorCoreRuleProducts products per output (on thinner ones FMA engines measured faster).
  struct ForwardRequest {
    bool x_channels_last = false, y_channels_last = false;
    ConvGraphEpilogue epilogue;
    bool any() const { return x_channels_last || y_channels_last || !epilogue.empty(); }
  };
  void request_forward(const ForwardRequest& request) { forward_request_ = request; }
  const ForwardRequest& forward_request() const { return forward_request_; }
  bool forward_request_granted() const;
  bool tries_y_alone() const;  // whether a request for y alone is tried (its products per output)
  // The backward-data relation (A from B: a transposed conv's forward, a
  // conv's input gradient) as a phase split (kernels/cuda/phase_split.hpp):
  // fills g and returns nullopt where it is exact, else says why not.
  // shift_phases: each phase at its own offset in the combined output where
  // that drops combined taps (cuDNN's path); otherwise all aligned (anvil's
  // tensor-core kernels). Both forms pad B alike.
  std::optional<std::string> phase_split(cuda::PhaseSplitGeometry& g, bool shift_phases) const;
  // The stride-1 conv of a phase split: s^d x A's channels over B padded, no bias, set up.
  std::unique_ptr<Convolution> phase_split_conv(const cuda::PhaseSplitGeometry& g, const std::string& name) const;
  void build_cuda(CudaContext& ctx, const BuildSettings& settings) override;
  // conv_forward (Forward), conv_backward and bias_scratch (Backward).
  std::vector<BufferRequest> buffers(Device device) const override;
  void choose_algorithms(CudaContext& ctx, const LayerArgs& forward, const LayerArgs& backward) override;
  std::string describe_cuda() const override;

  // Bias-free pieces, reused by the fused layers. The workspaces are the
  // conv's alone: cuDNN's, and the filter gradient's partials when anvil's kernel computes it.
  size_t forward_workspace() const;
  size_t backward_workspace() const;
  // cuDNN's algorithm search (and with autotune the timing of the graph API's
  // engines and of anvil's kernels), with these tensors and workspaces as its
  // scratch (x and y as the layer's input and output; dw may be null without backward).
  void search_algorithms(CudaContext& ctx, float* x, float* y, const float* w, float* dw, void* forward_ws,
                         void* backward_ws, const std::vector<const float*>& epilogue_operands = {});
  // ws: forward_workspace() bytes for run_forward, backward_workspace() for
  // run_backward. dx may be null (no input gradient); dw is overwritten.
  // epilogue_operands: the granted epilogue's (ConvGraphEpilogue), none otherwise.
  void run_forward(CudaContext& ctx, const float* x, const float* w, float* y, void* ws,
                   const std::vector<const float*>& epilogue_operands = {});
  void run_backward(CudaContext& ctx, const float* x, const float* dy, const float* w, float* dx, bool accumulate,
                    float* dw, void* ws);

 protected:
  void forward_cuda(CudaContext& ctx, const LayerArgs& args) override;
  void backward_cuda(CudaContext& ctx, const LayerArgs& args) override;

 private:
  struct Cudnn;
  size_t bias_scratch_bytes() const;
  size_t op_workspace(int op) const;
  // The phase split's pieces of its op's workspace.
  struct PhaseBuffers {
    float *b_pad, *wp, *yp;
    void* conv_ws;
  };
  PhaseBuffers phase_buffers(void* ws) const;
  // The three relations of the table above, in its A and B; accumulate adds to the result's tensor.
  void forward_relation(CudaContext& ctx, const float* a, const float* w, float* b, bool accumulate, void* ws);
  void backward_data_relation(CudaContext& ctx, const float* b, const float* w, float* a, bool accumulate, void* ws);
  void weight_grad(CudaContext& ctx, const float* a, const float* b, float* dw, void* ws);

  std::unique_ptr<Cudnn> cudnn_;
  bool runs_forward_ = true;
  ForwardRequest forward_request_;
#endif
};

}  // namespace anvil
