#include "layers/cudnn_graph_conv.hpp"

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "anvil/error.hpp"
#include "engine/src/cuda/check.hpp"
#include "engine/src/cuda/context.hpp"
#include "layers/cudnn_util.hpp"

namespace anvil {

size_t ConvGraphEpilogue::operands() const {
  size_t n = bias ? 1 : 0;
  for (const Op& op : ops) n += op.scale ? 1 : 0;
  return n;
}

namespace {

constexpr int kTimedRuns = 2;       // per candidate, after one untimed run
constexpr int64_t kAlignment = 16;  // every anvil buffer starts on at least 16 bytes
enum Uid : int64_t { kA = 1, kB = 2, kW = 3, kFirstOperand = 100, kFirstVirtual = 200 };

// An owned backend descriptor.
class Backend {
 public:
  explicit Backend(cudnnBackendDescriptorType_t type) { ANVIL_CUDNN_CHECK(cudnnBackendCreateDescriptor(type, &d_)); }
  ~Backend() {
    if (d_ != nullptr) cudnnBackendDestroyDescriptor(d_);
  }
  Backend(Backend&& other) noexcept : d_(other.d_) { other.d_ = nullptr; }
  Backend& operator=(Backend&& other) noexcept {
    std::swap(d_, other.d_);
    return *this;
  }
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  cudnnBackendDescriptor_t get() const { return d_; }
  cudnnBackendDescriptor_t* address() { return &d_; }
  void set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count, const void* values) {
    ANVIL_CUDNN_CHECK(cudnnBackendSetAttribute(d_, name, type, count, values));
  }
  void set(cudnnBackendAttributeName_t name, const Backend& other) {
    cudnnBackendDescriptor_t d = other.get();
    set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &d);
  }
  void set(cudnnBackendAttributeName_t name, const std::vector<int64_t>& values) {
    set(name, CUDNN_TYPE_INT64, static_cast<int64_t>(values.size()), values.data());
  }
  void set(cudnnBackendAttributeName_t name, const std::vector<Backend>& others) {
    std::vector<cudnnBackendDescriptor_t> raw;
    for (const Backend& other : others) raw.push_back(other.get());
    set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(raw.size()), raw.data());
  }
  void finalize() { ANVIL_CUDNN_CHECK(cudnnBackendFinalize(d_)); }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

// The handle attributes are deprecated in cuDNN 9 in favour of device
// properties, but remain the documented way to bind a graph and a plan to a
// handle (and its stream) on every cuDNN 9 release.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
constexpr cudnnBackendAttributeName_t kGraphHandle = CUDNN_ATTR_OPERATIONGRAPH_HANDLE;
constexpr cudnnBackendAttributeName_t kPlanHandle = CUDNN_ATTR_EXECUTION_PLAN_HANDLE;
#pragma GCC diagnostic pop

// Packed: (N, C, spatial...) row-major. Channels-last: C is the innermost axis, then the spatial axes, then N.
// A virtual tensor passes between a graph's ops and never reaches memory.
Backend tensor(int64_t uid, const std::vector<int64_t>& dims, bool channels_last = false, bool is_virtual = false) {
  const std::vector<int64_t> strides = layout_strides(dims, channels_last);
  Backend t(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  const cudnnDataType_t type = CUDNN_DATA_FLOAT;
  t.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
  t.set(CUDNN_ATTR_TENSOR_DIMENSIONS, dims);
  t.set(CUDNN_ATTR_TENSOR_STRIDES, strides);
  t.set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
  t.set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &kAlignment);
  t.set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
  t.finalize();
  return t;
}

