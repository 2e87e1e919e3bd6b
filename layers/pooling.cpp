#include "layers/pooling.hpp"

#include "kernels/cpu/pool.hpp"
#include "layers/registry.hpp"

#if ANVIL_WITH_CUDA
#include "engine/src/cuda/context.hpp"
#include "kernels/cuda/channels_last_pool.hpp"
#include "layers/cudnn_util.hpp"
#endif

namespace anvil {

Pooling::Pooling(const LayerSpec& spec, const PoolSpec& pool, Kernel kernel)
    : Layer(spec.type, spec.name, spec.path), spec_(pool), kernel_(anvil_kernel_takes(pool) ? kernel : Kernel::Cudnn) {}

bool Pooling::anvil_kernel_takes(const PoolSpec& pool) {
  int64_t window = 1;
  for (size_t d = 0; d < pool.kernel.size(); ++d) {
    if (pool.kernel[d] > 256 || pool.stride[d] > 256 || 2 * pool.padding[d] > pool.kernel[d]) return false;
    window *= pool.kernel[d];
  }
  return !pool.max || window <= 255;  // the argmax is a byte, 255 marks a window of padding only
}

Shape Pooling::infer_shape(const std::vector<Shape>& inputs) {
  const Shape& x = inputs[0];
  require_spatial_input(x, spec_.dims);
  Shape y = {x[0], x[1]};
  for (int i = 0; i < spec_.dims; ++i) {
    const int64_t padded = x[2 + i] + 2 * spec_.padding[i];
    if (spec_.kernel[i] > padded)
      fail("kernel_size", "kernel (" + std::to_string(spec_.kernel[i]) + ") is larger than the padded input (" +
                              std::to_string(padded) + ") along spatial dim " + std::to_string(i));
    y.push_back((padded - spec_.kernel[i]) / spec_.stride[i] + 1);
  }
  return y;
}

cpu::PoolGeometry Pooling::geometry() const {
  const Shape& x = input_shapes()[0];
  const Shape& y = output_shape();
  cpu::PoolGeometry g;
  g.planes = x[0] * x[1];
  g.in = cpu::lift_dims({x.begin() + 2, x.end()}, 1);
  g.out = cpu::lift_dims({y.begin() + 2, y.end()}, 1);
  g.k = cpu::lift_dims(spec_.kernel, 1);
  g.stride = cpu::lift_dims(spec_.stride, 1);
  g.pad = cpu::lift_dims(spec_.padding, 0);
  return g;
}

void Pooling::forward_cpu(const LayerArgs& args) {
  if (spec_.max)
    cpu::max_pool_forward(args.in[0].data, args.out.data, geometry());
  else
    cpu::avg_pool_forward(args.in[0].data, args.out.data, geometry());
}

void Pooling::backward_cpu(const LayerArgs& args) {
  if (!args.din[0].data) return;
  if (spec_.max)
    cpu::max_pool_backward(args.in[0].data, args.dout.data, args.din[0].data, geometry(), args.din_accumulate[0]);
  else
    cpu::avg_pool_backward(args.dout.data, args.din[0].data, geometry(), args.din_accumulate[0]);
}

std::unique_ptr<Layer> create_pooling(const LayerSpec& spec, const PoolSpec& pool) {
  return std::make_unique<Pooling>(spec, pool);
}

#if ANVIL_WITH_CUDA

struct Pooling::Descriptors {
  TensorDescriptor x, y;
  PoolingDescriptor pool;
};

Pooling::~Pooling() = default;

namespace {
enum Buffer { kArgmax, kPackedOut };
}  // namespace

cuda::ChainPoolGeometry Pooling::cuda_geometry() const {
  const cpu::PoolGeometry p = geometry();
  cuda::ChainPoolGeometry g;
  const Shape& x = input_shapes()[0];
  g.n = x[0];
  g.c = x[1];
  g.y = p.in;
  g.pool = spec_.max ? cuda::ChainPool::Max : cuda::ChainPool::Avg;
  g.k = p.k;
  g.stride = p.stride;
  g.pad = p.pad;
  return g;
}

// The kernel that reads a packed input writes packed: a channels-last output is copied from a packed one.
bool Pooling::copies_output() const { return output_channels_last() && !input_channels_last(0); }

// anvil's max pool saves each window's argmax (a byte) for its backward.
std::vector<BufferRequest> Pooling::buffers(Device device) const {
  if (device != Device::Cuda || kernel_ == Kernel::Cudnn) return {};
  const bool argmax = spec_.max && input_grad_;
  const size_t out_bytes = static_cast<size_t>(numel(output_shape())) * sizeof(float);
  return {{"argmax", argmax ? static_cast<size_t>(numel(output_shape())) : 0, BufferLife::Saved},
          {"packed_out", copies_output() ? out_bytes : 0, BufferLife::Forward}};
}

std::string Pooling::describe_cuda() const {
  if (kernel_ == Kernel::Cudnn) return "cuDNN's pooling";
  const std::string output = copies_output()          ? "; its output copied to channels-last after"
                             : output_channels_last() ? ", writing its output channels-last"
                                                      : "";
  return std::string("anvil's pool kernel") + (input_channels_last(0) ? ", reading its input channels-last" : "") +
         output;
}

// Either layout in inference on anvil's kernel, where the channels-last kernel takes the window.
bool Pooling::takes_layouts(const std::vector<bool>& inputs, bool output) const {
  if (!inputs[0] && !output) return true;
  if (kernel_ != Kernel::Anvil || input_grad_) return false;
  return !inputs[0] || cuda::channels_last_pool_geometry_error(cuda_geometry()) == nullptr;
}

void Pooling::build_cuda(CudaContext&, const BuildSettings&) {
  if (kernel_ == Kernel::Anvil) return;
  d_ = std::make_unique<Descriptors>();
  set_tensor_descriptor(d_->x, input_shapes()[0]);
  set_tensor_descriptor(d_->y, output_shape());
  const std::vector<int> k(spec_.kernel.begin(), spec_.kernel.end()), p(spec_.padding.begin(), spec_.padding.end()),
      s(spec_.stride.begin(), spec_.stride.end());
  ANVIL_CUDNN_CHECK(cudnnSetPoolingNdDescriptor(
      d_->pool, spec_.max ? CUDNN_POOLING_MAX_DETERMINISTIC : CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING,
      CUDNN_PROPAGATE_NAN, spec_.dims, k.data(), p.data(), s.data()));
}

void Pooling::forward_cuda(CudaContext& ctx, const LayerArgs& args) {
  if (kernel_ == Kernel::Anvil) {
    float* out = copies_output() ? args.buffer<float>(kPackedOut) : args.out.data;
    if (input_channels_last(0))
      cuda::channels_last_pool_forward(args.in[0].data, nullptr, cuda::EpilogueChain{}, out,
                                       cuda::p_layout(output_channels_last()), nullptr, nullptr, cuda_geometry(),
                                       ctx.stream());
    else
      cuda::chain_pool_forward(args.in[0].data, nullptr, cuda::EpilogueChain{}, out, args.buffer<uint8_t>(kArgmax),
                               cuda_geometry(), ctx.stream());
    if (copies_output()) copy_to_layout(ctx.cudnn(), output_shape(), out, false, args.out.data);
    return;
  }
  const float one = 1.f, zero = 0.f;
  ANVIL_CUDNN_CHECK(
      cudnnPoolingForward(ctx.cudnn(), d_->pool, &one, d_->x, args.in[0].data, &zero, d_->y, args.out.data));
}

void Pooling::backward_cuda(CudaContext& ctx, const LayerArgs& args) {
  if (!args.din[0].data) return;
  if (kernel_ == Kernel::Anvil) {
    cuda::chain_pool_backward(args.dout.data, nullptr, nullptr, args.buffer<uint8_t>(kArgmax), cuda::EpilogueChain{},
                              args.din[0].data, args.din_accumulate[0], {}, nullptr, cuda_geometry(), ctx.stream());
    return;
  }
  const float one = 1.f, zero = 0.f;
  ANVIL_CUDNN_CHECK(cudnnPoolingBackward(ctx.cudnn(), d_->pool, &one, d_->y, args.out.data, d_->y, args.dout.data,
                                         d_->x, args.in[0].data, args.din_accumulate[0] ? &one : &zero, d_->x,
                                         args.din[0].data));
}

#endif  // ANVIL_WITH_CUDA

}  // namespace anvil
