// max_pool*d and avg_pool*d: one pooling layer with two modes, as Caffe's;
// avg counts padding in the divisor (PyTorch's count_include_pad=True).
// CUDA has two formulations. The rule picks anvil's kernels
// (kernels/cuda/chain_pool: an empty chain), which save one argmax byte per
// max window and make the backward one gather pass; cuDNN's pooling (its
// deterministic max mode) rereads x and y in its backward, at a tenth of the
// copy bandwidth on the H200 (bench/RESULTS.md). cuDNN runs the windows
// anvil's kernels do not take, and is the alternative --autotune times.
// In inference anvil's kernel reads a channels-last input
// (channels_last_pool.hpp), and writes a channels-last output: itself from a
// channels-last input, through a copy (cuDNN's transform) from a packed one;
// for lower/channels_last.cpp.
#pragma once

#include <memory>

#include "engine/src/spec/layer_spec.hpp"
#include "kernels/cpu/geometry.hpp"
#include "layers/layer.hpp"

#if ANVIL_WITH_CUDA
#include "kernels/cuda/chain_pool.hpp"
#endif

namespace anvil {

class Pooling : public Layer {
 public:
  enum class Kernel { Anvil, Cudnn };
  Pooling(const LayerSpec& spec, const PoolSpec& pool, Kernel kernel = Kernel::Anvil);
  OpKind kind() const override { return OpKind::Pool; }

  const PoolSpec& spec() const { return spec_; }
  Kernel cuda_kernel() const { return kernel_; }
  // Whether anvil's pool kernels take this window (chain_pool.hpp's limits).
  static bool anvil_kernel_takes(const PoolSpec& pool);

  bool backward_needs_output() const override { return kernel_ == Kernel::Cudnn; }

 protected:
  Shape infer_shape(const std::vector<Shape>& inputs) override;
  void forward_cpu(const LayerArgs& args) override;
  void backward_cpu(const LayerArgs& args) override;

 private:
  cpu::PoolGeometry geometry() const;
#if ANVIL_WITH_CUDA
  cuda::ChainPoolGeometry cuda_geometry() const;
#endif

  PoolSpec spec_;
  Kernel kernel_;

#if ANVIL_WITH_CUDA
 public:
  ~Pooling() override;
  void set_gradient_needs(bool backward, bool input_grad) override { input_grad_ = backward && input_grad; }
  void build_cuda(CudaContext& ctx, const BuildSettings& settings) override;
  std::vector<BufferRequest> buffers(Device device) const override;
  std::string describe_cuda() const override;
  bool takes_layouts(const std::vector<bool>& inputs, bool output) const override;

 protected:
  void forward_cuda(CudaContext& ctx, const LayerArgs& args) override;
  void backward_cuda(CudaContext& ctx, const LayerArgs& args) override;

 private:
  bool copies_output() const;  // a channels-last output computed packed, then copied
  struct Descriptors;          // created in build_cuda: a CPU engine never touches cuDNN
  std::unique_ptr<Descriptors> d_;
  bool input_grad_ = true;
#endif
};

}  // namespace anvil
