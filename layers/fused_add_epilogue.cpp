#include "layers/fused_add_epilogue.hpp"

#include "anvil/error.hpp"
#include "engine/src/cuda/context.hpp"
#include "kernels/cuda/add.hpp"
#include "kernels/cuda/channels_last_pool.hpp"
#include "layers/pooling.hpp"

namespace anvil {

namespace {
enum Buffer { kArgmax, kDy, kReduceScratch };

std::optional<PoolSpec> pool_of(const FusedChainSpecs& specs) {
  if (!specs.pool) return std::nullopt;
  return std::get<PoolSpec>(specs.pool->params);
}
}  // namespace

bool FusedAddEpilogue::applies(const FusedChainSpecs& specs, const Shape& sum) {
  if (specs.head->inputs.size() != 2 || !fused_chain(specs.pointwise)) return false;
  const std::optional<PoolSpec> pool = pool_of(specs);
  if (pool && !Pooling::anvil_kernel_takes(*pool)) return false;
  return cuda::chain_pool_geometry_error(chain_pool_geometry(sum, pool)) == nullptr;
}

FusedAddEpilogue::FusedAddEpilogue(const FusedChainSpecs& specs)
    : FusedLayer("fused_add_epilogue", specs.name, specs.head->path),
      chain_(*fused_chain(specs.pointwise)),
      pool_(pool_of(specs)) {}

Shape FusedAddEpilogue::infer_shape(const std::vector<Shape>& inputs) {
  if (inputs[0] != inputs[1]) throw Error("internal error: fused add of two shapes");
  return chain_pool_output_shape(inputs[0], pool_);
}

cuda::ChainPoolGeometry FusedAddEpilogue::geometry() const { return chain_pool_geometry(input_shapes()[0], pool_); }

std::vector<ParamSpec> FusedAddEpilogue::param_specs() const {
  return chain_param_specs(input_shapes()[0], chain_.scale_names);
}

void FusedAddEpilogue::set_gradient_needs(bool backward, bool input_grad) {
  backward_ = backward;
  input_grad_ = input_grad;
}

// Saved for backward: a max pool's argmax. dy only where no input takes the
// sum's gradient (backward runs for the multipliers alone).
std::vector<BufferRequest> FusedAddEpilogue::buffers(Device device) const {
  if (device != Device::Cuda) return {};
  const bool argmax = backward_ && pool_ && pool_->max;
  const size_t sum_bytes = static_cast<size_t>(numel(input_shapes()[0])) * sizeof(float);
  return {{"argmax", argmax ? static_cast<size_t>(numel(output_shape())) : 0, BufferLife::Saved},
          {"dy", backward_ && !input_grad_ ? sum_bytes : 0, BufferLife::Backward},
          {"reduce_scratch", backward_ ? cuda::chain_pool_backward_scratch_bytes(geometry(), chain_.ops) : 0,
           BufferLife::Backward}};
}

std::string FusedAddEpilogue::describe_cuda() const {
  const std::string pool = !pool_ ? "no pool" : pool_->max ? "a max pool" : "an average pool";
  return "anvil's pool kernel: the sum, " + std::to_string(chain_.ops.ops) + "-op chain and " + pool +
         " in one kernel (the sum never written)" +
         (output_channels_last()   ? ", reading both addends and writing its output channels-last"
          : input_channels_last(0) ? ", reading both addends channels-last"
                                   : "");
}

// Both addends alike, in inference, where the channels-last kernel takes the geometry; the output
// channels-last only from channels-last addends (the packed kernel writes packed).
bool FusedAddEpilogue::takes_layouts(const std::vector<bool>& inputs, bool output) const {
  if (inputs[0] != inputs[1]) return false;
  if (!inputs[0]) return !output;
  return !backward_ && cuda::channels_last_pool_geometry_error(geometry()) == nullptr;
}

void FusedAddEpilogue::forward_cuda(CudaContext& ctx, const LayerArgs& args) {
  const cuda::EpilogueChain chain = bind_chain(chain_, args.params, 0);
  if (input_channels_last(0))
    cuda::add_channels_last_pool_forward(args.in[0].data, args.in[1].data, chain, args.out.data,
                                         cuda::p_layout(output_channels_last()), args.buffer<uint8_t>(kArgmax),
                                         geometry(), ctx.stream());
  else
    cuda::add_chain_pool_forward(args.in[0].data, args.in[1].data, chain, args.out.data, args.buffer<uint8_t>(kArgmax),
                                 geometry(), ctx.stream());
}

// The sum's gradient is each input's. It is computed once, into an input
// whose gradient it may overwrite, and copied or added to the other; where
// both inputs add into gradients they already hold, each takes its own pass.
void FusedAddEpilogue::backward_cuda(CudaContext& ctx, const LayerArgs& args) {
  const cuda::EpilogueChain chain = bind_chain(chain_, args.params, 0);
  const cuda::ChainGrads grads = chain_grads(chain_, args.dparams, 0, nullptr);
  const bool reads_sum = chain_.ops.ops > 0;
  auto pass = [&](float* dy, bool accumulate, const cuda::ChainGrads& with) {
    cuda::add_chain_pool_backward(args.dout.data, reads_sum ? args.in[0].data : nullptr,
                                  reads_sum ? args.in[1].data : nullptr, args.buffer<uint8_t>(kArgmax), chain, dy,
                                  accumulate, with, args.buffers[kReduceScratch], geometry(), ctx.stream());
  };
  const int64_t count = numel(input_shapes()[0]);
  int overwritten = -1;
  for (int i = 0; i < 2 && overwritten < 0; ++i)
    if (args.din[i].data && !args.din_accumulate[i]) overwritten = i;
  if (overwritten >= 0) {
    pass(args.din[overwritten].data, false, grads);
    const int other = 1 - overwritten;
    if (args.din[other].data)
      cuda::copy_or_accumulate(args.din[overwritten].data, args.din[other].data, count, args.din_accumulate[other],
                               ctx.stream());
    return;
  }
  bool reduced = false;
  for (int i = 0; i < 2; ++i) {
    if (!args.din[i].data) continue;
    pass(args.din[i].data, true, reduced ? cuda::ChainGrads{} : grads);
    reduced = true;
  }
  if (!reduced) pass(args.buffer<float>(kDy), false, grads);  // the multipliers' gradients alone
}

}  // namespace anvil
