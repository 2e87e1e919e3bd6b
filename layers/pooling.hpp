// max_pool*d and avg_pool*d: one pooling layer with two modes, as Caffe's.
// CUDA runs cuDNN's N-d pooling; max uses the deterministic mode, avg counts
// padding in the divisor (PyTorch's count_include_pad=True).
#pragma once

#include <memory>

#include "engine/src/spec/layer_spec.hpp"
#include "kernels/cpu/geometry.hpp"
#include "layers/layer.hpp"

namespace anvil {

class Pooling : public Layer {
 public:
  Pooling(const LayerSpec& spec, const PoolSpec& pool);
  OpKind kind() const override { return OpKind::Pool; }

  const PoolSpec& spec() const { return spec_; }

  bool backward_needs_output() const override { return true; }

 protected:
  Shape infer_shape(const std::vector<Shape>& inputs) override;
  void forward_cpu(const LayerArgs& args) override;
  void backward_cpu(const LayerArgs& args) override;

 private:
  cpu::PoolGeometry geometry() const;

  PoolSpec spec_;

#if ANVIL_WITH_CUDA
 public:
  ~Pooling() override;
  void build_cuda(CudaContext& ctx, const BuildSettings& settings) override;

 protected:
  void forward_cuda(CudaContext& ctx, const LayerArgs& args) override;
  void backward_cuda(CudaContext& ctx, const LayerArgs& args) override;

 private:
  struct Descriptors;  // created in build_cuda: a CPU engine never touches cuDNN
  std::unique_ptr<Descriptors> d_;
#endif
};

}  // namespace anvil
