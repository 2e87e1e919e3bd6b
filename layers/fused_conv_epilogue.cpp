#include "layers/fused_conv_epilogue.hpp"

#include "anvil/error.hpp"
#include "engine/src/context.hpp"

namespace anvil {

FusedConvEpilogue::FusedConvEpilogue(std::unique_ptr<Convolution> conv, float slope1, std::string scale_name,
                                     float slope2, std::vector<int64_t> pool_kernel, std::string name)
    : Layer("fused_conv_epilogue", std::move(name), conv->path()),
      conv_(std::move(conv)),
      slope1_(slope1),
      slope2_(slope2),
      scale_name_(std::move(scale_name)),
      pool_kernel_(std::move(pool_kernel)) {}

std::vector<ParamSpec> fused_param_specs(const Convolution& conv, const std::string& scale_name) {
  std::vector<ParamSpec> specs = conv.param_specs();
  const Shape& y = conv.output_shape();
  Shape m(y.size() - 1, 1);
  m[0] = y[1];
  specs.push_back({scale_name, m, ParamSpec::Init::Normal, 0});
  return specs;
}

void fused_layer_has_no_cpu_path(const Layer& layer) {
  throw Error("internal error: fused layer '" + layer.name() + "' has no CPU path; the CPU backend runs unfused");
}

std::vector<ParamSpec> FusedConvEpilogue::param_specs() const { return fused_param_specs(*conv_, scale_name_); }

Shape FusedConvEpilogue::infer_shape(const std::vector<Shape>& inputs) {
  if (inputs[0] != conv_->input_shapes()[0]) throw Error("internal error: fused layer input differs from its conv's");
  Shape p = conv_->output_shape();
  for (size_t i = 0; i < pool_kernel_.size(); ++i) p[2 + i] /= pool_kernel_[i];
  return p;
}

cuda::EpilogueGeometry FusedConvEpilogue::epilogue_geometry() const {
  const Shape& y = conv_->output_shape();
  cuda::EpilogueGeometry g;
  g.n = y[0];
  g.c = y[1];
  g.y = cpu::lift_dims({y.begin() + 2, y.end()}, 1);
  g.k = cpu::lift_dims(pool_kernel_, 1);
  return g;
}

size_t FusedConvEpilogue::y_bytes() const { return align_up(numel(conv_->output_shape()) * sizeof(float)); }

// argmax bytes, then y at the argmax.
size_t FusedConvEpilogue::saved_bytes() const {
  return align_up(static_cast<size_t>(pooled_count())) + pooled_count() * sizeof(float);
}

void FusedConvEpilogue::build_cuda(CudaContext& ctx, const BuildSettings& settings) {
  conv_->build_cuda(ctx, settings);
}

size_t FusedConvEpilogue::forward_workspace_bytes(Device device) const {
  if (device != Device::Cuda) return 0;
  return y_bytes() + conv_->cudnn_forward_workspace();
}

size_t FusedConvEpilogue::backward_workspace_bytes(Device device) const {
  if (device != Device::Cuda) return 0;
  return y_bytes() + align_up(conv_->cudnn_backward_workspace()) +
         cuda::fused_epilogue_backward_scratch_bytes(epilogue_geometry());
}

void FusedConvEpilogue::choose_algorithms(CudaContext& ctx, const LayerArgs& forward, const LayerArgs& backward) {
  // The conv searches with Y (in our workspace) as its output and the cuDNN part of each workspace.
  LayerArgs f = forward, b = backward;
  f.out = {static_cast<float*>(forward.workspace), conv_->output_shape()};
  f.workspace = static_cast<char*>(forward.workspace) + y_bytes();
  b.workspace = static_cast<char*>(backward.workspace) + y_bytes();
  conv_->choose_algorithms(ctx, f, b);
}

void FusedConvEpilogue::forward_cuda(CudaContext& ctx, const LayerArgs& args) {
  float* y = static_cast<float*>(args.workspace);
  conv_->run_forward(ctx, args.in[0].data, args.params[0], y, static_cast<char*>(args.workspace) + y_bytes(),
                     conv_->cudnn_forward_workspace());
  const float* bias = conv_->has_bias() ? args.params[1] : nullptr;
  const float* m = args.params.back();
  // No saved buffer when nothing runs backward (inference).
  auto* argmax = static_cast<uint8_t*>(args.saved);
  auto* y_at_max = args.saved ? reinterpret_cast<float*>(static_cast<char*>(args.saved) + align_up(pooled_count()))
                              : nullptr;
  cuda::fused_epilogue_forward(y, bias, m, slope1_, slope2_, args.out.data, argmax, y_at_max, epilogue_geometry(),
                               ctx.stream());
}

void FusedConvEpilogue::backward_cuda(CudaContext& ctx, const LayerArgs& args) {
  char* ws = static_cast<char*>(args.workspace);
  float* dy = reinterpret_cast<float*>(ws);
  const size_t cudnn_ws = conv_->cudnn_backward_workspace();
  void* scratch = ws + y_bytes() + align_up(cudnn_ws);
  const auto* argmax = static_cast<const uint8_t*>(args.saved);
  const auto* y_at_max = reinterpret_cast<const float*>(static_cast<const char*>(args.saved) + align_up(pooled_count()));
  float* dbias = conv_->has_bias() ? args.dparams[1] : nullptr;
  cuda::fused_epilogue_backward(args.dout.data, argmax, y_at_max, args.params.back(), slope1_, slope2_, dy, dbias,
                                args.dparams.back(), scratch, epilogue_geometry(), ctx.stream());
  conv_->run_backward(ctx, args.in[0].data, dy, args.params[0], args.din[0].data, args.din_accumulate[0],
                      args.dparams[0], ws + y_bytes(), cudnn_ws);
}

void FusedConvEpilogue::forward_cpu(const LayerArgs&) { fused_layer_has_no_cpu_path(*this); }
void FusedConvEpilogue::backward_cpu(const LayerArgs&) { fused_layer_has_no_cpu_path(*this); }

}  // namespace anvil
