#include "layers/leaky_relu.hpp"

#include "engine/src/cuda/context.hpp"
#include "kernels/cpu/reference.hpp"
#include "kernels/cuda/activation.hpp"
#include "layers/registry.hpp"

namespace anvil {

LeakyRelu::LeakyRelu(const LayerSpec& spec, const PointwiseSpec& pointwise)
    : Layer(spec.type, spec.name, spec.path), slope_(pointwise.slope) {}

void LeakyRelu::forward_cpu(const LayerArgs& args) {
  cpu::leaky_relu_forward(args.in[0].data, args.out.data, numel(args.out.shape), slope_);
}

void LeakyRelu::backward_cpu(const LayerArgs& args) {
  if (!args.din[0].data) return;
  cpu::leaky_relu_backward(args.in[0].data, args.dout.data, args.din[0].data, numel(args.out.shape), slope_,
                           args.din_accumulate[0]);
}

void LeakyRelu::forward_cuda(CudaContext& ctx, const LayerArgs& args) {
  cuda::leaky_relu_forward(args.in[0].data, args.out.data, numel(args.out.shape), slope_, ctx.stream());
}

void LeakyRelu::backward_cuda(CudaContext& ctx, const LayerArgs& args) {
  if (!args.din[0].data) return;
  cuda::leaky_relu_backward(args.in[0].data, args.dout.data, args.din[0].data, numel(args.out.shape), slope_,
                            args.din_accumulate[0], ctx.stream());
}

std::unique_ptr<Layer> create_leaky_relu(const LayerSpec& spec, const PointwiseSpec& pointwise) {
  return std::make_unique<LeakyRelu>(spec, pointwise);
}

}  // namespace anvil
