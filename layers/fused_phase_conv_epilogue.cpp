#include "layers/fused_phase_conv_epilogue.hpp"

#include "layers/fused_conv_epilogue.hpp"

#include <climits>
#include <nlohmann/json.hpp>

#include "anvil/error.hpp"
#include "engine/src/config.hpp"
#include "engine/src/context.hpp"
#include "kernels/cuda/phase_conv_mma.hpp"
#include "kernels/cuda/phase_wgrad_mma.hpp"
#include "layers/registry.hpp"

namespace anvil {

// Along one dim, output o = q * s + r (phase r) receives x[i] * w[t] where
// o = i * s - p + t. With c = r + p = a * s + b, the taps of phase r are
// t = b + j * s (t < k), reading x[q + a - j]. Offsets a - j over all phases
// span [m0, m1]: a stride-1 kernel of kp = m1 - m0 + 1 taps over x padded by
// -m0 in front and enough at the end for q = 0 .. out / s - 1.
bool FusedPhaseConvEpilogue::derive(const Convolution& conv, const std::vector<int64_t>& pool_kernel,
                                    cuda::PhaseSplitGeometry& g) {
  if (!conv.transposed()) return false;
  const Shape& x = conv.input_shapes()[0];
  const Shape& y = conv.output_shape();
  const int dims = static_cast<int>(conv.kernel().size());
  g = cuda::PhaseSplitGeometry{};
  g.n = x[0];
  g.cin = conv.in_channels();
  g.cout = conv.out_channels();
  for (int d = 0; d < 3 - dims; ++d) g.tap[d][0] = 0;  // lifted dims: one phase, one tap
  for (int i = 0; i < dims; ++i) {
    const int d = 3 - dims + i;
    const int64_t k = conv.kernel()[i], s = conv.stride()[i], p = conv.padding()[i];
    const int64_t in = x[2 + i], out = y[2 + i];
    if (conv.dilation()[i] != 1 || pool_kernel[i] != s || k > cuda::kMaxKernel || out % s != 0) return false;
    std::vector<int64_t> a(s), b(s), taps(s);
    int64_t m0 = INT64_MAX, m1 = INT64_MIN;
    for (int64_t r = 0; r < s; ++r) {
      a[r] = (r + p) / s;
      b[r] = (r + p) % s;
      taps[r] = b[r] < k ? (k - b[r] + s - 1) / s : 0;
      if (taps[r] == 0) continue;
      m0 = std::min(m0, a[r] - (taps[r] - 1));
      m1 = std::max(m1, a[r]);
    }
    if (m0 == INT64_MAX || m0 > 0) return false;
    const int64_t kp = m1 - m0 + 1, q = out / s;
    if (s * kp > cuda::kMaxPhaseTaps) return false;
    g.in[d] = in;
    g.front[d] = -m0;
    g.end[d] = q + kp - 1 - g.front[d] - in;
    if (g.end[d] < 0) return false;
    g.k[d] = k;
    g.kp[d] = kp;
    g.s[d] = s;
    for (int64_t u = 0; u < s * kp; ++u) g.tap[d][u] = -1;
    for (int64_t r = 0; r < s; ++r)
      for (int64_t j = 0; j < taps[r]; ++j) {
        const int64_t t = b[r] + j * s, u = a[r] - j - m0;
        g.tap[d][r * kp + u] = static_cast<int8_t>(t);
        g.phase_of[d][t] = static_cast<int8_t>(r);
        g.combined_of[d][t] = static_cast<int8_t>(u);
      }
  }
  return g.s[0] * g.s[1] * g.s[2] <= 256;
}

FusedPhaseConvEpilogue::FusedPhaseConvEpilogue(std::unique_ptr<Convolution> conv, float slope1, std::string scale_name,
                                               float slope2, const cuda::PhaseSplitGeometry& g, std::string name)
    : Layer("fused_phase_conv_epilogue", std::move(name), conv->path()),
      conv_(std::move(conv)),
      slope1_(slope1),
      slope2_(slope2),
      scale_name_(std::move(scale_name)),
      g_(g) {
  // The combined convolution is an ordinary conv layer over the padded input.
  const int dims = static_cast<int>(conv_->kernel().size());
  std::vector<int64_t> kp(g_.kp.end() - dims, g_.kp.end());
  const nlohmann::json cfg = {{"in_channels", g_.cin}, {"out_channels", phases() * g_.cout}, {"kernel_size", kp},
                              {"bias", false}};
  ConfigReader reader(cfg, path());
  phase_conv_ = std::make_unique<Convolution>(reader, LayerInfo{conv_->type(), this->name() + ".phase", path()}, dims,
                                              false);
  Shape x_pad = {g_.n, g_.cin};
  for (int d = 3 - dims; d < 3; ++d) x_pad.push_back(g_.in[d] + g_.front[d] + g_.end[d]);
  phase_conv_->setup({x_pad});
}

FusedPhaseConvEpilogue::~FusedPhaseConvEpilogue() = default;

std::vector<ParamSpec> FusedPhaseConvEpilogue::param_specs() const { return fused_param_specs(*conv_, scale_name_); }

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
  return fused_forward_ ? s : s + ": " + phase_conv_->describe_cuda();
}

