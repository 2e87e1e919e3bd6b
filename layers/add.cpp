// add: the element-wise sum of two or more inputs of one shape (a residual join).
// Its backward hands dy to every input, accumulating where an input already
// holds a gradient from another consumer. Element-wise, it runs in either
// layout where its inputs and output share it (lower/channels_last.cpp).
#include "kernels/cpu/add.hpp"
#include "layers/registry.hpp"

#if ANVIL_WITH_CUDA
#include "engine/src/cuda/context.hpp"
#include "kernels/cuda/add.hpp"
#endif

namespace anvil {

namespace {

class Add : public Layer {
 public:
  explicit Add(const LayerSpec& spec) : Layer(spec.type, spec.name, spec.path) {}
  OpKind kind() const override { return OpKind::Add; }
  int num_inputs() const override { return -1; }
  bool backward_needs_inputs() const override { return false; }

 protected:
  Shape infer_shape(const std::vector<Shape>& inputs) override {
    for (size_t i = 1; i < inputs.size(); ++i)
      if (inputs[i] != inputs[0])
        fail("inputs", "all inputs must have one shape, got " + to_string(inputs[0]) + " and " + to_string(inputs[i]));
    return inputs[0];
  }

  void forward_cpu(const LayerArgs& args) override {
    const int64_t n = numel(args.out.shape);
    cpu::add_forward(args.in[0].data, args.in[1].data, args.out.data, n);
    for (size_t i = 2; i < args.in.size(); ++i) cpu::copy_or_accumulate(args.in[i].data, args.out.data, n, true);
  }
  void backward_cpu(const LayerArgs& args) override {
    for (size_t i = 0; i < args.din.size(); ++i)
      if (args.din[i].data)
        cpu::copy_or_accumulate(args.dout.data, args.din[i].data, numel(args.out.shape), args.din_accumulate[i]);
  }
#if ANVIL_WITH_CUDA
 public:
  bool takes_layouts(const std::vector<bool>& inputs, bool output) const override {
    return elementwise_layouts(inputs, output);
  }
  std::string describe_cuda() const override { return output_channels_last() ? "channels-last in and out" : ""; }

 protected:
  void forward_cuda(CudaContext& ctx, const LayerArgs& args) override {
    std::vector<const float*> inputs;
    for (const auto& in : args.in) inputs.push_back(in.data);
    cuda::add_forward(inputs, args.out.data, numel(args.out.shape), ctx.stream());
  }
  void backward_cuda(CudaContext& ctx, const LayerArgs& args) override {
    for (size_t i = 0; i < args.din.size(); ++i)
      if (args.din[i].data)
        cuda::copy_or_accumulate(args.dout.data, args.din[i].data, numel(args.out.shape), args.din_accumulate[i],
                                 ctx.stream());
  }
#endif
};

}  // namespace

std::unique_ptr<Layer> create_add(const LayerSpec& spec, const AddSpec&) { return std::make_unique<Add>(spec); }

}  // namespace anvil