// y = x <mode> b (b null: a unary mode), computed in float.
Backend pointwise_op(cudnnPointwiseMode_t mode, const Backend& x, const Backend* b, const Backend& y,
                     double relu_slope = 0) {
  Backend pw(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
  const cudnnDataType_t type = CUDNN_DATA_FLOAT;
  pw.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
  pw.set(CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &type);
  // relu is RELU_FWD as it stands (max(x, 0)); a leaky_relu sets the slope below 0.
  if (relu_slope != 0) pw.set(CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP_SLOPE, CUDNN_TYPE_DOUBLE, 1, &relu_slope);
  pw.finalize();
  Backend op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
  op.set(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw);
  op.set(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
  if (b) op.set(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b);
  op.set(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
  op.finalize();
  return op;
}

cudnnPointwiseMode_t activation_mode(PointwiseOp op) {
  switch (op) {
    case PointwiseOp::Sigmoid: return CUDNN_POINTWISE_SIGMOID_FWD;
    case PointwiseOp::Tanh: return CUDNN_POINTWISE_TANH_FWD;
    case PointwiseOp::LeakyRelu: break;
  }
  return CUDNN_POINTWISE_RELU_FWD;
}

Backend convolution(const ConvGraphGeometry& g) {
  Backend c(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
  const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  const int64_t dims = static_cast<int64_t>(g.padding.size());
  c.set(CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
  c.set(CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
  c.set(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &dims);
  c.set(CUDNN_ATTR_CONVOLUTION_DILATIONS, g.dilation);
  c.set(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, g.stride);
  c.set(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, g.padding);
  c.set(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, g.padding);
  c.finalize();
  return c;
}

struct OpAttributes {
  cudnnBackendDescriptorType_t type;
  cudnnBackendAttributeName_t a, b, w, conv, alpha, beta;
};

OpAttributes attributes_of(CudnnGraphConv::Kind kind) {
  switch (kind) {
    case CudnnGraphConv::Kind::Forward:
      return {CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA};
    case CudnnGraphConv::Kind::BackwardData:
      return {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA};
    case CudnnGraphConv::Kind::BackwardFilter: break;
  }
  return {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
          CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
          CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
          CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
          CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
          CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
          CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA};
}

struct Plan {
  Backend plan;
  int64_t engine = -1;
  std::string config{};  // where the heuristics list it: "A3" (mode A's fourth) or "F0" (the fallback list's first)
  size_t workspace = 0;
  bool tensor_cores = false;
};

// Whether the engine of this config may run here, and its index and tensor-core use.
bool eligible(cudnnBackendDescriptor_t config, const BuildSettings& s, int64_t& engine, bool& tensor_cores) {
  Backend e(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
  int64_t n = 0;
  if (cudnnBackendGetAttribute(config, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n,
                               e.address()) != CUDNN_STATUS_SUCCESS)
    return false;
  cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
  int64_t count = 0;
  if (cudnnBackendGetAttribute(e.get(), CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                               CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &count, notes) != CUDNN_STATUS_SUCCESS)
    return false;
  cudnnBackendGetAttribute(e.get(), CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &engine);
  tensor_cores = false;
  for (int64_t i = 0; i < count; ++i) {
    switch (notes[i]) {
      case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS:
      case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION: return false;
      case CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC:
        if (s.deterministic) return false;
        break;
      case CUDNN_NUMERICAL_NOTE_TENSOR_CORE:
        if (s.precision == Precision::FP32) return false;  // TF32
        tensor_cores = true;
        break;
      default: break;
    }
  }
  return true;
}

// A config's identity: its engine and its knob choices. The heuristics list
// one engine several times with other knobs (tile sizes, for one), and those
// can differ by a quarter in time (relu_avgpool_3d's forward, H200). Empty
// where cuDNN does not answer: the config then counts as unlike any other
// (timed, never merged away).
std::string config_key(cudnnBackendDescriptor_t config, int64_t engine) {
  std::vector<Backend> choices;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int i = 0; i < CUDNN_KNOB_TYPE_COUNTS; ++i) {
    choices.emplace_back(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR);
    raw.push_back(choices.back().get());
  }
  int64_t count = 0, n = 0;
  if (cudnnBackendGetAttribute(config, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                               CUDNN_KNOB_TYPE_COUNTS, &count, raw.data()) != CUDNN_STATUS_SUCCESS)
    return {};
  std::vector<std::pair<int64_t, int64_t>> knobs;
  for (int64_t i = 0; i < std::min<int64_t>(count, CUDNN_KNOB_TYPE_COUNTS); ++i) {
    cudnnBackendKnobType_t type{};
    int64_t value = 0;
    if (cudnnBackendGetAttribute(raw[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &n, &type) !=
            CUDNN_STATUS_SUCCESS ||
        cudnnBackendGetAttribute(raw[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &n, &value) !=
            CUDNN_STATUS_SUCCESS)
      return {};
    knobs.emplace_back(static_cast<int64_t>(type), value);
  }
  std::sort(knobs.begin(), knobs.end());
  std::string key = std::to_string(engine);
  for (const auto& [type, value] : knobs) key += " " + std::to_string(type) + "=" + std::to_string(value);
  return key;
}

// The engine configs the heuristics of this mode list for a finalized graph,
// best first; none where the mode does not take this graph.
std::vector<Backend> engine_configs(const Backend& graph, cudnnBackendHeurMode_t mode) {
  Backend heuristics(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  heuristics.set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
  heuristics.set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
  int64_t count = 0;
  if (cudnnBackendFinalize(heuristics.get()) != CUDNN_STATUS_SUCCESS ||
      cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                               &count, nullptr) != CUDNN_STATUS_SUCCESS)
    return {};
  std::vector<Backend> configs;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < count; ++i) {
    configs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    raw.push_back(configs.back().get());
  }
  if (cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count,
                               &count, raw.data()) != CUDNN_STATUS_SUCCESS)
    return {};
  configs.erase(configs.begin() + std::clamp<int64_t>(count, 0, static_cast<int64_t>(configs.size())), configs.end());
  return configs;
}

}  // namespace

struct CudnnGraphConv::Plans {
  Backend graph{CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR};
  std::vector<Plan> candidates;  // heuristics order; after choose_fastest the fastest first
  Choice choice = Choice::Fastest;
  bool timed = false;
};

CudnnGraphConv::CudnnGraphConv(CudaContext& ctx, Kind kind, const ConvGraphGeometry& g, float beta,
                               const BuildSettings& settings, Choice choice, const ConvGraphEpilogue& epilogue)
    : plans_(std::make_unique<Plans>()), operand_count_(epilogue.operands()) {
  if (!epilogue.empty() && (kind != Kind::Forward || beta != 0.f))
    throw Error("internal error: an epilogue is fused only into a forward conv that overwrites its output");
  const OpAttributes at = attributes_of(kind);
  const Backend a = tensor(kA, g.a, g.a_channels_last), w = tensor(kW, g.w, g.w_channels_last);
  // With an epilogue, the conv's output and each op's but the last are virtual: the last writes B.
  const size_t steps = (epilogue.bias ? 1 : 0) + epilogue.ops.size();
  size_t step = 0;
  int64_t next_virtual = kFirstVirtual, next_operand = kFirstOperand;
  auto output = [&] {
    return ++step > steps ? tensor(kB, g.b, g.b_channels_last) : tensor(next_virtual++, g.b, g.b_channels_last, true);
  };
  Backend current = output();
  const Backend conv = convolution(g);
  Backend op(at.type);
  const float alpha = 1.f;
  op.set(at.a, a);
  op.set(at.b, current);
  op.set(at.w, w);
  op.set(at.conv, conv);
  op.set(at.alpha, CUDNN_TYPE_FLOAT, 1, &alpha);
  op.set(at.beta, CUDNN_TYPE_FLOAT, 1, &beta);
  op.finalize();
  std::vector<Backend> ops;
  ops.push_back(std::move(op));
  std::vector<int64_t> channel_dims(g.b.size(), 1);  // (1, C, 1...): one value a channel, broadcast
  channel_dims[1] = g.b[1];
  auto append = [&](cudnnPointwiseMode_t mode, bool binary, double slope) {
    Backend next = output();
    if (binary) {
      const Backend operand = tensor(next_operand++, channel_dims, g.b_channels_last);
      ops.push_back(pointwise_op(mode, current, &operand, next, slope));
    } else {
      ops.push_back(pointwise_op(mode, current, nullptr, next, slope));
    }
    current = std::move(next);
  };
  if (epilogue.bias) append(CUDNN_POINTWISE_ADD, true, 0);
  for (const ConvGraphEpilogue::Op& e : epilogue.ops)
    append(e.scale ? CUDNN_POINTWISE_MUL : activation_mode(e.activation), e.scale,
           e.scale || e.activation != PointwiseOp::LeakyRelu ? 0 : e.param);

  cudnnHandle_t handle = ctx.cudnn();
  Plans& p = *plans_;
  p.choice = choice;
  p.graph.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, ops);
  p.graph.set(kGraphHandle, CUDNN_TYPE_HANDLE, 1, &handle);
  p.graph.finalize();

  // Every eligible config of the two lists PyTorch's benchmark mode times too: the heuristics'
  // ranking (mode A) and the fallback list, each engine with each of its listed knob settings once.
  // The FirstOf rules take one heuristics mode alone (mode B ranks other configs first on some layers).
  std::vector<std::pair<cudnnBackendHeurMode_t, const char*>> lists = {{CUDNN_HEUR_MODE_A, "A"},
                                                                       {CUDNN_HEUR_MODE_FALLBACK, "F"}};
  if (choice == Choice::FirstOfModeA) lists = {{CUDNN_HEUR_MODE_A, "A"}};
  if (choice == Choice::FirstOfModeB) lists = {{CUDNN_HEUR_MODE_B, "B"}};
  std::vector<std::pair<std::string, Backend>> configs;
  for (const auto& [mode, letter] : lists) {
    std::vector<Backend> listed = engine_configs(p.graph, mode);
    for (size_t i = 0; i < listed.size(); ++i) configs.emplace_back(letter + std::to_string(i), std::move(listed[i]));
  }
  std::vector<std::string> seen;
  for (auto& [where, config] : configs) {
    Plan plan{Backend(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)};
    cudnnBackendDescriptor_t raw = config.get();
    if (!eligible(raw, settings, plan.engine, plan.tensor_cores)) continue;
    if (choice == Choice::FirstTensorCore && !plan.tensor_cores) continue;
    std::string key = config_key(raw, plan.engine);
    if (!key.empty() && std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
    plan.plan.set(kPlanHandle, CUDNN_TYPE_HANDLE, 1, &handle);
    plan.plan.set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
    if (cudnnBackendFinalize(plan.plan.get()) != CUDNN_STATUS_SUCCESS) continue;  // not for these shapes
    int64_t bytes = 0, n = 0;
    ANVIL_CUDNN_CHECK(cudnnBackendGetAttribute(plan.plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                               CUDNN_TYPE_INT64, 1, &n, &bytes));
    if (bytes < 0 || static_cast<size_t>(bytes) > settings.workspace_limit) continue;
    plan.workspace = static_cast<size_t>(bytes);
    plan.config = where;
    seen.push_back(std::move(key));
    p.candidates.push_back(std::move(plan));
    if (choice != Choice::Fastest) break;  // the rule keeps this one: build no more plans
  }
  if (p.candidates.empty())
    throw Error(std::string("cuDNN's graph API offers no eligible ") +
                (choice == Choice::FirstTensorCore ? "tensor-core " : "") + "engine for this convolution within " +
                std::to_string(settings.workspace_limit >> 20) + " MiB of workspace");
}

CudnnGraphConv::~CudnnGraphConv() = default;

size_t CudnnGraphConv::workspace() const {
  size_t most = 0;
  for (const Plan& plan : plans_->candidates) most = std::max(most, plan.workspace);
  return most;
}

void CudnnGraphConv::run(CudaContext& ctx, const void* a, const void* b, const void* w, void* workspace,
                         const std::vector<const float*>& operands) const {
  if (operands.size() != operand_count_)
    throw Error("internal error: a graph conv run with " + std::to_string(operands.size()) + " operands, not " +
                std::to_string(operand_count_));
  std::vector<void*> pointers = {const_cast<void*>(a), const_cast<void*>(b), const_cast<void*>(w)};
  std::vector<int64_t> uids = {kA, kB, kW};
  for (size_t i = 0; i < operands.size(); ++i) {
    pointers.push_back(const_cast<float*>(operands[i]));
    uids.push_back(kFirstOperand + static_cast<int64_t>(i));
  }
  Backend pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  pack.set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, static_cast<int64_t>(pointers.size()),
           pointers.data());
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()), uids.data());
  pack.set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
  pack.finalize();
  ANVIL_CUDNN_CHECK(cudnnBackendExecute(ctx.cudnn(), plans_->candidates.front().plan.get(), pack.get()));
}

void CudnnGraphConv::choose_fastest(CudaContext& ctx, void* a, void* b, void* w, void* workspace,
                                    const std::vector<const float*>& operands) {
  Plans& p = *plans_;
  if (p.timed || p.candidates.size() < 2) return;
  size_t best = 0;
  double best_ms = 0;
  for (size_t k = 0; k < p.candidates.size(); ++k) {
    std::swap(p.candidates.front(), p.candidates[k]);  // run() runs the front one
    run(ctx, a, b, w, workspace, operands);
    const double ms = ctx.time_ms([&] {
      for (int i = 0; i < kTimedRuns; ++i) run(ctx, a, b, w, workspace, operands);
    });
    std::swap(p.candidates.front(), p.candidates[k]);
    if (k == 0 || ms < best_ms) {
      best = k;
      best_ms = ms;
    }
  }
  std::swap(p.candidates.front(), p.candidates[best]);
  p.timed = true;
}

std::string CudnnGraphConv::describe() const {
  const Plan& plan = plans_->candidates.front();
  const std::string engine = "graph engine " + std::to_string(plan.engine);
  const std::string ws = "ws " + std::to_string(plan.workspace >> 10) + " KiB, ";
  switch (plans_->choice) {
    case Choice::FirstTensorCore: return engine + " (tensor ops, " + ws + "the heuristics' first tensor-core engine)";
    case Choice::FirstOfModeA:
    case Choice::FirstOfModeB:
      return engine + " config " + plan.config + " (" + (plan.tensor_cores ? "tensor ops, " : "fma, ") + ws +
             "the first eligible config of heuristics mode " + (plans_->choice == Choice::FirstOfModeB ? "B" : "A") +
             ")";
    case Choice::Fastest: break;
  }
  return engine + " config " + plan.config + " (" + (plan.tensor_cores ? "tensor ops, " : "fma, ") + ws +
         "fastest of " + std::to_string(plans_->candidates.size()) + " configs)";
}

}  // namespace anvil
