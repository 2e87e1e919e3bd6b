#include "layers/pooling.hpp"

#include "engine/src/config.hpp"
#include "engine/src/context.hpp"
#include "kernels/cpu/pool.hpp"
#include "layers/cudnn_util.hpp"
#include "layers/registry.hpp"

namespace anvil {

struct Pooling::Descriptors {
  TensorDescriptor x, y;
  PoolingDescriptor pool;
};

Pooling::Pooling(ConfigReader& cfg, const LayerInfo& info, int dims, bool max)
    : Layer(info.type, info.name, info.path), dims_(dims), max_(max) {
  kernel_ = cfg.per_dim("kernel_size", dims, 1);
  stride_ = cfg.per_dim_or("stride", dims, 1, kernel_);  // PyTorch: stride defaults to the kernel
  padding_ = cfg.per_dim_or("padding", dims, 0, std::vector<int64_t>(dims, 0));
  for (int i = 0; i < dims; ++i)
    if (2 * padding_[i] > kernel_[i])
      cfg.fail("padding", "must be at most half the kernel size, got " + std::to_string(padding_[i]) +
                              " with kernel " + std::to_string(kernel_[i]));
}

Pooling::~Pooling() = default;

Shape Pooling::infer_shape(const std::vector<Shape>& inputs) {
  const Shape& x = inputs[0];
  if (static_cast<int>(x.size()) != dims_ + 2)
    fail("", "'" + type() + "' needs a " + std::to_string(dims_ + 2) + "-d input, got " + to_string(x));
  Shape y = {x[0], x[1]};
  for (int i = 0; i < dims_; ++i) {
    const int64_t padded = x[2 + i] + 2 * padding_[i];
    if (kernel_[i] > padded)
      fail("kernel_size", "kernel (" + std::to_string(kernel_[i]) + ") is larger than the padded input (" +
                              std::to_string(padded) + ") along spatial dim " + std::to_string(i));
    y.push_back((padded - kernel_[i]) / stride_[i] + 1);
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
  g.k = cpu::lift_dims(kernel_, 1);
  g.stride = cpu::lift_dims(stride_, 1);
  g.pad = cpu::lift_dims(padding_, 0);
  return g;
}

void Pooling::forward_cpu(const LayerArgs& args) {
  if (max_)
    cpu::max_pool_forward(args.in[0].data, args.out.data, geometry());
  else
    cpu::avg_pool_forward(args.in[0].data, args.out.data, geometry());
}

void Pooling::backward_cpu(const LayerArgs& args) {
  if (!args.din[0].data) return;
  if (max_)
    cpu::max_pool_backward(args.in[0].data, args.dout.data, args.din[0].data, geometry(), args.din_accumulate[0]);
  else
    cpu::avg_pool_backward(args.dout.data, args.din[0].data, geometry(), args.din_accumulate[0]);
}

void Pooling::build_cuda(CudaContext&, const BuildSettings&) {
  d_ = std::make_unique<Descriptors>();
  set_tensor_descriptor(d_->x, input_shapes()[0]);
  set_tensor_descriptor(d_->y, output_shape());
  const std::vector<int> k(kernel_.begin(), kernel_.end()), p(padding_.begin(), padding_.end()),
      s(stride_.begin(), stride_.end());
  ANVIL_CUDNN_CHECK(cudnnSetPoolingNdDescriptor(
      d_->pool, max_ ? CUDNN_POOLING_MAX_DETERMINISTIC : CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING,
      CUDNN_PROPAGATE_NAN, dims_, k.data(), p.data(), s.data()));
}

void Pooling::forward_cuda(CudaContext& ctx, const LayerArgs& args) {
  const float one = 1.f, zero = 0.f;
  ANVIL_CUDNN_CHECK(cudnnPoolingForward(ctx.cudnn(), d_->pool, &one, d_->x, args.in[0].data, &zero, d_->y,
                                        args.out.data));
}

void Pooling::backward_cuda(CudaContext& ctx, const LayerArgs& args) {
  if (!args.din[0].data) return;
  const float one = 1.f, zero = 0.f;
  ANVIL_CUDNN_CHECK(cudnnPoolingBackward(ctx.cudnn(), d_->pool, &one, d_->y, args.out.data, d_->y, args.dout.data,
                                         d_->x, args.in[0].data, args.din_accumulate[0] ? &one : &zero, d_->x,
                                         args.din[0].data));
}

std::unique_ptr<Layer> create_max_pool(ConfigReader& cfg, const LayerInfo& info, int dims) {
  return std::make_unique<Pooling>(cfg, info, dims, true);
}

std::unique_ptr<Layer> create_avg_pool(ConfigReader& cfg, const LayerInfo& info, int dims) {
  return std::make_unique<Pooling>(cfg, info, dims, false);
}

}  // namespace anvil
