// The fused conv epilogue, made by a fusion rule (lower/fusion_rules.cpp), never named in JSON:
//   conv / conv_transpose (+bias) -> a chain of activations and channel_scales -> a pool, or none
// Its forward has three formulations. cuDNN's: cuDNN computes the bias-free
// convolution into a buffer Y; one kernel then adds the bias, runs the chain
// and pools. Direct (a conv with few taps per output, direct_conv.hpp) and
// wgmma (a conv, or a stride-1 transposed conv, under tf32 on Hopper, wgmma_conv.hpp): anvil's kernel
// computes all of it, writing Y only where backward reads it.
// Under tf32, where only the epilogue reads Y, cuDNN writes Y channels-last
// (its tensor-core kernels' own layout) and the epilogue reads it so
// (channels_last_pool.hpp). Both save the same tensors, so backward is one. For a max pool that tiles Y it
// saves, per pooled element, only the argmax and y there (epilogue.hpp);
// every other pool, and no pool, keeps Y for backward (chain_pool.hpp), but
// where anvil's kernel runs a chain of leaky_relus (relu included) it saves
// their codes instead: a byte an element, not Y's 4 (epilogue_chain.hpp).
// Backward rebuilds dY in one kernel, which also reduces dbias and the
// multipliers' gradients, then cuDNN computes dW (and dx).
// In inference under tf32, cuDNN's formulation can take its input and give
// its output channels-last (lower/channels_last.cpp): the input read so by
// cuDNN's graph API, and an output without a pool computed by one graph of
// the conv, the bias and the chain, which cuDNN's runtime-fusion engines
// compile into one kernel. That graph reads x and W channels-last, the
// layouts of cuDNN's kernels: the layer copies W (small) each forward, and x
// where its input is packed. With a pool, a transposed conv, or a leaky_relu
// slope outside [0, 1], the epilogue kernel reads a channels-last Y and
// writes the output channels-last. Where cuDNN grants neither, the layer runs
// packed between layout copies (cuDNN's transform).
// CUDA only: the CPU backend runs the layers unfused.
#pragma once

#include <memory>
#include <optional>

#include "engine/src/lower/fusion_rules.hpp"
#include "kernels/cuda/channels_last_pool.hpp"
#include "kernels/cuda/direct_conv.hpp"
#include "kernels/cuda/epilogue.hpp"
#include "kernels/cuda/wgmma_conv.hpp"
#include "layers/convolution.hpp"
#include "layers/fused_chain.hpp"

namespace anvil {

// Shared by both fused conv layers: the conv's parameters, then the chain's.
std::vector<ParamSpec> fused_param_specs(const Convolution& conv, const std::vector<std::string>& scale_names);
// The conv of a fused chain, set up on its input.
std::unique_ptr<Convolution> fused_chain_conv(const FusedChainSpecs& specs);

class FusedConvEpilogue : public FusedLayer {
 public:
  enum class Forward { Cudnn, Direct, Wgmma };
  FusedConvEpilogue(const FusedChainSpecs& specs, Forward forward);

  // Whether anvil's direct kernel can compute this chain's forward; why_not otherwise.
  bool direct_applies(std::string& why_not) const;
  // Whether anvil's wgmma kernel can compute it on this device; why_not otherwise.
  bool wgmma_applies(std::string& why_not) const;
  // Whether the formulation rule takes anvil's wgmma kernel where it applies (cuda::wgmma_conv_preferred).
  bool wgmma_preferred() const { return cuda::wgmma_conv_preferred(wgmma_geometry()); }
  // in_channels x kernel taps: the multiply-adds per output of a conv (not transposed).
  int64_t taps_per_output() const;

  std::vector<ParamSpec> param_specs() const override;
  void set_gradient_needs(bool backward, bool input_grad) override { conv_->set_gradient_needs(backward, input_grad); }
  void build_cuda(CudaContext& ctx, const BuildSettings& settings) override;
  std::vector<BufferRequest> buffers(Device device) const override;
  void choose_algorithms(CudaContext& ctx, const LayerArgs& forward, const LayerArgs& backward) override;
  std::string describe_cuda() const override;
  bool takes_layouts(const std::vector<bool>& inputs, bool output) const override;
  bool computes_channels_last() const override { return forward_ == Forward::Cudnn; }

 protected:
  Shape infer_shape(const std::vector<Shape>& inputs) override;
  void forward_cuda(CudaContext& ctx, const LayerArgs& args) override;
  void backward_cuda(CudaContext& ctx, const LayerArgs& args) override;

 private:
  cuda::EpilogueGeometry tiled_geometry() const;
  cuda::ChainPoolGeometry general_geometry() const;
  cuda::DirectConvGeometry direct_geometry() const;
  cuda::WgmmaConvGeometry wgmma_geometry() const;
  size_t y_bytes() const;    // the full-resolution conv output
  bool keeps_y() const;      // whether backward reads Y (every pool but a tiled max, in training, but...
  bool saves_codes() const;  // ...where anvil's forward saves the chain's codes in its place)
  size_t conv_param_count() const { return conv_->param_count(); }
  size_t reduce_scratch_bytes() const;
  // The bias and the chain as cuDNN's graph computes them (none where it cannot), and their operands there.
  std::optional<ConvGraphEpilogue> graph_epilogue() const;
  std::vector<const float*> graph_operands(const std::vector<float*>& params) const;
  bool y_channels_last() const;  // cuDNN writes Y channels-last for the epilogue kernel
  bool fused_output() const;     // cuDNN's graph writes the output, the epilogue in its kernel
  // Channels-last where cuDNN's graph API does not take it: the layer's
  // input copied to packed, or its output computed packed and copied.
  bool copies_input() const { return input_channels_last(0) && !conv_->forward_request_granted(); }
  bool copies_output() const { return output_channels_last() && !fused_output() && !y_channels_last(); }
  bool graph_may_fuse_epilogue() const;
  bool epilogue_may_read_channels_last_y() const;  // asks cuDNN for a channels-last Y
  // Where cuDNN's graph reads x channels-last, W is read so too, from a copy; and a packed input is copied.
  bool reads_channels_last_w() const {
    return conv_->forward_request_granted() && conv_->forward_request().x_channels_last;
  }
  bool copies_x_to_channels_last() const { return reads_channels_last_w() && !input_channels_last(0); }
  size_t w_bytes() const;

  std::unique_ptr<Convolution> conv_;
  FusedChain chain_;
  std::optional<PoolSpec> pool_;
  bool tiled_ = false;  // a max pool that tiles Y: epilogue.hpp's kernels; else chain_pool.hpp's
  Forward forward_;
  bool graph_epilogue_asked_ = false;  // cuDNN's graph asked to write the output, the epilogue in its kernel
};

}  // namespace anvil
