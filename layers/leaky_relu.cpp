#include "layers/leaky_relu.hpp"

#include "engine/src/config.hpp"
#include "engine/src/context.hpp"
#include "kernels/cpu/reference.hpp"
#include "kernels/cuda/activation.hpp"
#include "layers/registry.hpp"

namespace anvil {

LeakyRelu::LeakyRelu(const LayerInfo& info, float slope) : Layer(info.type, info.name, info.path), slope_(slope) {}

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

std::unique_ptr<Layer> create_leaky_relu(ConfigReader& cfg, const LayerInfo& info, bool plain_relu) {
  const double slope = plain_relu ? 0.0 : cfg.number_or("negative_slope", 0.01);
  return std::make_unique<LeakyRelu>(info, static_cast<float>(slope));
}

}  // namespace anvil