cuda::PhaseEpilogueGeometry FusedPhaseConvEpilogue::epilogue_geometry() const {
  const Shape& p = output_shape();
  return {p[0], p[1], phases(), numel(p) / (p[0] * p[1])};
}

// Saved for backward: argmax (bytes), y at the argmax, the padded input (for
// dW) and the combined weight (for dx). Inference keeps the last two in the workspace.
size_t FusedPhaseConvEpilogue::saved_bytes() const {
  if (!backward_) return 0;
  return align_up(numel(output_shape())) + pooled_bytes() + x_pad_bytes() + wp_bytes();
}

FusedPhaseConvEpilogue::Kept FusedPhaseConvEpilogue::kept(const LayerArgs& args) const {
  char* base = backward_ ? static_cast<char*>(args.saved) + align_up(numel(output_shape())) + pooled_bytes()
                         : static_cast<char*>(args.workspace) + cudnn_forward_bytes();
  return {reinterpret_cast<float*>(base), reinterpret_cast<float*>(base + x_pad_bytes())};
}

// Without an input gradient dY is never needed whole, and anvil's own
// tensor-core kernels replace cuDNN where the shapes fit them: the weight
// gradient over dY at the argmax (no dY, no cuDNN filter workspace) and the
// forward conv fused with the epilogue (Y, 268 MB for the headline layer, is
// never written). The fused forward needs the first when training: cuDNN's
// filter gradient would plan its algorithms around the cuDNN forward. On the
// H100 both beat cuDNN's deterministic algorithms (bench/RESULTS.md). Strict
// fp32 takes their compensated (3xTF32) form, whose products are float32-accurate.
void FusedPhaseConvEpilogue::build_cuda(CudaContext& ctx, const BuildSettings& settings) {
  mma_weight_grad_ = backward_ && !input_grad_ && cuda::phase_mma_weight_grad_supported(g_);
  fused_forward_ = !input_grad_ && (!backward_ || mma_weight_grad_) && cuda::phase_fused_forward_supported(g_);
  compensated_ = settings.precision == Precision::FP32;
  if (fused_forward_) return;
  phase_conv_->set_gradient_needs(backward_ && !mma_weight_grad_, input_grad_);
  phase_conv_->build_cuda(ctx, settings);
}

// cuDNN: Yp and cuDNN's workspace. Inference also keeps x_pad and wp here.
size_t FusedPhaseConvEpilogue::forward_workspace_bytes(Device device) const {
  if (device != Device::Cuda) return 0;
  return cudnn_forward_bytes() + (backward_ ? 0 : x_pad_bytes() + wp_bytes());
}

size_t FusedPhaseConvEpilogue::cudnn_forward_bytes() const {
  return fused_forward_ ? 0 : yp_bytes() + align_up(phase_conv_->cudnn_forward_workspace());
}

// Tensor-core weight gradient: the epilogue's reduction scratch, dY at the argmax (TF32 and residual), the
// kernel's partials. cuDNN: dYp, dWp, dx_pad (when wanted), cuDNN, then the epilogue's reduction scratch.
size_t FusedPhaseConvEpilogue::backward_workspace_bytes(Device device) const {
  if (device != Device::Cuda) return 0;
  if (mma_weight_grad_)
    return align_up(cuda::phase_epilogue_backward_scratch_bytes(epilogue_geometry())) + 2 * pooled_bytes() +
           cuda::phase_mma_weight_grad_scratch_bytes(g_);
  return yp_bytes() + wp_bytes() + (input_grad_ ? x_pad_bytes() : 0) +
         align_up(phase_conv_->cudnn_backward_workspace()) +
         cuda::phase_epilogue_backward_scratch_bytes(epilogue_geometry());
}

void FusedPhaseConvEpilogue::choose_algorithms(CudaContext& ctx, const LayerArgs& forward, const LayerArgs& backward) {
  if (fused_forward_) return;
  const Kept k = kept(forward);
  char* fws = static_cast<char*>(forward.workspace);
  LayerArgs f, b;
  f.in = {{k.x_pad, phase_conv_->input_shapes()[0]}};
  f.out = {reinterpret_cast<float*>(fws), phase_conv_->output_shape()};
  f.params = {k.wp};
  f.workspace = fws + yp_bytes();
  if (backward_ && !mma_weight_grad_) {
    char* bws = static_cast<char*>(backward.workspace);
    b.dparams = {reinterpret_cast<float*>(bws + yp_bytes())};
    b.workspace = bws + yp_bytes() + wp_bytes() + (input_grad_ ? x_pad_bytes() : 0);
  }
  phase_conv_->choose_algorithms(ctx, f, b);
}

