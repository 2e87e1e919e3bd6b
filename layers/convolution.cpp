#include "layers/convolution.hpp"

#include <cmath>
#include <cstdint>

#include "kernels/cpu/channel.hpp"
#include "kernels/cpu/conv.hpp"
#include "layers/registry.hpp"

#if ANVIL_WITH_CUDA
#include <algorithm>
#include <climits>
#include <cstdio>
#include <functional>
#include <iostream>

#include "engine/src/cuda/context.hpp"
#include "kernels/cuda/bias.hpp"
#include "kernels/cuda/conv_fprop_mma.hpp"
#include "kernels/cuda/conv_wgrad_mma.hpp"
#include "kernels/cuda/tensor_cores.hpp"
#include "layers/cudnn_graph_conv.hpp"
#include "layers/cudnn_util.hpp"
#endif

namespace anvil {

namespace {
std::vector<int64_t> spatial(const Shape& s) { return {s.begin() + 2, s.end()}; }
}  // namespace

Convolution::Convolution(const LayerSpec& spec, const ConvSpec& conv)
    : Layer(spec.type, spec.name, spec.path), spec_(conv) {}

std::vector<ParamSpec> Convolution::param_specs() const {
  // PyTorch: fan_in = weight.size(1) * receptive field; bound 1/sqrt(fan_in) for weight and bias. In
  // double: the shape is checked against the size limits only once it is declared here.
  double fan_in = 1;
  for (int64_t k : spec_.kernel) fan_in *= static_cast<double>(k);
  Shape w_shape =
      spec_.transposed ? Shape{spec_.in_channels, spec_.out_channels} : Shape{spec_.out_channels, spec_.in_channels};
  fan_in *= static_cast<double>(w_shape[1]);
  const double bound = 1.0 / std::sqrt(fan_in);
  w_shape.insert(w_shape.end(), spec_.kernel.begin(), spec_.kernel.end());
  std::vector<ParamSpec> specs = {{param_name("weight"), w_shape, ParamSpec::Init::Uniform, bound}};
  if (spec_.bias) specs.push_back({param_name("bias"), {spec_.out_channels}, ParamSpec::Init::Uniform, bound});
  return specs;
}

Shape Convolution::infer_shape(const std::vector<Shape>& inputs) {
  const Shape& x = inputs[0];
  require_spatial_input(x, spec_.dims);
  if (x[1] != spec_.in_channels)
    fail("in_channels", std::to_string(spec_.in_channels) + " does not match the input's " + std::to_string(x[1]) +
                            " channels " + to_string(x));
  Shape y = {x[0], spec_.out_channels};
  for (int i = 0; i < spec_.dims; ++i) {
    const int64_t in = x[2 + i], effective_k = spec_.dilation[i] * (spec_.kernel[i] - 1) + 1;
    int64_t out;
    if (spec_.transposed) {
      // in <= 2^40 and stride < 2^31: the product could pass 64 bits, so it is bounded first.
      if (in - 1 > kMaxTensorElements / spec_.stride[i])
        fail("stride", "gives an output longer than 2^40 along spatial dim " + std::to_string(i) + " (input " +
                           std::to_string(in) + ", stride " + std::to_string(spec_.stride[i]) + ")");
      out = (in - 1) * spec_.stride[i] - 2 * spec_.padding[i] + effective_k + spec_.output_padding[i];
      if (out < 1)
        fail("padding",
             "leaves no output along spatial dim " + std::to_string(i) + " (size " + std::to_string(out) + ")");
    } else {
      const int64_t padded = in + 2 * spec_.padding[i];
      if (effective_k > padded)
        fail("kernel_size", "kernel (effective size " + std::to_string(effective_k) +
                                ") is larger than the padded input (" + std::to_string(padded) +
                                ") along spatial dim " + std::to_string(i));
      out = (padded - effective_k) / spec_.stride[i] + 1;
    }
    y.push_back(out);
  }
  return y;
}

cpu::ConvGeometry Convolution::geometry() const {
  const Shape& x = input_shapes()[0];
  const Shape& y = output_shape();
  cpu::ConvGeometry g;
  g.n = x[0];
  g.ca = spec_.transposed ? spec_.out_channels : spec_.in_channels;
  g.cb = spec_.transposed ? spec_.in_channels : spec_.out_channels;
  g.a = cpu::lift_dims(spatial(spec_.transposed ? y : x), 1);
  g.b = cpu::lift_dims(spatial(spec_.transposed ? x : y), 1);
  g.k = cpu::lift_dims(spec_.kernel, 1);
  g.stride = cpu::lift_dims(spec_.stride, 1);
  g.pad = cpu::lift_dims(spec_.padding, 0);
  g.dilation = cpu::lift_dims(spec_.dilation, 1);
  return g;
}

// ---- CPU ----

void Convolution::forward_cpu(const LayerArgs& args) {
  const cpu::ConvGeometry g = geometry();
  const float* x = args.in[0].data;
  float* y = args.out.data;
  if (spec_.transposed)
    cpu::conv_backward_data(x, args.params[0], y, g, false);
  else
    cpu::conv_forward(x, args.params[0], y, g);
  const Shape& ys = output_shape();
  if (spec_.bias) cpu::bias_forward(y, args.params[1], ys[0], ys[1], numel(ys) / (ys[0] * ys[1]));
}

void Convolution::backward_cpu(const LayerArgs& args) {
  const cpu::ConvGeometry g = geometry();
  const float *x = args.in[0].data, *dy = args.dout.data, *w = args.params[0];
  float* dx = args.din[0].data;
  if (spec_.transposed) {
    if (dx) cpu::conv_forward(dy, w, dx, g, args.din_accumulate[0]);
    cpu::conv_backward_filter(dy, x, args.dparams[0], g);
  } else {
    if (dx) cpu::conv_backward_data(dy, w, dx, g, args.din_accumulate[0]);
    cpu::conv_backward_filter(x, dy, args.dparams[0], g);
  }
  const Shape& ys = output_shape();
  if (spec_.bias) cpu::bias_backward(dy, args.dparams[1], ys[0], ys[1], numel(ys) / (ys[0] * ys[1]));
}

std::unique_ptr<Layer> create_convolution(const LayerSpec& spec, const ConvSpec& conv) {
  return std::make_unique<Convolution>(spec, conv);
}

#if ANVIL_WITH_CUDA

// ---- CUDA ----

namespace {
enum Op { kForward = 0, kBackwardData = 1, kBackwardFilter = 2, kOpCount = 3 };
const char* const kOpNames[kOpCount] = {"ConvolutionForward", "ConvolutionBackwardData", "ConvolutionBackwardFilter"};
// The rule's bound for the graph API's tensor-core engines under tf32 (products summed per output).
constexpr int64_t kTensorCoreRuleProducts = 128;

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

// cuDNN 9.14's tensor-core engines for backward data never return on a
// geometry with a stride and a dilation above 1 (Find*Ex hung in engine 76 on
// H100 and H200; tests/data/generated_53.json's up7 under tf32). Such an op
// runs cuDNN's FMA algorithms, as under strict fp32.
bool tensor_cores_hang(Op op, const ConvSpec& spec) {
  auto above_one = [](const std::vector<int64_t>& v) {
    return std::any_of(v.begin(), v.end(), [](int64_t x) { return x > 1; });
  };
  return op == kBackwardData && above_one(spec.stride) && above_one(spec.dilation);
}

// A cuDNN algorithm result is usable when it ran, fits the workspace, is
// deterministic where asked and uses no TF32 under strict fp32.
template <class Perf>
bool eligible(const Perf& p, size_t ws_limit, const BuildSettings& s) {
  return p.status == CUDNN_STATUS_SUCCESS && p.memory <= ws_limit &&
         (!s.deterministic || p.determinism == CUDNN_DETERMINISTIC) &&
         (s.precision == Precision::TF32 || p.mathType != CUDNN_TENSOR_OP_MATH);
}

// The workspace to plan for an op: the most any eligible algorithm within the
// limit wants; if none fits the limit, the smallest an eligible one needs (said on stderr).
template <class Perf>
size_t workspace_for(const Perf* perfs, int count, const BuildSettings& s, const std::string& what) {
  size_t most = 0, least = SIZE_MAX;
  bool fits = false;
  for (int i = 0; i < count; ++i) {
    if (!eligible(perfs[i], SIZE_MAX, s)) continue;
    least = std::min(least, perfs[i].memory);
    if (perfs[i].memory <= s.workspace_limit) most = std::max(most, perfs[i].memory), fits = true;
  }
  if (fits || least == SIZE_MAX) return most;
  std::cerr << "anvil: " << what << ": no " << (s.deterministic ? "deterministic " : "")
            << "algorithm fits the workspace limit; using " << (least >> 20) << " MiB\n";
  return least;
}

template <class Perf>
std::string list_results(const Perf* perfs, int count) {
  std::string s;
  for (int i = 0; i < count; ++i)
    s += " [algo " + std::to_string(perfs[i].algo) + ": " + cudnnGetErrorString(perfs[i].status) + ", " +
         std::to_string(perfs[i].memory >> 20) + " MiB, " +
         (perfs[i].determinism == CUDNN_DETERMINISTIC ? "deterministic" : "non-deterministic") + ", math " +
         std::to_string(perfs[i].mathType) + "]";
  return s;
}

template <class Perf>
std::vector<std::pair<int, cudnnMathType_t>> ranking_of(const Perf* perfs, int count) {
  std::vector<std::pair<int, cudnnMathType_t>> out;
  for (int i = 0; i < count; ++i) out.push_back({static_cast<int>(perfs[i].algo), perfs[i].mathType});
  return out;
}

// Find...Ex results come sorted fastest first, and timings vary from run to run.
// By default the choice must not: take the heuristics' first choice among
// those Find confirmed. Autotuned or non-deterministic: the fastest.
template <class Perf>
Perf choose(const Perf* perfs, int count, size_t ws, const BuildSettings& s,
            const std::vector<std::pair<int, cudnnMathType_t>>& ranking, const std::string& what) {
  if (s.deterministic && !s.autotune) {
    for (const auto& [algo, math] : ranking)
      for (int i = 0; i < count; ++i)
        if (static_cast<int>(perfs[i].algo) == algo && perfs[i].mathType == math && eligible(perfs[i], ws, s))
          return perfs[i];
  } else {
    for (int i = 0; i < count; ++i)
      if (eligible(perfs[i], ws, s)) return perfs[i];
  }
  throw Error(what + ": cuDNN offers no " + (s.deterministic ? "deterministic " : "") + "algorithm within " +
              std::to_string(ws >> 20) + " MiB of workspace; it offered:" + list_results(perfs, count));
}
}  // namespace

struct Convolution::Cudnn {
  // The ops that --autotune or a rule (build_cuda) puts on cuDNN's graph API
  // run through it (graph[op]); the rest through the legacy API below. The op
  // that computes dx also has a plan that adds into it (gradient fan-out).
  std::unique_ptr<CudnnGraphConv> graph[kOpCount];
  std::unique_ptr<CudnnGraphConv> graph_accumulate;
  // The forward op as request_forward asked for it, in place of its packed op.
  std::unique_ptr<CudnnGraphConv> channels_last;
  TensorDescriptor a, b;
  FilterDescriptor w;
  ConvolutionDescriptor conv[kOpCount];
  bool used[kOpCount] = {false, false, false};
  size_t workspace[kOpCount] = {0, 0, 0};
  int algo[kOpCount] = {0, 0, 0};
  // The heuristics' ranking (algorithm, math type) per op: a function of the shapes alone.
  std::vector<std::pair<int, cudnnMathType_t>> ranking[kOpCount];
  cudnnMathType_t math[kOpCount] = {CUDNN_DEFAULT_MATH, CUDNN_DEFAULT_MATH, CUDNN_DEFAULT_MATH};
  // An op on one of anvil's tensor-core kernels instead of cuDNN: whether it
  // can, whether it does, and how that was decided. The forward relation
  // (conv_fprop_mma.hpp) and the filter gradient (conv_wgrad_mma.hpp).
  struct AnvilKernel {
    bool candidate = false, used = false;
    std::string choice;
  };
  AnvilKernel fprop_mma, wgrad_mma;
  size_t wgrad_scratch = 0;  // the filter gradient's partials
  // The backward-data relation phase-split: B padded, the combined weight and
  // the combined output in the op's workspace, then the stride-1 conv's own.
  struct PhaseSplit : AnvilKernel {
    cuda::PhaseSplitGeometry g;
    std::unique_ptr<Convolution> conv;  // the stride-1 combined conv
    size_t b_pad = 0, wp = 0, yp = 0;   // bytes, each rounded up to 256
    size_t workspace() const { return b_pad + wp + yp + conv->forward_workspace(); }
  } phase;
  bool chosen = false;
  BuildSettings settings;
  // Each op's: the network's, with strict fp32 math where tensor_cores_hang.
  BuildSettings op_settings[kOpCount];

