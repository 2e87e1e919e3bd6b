#include "layers/pointwise.hpp"

#include "kernels/cpu/pointwise.hpp"
#include "layers/registry.hpp"

#if ANVIL_WITH_CUDA
#include "engine/src/cuda/context.hpp"
#include "kernels/cuda/pointwise.hpp"
#endif

namespace anvil {

Pointwise::Pointwise(const LayerSpec& spec, const PointwiseSpec& pointwise)
    : Layer(spec.type, spec.name, spec.path),
      spec_(pointwise),
      uses_output_(pointwise_backward_uses_output(pointwise.op)) {}

void Pointwise::forward_cpu(const LayerArgs& args) {
  cpu::pointwise_forward(spec_.op, spec_.param, args.in[0].data, args.out.data, numel(args.out.shape));
}

void Pointwise::backward_cpu(const LayerArgs& args) {
  if (!args.din[0].data) return;
  cpu::pointwise_backward(spec_.op, spec_.param, args.in[0].data, args.out.data, args.dout.data, args.din[0].data,
                          numel(args.out.shape), args.din_accumulate[0]);
}

std::unique_ptr<Layer> create_pointwise(const LayerSpec& spec, const PointwiseSpec& pointwise) {
  return std::make_unique<Pointwise>(spec, pointwise);
}

#if ANVIL_WITH_CUDA

void Pointwise::forward_cuda(CudaContext& ctx, const LayerArgs& args) {
  cuda::pointwise_forward(spec_.op, spec_.param, args.in[0].data, args.out.data, numel(args.out.shape), ctx.stream());
}

void Pointwise::backward_cuda(CudaContext& ctx, const LayerArgs& args) {
  if (!args.din[0].data) return;
  cuda::pointwise_backward(spec_.op, spec_.param, args.in[0].data, args.out.data, args.dout.data, args.din[0].data,
                           numel(args.out.shape), args.din_accumulate[0], ctx.stream());
}

#endif  // ANVIL_WITH_CUDA

}  // namespace anvil