void FusedPhaseConvEpilogue::forward_cuda(CudaContext& ctx, const LayerArgs& args) {
  const Kept k = kept(args);
  // The TF32 kernels take x rounded once, here; a TF32 cuDNN conv rounds it anyway.
  const bool round_tf32 = !compensated_ && (fused_forward_ || mma_weight_grad_);
  cuda::phase_pad_input(args.in[0].data, k.x_pad, round_tf32, g_, ctx.stream());
  cuda::phase_build_weight(args.params[0], k.wp, g_, ctx.stream());
  const float* bias = conv_->has_bias() ? args.params[1] : nullptr;
  auto* argmax = backward_ ? static_cast<uint8_t*>(args.saved) : nullptr;
  auto* y_at_max = backward_ ? reinterpret_cast<float*>(static_cast<char*>(args.saved) + align_up(numel(output_shape())))
                             : nullptr;
  if (fused_forward_) {
    cuda::phase_fused_forward(k.x_pad, k.wp, bias, args.params.back(), slope1_, slope2_, args.out.data, argmax,
                              y_at_max, compensated_, g_, ctx.stream());
    return;
  }
  float* yp = static_cast<float*>(args.workspace);
  phase_conv_->run_forward(ctx, k.x_pad, k.wp, yp, static_cast<char*>(args.workspace) + yp_bytes(),
                           phase_conv_->cudnn_forward_workspace());
  cuda::phase_epilogue_forward(yp, bias, args.params.back(), slope1_, slope2_, args.out.data, argmax, y_at_max,
                               epilogue_geometry(), ctx.stream());
}

// The epilogue's backward gives dbias, dm and dY: at the argmax only for the
// tensor-core weight gradient, whole (dYp) for cuDNN's. Workspaces as
// backward_workspace_bytes lays them out.
void FusedPhaseConvEpilogue::backward_cuda(CudaContext& ctx, const LayerArgs& args) {
  const Kept k = kept(args);
  char* ws = static_cast<char*>(args.workspace);
  const auto* argmax = static_cast<const uint8_t*>(args.saved);
  const auto* y_at_max =
      reinterpret_cast<const float*>(static_cast<const char*>(args.saved) + align_up(numel(output_shape())));
  cuda::PhaseGradOutputs out;
  out.dbias = conv_->has_bias() ? args.dparams[1] : nullptr;
  out.dm = args.dparams.back();
  if (mma_weight_grad_) {
    char* dy = ws + align_up(cuda::phase_epilogue_backward_scratch_bytes(epilogue_geometry()));
    out.dy_tf32 = reinterpret_cast<uint32_t*>(dy);
    if (compensated_) out.dy_residual = reinterpret_cast<uint32_t*>(dy + pooled_bytes());
    cuda::phase_epilogue_backward(args.dout.data, argmax, y_at_max, args.params.back(), slope1_, slope2_, out, ws,
                                  epilogue_geometry(), ctx.stream());
    cuda::phase_mma_weight_grad(out.dy_tf32, out.dy_residual, k.x_pad, args.dparams[0], dy + 2 * pooled_bytes(), g_,
                                ctx.stream());
    return;
  }
  out.dyp = reinterpret_cast<float*>(ws);
  float* dwp = reinterpret_cast<float*>(ws + yp_bytes());
  float* dx_pad = input_grad_ && args.din[0].data ? reinterpret_cast<float*>(ws + yp_bytes() + wp_bytes()) : nullptr;
  char* cudnn_ws = ws + yp_bytes() + wp_bytes() + (input_grad_ ? x_pad_bytes() : 0);
  const size_t cudnn_bytes = phase_conv_->cudnn_backward_workspace();
  cuda::phase_epilogue_backward(args.dout.data, argmax, y_at_max, args.params.back(), slope1_, slope2_, out,
                                cudnn_ws + align_up(cudnn_bytes), epilogue_geometry(), ctx.stream());
  phase_conv_->run_backward(ctx, k.x_pad, out.dyp, k.wp, dx_pad, false, dwp, cudnn_ws, cudnn_bytes);
  cuda::phase_fold_weight_grad(dwp, args.dparams[0], g_, ctx.stream());
  if (dx_pad) cuda::phase_crop_input_grad(dx_pad, args.din[0].data, args.din_accumulate[0], g_, ctx.stream());
}

void FusedPhaseConvEpilogue::forward_cpu(const LayerArgs&) { fused_layer_has_no_cpu_path(*this); }
void FusedPhaseConvEpilogue::backward_cpu(const LayerArgs&) { fused_layer_has_no_cpu_path(*this); }

}  // namespace anvil
