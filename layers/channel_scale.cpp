// channel_scale: a learnable per-channel multiplier m of shape (C, 1, 1, 1)
// (or (C, 1, 1) in 2-D), initialised from N(0, 1) like the KernelBench model's
// nn.Parameter(torch.randn(...)). Its parameter is named after the layer itself.
#include "kernels/cpu/channel.hpp"
#include "layers/registry.hpp"

#if ANVIL_WITH_CUDA
#include "engine/src/cuda/context.hpp"
#include "kernels/cuda/channel_scale.hpp"
#endif

namespace anvil {

namespace {

class ChannelScale : public Layer {
 public:
  explicit ChannelScale(const LayerSpec& spec) : Layer(spec.type, spec.name, spec.path) {}
  OpKind kind() const override { return OpKind::ChannelScale; }

  std::vector<ParamSpec> param_specs() const override {
    const Shape& x = input_shapes()[0];
    Shape m(x.size() - 1, 1);
    m[0] = x[1];
    return {{param_name(""), m, ParamSpec::Init::Normal, 0}};
  }

 protected:
  Shape infer_shape(const std::vector<Shape>& inputs) override {
    if (inputs[0].size() < 3) fail("", "needs an (N, C, ...) input with spatial dims, got " + to_string(inputs[0]));
    return inputs[0];
  }

  void forward_cpu(const LayerArgs& args) override {
    const Shape& x = args.in[0].shape;
    cpu::channel_scale_forward(args.in[0].data, args.params[0], args.out.data, x[0], x[1], spatial());
  }
  void backward_cpu(const LayerArgs& args) override {
    const Shape& x = args.in[0].shape;
    cpu::channel_scale_backward(args.in[0].data, args.params[0], args.dout.data, args.din[0].data, args.dparams[0],
                                x[0], x[1], spatial(), args.din_accumulate[0]);
  }

 private:
  int64_t spatial() const {
    const Shape& x = input_shapes()[0];
    return numel(x) / (x[0] * x[1]);
  }

#if ANVIL_WITH_CUDA
 public:
  std::vector<BufferRequest> buffers(Device device) const override {
    if (device != Device::Cuda) return {};
    const Shape& x = input_shapes()[0];
    return {
        {"reduce_scratch", cuda::channel_scale_backward_scratch_bytes(x[0], x[1], spatial()), BufferLife::Backward}};
  }

 protected:
  void forward_cuda(CudaContext& ctx, const LayerArgs& args) override {
    const Shape& x = args.in[0].shape;
    cuda::channel_scale_forward(args.in[0].data, args.params[0], args.out.data, x[0], x[1], spatial(), ctx.stream());
  }
  void backward_cuda(CudaContext& ctx, const LayerArgs& args) override {
    const Shape& x = args.in[0].shape;
    cuda::channel_scale_backward(args.in[0].data, args.params[0], args.dout.data, args.din[0].data, args.dparams[0],
                                 x[0], x[1], spatial(), args.din_accumulate[0], args.buffers[0], ctx.stream());
  }
#endif
};

}  // namespace

std::unique_ptr<Layer> create_channel_scale(const LayerSpec& spec, const ChannelScaleSpec&) {
  return std::make_unique<ChannelScale>(spec);
}

}  // namespace anvil
