#include "layers/leaky_relu.hpp"

#include "engine/src/config.hpp"
#include "engine/src/context.hpp"
#include "kernels/cpu/pointwise.hpp"
#include "kernels/cuda/pointwise.hpp"
#include "layers/registry.hpp"

namespace anvil {

LeakyRelu::LeakyRelu(const LayerInfo& info, float slope) : Layer(info.type, info.name, info.path), slope_(slope) {}

void LeakyRelu::forward_cpu(const LayerArgs& args) {
  cpu::pointwise_forward(PointwiseOp::LeakyRelu, slope_, args.in[0].data, args.out.data, numel(args.out.shape));
}

void LeakyRelu::backward_cpu(const LayerArgs& args) {
  if (!args.din[0].data) return;
  cpu::pointwise_backward(PointwiseOp::LeakyRelu, slope_, args.in[0].data, args.out.data, args.dout.data,
                          args.din[0].data, numel(args.out.shape), args.din_accumulate[0]);
}

void LeakyRelu::forward_cuda(CudaContext& ctx, const LayerArgs& args) {
  cuda::pointwise_forward(PointwiseOp::LeakyRelu, slope_, args.in[0].data, args.out.data, numel(args.out.shape),
                          ctx.stream());
}

void LeakyRelu::backward_cuda(CudaContext& ctx, const LayerArgs& args) {
  if (!args.din[0].data) return;
  cuda::pointwise_backward(PointwiseOp::LeakyRelu, slope_, args.in[0].data, args.out.data, args.dout.data,
                           args.din[0].data, numel(args.out.shape), args.din_accumulate[0], ctx.stream());
}

std::unique_ptr<Layer> create_leaky_relu(ConfigReader& cfg, const LayerInfo& info, bool plain_relu) {
  const double slope = plain_relu ? 0.0 : cfg.number_or("negative_slope", 0.01);
  return std::make_unique<LeakyRelu>(info, static_cast<float>(slope));
}

}  // namespace anvil
