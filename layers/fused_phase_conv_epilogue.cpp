#include "layers/fused_phase_conv_epilogue.hpp"

#include <cstdio>
#include <mutex>

#include "anvil/error.hpp"
#include "engine/src/cuda/context.hpp"
#include "kernels/cuda/phase_conv_mma.hpp"
#include "kernels/cuda/phase_wgrad_mma.hpp"
#include "kernels/cuda/tensor_cores.hpp"

namespace anvil {

namespace {
enum Buffer {
  kArgmax,
  kYAtMax,
  kXPad,
  kWp,
  kYp,
  kConvForward,  // forward
  kEpilogueScratch,
  kDyTf32,
  kDyResidual,
  kWgradScratch,
  kDyp,
  kDwp,
  kDxPad,
  kConvBackward  // backward
};
}  // namespace

// Each pool window is the s^d phases at one point of the phase grid.
std::optional<std::string> FusedPhaseConvEpilogue::derive(const Convolution& conv,
                                                          const std::vector<int64_t>& pool_kernel,
                                                          cuda::PhaseSplitGeometry& g, bool shift_phases) {
  if (!conv.transposed()) return "not a transposed conv";
  const ConvSpec& spec = conv.spec();
  const Shape& y = conv.output_shape();
  for (int i = 0; i < spec.dims; ++i) {
    if (pool_kernel[i] != spec.stride[i]) return "the pool kernel differs from the stride";
    if (y[2 + i] % spec.stride[i] != 0) return "the output is not a multiple of the stride";
  }
  return conv.phase_split(g, shift_phases);
}

std::unique_ptr<FusedPhaseConvEpilogue> FusedPhaseConvEpilogue::create(const FusedChainSpecs& specs,
                                                                       std::string& why_not) {
  std::unique_ptr<Convolution> conv = fused_chain_conv(specs);
  if (!conv->transposed()) {
    why_not = "not a transposed conv";
    return nullptr;
  }
  if (!specs.pool || !pool_tiles_output(std::get<PoolSpec>(specs.pool->params), conv->output_shape())) {
    why_not = "no max pool that tiles the output";
    return nullptr;
  }
  const std::vector<int64_t>& pool_kernel = std::get<PoolSpec>(specs.pool->params).kernel;
  cuda::PhaseSplitGeometry aligned, shifted;
  if (auto why = derive(*conv, pool_kernel, aligned, false)) {
    why_not = *why;
    return nullptr;
  }
  derive(*conv, pool_kernel, shifted, true);  // applies where the aligned form does
  return std::make_unique<FusedPhaseConvEpilogue>(std::move(conv), *fused_chain(specs.pointwise), aligned, shifted,
                                                  specs.name);
}

FusedPhaseConvEpilogue::FusedPhaseConvEpilogue(std::unique_ptr<Convolution> conv, const FusedChain& chain,
                                               const cuda::PhaseSplitGeometry& aligned,
                                               const cuda::PhaseSplitGeometry& shifted, std::string name)
    : FusedLayer("fused_phase_conv_epilogue", std::move(name), conv->path()),
      conv_(std::move(conv)),
      chain_(chain),
      g_(aligned),
      shifted_g_(shifted) {
  // cuDNN's combined convolution is an ordinary stride-1 conv layer over the padded input.
  phase_conv_ = conv_->phase_split_conv(shifted_g_, this->name() + ".phase");
}

FusedPhaseConvEpilogue::~FusedPhaseConvEpilogue() = default;

bool FusedPhaseConvEpilogue::tensor_core_forward_fits() const { return cuda::phase_fused_forward_supported(g_); }

std::vector<ParamSpec> FusedPhaseConvEpilogue::param_specs() const {
  return fused_param_specs(*conv_, chain_.scale_names);
}

Shape FusedPhaseConvEpilogue::infer_shape(const std::vector<Shape>& inputs) {
  if (inputs[0] != conv_->input_shapes()[0]) throw Error("internal error: fused layer input differs from its conv's");
  Shape p = conv_->output_shape();
  const int dims = static_cast<int>(p.size()) - 2;
  for (int i = 0; i < dims; ++i) p[2 + i] /= g_.s[3 - dims + i];
  return p;
}

void FusedPhaseConvEpilogue::set_gradient_needs(bool backward, bool input_grad) {
  backward_ = backward;
  input_grad_ = backward && input_grad;
}

std::string FusedPhaseConvEpilogue::describe_cuda() const {
  const std::string math = compensated_ ? "3xTF32" : "TF32";
  std::string s = "phase-split";
  if (fused_forward_) s += ", " + math + " tensor-core conv fused with the epilogue";
  if (mma_weight_grad_) s += ", " + math + " tensor-core weight gradient";
  if (fused_forward_) return s;
  auto taps = [](const cuda::PhaseSplitGeometry& g) { return std::to_string(g.kp[0] * g.kp[1] * g.kp[2]); };
  if (!cuda::phases_aligned(shifted_g_))
    s += ", phases shifted (" + taps(shifted_g_) + " combined taps, not " + taps(g_) + ")";
  return s + ": " + phase_conv_->describe_cuda();
}

// Yp is cuDNN's combined output, with each phase at its shift.
cuda::PhaseEpilogueGeometry FusedPhaseConvEpilogue::epilogue_geometry() const {
  const cuda::PhaseSplitGeometry& g = shifted_g_;
  cuda::PhaseEpilogueGeometry e;
  e.n = g.n;
  e.c = g.cout;
  e.phases = phases();
  for (int d = 0; d < 3; ++d) {
    e.q[d] = g.q[d];
    e.z[d] = g.in[d] + g.front[d] + g.end[d] - g.kp[d] + 1;
  }
  for (int64_t r = 0; r < e.phases; ++r) {
    const int64_t r0 = r / (g.s[1] * g.s[2]), r1 = r / g.s[2] % g.s[1], r2 = r % g.s[2];
    e.offset[r] = (g.shift[0][r0] * e.z[1] + g.shift[1][r1]) * e.z[2] + g.shift[2][r2];
  }
  return e;
}

size_t FusedPhaseConvEpilogue::wp_bytes() const {
  const cuda::PhaseSplitGeometry& g = forward_geometry();
  return size_t(phases() * g.cout * g.cin * g.kp[0] * g.kp[1] * g.kp[2]) * sizeof(float);
}

// Without an input gradient dY is never needed whole, and anvil's own
// tensor-core kernels replace cuDNN where the shapes fit them: the weight
// gradient over dY at the argmax (no dY, no cuDNN filter workspace) and the
// forward conv fused with the epilogue (Y, 268 MB for the headline layer, is
// never written). The fused forward needs the first when training: cuDNN's
// filter gradient would plan its algorithms around the cuDNN forward. On the
// H100 both beat cuDNN's deterministic algorithms (bench/RESULTS.md). Strict
// fp32 takes their compensated (3xTF32) form, whose products are float32-accurate.
// Before sm_80 cuDNN runs the phase-split conv.
void FusedPhaseConvEpilogue::build_cuda(CudaContext& ctx, const BuildSettings& settings) {
  const bool tensor_cores = cuda::tensor_core_kernels_available();
  if (!tensor_cores) {
    static std::once_flag told;
    std::call_once(told, [] {
      std::fprintf(stderr,
                   "anvil: the tensor-core kernels need sm_80 or newer, in the device and in the build's "
                   "CMAKE_CUDA_ARCHITECTURES (this device is sm_%d); using cuDNN\n",
                   cuda::device_sm());
    });
  }
  // The argmax weight gradient runs the aligned taps of every phase. Where
  // shifting drops taps and cuDNN runs the forward anyway, the shifted combined
  // conv's own filter gradient (anvil's tensor-core GEMM under fp32, by the conv
  // rule) does kp_aligned / kp_shifted times less work (k4 s2 3-D: 27 / 8).
  const bool fused_fits = tensor_cores && !input_grad_ && cuda::phase_fused_forward_supported(g_);
  mma_weight_grad_ = tensor_cores && backward_ && !input_grad_ && cuda::phase_mma_weight_grad_supported(g_) &&
                     (fused_fits || cuda::phases_aligned(shifted_g_));
  fused_forward_ = fused_fits && (!backward_ || mma_weight_grad_);
  compensated_ = settings.precision == Precision::FP32;
  if (fused_forward_) return;
  phase_conv_->set_gradient_needs(backward_ && !mma_weight_grad_, input_grad_);
  phase_conv_->build_cuda(ctx, settings);
}

// Saved for backward: the argmax (a byte per pooled element), y there, the
// padded input (for dW) and the combined weight (for dx). Inference keeps the
// last two only during the forward call. Backward: the tensor-core weight
// gradient needs dY at the argmax (TF32, and its residual in 3xTF32) and its
// partials; the dense backward (phase_conv_'s) needs the whole dYp, dWp, dx_pad
// (when wanted) and its workspace.
std::vector<BufferRequest> FusedPhaseConvEpilogue::buffers(Device device) const {
  if (device != Device::Cuda) return {};
  const BufferLife kept = backward_ ? BufferLife::Saved : BufferLife::Forward;
  const size_t pooled = static_cast<size_t>(numel(output_shape()));
  const bool dense_backward = backward_ && !mma_weight_grad_;
  auto when = [](bool needed, size_t bytes) { return needed ? bytes : size_t{0}; };
  return {
      {"argmax", when(backward_, pooled), BufferLife::Saved},
      {"y_at_max", when(backward_, pooled_bytes()), BufferLife::Saved},
      {"x_pad", x_pad_bytes(), kept},
      {"wp", wp_bytes(), kept},
      {"yp", when(!fused_forward_, yp_bytes()), BufferLife::Forward},
      {"conv_forward", when(!fused_forward_, phase_conv_->forward_workspace()), BufferLife::Forward},
      {"epilogue_scratch",
       when(backward_, cuda::phase_epilogue_backward_scratch_bytes(epilogue_geometry(), chain_.ops)),
       BufferLife::Backward},
      {"dy_tf32", when(mma_weight_grad_, pooled_bytes()), BufferLife::Backward},
      {"dy_residual", when(mma_weight_grad_ && compensated_, pooled_bytes()), BufferLife::Backward},
      {"wgrad_scratch", when(mma_weight_grad_, cuda::phase_mma_weight_grad_scratch_bytes(g_)), BufferLife::Backward},
      {"dyp", when(dense_backward, yp_bytes()), BufferLife::Backward},
      {"dwp", when(dense_backward, wp_bytes()), BufferLife::Backward},
      {"dx_pad", when(dense_backward && input_grad_, x_pad_bytes()), BufferLife::Backward},
      {"conv_backward", when(dense_backward, phase_conv_->backward_workspace()), BufferLife::Backward},
  };
}

void FusedPhaseConvEpilogue::choose_algorithms(CudaContext& ctx, const LayerArgs& forward, const LayerArgs& backward) {
  if (fused_forward_) return;
  phase_conv_->search_algorithms(ctx, forward.buffer<float>(kXPad), forward.buffer<float>(kYp),
                                 forward.buffer<float>(kWp), backward.buffer<float>(kDwp),
                                 forward.buffers[kConvForward], backward.buffers[kConvBackward]);
}

void FusedPhaseConvEpilogue::forward_cuda(CudaContext& ctx, const LayerArgs& args) {
  float* x_pad = args.buffer<float>(kXPad);
  float* wp = args.buffer<float>(kWp);
  // The TF32 kernels take x rounded once, here; a TF32 cuDNN conv rounds it anyway.
  const bool round_tf32 = !compensated_ && (fused_forward_ || mma_weight_grad_);
  cuda::phase_pad_input(args.in[0].data, x_pad, round_tf32, g_, ctx.stream());
  cuda::phase_build_weight(args.params[0], wp, forward_geometry(), ctx.stream());
  const float* bias = conv_->has_bias() ? args.params[1] : nullptr;
  auto* argmax = args.buffer<uint8_t>(kArgmax);  // null in inference, as is y_at_max
  auto* y_at_max = args.buffer<float>(kYAtMax);
  const cuda::EpilogueChain chain = bind_chain(chain_, args.params, conv_->param_count());
  if (fused_forward_) {
    cuda::phase_fused_forward(x_pad, wp, bias, chain, args.out.data, argmax, y_at_max, compensated_, g_, ctx.stream());
    return;
  }
  float* yp = args.buffer<float>(kYp);
  phase_conv_->run_forward(ctx, x_pad, wp, yp, args.buffers[kConvForward]);
  cuda::phase_epilogue_forward(yp, bias, chain, args.out.data, argmax, y_at_max, epilogue_geometry(), ctx.stream());
}

// The epilogue's backward gives dbias, the multipliers' gradients and dY: at the argmax only for the
// tensor-core weight gradient, whole (dYp) for cuDNN's.
void FusedPhaseConvEpilogue::backward_cuda(CudaContext& ctx, const LayerArgs& args) {
  const auto* argmax = args.buffer<const uint8_t>(kArgmax);
  const auto* y_at_max = args.buffer<const float>(kYAtMax);
  const size_t first_scale = conv_->param_count();
  const cuda::EpilogueChain chain = bind_chain(chain_, args.params, first_scale);
  cuda::PhaseGradOutputs out;
  out.grads = chain_grads(chain_, args.dparams, first_scale, conv_->has_bias() ? args.dparams[1] : nullptr);
  if (mma_weight_grad_) {
    out.dy_tf32 = args.buffer<uint32_t>(kDyTf32);
    out.dy_residual = args.buffer<uint32_t>(kDyResidual);  // null unless compensated
    cuda::phase_epilogue_backward(args.dout.data, argmax, y_at_max, chain, out, args.buffers[kEpilogueScratch],
                                  epilogue_geometry(), ctx.stream());
    cuda::phase_mma_weight_grad(out.dy_tf32, out.dy_residual, args.buffer<float>(kXPad), args.dparams[0],
                                args.buffers[kWgradScratch], g_, ctx.stream());
    return;
  }
  out.dyp = args.buffer<float>(kDyp);
  float* dwp = args.buffer<float>(kDwp);
  float* dx_pad = args.din[0].data ? args.buffer<float>(kDxPad) : nullptr;
  cuda::phase_epilogue_backward(args.dout.data, argmax, y_at_max, chain, out, args.buffers[kEpilogueScratch],
                                epilogue_geometry(), ctx.stream());
  phase_conv_->run_backward(ctx, args.buffer<float>(kXPad), out.dyp, args.buffer<float>(kWp), dx_pad, false, dwp,
                            args.buffers[kConvBackward]);
  cuda::phase_fold_weight_grad(dwp, args.dparams[0], shifted_g_, ctx.stream());
  if (dx_pad) cuda::phase_crop_input_grad(dx_pad, args.din[0].data, args.din_accumulate[0], g_, ctx.stream());
}

}  // namespace anvil
