#include "layers/fused_conv_epilogue.hpp"

#include "anvil/error.hpp"
#include "engine/src/cuda/context.hpp"
#include "layers/cudnn_util.hpp"

namespace anvil {

namespace {
enum Buffer {
  kY,
  kConvForward,
  kArgmax,
  kYAtMax,
  kDy,
  kConvBackward,
  kReduceScratch,
  kCodes,
  kPackedX,
  kPackedOut,
  kLastX,
  kLastW,
  kWgmmaWeights
};
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

std::vector<ParamSpec> FusedConvEpilogue::param_specs() const { return fused_param_specs(*conv_, chain_.scale_names); }

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

size_t FusedConvEpilogue::w_bytes() const { return numel(conv_->param_specs()[0].shape) * sizeof(float); }

size_t FusedConvEpilogue::reduce_scratch_bytes() const {
  return tiled_ ? cuda::fused_epilogue_backward_scratch_bytes(tiled_geometry(), chain_.ops)
                : cuda::chain_pool_backward_scratch_bytes(general_geometry(), chain_.ops);
}

bool FusedConvEpilogue::saves_codes() const {
  return conv_->needs_backward() && !tiled_ && forward_ != Forward::Cudnn && cuda::chain_codes_supported(chain_.ops);
}

bool FusedConvEpilogue::keeps_y() const { return conv_->needs_backward() && !tiled_ && !saves_codes(); }

// Either layout, in inference on cuDNN's formulation. A channels-last output comes from cuDNN's graph
// (the epilogue in its kernel: a forward conv without a pool) or from the epilogue kernel reading a
// channels-last Y, where the conv would write one (with a packed x: a request for Y alone).
bool FusedConvEpilogue::takes_layouts(const std::vector<bool>& inputs, bool output) const {
  const bool inference_cudnn = forward_ == Forward::Cudnn && !conv_->needs_backward();
  const bool graph_output = graph_may_fuse_epilogue() && graph_epilogue().has_value();
  const bool kernel_output = epilogue_may_read_channels_last_y() && (inputs[0] || conv_->tries_y_alone());
  return (!inputs[0] || inference_cudnn) && (!output || (inference_cudnn && (graph_output || kernel_output)));
}

// cuDNN's graph fuses a pointwise epilogue into a forward conv only, and has no pool op.
bool FusedConvEpilogue::graph_may_fuse_epilogue() const { return !pool_ && !conv_->transposed(); }

bool FusedConvEpilogue::epilogue_may_read_channels_last_y() const {
  return !keeps_y() && cuda::channels_last_pool_geometry_error(general_geometry()) == nullptr;
}

// cuDNN's fused relu is relied on for slopes in [0, 1] only, where its documented clip formula
// and the max(x, slope x) that fused kernels commonly compute agree with leaky_relu.
std::optional<ConvGraphEpilogue> FusedConvEpilogue::graph_epilogue() const {
  ConvGraphEpilogue e;
  e.bias = conv_->has_bias();
  for (int i = 0; i < chain_.ops.ops; ++i) {
    const float slope = chain_.ops.param[i];
    if (!chain_.ops.is_scale[i] && chain_.ops.activation[i] == PointwiseOp::LeakyRelu && !(slope >= 0 && slope <= 1))
      return std::nullopt;
    e.ops.push_back({chain_.ops.is_scale[i], chain_.ops.activation[i], slope});
  }
  return e;
}

std::vector<const float*> FusedConvEpilogue::graph_operands(const std::vector<float*>& params) const {
  std::vector<const float*> operands;
  if (conv_->has_bias()) operands.push_back(params[1]);
  const cuda::EpilogueChain chain = bind_chain(chain_, params, conv_param_count());
  for (int i = 0; i < chain.ops; ++i)
    if (chain.is_scale[i]) operands.push_back(chain.scale[i]);
  return operands;
}

bool FusedConvEpilogue::y_channels_last() const {
  return conv_->forward_request_granted() && conv_->forward_request().y_channels_last && !fused_output();
}

bool FusedConvEpilogue::fused_output() const { return graph_epilogue_asked_ && conv_->forward_request_granted(); }

void FusedConvEpilogue::build_cuda(CudaContext& ctx, const BuildSettings& settings) {
  conv_->set_runs_forward(forward_ == Forward::Cudnn);
  Convolution::ForwardRequest request;
  if (forward_ == Forward::Cudnn) {
    const std::optional<ConvGraphEpilogue> epilogue =
        output_channels_last() && graph_may_fuse_epilogue() ? graph_epilogue() : std::nullopt;
    graph_epilogue_asked_ = epilogue.has_value();
    // cuDNN's graph reads x and W channels-last where it takes any tensor so: its kernels' own layouts,
    // which the layer copies x (when packed) and W into.
    request.x_channels_last = input_channels_last(0) || epilogue.has_value();
    // Y channels-last where only the epilogue reads it; a channels-last output is the graph's own.
    request.y_channels_last = epilogue.has_value() || epilogue_may_read_channels_last_y();
    if (epilogue) request.epilogue = *epilogue;
  }
  conv_->request_forward(request);
  conv_->build_cuda(ctx, settings);
}

// Saved for backward: with a tiled max pool, per pooled element the argmax
// inside its window (a byte) and y there; otherwise Y itself or the chain's
// codes, and a max pool's argmax. The direct and wgmma forwards need no Y of
// their own; the wgmma forward's weight images (wgmma_conv_workspace_bytes)
// are scratch of its call, 16-byte aligned as it requires: the memory plan
// (and autotune's scratch) puts every buffer at a multiple of 256 bytes
// (kArenaAlignment) from a cudaMalloc'd base.
std::vector<BufferRequest> FusedConvEpilogue::buffers(Device device) const {
  if (device != Device::Cuda) return {};
  const bool backward = conv_->needs_backward();
  const size_t pooled = static_cast<size_t>(numel(output_shape()));
  const bool keep_y = keeps_y();
  const bool argmax = backward && pool_ && pool_->max;
  const bool y = keep_y || (forward_ == Forward::Cudnn && !fused_output());
  const size_t x_bytes = static_cast<size_t>(numel(input_shapes()[0])) * sizeof(float);
  const size_t out_bytes = static_cast<size_t>(numel(output_shape())) * sizeof(float);
  return {{"y", y ? y_bytes() : 0, keep_y ? BufferLife::Saved : BufferLife::Forward},
          {"conv_forward", conv_->forward_workspace(), BufferLife::Forward},
          {"argmax", argmax ? pooled : 0, BufferLife::Saved},
          {"y_at_max", backward && tiled_ ? pooled * sizeof(float) : 0, BufferLife::Saved},
          {"dy", backward ? y_bytes() : 0, BufferLife::Backward},
          {"conv_backward", conv_->backward_workspace(), BufferLife::Backward},
          {"reduce_scratch", backward ? reduce_scratch_bytes() : 0, BufferLife::Backward},
          {"codes", saves_codes() ? y_bytes() / sizeof(float) : 0, BufferLife::Saved},
          {"packed_x", copies_input() ? x_bytes : 0, BufferLife::Forward},
          {"packed_out", copies_output() ? out_bytes : 0, BufferLife::Forward},
          {"channels_last_x", copies_x_to_channels_last() ? x_bytes : 0, BufferLife::Forward},
          {"channels_last_w", reads_channels_last_w() ? w_bytes() : 0, BufferLife::Forward},
          {"wgmma_weights", forward_ == Forward::Wgmma ? cuda::wgmma_conv_workspace_bytes(wgmma_geometry()) : 0,
           BufferLife::Forward}};
}

void FusedConvEpilogue::choose_algorithms(CudaContext& ctx, const LayerArgs& forward, const LayerArgs& backward) {
  // The conv searches with Y (or, where the direct forward has none, dY; where cuDNN's graph writes the
  // output, the output) as its output.
  float* y = fused_output()               ? forward.out.data
             : forward_ == Forward::Cudnn ? forward.buffer<float>(kY)
                                          : backward.buffer<float>(kDy);
  float* x = copies_input()                ? forward.buffer<float>(kPackedX)
             : copies_x_to_channels_last() ? forward.buffer<float>(kLastX)
                                           : forward.in[0].data;
  const float* w = reads_channels_last_w() ? forward.buffer<float>(kLastW) : forward.params[0];
  conv_->search_algorithms(ctx, x, y, w, backward.dparams.empty() ? nullptr : backward.dparams[0],
                           forward.buffers[kConvForward], backward.buffers[kConvBackward],
                           fused_output() ? graph_operands(forward.params) : std::vector<const float*>{});
}

std::string FusedConvEpilogue::describe_cuda() const {
  const std::string pool = !pool_       ? "no pool"
                           : tiled_     ? "a max pool that tiles Y"
                           : pool_->max ? "a max pool"
                                        : "an average pool";
  const std::string epilogue = "bias, " + std::to_string(chain_.ops.ops) + "-op chain and " + pool;
  const std::string copies = std::string(copies_input() ? "; its channels-last input copied to packed first" : "") +
                             (copies_output() ? "; its output copied to channels-last after" : "") +
                             (copies_input() || copies_output() ? " (no cuDNN graph engine, or op, for them)" : "");
  if (fused_output())
    return conv_->describe_cuda() + ": the conv, " + epilogue + " in cuDNN's kernel, the output channels-last" +
           (copies_x_to_channels_last() ? "; its packed input copied to channels-last first" : "");
  if (forward_ == Forward::Cudnn)
    return conv_->describe_cuda() + "; one epilogue kernel" +
           (!y_channels_last()       ? ""
            : output_channels_last() ? " (reading Y and writing its output channels-last)"
                                     : " (reading Y channels-last)") +
           ": " + epilogue + copies;
  const std::string backward = conv_->describe_cuda();
  const std::string kernel =
      forward_ == Forward::Direct ? "anvil's direct conv (float32 FMA), " : "anvil's wgmma conv (TF32 tensor cores), ";
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
    cuda::wgmma_conv_forward(args.in[0].data, args.params[0], bias, chain, args.out.data, args.buffer<uint8_t>(kArgmax),
                             args.buffer<float>(kYAtMax), y, args.buffer<uint8_t>(kCodes), args.buffers[kWgmmaWeights],
                             wgmma_geometry(), ctx.stream());
    return;
  }
  const float* x = args.in[0].data;
  const float* w = args.params[0];
  if (copies_input() || copies_x_to_channels_last()) {
    float* copy = args.buffer<float>(copies_input() ? kPackedX : kLastX);
    copy_to_layout(ctx.cudnn(), input_shapes()[0], x, copies_input(), copy);
    x = copy;
  }
  if (reads_channels_last_w()) {
    copy_to_layout(ctx.cudnn(), conv_->param_specs()[0].shape, w, false, args.buffer<float>(kLastW));
    w = args.buffer<float>(kLastW);
  }
  if (fused_output()) {
    conv_->run_forward(ctx, x, w, args.out.data, args.buffers[kConvForward], graph_operands(args.params));
    return;
  }
  float* out = copies_output() ? args.buffer<float>(kPackedOut) : args.out.data;
  conv_->run_forward(ctx, x, w, y, args.buffers[kConvForward]);
  if (y_channels_last())
    cuda::channels_last_pool_forward(y, bias, chain, out, cuda::p_layout(output_channels_last()),
                                     args.buffer<uint8_t>(kArgmax), tiled_ ? args.buffer<float>(kYAtMax) : nullptr,
                                     general_geometry(), ctx.stream());
  else if (tiled_)
    cuda::fused_epilogue_forward(y, bias, chain, out, args.buffer<uint8_t>(kArgmax), args.buffer<float>(kYAtMax),
                                 tiled_geometry(), ctx.stream());
  else
    cuda::chain_pool_forward(y, bias, chain, out, args.buffer<uint8_t>(kArgmax), general_geometry(), ctx.stream());
  if (copies_output()) copy_to_layout(ctx.cudnn(), output_shape(), out, false, args.out.data);
}

void FusedConvEpilogue::backward_cuda(CudaContext& ctx, const LayerArgs& args) {
  float* dy = args.buffer<float>(kDy);
  const cuda::EpilogueChain chain = bind_chain(chain_, args.params, conv_param_count());
  const cuda::ChainGrads grads =
      chain_grads(chain_, args.dparams, conv_param_count(), conv_->has_bias() ? args.dparams[1] : nullptr);
  if (tiled_)
    cuda::fused_epilogue_backward(args.dout.data, args.buffer<uint8_t>(kArgmax), args.buffer<float>(kYAtMax), chain, dy,
                                  grads, args.buffers[kReduceScratch], tiled_geometry(), ctx.stream());
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