  // From the heuristics' list: the workspace to plan and the ranking to choose by.
  template <class Perf>
  void plan(Op op, const Perf* perfs, int count, const std::string& where) {
    workspace[op] = workspace_for(perfs, count, op_settings[op], where + " " + kOpNames[op]);
    ranking[op] = ranking_of(perfs, count);
  }
  // From the Find...Ex results: the algorithm and math type to run.
  template <class Perf>
  void pick(Op op, const Perf* perfs, int count, const std::string& where) {
    const Perf best = choose(perfs, count, workspace[op], op_settings[op], ranking[op], where + " " + kOpNames[op]);
    algo[op] = static_cast<int>(best.algo);
    math[op] = best.mathType;
  }
};

Convolution::~Convolution() = default;

void Convolution::build_cuda(CudaContext& ctx, const BuildSettings& settings) {
  cudnn_ = std::make_unique<Cudnn>();
  Cudnn& c = *cudnn_;
  c.settings = settings;
  for (int op = 0; op < kOpCount; ++op) {
    c.op_settings[op] = settings;
    if (tensor_cores_hang(static_cast<Op>(op), spec_)) c.op_settings[op].precision = Precision::FP32;
  }
  const Shape& x = input_shapes()[0];
  const Shape& y = output_shape();
  set_tensor_descriptor(c.a, spec_.transposed ? y : x);
  set_tensor_descriptor(c.b, spec_.transposed ? x : y);
  const Shape w = param_specs()[0].shape;  // a copy: param_specs() returns a temporary
  const std::vector<int> w_dims(w.begin(), w.end());
  ANVIL_CUDNN_CHECK(cudnnSetFilterNdDescriptor(c.w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW,
                                               static_cast<int>(w_dims.size()), w_dims.data()));
  const std::vector<int> pad(spec_.padding.begin(), spec_.padding.end()),
      stride(spec_.stride.begin(), spec_.stride.end()), dil(spec_.dilation.begin(), spec_.dilation.end());
  for (int op = 0; op < kOpCount; ++op) {
    ANVIL_CUDNN_CHECK(cudnnSetConvolutionNdDescriptor(c.conv[op], spec_.dims, pad.data(), stride.data(), dil.data(),
                                                      CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    ANVIL_CUDNN_CHECK(cudnnSetConvolutionMathType(
        c.conv[op], c.op_settings[op].precision == Precision::FP32 ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH));
  }
  // cuDNN must agree that conv(A) has B's shape (output_padding >= stride cannot be expressed).
  std::vector<int> b_dims(spec_.dims + 2);
  ANVIL_CUDNN_CHECK(cudnnGetConvolutionNdForwardOutputDim(c.conv[0], c.a, c.w, spec_.dims + 2, b_dims.data()));
  const Shape& b = spec_.transposed ? x : y;
  if (!std::equal(b.begin(), b.end(), b_dims.begin()))
    throw Error(path() + ": this geometry (output_padding " + join(spec_.output_padding) +
                ") is not supported by the CUDA backend; use --device cpu");

  c.used[spec_.transposed ? kBackwardData : kForward] = runs_forward_;
  if (needs_backward_) {
    c.used[kBackwardFilter] = true;
    if (needs_input_grad_) c.used[spec_.transposed ? kForward : kBackwardData] = true;
  }
  const cpu::ConvGeometry g = geometry();
  const int64_t taps = cpu::volume(g.k);
  // Products summed per output by each op: the forward relation's, the backward data's, the filter gradient's.
  const int64_t products[kOpCount] = {g.ca * taps, g.cb * taps, g.n * cpu::volume(g.b)};
  const ConvGraphGeometry graph_geometry{
      spec_.transposed ? y : x, spec_.transposed ? x : y, w, spec_.padding, spec_.stride, spec_.dilation};
  const CudnnGraphConv::Kind kinds[kOpCount] = {CudnnGraphConv::Kind::Forward, CudnnGraphConv::Kind::BackwardData,
                                                CudnnGraphConv::Kind::BackwardFilter};
  // The forward op as a fused layer asks (request_forward), under tf32:
  // cuDNN's tensor-core kernels work channels-last and, given a packed tensor,
  // transpose it in a pass of their own. The op moves to the graph API, with
  // its first tensor-core engine (autotuned: its fastest eligible one);
  // packed, without the epilogue, where it has none.
  const int forward_op = spec_.transposed ? kBackwardData : kForward;
  const ForwardRequest& r = forward_request_;
  const bool y_alone = !r.x_channels_last && r.epilogue.empty();
  if (r.any() && c.used[forward_op] && c.op_settings[forward_op].precision == Precision::TF32 &&
      (r.epilogue.empty() || !spec_.transposed) && (!y_alone || tries_y_alone())) {
    ConvGraphGeometry asked = graph_geometry;
    (spec_.transposed ? asked.b_channels_last : asked.a_channels_last) = r.x_channels_last;
    (spec_.transposed ? asked.a_channels_last : asked.b_channels_last) = r.y_channels_last;
    asked.w_channels_last = r.x_channels_last;
    try {
      c.channels_last = std::make_unique<CudnnGraphConv>(
          ctx, kinds[forward_op], asked, 0.f, c.op_settings[forward_op],
          settings.autotune ? CudnnGraphConv::Choice::Fastest : CudnnGraphConv::Choice::FirstTensorCore, r.epilogue);
      c.workspace[forward_op] = c.channels_last->workspace();
      c.used[forward_op] = false;
    } catch (const Error&) {
      // no eligible engine within the workspace limit: the packed op as before
    }
  }
  // The filter gradient on anvil's tensor-core kernel where it applies, by
  // rule: always under fp32 (cuDNN's deterministic FMA algorithms measured 3x
  // to 11x slower), and under tf32 when W's row length (the A side's channels
  // x taps) fits one 128-column tile of the kernel, or W has at most 32 rows
  // (the B side's channels: a tile whose warps split k); longer rows of more
  // rows went to cuDNN's TF32 algorithms (docs/performance.md). Autotuned,
  // cuDNN's is planned as well and the faster kept (search_algorithms).
  const bool tensor_cores = cuda::tensor_core_kernels_available();
  c.wgrad_mma.candidate = c.used[kBackwardFilter] && tensor_cores && cuda::conv_mma_weight_grad_supported(g);
  if (c.wgrad_mma.candidate && !settings.autotune) {
    c.wgrad_mma.used = settings.precision == Precision::FP32 || g.ca * cpu::volume(g.k) <= 128 || g.cb <= 32;
    c.used[kBackwardFilter] = !c.wgrad_mma.used;
    c.wgrad_mma.choice = "rule";
  }
  if (c.wgrad_mma.used || (c.wgrad_mma.candidate && settings.autotune))
    c.wgrad_scratch = cuda::conv_mma_weight_grad_scratch_bytes(g);
  // The backward-data relation with a stride (a transposed conv's forward, a
  // conv's input gradient) phase-split: one stride-1 forward conv over s^d x
  // A's channels, then its phases interleaved into A. By rule under
  // deterministic strict fp32, where cuDNN's deterministic backward-data
  // algorithms are slow FMA kernels (docs/performance.md); --autotune times
  // both. Its buffers count against the workspace limit.
  const bool strided = std::any_of(spec_.stride.begin(), spec_.stride.end(), [](int64_t s) { return s > 1; });
  if (c.used[kBackwardData] && strided && settings.phase_split && !phase_split(c.phase.g, true)) {
    auto bytes = [](int64_t count) { return (size_t(count) * sizeof(float) + 255) / 256 * 256; };
    c.phase.conv = phase_split_conv(c.phase.g, name() + ".phase");
    c.phase.b_pad = bytes(numel(c.phase.conv->input_shapes()[0]));
    c.phase.yp = bytes(numel(c.phase.conv->output_shape()));
    c.phase.wp = bytes(numel(c.phase.conv->param_specs()[0].shape));
    // Within the limit (cuDNN's plans only for a combined conv that may run) and int indexing (its kernels').
    const size_t elements = std::max(c.phase.b_pad, c.phase.yp) / sizeof(float);
    if (elements < (size_t(1) << 31) && c.phase.b_pad + c.phase.wp + c.phase.yp <= settings.workspace_limit) {
      c.phase.conv->set_gradient_needs(false, false);
      c.phase.conv->build_cuda(ctx, c.op_settings[kBackwardData]);
      c.phase.candidate = c.phase.workspace() <= settings.workspace_limit;
    }
    if (!c.phase.candidate) c.phase.conv.reset();
  }
  if (c.phase.candidate && !settings.autotune) {
    c.phase.used = c.op_settings[kBackwardData].precision == Precision::FP32 && settings.deterministic;
    c.used[kBackwardData] = !c.phase.used;
    c.phase.choice = "rule";
  }
  // The forward relation (a conv's forward, a transposed conv's input
  // gradient) on anvil's tensor-core kernel (TF32, or 3xTF32 under strict
  // fp32): a candidate of --autotune only. The rule keeps cuDNN's, faster on
  // most layers measured (docs/performance.md).
  c.fprop_mma.candidate = settings.autotune && c.used[kForward] && tensor_cores && cuda::conv_mma_forward_supported(g);
  // Autotuned: the graph API's engines, timed. By rule: under tf32, a 3-D
  // conv's op that sums at least 128 products per output runs the graph
  // API's first tensor-core engine, as the legacy API's pick ran FMA kernels
  // on such layers; the rest the legacy API, as fast or faster on the 2-D
  // layers measured. Under deterministic strict fp32 the forward relation
  // runs the first eligible (FMA) config of the graph API's heuristics, mode
  // B for a 3-D conv and mode A for a 2-D one: on the suite's forwards never
  // slower than the legacy pick beyond noise, and up to 2x faster
  // (docs/performance.md); --nondeterministic keeps the legacy API's fastest
  // measured. Where a rule finds no engine, the op stays on the legacy API.
  // Each op on the legacy API plans its workspace from the heuristics' list
  // (no memory needed yet).
  const int dx_op = spec_.transposed ? kForward : kBackwardData;
  for (int op = 0; op < kOpCount; ++op) {
    using Choice = CudnnGraphConv::Choice;
    const Precision precision = c.op_settings[op].precision;
    const bool tensor_core_rule =
        precision == Precision::TF32 && spec_.dims == 3 && products[op] >= kTensorCoreRuleProducts;
    const bool fp32_forward_rule = precision == Precision::FP32 && settings.deterministic && op == kForward;
    if (!c.used[op] || !(settings.autotune || tensor_core_rule || fp32_forward_rule)) continue;
    const Choice choice = settings.autotune  ? Choice::Fastest
                          : tensor_core_rule ? Choice::FirstTensorCore
                          : spec_.dims == 3  ? Choice::FirstOfModeB
                                             : Choice::FirstOfModeA;
    auto make = [&](float beta) {
      return std::make_unique<CudnnGraphConv>(ctx, kinds[op], graph_geometry, beta, c.op_settings[op], choice);
    };
    try {
      c.graph[op] = make(0.f);
      if (op == dx_op) c.graph_accumulate = make(1.f);
    } catch (const Error& e) {
      if (settings.autotune)
        std::cerr << "anvil: " << path() << " " << kOpNames[op] << ": " << e.what() << "; using the legacy API\n";
      c.graph[op].reset();
      if (op == dx_op) c.graph_accumulate.reset();
    }
    if (c.graph[op]) {
      c.workspace[op] = c.graph[op]->workspace();
      if (c.graph_accumulate && op == dx_op)
        c.workspace[op] = std::max(c.workspace[op], c.graph_accumulate->workspace());
    }
  }
  int n = 0;
  if (c.used[kForward] && !c.graph[kForward]) {
    cudnnConvolutionFwdAlgoPerf_t p[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    ANVIL_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(ctx.cudnn(), c.a, c.w, c.conv[kForward], c.b,
                                                             CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, p));
    c.plan(kForward, p, n, path());
  }
  if (c.used[kBackwardData] && !c.graph[kBackwardData]) {
    cudnnConvolutionBwdDataAlgoPerf_t p[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    ANVIL_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(ctx.cudnn(), c.w, c.b, c.conv[kBackwardData], c.a,
                                                                  CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, p));
    c.plan(kBackwardData, p, n, path());
  }
  if (c.used[kBackwardFilter] && !c.graph[kBackwardFilter]) {
    cudnnConvolutionBwdFilterAlgoPerf_t p[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    ANVIL_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(ctx.cudnn(), c.a, c.b, c.conv[kBackwardFilter], c.w,
                                                                    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n, p));
    c.plan(kBackwardFilter, p, n, path());
  }
}

// An op's workspace: cuDNN's, and for backward data the phase split's where it is a candidate.
size_t Convolution::op_workspace(int op) const {
  const Cudnn& c = *cudnn_;
  return std::max(c.workspace[op], op == kBackwardData && c.phase.candidate ? c.phase.workspace() : size_t{0});
}

size_t Convolution::forward_workspace() const {
  return cudnn_ ? op_workspace(spec_.transposed ? kBackwardData : kForward) : 0;
}

size_t Convolution::backward_workspace() const {
  if (!cudnn_ || !needs_backward_) return 0;
  size_t ws = std::max(cudnn_->workspace[kBackwardFilter], cudnn_->wgrad_scratch);
  if (needs_input_grad_) ws = std::max(ws, op_workspace(spec_.transposed ? kForward : kBackwardData));
  return ws;
}

size_t Convolution::bias_scratch_bytes() const {
  const Shape& y = output_shape();
  return spec_.bias ? cuda::bias_backward_scratch_bytes(y[0], y[1], numel(y) / (y[0] * y[1])) : 0;
}

std::vector<BufferRequest> Convolution::buffers(Device device) const {
  if (device != Device::Cuda) return {};
  return {{"conv_forward", forward_workspace(), BufferLife::Forward},
          {"conv_backward", backward_workspace(), BufferLife::Backward},
          {"bias_scratch", needs_backward_ ? bias_scratch_bytes() : 0, BufferLife::Backward}};
}

enum ConvBuffer { kForwardWorkspace, kBackwardWorkspace, kBiasScratch };

void Convolution::choose_algorithms(CudaContext& ctx, const LayerArgs& fwd, const LayerArgs& bwd) {
  search_algorithms(ctx, fwd.in[0].data, fwd.out.data, fwd.params[0], bwd.dparams.empty() ? nullptr : bwd.dparams[0],
                    fwd.buffers[kForwardWorkspace], bwd.buffers[kBackwardWorkspace]);
}

void Convolution::search_algorithms(CudaContext& ctx, float* x, float* y, const float* w, float* dw, void* forward_ws,
                                    void* backward_ws, const std::vector<const float*>& epilogue_operands) {
  Cudnn& c = *cudnn_;
  float* a = spec_.transposed ? y : x;
  float* b = spec_.transposed ? x : y;
  const std::string where = path() + " (" + name() + ")";
  int n = 0;
  // Ops used in the backward pass search inside the backward workspace.
  auto ws_for = [&](Op op) { return op == (spec_.transposed ? kBackwardData : kForward) ? forward_ws : backward_ws; };
  // Graph-API ops (autotune only) time their candidates.
  void* const graph_w[kOpCount] = {const_cast<float*>(w), const_cast<float*>(w), dw};
  for (int op = 0; op < kOpCount; ++op)
    if (c.graph[op]) c.graph[op]->choose_fastest(ctx, a, b, graph_w[op], ws_for(static_cast<Op>(op)));
  if (c.channels_last) c.channels_last->choose_fastest(ctx, a, b, const_cast<float*>(w), forward_ws, epilogue_operands);
  if (c.phase.conv) {
    const PhaseBuffers p = phase_buffers(ws_for(kBackwardData));
    c.phase.conv->search_algorithms(ctx, p.b_pad, p.yp, p.wp, nullptr, p.conv_ws, nullptr);
  }
  if (c.graph_accumulate) {
    const int dx_op = spec_.transposed ? kForward : kBackwardData;
    c.graph_accumulate->choose_fastest(ctx, a, b, graph_w[dx_op], ws_for(static_cast<Op>(dx_op)));
  }
  if (c.used[kForward] && !c.graph[kForward]) {
    cudnnConvolutionFwdAlgoPerf_t p[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    ANVIL_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(ctx.cudnn(), c.a, a, c.w, w, c.conv[kForward], c.b, b,
                                                             CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, p, ws_for(kForward),
                                                             c.workspace[kForward]));
    c.pick(kForward, p, n, where);
  }
  if (c.used[kBackwardData] && !c.graph[kBackwardData]) {
    cudnnConvolutionBwdDataAlgoPerf_t p[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    ANVIL_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(ctx.cudnn(), c.w, w, c.b, b, c.conv[kBackwardData],
                                                                  c.a, a, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, p,
                                                                  ws_for(kBackwardData), c.workspace[kBackwardData]));
    c.pick(kBackwardData, p, n, where);
  }
  if (c.used[kBackwardFilter] && !c.graph[kBackwardFilter]) {
    cudnnConvolutionBwdFilterAlgoPerf_t p[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    ANVIL_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
        ctx.cudnn(), c.a, a, c.b, b, c.conv[kBackwardFilter], c.w, dw, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n, p,
        ws_for(kBackwardFilter), c.workspace[kBackwardFilter]));
    c.pick(kBackwardFilter, p, n, where);
  }
  for (int op = 0; op < kOpCount; ++op)
    if (c.used[op]) ANVIL_CUDNN_CHECK(cudnnSetConvolutionMathType(c.conv[op], c.math[op]));
  // Autotuned: each of anvil's kernels against cuDNN's pick, each once after a warm-up; the faster stays.
  auto tune = [&](Cudnn::AnvilKernel& kernel, const char* label, const std::function<void()>& op) {
    auto time = [&](bool anvil) {
      kernel.used = anvil;
      op();
      return ctx.time_ms(op);
    };
    const double anvil_ms = time(true), cudnn_ms = time(false);
    kernel.used = anvil_ms <= cudnn_ms;
    char text[96];
    std::snprintf(text, sizeof text, "autotuned: %s %.3f ms, cuDNN %.3f ms", label, anvil_ms, cudnn_ms);
    kernel.choice = text;
  };
  if (c.settings.autotune) {
    if (c.wgrad_mma.candidate) tune(c.wgrad_mma, "anvil", [&] { weight_grad(ctx, a, b, dw, backward_ws); });
    if (c.fprop_mma.candidate)
      tune(c.fprop_mma, "anvil", [&] { forward_relation(ctx, a, w, b, false, ws_for(kForward)); });
    if (c.phase.candidate)
      tune(c.phase, "phase split", [&] { backward_data_relation(ctx, b, w, a, false, ws_for(kBackwardData)); });
  }
  c.chosen = true;
}

// Along one dim, output o = q * s + r (phase r) of A receives B[i] * w[t]
// where o = i * s - p + t. With c = r + p = a * s + b, the taps of phase r
// are t = b + j * s (t < k), reading B[q + a - j]: offsets lo_r = a - taps_r
// + 1 .. a. Aligned phases share one window: the offsets over all phases span
// [m0, m1], a stride-1 kernel of kp = m1 - m0 + 1 taps over B padded by -m0 in
// front. Shifted phases each read the combined output at q + lo_r - m0, so kp
// is only the most taps of a phase (k4 s2: 2 instead of 3; where it saves
// none, the dim stays aligned). Each phase has q = ceil(out / s) outputs (the
// last may fall past A: computed, never read); the end padding covers them in
// both forms, so one padded B serves both.
std::optional<std::string> Convolution::phase_split(cuda::PhaseSplitGeometry& g, bool shift_phases) const {
  const cpu::ConvGeometry c = geometry();  // lifted to 3 dims: a lifted dim is one phase of one tap
  g = cuda::PhaseSplitGeometry{};
  g.n = c.n;
  g.cin = c.cb;
  g.cout = c.ca;
  for (int d = 0; d < 3; ++d) {
    const int64_t k = c.k[d], s = c.stride[d], p = c.pad[d], in = c.b[d], out = c.a[d];
    if (c.dilation[d] != 1) return "dilated";
    if (k > cuda::kMaxKernel) return "kernel larger than " + std::to_string(cuda::kMaxKernel);
    // s phases of at least one tap each: a larger stride never fits (and is checked before the tables).
    if (s > cuda::kMaxPhaseTaps) return "too many taps per phase";
    std::vector<int64_t> a(s), b(s), taps(s);
    int64_t m0 = INT64_MAX, m1 = INT64_MIN, most_taps = 0;
    for (int64_t r = 0; r < s; ++r) {
      a[r] = (r + p) / s;
      b[r] = (r + p) % s;
      taps[r] = b[r] < k ? (k - b[r] + s - 1) / s : 0;
      if (taps[r] == 0) continue;
      m0 = std::min(m0, a[r] - (taps[r] - 1));
      m1 = std::max(m1, a[r]);
      most_taps = std::max(most_taps, taps[r]);
    }
    if (m0 == INT64_MAX || m0 > 0) return "a phase without taps";
    const int64_t aligned_kp = m1 - m0 + 1, q = (out + s - 1) / s;
    if (s * aligned_kp > cuda::kMaxPhaseTaps) return "too many taps per phase";
    const bool shifting_pays = most_taps < aligned_kp;
    const bool shifted = shift_phases && shifting_pays;
    int64_t reach = aligned_kp - 1;  // B_pad positions read past q, in either form
    for (int64_t r = 0; r < s; ++r)
      if (taps[r] > 0 && shifting_pays) reach = std::max(reach, a[r] - (taps[r] - 1) - m0 + most_taps - 1);
    g.in[d] = in;
    g.front[d] = -m0;
    g.end[d] = q + reach - g.front[d] - in;
    if (g.end[d] < 0) return "the padding crops more than a phase";
    g.k[d] = k;
    g.kp[d] = shifted ? most_taps : aligned_kp;
    g.s[d] = s;
    g.q[d] = q;
    g.out[d] = out;
    for (int64_t u = 0; u < s * g.kp[d]; ++u) g.tap[d][u] = -1;
    for (int64_t r = 0; r < s; ++r) {
      const int64_t first = shifted ? a[r] - (taps[r] - 1) : m0;  // the B offset of combined tap 0
      if (taps[r] > 0) g.shift[d][r] = static_cast<int8_t>(first - m0);
      for (int64_t j = 0; j < taps[r]; ++j) {
        const int64_t t = b[r] + j * s, u = a[r] - j - first;
        g.tap[d][r * g.kp[d] + u] = static_cast<int8_t>(t);
        g.phase_of[d][t] = static_cast<int8_t>(r);
        g.combined_of[d][t] = static_cast<int8_t>(u);
      }
    }
  }
  if (cuda::phase_count(g) > 256) return "more than 256 phases";
  return std::nullopt;
}

std::unique_ptr<Convolution> Convolution::phase_split_conv(const cuda::PhaseSplitGeometry& g,
                                                           const std::string& name) const {
  const int dims = spec_.dims;
  ConvSpec combined;
  combined.dims = dims;
  combined.in_channels = g.cin;
  combined.out_channels = cuda::phase_count(g) * g.cout;
  combined.kernel.assign(g.kp.end() - dims, g.kp.end());
  combined.stride.assign(dims, 1);
  combined.padding.assign(dims, 0);
  combined.output_padding.assign(dims, 0);
  combined.dilation.assign(dims, 1);
  combined.bias = false;
  auto conv = std::make_unique<Convolution>(LayerSpec{type(), name, path(), {}, combined}, combined);
  Shape b_pad = {g.n, g.cin};
  for (int d = 3 - dims; d < 3; ++d) b_pad.push_back(g.in[d] + g.front[d] + g.end[d]);
  conv->setup({b_pad});
  return conv;
}

bool Convolution::tries_y_alone() const {
  const cpu::ConvGeometry g = geometry();
  return (spec_.transposed ? g.cb : g.ca) * cpu::volume(g.k) >= kTensorCoreRuleProducts;
}

bool Convolution::forward_request_granted() const { return cudnn_ && cudnn_->channels_last; }

std::string Convolution::describe_cuda() const {
  if (!cudnn_ || !cudnn_->chosen) return "";
  std::string s;
  if (cudnn_->channels_last)
    s = std::string(kOpNames[spec_.transposed ? kBackwardData : kForward]) + " " + cudnn_->channels_last->describe() +
        (forward_request_.x_channels_last ? ", x channels-last" : "") +
        (forward_request_.y_channels_last ? ", Y channels-last" : "") +
        (forward_request_.epilogue.empty() ? "" : ", the epilogue in the conv's kernel");
  for (int op = 0; op < kOpCount; ++op) {
    const Cudnn::AnvilKernel* anvil = op == kForward          ? &cudnn_->fprop_mma
                                      : op == kBackwardFilter ? &cudnn_->wgrad_mma
                                                              : &cudnn_->phase;
    const std::string choice = !anvil->choice.empty() ? ", " + anvil->choice : "";
    if (anvil->used && op == kBackwardData) {
      const Cudnn::PhaseSplit& p = cudnn_->phase;
      s += std::string(s.empty() ? "" : "; ") + kOpNames[op] + " phase-split (" +
           std::to_string(cuda::phase_count(p.g)) + " phases, one stride-1 " + p.conv->describe_cuda() + choice + ")";
      continue;
    }
    if (anvil->used) {
      s += std::string(s.empty() ? "" : "; ") + kOpNames[op] + " anvil tensor cores (" +
           (cudnn_->settings.precision == Precision::FP32 ? "3xTF32" : "TF32") + choice + ")";
      continue;
    }
    if (!cudnn_->used[op]) continue;
    const std::string why_fma =  // op_settings differ from the network's only by tensor_cores_hang
        cudnn_->op_settings[op].precision != cudnn_->settings.precision
            ? " (no tensor cores: cuDNN's tensor-core engines hang at this stride and dilation)"
            : "";
    if (cudnn_->graph[op]) {
      s += std::string(s.empty() ? "" : "; ") + kOpNames[op] + " " + cudnn_->graph[op]->describe() + choice + why_fma;
      continue;
    }
    const cudnnMathType_t m = cudnn_->math[op];
    s += std::string(s.empty() ? "" : "; ") + kOpNames[op] + " algo " + std::to_string(cudnn_->algo[op]) + " (" +
         (m == CUDNN_TENSOR_OP_MATH ? "tensor ops"
          : m == CUDNN_FMA_MATH     ? "fma"
                                    : "default math") +
         ", ws " + std::to_string(cudnn_->workspace[op] >> 10) + " KiB" + choice + ")" + why_fma;
  }
  return s;
}

void Convolution::run_forward(CudaContext& ctx, const float* x, const float* w, float* y, void* ws,
                              const std::vector<const float*>& epilogue_operands) {
  if (cudnn_->channels_last)
    cudnn_->channels_last->run(ctx, spec_.transposed ? y : x, spec_.transposed ? x : y, w, ws, epilogue_operands);
  else if (spec_.transposed)
    backward_data_relation(ctx, x, w, y, false, ws);  // y is A, x is B
  else
    forward_relation(ctx, x, w, y, false, ws);
}

void Convolution::run_backward(CudaContext& ctx, const float* x, const float* dy, const float* w, float* dx,
                               bool accumulate, float* dw, void* ws) {
  if (dx) {
    if (spec_.transposed)
      forward_relation(ctx, dy, w, dx, accumulate, ws);  // dy is A, dx is B
    else
      backward_data_relation(ctx, dy, w, dx, accumulate, ws);
  }
  // A is the input side: dy for a transposed conv, else x.
  weight_grad(ctx, spec_.transposed ? dy : x, spec_.transposed ? x : dy, dw, ws);
}

void Convolution::forward_relation(CudaContext& ctx, const float* a, const float* w, float* b, bool accumulate,
                                   void* ws) {
  Cudnn& c = *cudnn_;
  if (c.fprop_mma.used) {
    cuda::conv_mma_forward(a, w, b, accumulate, c.settings.precision == Precision::FP32, geometry(), ctx.stream());
    return;
  }
  if (c.graph[kForward]) {
    (accumulate ? *c.graph_accumulate : *c.graph[kForward]).run(ctx, a, b, w, ws);
    return;
  }
  const float one = 1.f, zero = 0.f;
  ANVIL_CUDNN_CHECK(cudnnConvolutionForward(ctx.cudnn(), &one, c.a, a, c.w, w, c.conv[kForward],
                                            static_cast<cudnnConvolutionFwdAlgo_t>(c.algo[kForward]), ws,
                                            c.workspace[kForward], accumulate ? &one : &zero, c.b, b));
}

Convolution::PhaseBuffers Convolution::phase_buffers(void* ws) const {
  const Cudnn::PhaseSplit& p = cudnn_->phase;
  char* at = static_cast<char*>(ws);
  return {reinterpret_cast<float*>(at), reinterpret_cast<float*>(at + p.b_pad),
          reinterpret_cast<float*>(at + p.b_pad + p.wp), at + p.b_pad + p.wp + p.yp};
}

void Convolution::backward_data_relation(CudaContext& ctx, const float* b, const float* w, float* a, bool accumulate,
                                         void* ws) {
  Cudnn& c = *cudnn_;
  if (c.phase.used) {
    const PhaseBuffers p = phase_buffers(ws);
    cuda::phase_pad_input(b, p.b_pad, false, c.phase.g, ctx.stream());
    cuda::phase_build_weight(w, p.wp, c.phase.g, ctx.stream());
    c.phase.conv->run_forward(ctx, p.b_pad, p.wp, p.yp, p.conv_ws);
    cuda::phase_interleave_output(p.yp, a, accumulate, c.phase.g, ctx.stream());
    return;
  }
  if (c.graph[kBackwardData]) {
    (accumulate ? *c.graph_accumulate : *c.graph[kBackwardData]).run(ctx, a, b, w, ws);
    return;
  }
  const float one = 1.f, zero = 0.f;
  ANVIL_CUDNN_CHECK(cudnnConvolutionBackwardData(ctx.cudnn(), &one, c.w, w, c.b, b, c.conv[kBackwardData],
                                                 static_cast<cudnnConvolutionBwdDataAlgo_t>(c.algo[kBackwardData]), ws,
                                                 c.workspace[kBackwardData], accumulate ? &one : &zero, c.a, a));
}

void Convolution::weight_grad(CudaContext& ctx, const float* a, const float* b, float* dw, void* ws) {
  Cudnn& c = *cudnn_;
  if (c.wgrad_mma.used) {
    cuda::conv_mma_weight_grad(a, b, dw, ws, c.settings.precision == Precision::FP32, geometry(), ctx.stream());
    return;
  }
  if (c.graph[kBackwardFilter]) {
    c.graph[kBackwardFilter]->run(ctx, a, b, dw, ws);
    return;
  }
  const float one = 1.f, zero = 0.f;
  ANVIL_CUDNN_CHECK(
      cudnnConvolutionBackwardFilter(ctx.cudnn(), &one, c.a, a, c.b, b, c.conv[kBackwardFilter],
                                     static_cast<cudnnConvolutionBwdFilterAlgo_t>(c.algo[kBackwardFilter]), ws,
                                     c.workspace[kBackwardFilter], &zero, c.w, dw));
}

void Convolution::forward_cuda(CudaContext& ctx, const LayerArgs& args) {
  run_forward(ctx, args.in[0].data, args.params[0], args.out.data, args.buffers[kForwardWorkspace]);
  const Shape& y = output_shape();
  if (spec_.bias) cuda::bias_forward(args.out.data, args.params[1], y[0], y[1], numel(y) / (y[0] * y[1]), ctx.stream());
}

void Convolution::backward_cuda(CudaContext& ctx, const LayerArgs& args) {
  run_backward(ctx, args.in[0].data, args.dout.data, args.params[0], args.din[0].data, args.din_accumulate[0],
               args.dparams[0], args.buffers[kBackwardWorkspace]);
  const Shape& y = output_shape();
  if (spec_.bias)
    cuda::bias_backward(args.dout.data, args.dparams[1], y[0], y[1], numel(y) / (y[0] * y[1]),
                        args.buffers[kBiasScratch], ctx.stream());
}

#endif  // ANVIL_WITH_CUDA

}  // namespace anvil
