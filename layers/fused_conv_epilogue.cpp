#include "layers/fused_conv_epilogue.hpp"

#include "anvil/error.hpp"
#include "engine/src/cuda/context.hpp"

namespace anvil {

namespace {
enum Buffer { kY, kCudnnForward, kArgmax, kYAtMax, kDy, kCudnnBackward, kReduceScratch };
}  // namespace

std::optional<EpilogueChain> epilogue_chain(const std::vector<const LayerSpec*>& pointwise) {
  if (pointwise.size() != 3) return std::nullopt;
  const auto* first = std::get_if<PointwiseSpec>(&pointwise[0]->params);
  const auto* second = std::get_if<PointwiseSpec>(&pointwise[2]->params);
  if (!first || !second || !std::holds_alternative<ChannelScaleSpec>(pointwise[1]->params)) return std::nullopt;
  if (first->op != PointwiseOp::LeakyRelu || second->op != PointwiseOp::LeakyRelu) return std::nullopt;
  return EpilogueChain{first->param, second->param, pointwise[1]->name};
}

bool pool_tiles_output(const PoolSpec& pool, const Shape& conv_output) {
  if (!pool.max || pool.stride != pool.kernel) return false;
  int64_t window = 1;
  for (size_t d = 0; d < pool.kernel.size(); ++d) {
    if (pool.padding[d] != 0 || conv_output[2 + d] % pool.kernel[d] != 0) return false;
    window *= pool.kernel[d];
  }
  return window <= 256;  // the argmax is one byte
}

std::vector<ParamSpec> fused_param_specs(const Convolution& conv, const std::string& scale_name) {
  std::vector<ParamSpec> specs = conv.param_specs();
  const Shape& y = conv.output_shape();
  Shape m(y.size() - 1, 1);
  m[0] = y[1];
  specs.push_back({scale_name, m, ParamSpec::Init::Normal, 0});
  return specs;
}

std::unique_ptr<Convolution> fused_chain_conv(const FusedChainSpecs& specs) {
  auto conv = std::make_unique<Convolution>(*specs.conv, std::get<ConvSpec>(specs.conv->params));
  conv->setup({specs.input});
  return conv;
}

void fused_layer_has_no_cpu_path(const Layer& layer) {
  throw Error("internal error: fused layer '" + layer.name() + "' has no CPU path; the CPU backend runs unfused");
}

FusedConvEpilogue::FusedConvEpilogue(const FusedChainSpecs& specs)
    : Layer("fused_conv_epilogue", specs.name, specs.conv->path),
      conv_(fused_chain_conv(specs)),
      chain_(*epilogue_chain(specs.pointwise)),
      pool_kernel_(std::get<PoolSpec>(specs.pool->params).kernel) {}

std::vector<ParamSpec> FusedConvEpilogue::param_specs() const { return fused_param_specs(*conv_, chain_.scale_name); }

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

size_t FusedConvEpilogue::y_bytes() const { return numel(conv_->output_shape()) * sizeof(float); }

void FusedConvEpilogue::build_cuda(CudaContext& ctx, const BuildSettings& settings) {
  conv_->build_cuda(ctx, settings);
}

// Saved for backward, per pooled element: the argmax inside its window (a byte) and y there.
std::vector<BufferRequest> FusedConvEpilogue::buffers(Device device) const {
  if (device != Device::Cuda) return {};
  const bool backward = conv_->needs_backward();
  const size_t pooled = static_cast<size_t>(pooled_count());
  return {{"y", y_bytes(), BufferLife::Forward},
          {"cudnn_forward", conv_->cudnn_forward_workspace(), BufferLife::Forward},
          {"argmax", backward ? pooled : 0, BufferLife::Saved},
          {"y_at_max", backward ? pooled * sizeof(float) : 0, BufferLife::Saved},
          {"dy", backward ? y_bytes() : 0, BufferLife::Backward},
          {"cudnn_backward", conv_->cudnn_backward_workspace(), BufferLife::Backward},
          {"reduce_scratch", backward ? cuda::fused_epilogue_backward_scratch_bytes(epilogue_geometry()) : 0,
           BufferLife::Backward}};
}

void FusedConvEpilogue::choose_algorithms(CudaContext& ctx, const LayerArgs& forward, const LayerArgs& backward) {
  // The conv searches with Y (our buffer) as its output.
  conv_->search_algorithms(ctx, forward.in[0].data, forward.buffer<float>(kY), forward.params[0],
                           backward.dparams.empty() ? nullptr : backward.dparams[0], forward.buffers[kCudnnForward],
                           backward.buffers[kCudnnBackward]);
}

void FusedConvEpilogue::forward_cuda(CudaContext& ctx, const LayerArgs& args) {
  float* y = args.buffer<float>(kY);
  conv_->run_forward(ctx, args.in[0].data, args.params[0], y, args.buffers[kCudnnForward],
                     conv_->cudnn_forward_workspace());
  const float* bias = conv_->has_bias() ? args.params[1] : nullptr;
  // argmax and y_at_max are null when nothing runs backward (inference).
  cuda::fused_epilogue_forward(y, bias, args.params.back(), chain_.slope1, chain_.slope2, args.out.data,
                               args.buffer<uint8_t>(kArgmax), args.buffer<float>(kYAtMax), epilogue_geometry(),
                               ctx.stream());
}

void FusedConvEpilogue::backward_cuda(CudaContext& ctx, const LayerArgs& args) {
  float* dy = args.buffer<float>(kDy);
  float* dbias = conv_->has_bias() ? args.dparams[1] : nullptr;
  cuda::fused_epilogue_backward(args.dout.data, args.buffer<uint8_t>(kArgmax), args.buffer<float>(kYAtMax),
                                args.params.back(), chain_.slope1, chain_.slope2, dy, dbias, args.dparams.back(),
                                args.buffers[kReduceScratch], epilogue_geometry(), ctx.stream());
  conv_->run_backward(ctx, args.in[0].data, dy, args.params[0], args.din[0].data, args.din_accumulate[0],
                      args.dparams[0], args.buffers[kCudnnBackward], conv_->cudnn_backward_workspace());
}

void FusedConvEpilogue::forward_cpu(const LayerArgs&) { fused_layer_has_no_cpu_path(*this); }
void FusedConvEpilogue::backward_cpu(const LayerArgs&) { fused_layer_has_no_cpu_path(*this); }

}  // namespace anvil
