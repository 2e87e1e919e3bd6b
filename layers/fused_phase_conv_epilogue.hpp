// A fused conv epilogue with the transposed convolution phase-split: when a
// conv_transpose (dilation 1) is followed by a pointwise chain and a max pool
// whose kernel equals the conv's stride and tiles its output, each pool window
// is exactly the s^d output phases at one grid point. The conv then runs as
// ONE stride-1 forward convolution with s^d * Cout channels (the combined
// weight is rebuilt from PyTorch's weight each step) and the epilogue reads
// the phases directly, each at its shift (k4 s2: 2 combined taps per dim, not
// 3). Without an input gradient, anvil's tensor-core kernels run it: the conv
// fused with the epilogue, and a weight gradient built from dY at each
// window's argmax. With one (it needs the whole dY), cuDNN runs the conv and
// its backward. Exact: the same sums as the transposed conv, in another order.
#pragma once

#include <memory>

#include "kernels/cuda/epilogue.hpp"
#include "kernels/cuda/phase_split.hpp"
#include "layers/convolution.hpp"
#include "layers/fused_conv_epilogue.hpp"

namespace anvil {

class FusedPhaseConvEpilogue : public FusedLayer {
 public:
  // Fills g where the phase split applies to this conv_transpose + pool; else
  // returns why not. shift_phases: each phase at its own offset in the
  // combined output where that drops combined taps (cuDNN's path); otherwise
  // all aligned (anvil's tensor-core kernels). Both forms pad x alike.
  static std::optional<std::string> derive(const Convolution& conv, const std::vector<int64_t>& pool_kernel,
                                           cuda::PhaseSplitGeometry& g, bool shift_phases);
  // The fused layer for this chain, or null with why_not set where the phase split does not apply.
  static std::unique_ptr<FusedPhaseConvEpilogue> create(const FusedChainSpecs& specs, std::string& why_not);
  // Whether anvil's tensor-core kernel can run the conv fused with the whole
  // epilogue (the geometry's part; it runs where no input gradient is needed).
  bool tensor_core_forward_fits() const;

  FusedPhaseConvEpilogue(std::unique_ptr<Convolution> conv, const FusedChain& chain,
                         const cuda::PhaseSplitGeometry& aligned, const cuda::PhaseSplitGeometry& shifted,
                         std::string name);
  ~FusedPhaseConvEpilogue() override;

  std::vector<ParamSpec> param_specs() const override;
  void set_gradient_needs(bool backward, bool input_grad) override;
  void build_cuda(CudaContext& ctx, const BuildSettings& settings) override;
  std::vector<BufferRequest> buffers(Device device) const override;
  void choose_algorithms(CudaContext& ctx, const LayerArgs& forward, const LayerArgs& backward) override;
  std::string describe_cuda() const override;

 protected:
  Shape infer_shape(const std::vector<Shape>& inputs) override;
  void forward_cuda(CudaContext& ctx, const LayerArgs& args) override;
  void backward_cuda(CudaContext& ctx, const LayerArgs& args) override;

 private:
  cuda::PhaseEpilogueGeometry epilogue_geometry() const;
  int64_t phases() const { return cuda::phase_count(g_); }
  size_t pooled_bytes() const { return numel(output_shape()) * sizeof(float); }
  size_t yp_bytes() const { return numel(phase_conv_->output_shape()) * sizeof(float); }
  size_t x_pad_bytes() const { return numel(phase_conv_->input_shapes()[0]) * sizeof(float); }
  size_t wp_bytes() const;  // the combined weight of the forward that runs
  const cuda::PhaseSplitGeometry& forward_geometry() const { return fused_forward_ ? g_ : shifted_g_; }

  std::unique_ptr<Convolution> conv_;        // the original layer: parameters and their PyTorch layout
  std::unique_ptr<Convolution> phase_conv_;  // the stride-1 combined convolution
  FusedChain chain_;
  cuda::PhaseSplitGeometry g_;          // phases aligned: anvil's tensor-core kernels
  cuda::PhaseSplitGeometry shifted_g_;  // phases shifted: cuDNN's conv (fewer taps), Yp, dYp
  bool backward_ = true, input_grad_ = true;
  // anvil's tensor-core kernels instead of cuDNN: the conv fused with the
  // epilogue (no Yp), and the weight gradient over dY at the argmax (no dYp).
  bool fused_forward_ = false;
  bool mma_weight_grad_ = false;
  bool compensated_ = false;  // strict fp32: their 3xTF32 form
};

}  // namespace anvil
