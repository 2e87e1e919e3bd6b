#include "layers/fused_conv_epilogue.hpp"

#include "anvil/error.hpp"
#include "engine/src/cuda/context.hpp"

namespace anvil {

namespace {
enum Buffer { kY, kConvForward, kArgmax, kYAtMax, kDy, kConvBackward, kReduceScratch, kCodes };
}  // namespace

std::vector<ParamSpec> fused_param_specs(const Convolution& conv, const std::vector<std::string>& scale_names) {
  std::vector<ParamSpec> specs = conv.param_specs();
  for (ParamSpec& spec : chain_param_specs(conv.output_shape(), scale_names)) specs.push_back(std::move(spec));
  return specs;
}

std::unique_ptr<Convolution> fused_chain_conv(const FusedChainSpecs& specs) {
  auto conv = std::make_unique<Convolution>(*specs.head, std::get<ConvSpec>(specs.head->params));
  conv->setup({specs.input});
  return conv;
}

FusedConvEpilogue::FusedConvEpilogue(const FusedChainSpecs& specs, Forward forward)
    : FusedLayer(forward == Forward::Direct  ? "fused_direct_conv"
            : forward == Forward::Wgmma ? "fused_wgmma_conv"
                                        : "fused_conv_epilogue",
            specs.name, specs.head->path),
      conv_(fused_chain_conv(specs)),
      chain_(*fused_chain(specs.pointwise)),
      forward_(forward) {
  if (specs.pool) {
    pool_ = std::get<PoolSpec>(specs.pool->params);
    tiled_ = pool_tiles_output(*pool_, conv_->output_shape());
  }
}

std::vector<ParamSpec> FusedConvEpilogue::param_specs() const {
  return fused_param_specs(*conv_, chain_.scale_names);
}

Shape FusedConvEpilogue::infer_shape(const std::vector<Shape>& inputs) {
  if (inputs[0] != conv_->input_shapes()[0]) throw Error("internal error: fused layer input differs from its conv's");
  return chain_pool_output_shape(conv_->output_shape(), pool_);
}

cuda::EpilogueGeometry FusedConvEpilogue::tiled_geometry() const {
  const Shape& y = conv_->output_shape();
  cuda::EpilogueGeometry g;
  g.n = y[0];
  g.c = y[1];
  g.y = cpu::lift_dims({y.begin() + 2, y.end()}, 1);
  g.k = cpu::lift_dims(pool_->kernel, 1);
  return g;
}

cuda::ChainPoolGeometry FusedConvEpilogue::general_geometry() const {
  return chain_pool_geometry(conv_->output_shape(), pool_);
}

cuda::DirectConvGeometry FusedConvEpilogue::direct_geometry() const {
  const ConvSpec& spec = conv_->spec();
  const Shape& x = conv_->input_shapes()[0];
  cuda::DirectConvGeometry g;
  g.cin = x[1];
  g.x = cpu::lift_dims({x.begin() + 2, x.end()}, 1);
  g.k = cpu::lift_dims(spec.kernel, 1);
  g.stride = cpu::lift_dims(spec.stride, 1);
  g.pad = cpu::lift_dims(spec.padding, 0);
  g.dilation = cpu::lift_dims(spec.dilation, 1);
  g.out = general_geometry();
  return g;
}

bool FusedConvEpilogue::direct_applies(std::string& why_not) const {
  if (conv_->transposed()) {
    why_not = "a transposed conv";
    return false;
  }
  const char* why = nullptr;
  if (cuda::direct_conv_supported(direct_geometry(), &why)) return true;
  why_not = why;
  return false;
}

// A stride-1 transposed conv is the conv of its input with the weight's taps
// reversed, padded by dilation x (kernel - 1) - its padding.
cuda::WgmmaConvGeometry FusedConvEpilogue::wgmma_geometry() const {
  cuda::WgmmaConvGeometry g;
  g.conv = direct_geometry();
  g.transposed_weight = conv_->transposed();
  if (g.transposed_weight)
    for (int a = 0; a < 3; ++a) g.conv.pad[a] = g.conv.dilation[a] * (g.conv.k[a] - 1) - g.conv.pad[a];
  return g;
}

bool FusedConvEpilogue::wgmma_applies(std::string& why_not) const {
  const cuda::WgmmaConvGeometry g = wgmma_geometry();
  if (g.transposed_weight) {
    for (int a = 0; a < 3; ++a) {
      if (g.conv.stride[a] != 1) {
        why_not = "a strided transposed conv";
        return false;
      }
      if (g.conv.pad[a] < 0) {
        why_not = "a transposed conv padded beyond its kernel";
        return false;
      }
    }
    // output_padding widens one side only; the kernel pads both sides alike.
    for (int64_t extra : conv_->spec().output_padding)
      if (extra != 0) {
        why_not = "a transposed conv with output_padding";
        return false;
      }
  }
  const char* why = nullptr;
  if (cuda::wgmma_conv_supported(g, &why)) return true;
  why_not = why;
  return false;
}

int64_t FusedConvEpilogue::taps_per_output() const {
  const ConvSpec& spec = conv_->spec();
  int64_t taps = spec.in_channels;
  for (int64_t k : spec.kernel) taps *= k;
  return taps;
}

size_t FusedConvEpilogue::y_bytes() const { return numel(conv_->output_shape()) * sizeof(float); }

size_t FusedConvEpilogue::reduce_scratch_bytes() const {
  return tiled_ ? cuda::fused_epilogue_backward_scratch_bytes(tiled_geometry(), chain_.ops)
                : cuda::chain_pool_backward_scratch_bytes(general_geometry(), chain_.ops);
}

bool FusedConvEpilogue::saves_codes() const {
  return conv_->needs_backward() && !tiled_ && forward_ != Forward::Cudnn && cuda::chain_codes_supported(chain_.ops);
}

bool FusedConvEpilogue::keeps_y() const { return conv_->needs_backward() && !tiled_ && !saves_codes(); }

void FusedConvEpilogue::build_cuda(CudaContext& ctx, const BuildSettings& settings) {
  conv_->set_runs_forward(forward_ == Forward::Cudnn);
  // Y channels-last where only the epilogue reads it (Convolution grants it under tf32).
  conv_->request_channels_last_output(forward_ == Forward::Cudnn && !keeps_y() &&
                                      cuda::channels_last_pool_geometry_error(general_geometry()) == nullptr);
  conv_->build_cuda(ctx, settings);
}

// Saved for backward: with a tiled max pool, per pooled element the argmax
// inside its window (a byte) and y there; otherwise Y itself or the chain's
// codes, and a max pool's argmax. The direct and wgmma forwards need no Y of
// their own.
std::vector<BufferRequest> FusedConvEpilogue::buffers(Device device) const {
  if (device != Device::Cuda) return {};
  const bool backward = conv_->needs_backward();
  const size_t pooled = static_cast<size_t>(numel(output_shape()));
  const bool keep_y = keeps_y();
  const bool argmax = backward && pool_ && pool_->max;
  const bool y = keep_y || forward_ == Forward::Cudnn;
  return {{"y", y ? y_bytes() : 0, keep_y ? BufferLife::Saved : BufferLife::Forward},
          {"conv_forward", conv_->forward_workspace(), BufferLife::Forward},
          {"argmax", argmax ? pooled : 0, BufferLife::Saved},
          {"y_at_max", backward && tiled_ ? pooled * sizeof(float) : 0, BufferLife::Saved},
          {"dy", backward ? y_bytes() : 0, BufferLife::Backward},
          {"conv_backward", conv_->backward_workspace(), BufferLife::Backward},
          {"reduce_scratch", backward ? reduce_scratch_bytes() : 0, BufferLife::Backward},
          {"codes", saves_codes() ? y_bytes() / sizeof(float) : 0, BufferLife::Saved}};
}

void FusedConvEpilogue::choose_algorithms(CudaContext& ctx, const LayerArgs& forward, const LayerArgs& backward) {
  // The conv searches with Y (or, where the direct forward has none, dY) as its output.
  float* y = forward_ == Forward::Cudnn ? forward.buffer<float>(kY) : backward.buffer<float>(kDy);
  conv_->search_algorithms(ctx, forward.in[0].data, y, forward.params[0],
                           backward.dparams.empty() ? nullptr : backward.dparams[0], forward.buffers[kConvForward],
                           backward.buffers[kConvBackward]);
}

std::string FusedConvEpilogue::describe_cuda() const {
  const std::string pool = !pool_ ? "no pool" : tiled_ ? "a max pool that tiles Y" : pool_->max ? "a max pool" : "an average pool";
  const std::string epilogue = "bias, " + std::to_string(chain_.ops.ops) + "-op chain and " + pool;
  if (forward_ == Forward::Cudnn)
    return conv_->describe_cuda() + "; one epilogue kernel" +
           (conv_->channels_last_output() ? " (reading Y channels-last)" : "") + ": " + epilogue;
  const std::string backward = conv_->describe_cuda();
  const std::string kernel = forward_ == Forward::Direct ? "anvil's direct conv (float32 FMA), "
                                                         : "anvil's wgmma conv (TF32 tensor cores), ";
  const std::string saved = saves_codes() ? ", saving the chain's codes for backward (a byte an element), not Y" : "";
  return kernel + epilogue + " in one kernel" + saved + (backward.empty() ? "" : "; " + backward);
}

void FusedConvEpilogue::forward_cuda(CudaContext& ctx, const LayerArgs& args) {
  float* y = args.buffer<float>(kY);
  const float* bias = conv_->has_bias() ? args.params[1] : nullptr;
  const cuda::EpilogueChain chain = bind_chain(chain_, args.params, conv_param_count());
  // argmax and y_at_max are null when nothing runs backward (inference), as is the direct forward's y.
  if (forward_ == Forward::Direct) {
    cuda::direct_conv_forward(args.in[0].data, args.params[0], bias, chain, args.out.data,
                              args.buffer<uint8_t>(kArgmax), args.buffer<float>(kYAtMax), y,
                              args.buffer<uint8_t>(kCodes), direct_geometry(), ctx.stream());
    return;
  }
  if (forward_ == Forward::Wgmma) {
    cuda::wgmma_conv_forward(args.in[0].data, args.params[0], bias, chain, args.out.data,
                             args.buffer<uint8_t>(kArgmax), args.buffer<float>(kYAtMax), y,
                             args.buffer<uint8_t>(kCodes), wgmma_geometry(), ctx.stream());
    return;
  }
  conv_->run_forward(ctx, args.in[0].data, args.params[0], y, args.buffers[kConvForward]);
  if (conv_->channels_last_output())
    cuda::channels_last_pool_forward(y, bias, chain, args.out.data, args.buffer<uint8_t>(kArgmax),
                                     tiled_ ? args.buffer<float>(kYAtMax) : nullptr, general_geometry(), ctx.stream());
  else if (tiled_)
    cuda::fused_epilogue_forward(y, bias, chain, args.out.data, args.buffer<uint8_t>(kArgmax),
                                 args.buffer<float>(kYAtMax), tiled_geometry(), ctx.stream());
  else
    cuda::chain_pool_forward(y, bias, chain, args.out.data, args.buffer<uint8_t>(kArgmax), general_geometry(),
                             ctx.stream());
}

void FusedConvEpilogue::backward_cuda(CudaContext& ctx, const LayerArgs& args) {
  float* dy = args.buffer<float>(kDy);
  const cuda::EpilogueChain chain = bind_chain(chain_, args.params, conv_param_count());
  const cuda::ChainGrads grads =
      chain_grads(chain_, args.dparams, conv_param_count(), conv_->has_bias() ? args.dparams[1] : nullptr);
  if (tiled_)
    cuda::fused_epilogue_backward(args.dout.data, args.buffer<uint8_t>(kArgmax), args.buffer<float>(kYAtMax), chain,
                                  dy, grads, args.buffers[kReduceScratch], tiled_geometry(), ctx.stream());
  else if (saves_codes())
    cuda::chain_pool_backward_from_codes(args.dout.data, args.buffer<uint8_t>(kCodes), args.buffer<uint8_t>(kArgmax),
                                         chain, dy, false, grads, args.buffers[kReduceScratch], general_geometry(),
                                         ctx.stream());
  else
    cuda::chain_pool_backward(args.dout.data, args.buffer<float>(kY), conv_->has_bias() ? args.params[1] : nullptr,
                              args.buffer<uint8_t>(kArgmax), chain, dy, false, grads, args.buffers[kReduceScratch],
                              general_geometry(), ctx.stream());
  conv_->run_backward(ctx, args.in[0].data, dy, args.params[0], args.din[0].data, args.din_accumulate[0],
                      args.dparams[0], args.buffers[kConvBackward]);
}


}  // namespace anvil
