// max_pool*d and avg_pool*d: one pooling layer with two modes, as Caffe's.
// CUDA runs cuDNN's N-d pooling; max uses the deterministic mode, avg counts
// padding in the divisor (PyTorch's count_include_pad=True).
#pragma once

#include <memory>

#include "kernels/cpu/geometry.hpp"
#include "layers/layer.hpp"

namespace anvil {

class ConfigReader;
struct LayerInfo;

class Pooling : public Layer {
 public:
  Pooling(ConfigReader& cfg, const LayerInfo& info, int dims, bool max);
  ~Pooling() override;

  bool is_max() const { return max_; }
  const std::vector<int64_t>& kernel() const { return kernel_; }
  const std::vector<int64_t>& stride() const { return stride_; }
  const std::vector<int64_t>& padding() const { return padding_; }

  bool backward_needs_output() const override { return true; }
  void build_cuda(CudaContext& ctx, const BuildSettings& settings) override;

 protected:
  Shape infer_shape(const std::vector<Shape>& inputs) override;
  void forward_cpu(const LayerArgs& args) override;
  void backward_cpu(const LayerArgs& args) override;
  void forward_cuda(CudaContext& ctx, const LayerArgs& args) override;
  void backward_cuda(CudaContext& ctx, const LayerArgs& args) override;

 private:
  cpu::PoolGeometry geometry() const;

  int dims_;
  bool max_;
  std::vector<int64_t> kernel_, stride_, padding_;
  struct Descriptors;  // created in build_cuda: a CPU engine never touches cuDNN
  std::unique_ptr<Descriptors> d_;
};

}  // namespace anvil
