// The executor: builds the graph for a device, plans the arena over the whole
// schedule, then runs forward / train steps with no allocation inside a step.
#include "anvil/engine.hpp"

#include <chrono>
#include <functional>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <set>
#include <sstream>

#include "anvil/error.hpp"
#include "anvil/random.hpp"
#include "engine/src/context.hpp"
#include "engine/src/graph.hpp"
#include "kernels/cpu/reference.hpp"
#include "kernels/cuda/training.hpp"

namespace anvil {

const char* to_string(Device d) { return d == Device::Cuda ? "cuda" : "cpu"; }

namespace {

struct ParamSlot {
  ParamSpec spec;
  size_t offset = 0;  // bytes from the slab start; the same in all three slabs
};

// One scheduled layer call with its arguments resolved to arena pointers.
struct NodeRun {
  int node = 0;
  LayerArgs forward, backward;
  bool runs_backward = false;
};

}  // namespace

struct Engine::Impl {
  Network network;
  Options options;
  std::unique_ptr<Graph> graph;
  std::unique_ptr<CudaContext> ctx;
  MemoryPlan plan;
  std::vector<ParamSlot> params;
  std::vector<NodeRun> runs;  // topological order
  std::vector<int> backward_order;  // indices into runs

  char* arena = nullptr;  // host or device
  char* params_slab = nullptr;
  char* grads_slab = nullptr;
  char* momentum_slab = nullptr;
  char* dynamic = nullptr;
  float* input = nullptr;
  float* target = nullptr;
  float* output = nullptr;
  float* output_grad = nullptr;
  float* input_grad = nullptr;
  float* loss = nullptr;
  void* loss_scratch = nullptr;
  int64_t steps = 0;

  // One captured CUDA graph per kind of work, made on first use.
  enum Work { kForward = 0, kGradients = 1, kTrainStep = 2, kWorkKinds = 3 };
  cudaGraphExec_t graphs[kWorkKinds] = {nullptr, nullptr, nullptr};
  bool graph_failed = false;

  Impl(const Network& net, const Options& opts) : network(net), options(opts) {}
  ~Impl();

  bool cuda() const { return options.device == Device::Cuda; }
  bool training() const { return options.mode == Mode::Train; }
  float* ptr(const std::string& name) const { return reinterpret_cast<float*>(dynamic + plan.find(name).offset); }
  int64_t output_count() const { return numel(graph->tensors[graph->output].shape); }
  size_t slab_floats() const { return plan.slab_bytes / sizeof(float); }

  void build();
  void plan_arena();
  void bind_arguments();
  void initialise();
  void upload(float* dst, const float* src, size_t count);
  void download(float* dst, const float* src, size_t count) const;

  void run_forward();
  void run_loss_backward();
  void run_sgd();
  void run_work(Work work);
  void enqueue(Work work);
};

Engine::Impl::~Impl() {
  for (auto g : graphs)
    if (g) cudaGraphExecDestroy(g);
  if (ctx)
    ctx->release(arena);
  else
    std::free(arena);
}

void Engine::Impl::build() {
  if (cuda()) ctx = std::make_unique<CudaContext>();
  graph = network.build_graph();
  if (cuda() && options.fuse && network.fuse()) graph->fuse(options.phase_split);
  graph->mark_gradients(training() && options.input_grad);
  if (!training())
    for (auto& node : graph->nodes) node.layer->set_gradient_needs(false, false);

  BuildSettings settings;
  settings.precision = network.precision();
  settings.deterministic = options.deterministic;
  settings.workspace_limit = options.workspace_limit;
  if (cuda())
    for (auto& node : graph->nodes) node.layer->build_cuda(*ctx, settings);

  plan_arena();
  if (options.plan_only) return;
  const size_t bytes = plan.arena_bytes();
  if (cuda()) {
    arena = static_cast<char*>(ctx->allocate(bytes));
  } else {
    arena = static_cast<char*>(std::aligned_alloc(kArenaAlignment, align_up(bytes)));
    if (!arena) throw Error("out of host memory: the arena needs " + std::to_string(bytes >> 20) + " MiB");
  }
  params_slab = arena;
  grads_slab = arena + plan.slab_bytes;
  momentum_slab = arena + 2 * plan.slab_bytes;
  dynamic = arena + 3 * plan.slab_bytes;
  bind_arguments();
  if (cuda())
    for (auto& run : runs)
      graph->nodes[run.node].layer->choose_algorithms(*ctx, run.forward, run.backward);
  initialise();
}

// The schedule: step 0 loads inputs, then one step per layer forward, then
// (training) the loss, one step per layer backward in reverse, and SGD.
void Engine::Impl::plan_arena() {
  const int layer_count = static_cast<int>(graph->nodes.size());
  std::vector<std::string> steps = {"load"};
  for (const auto& node : graph->nodes) steps.push_back("forward " + node.layer->name());
  const int loss_step = static_cast<int>(steps.size());
  std::vector<int> backward_step(layer_count, -1);
  if (training()) {
    steps.push_back("loss");
    for (int i = layer_count - 1; i >= 0; --i)
      if (graph->tensors[graph->nodes[i].output].requires_grad) {
        backward_step[i] = static_cast<int>(steps.size());
        steps.push_back("backward " + graph->nodes[i].layer->name());
      }
    steps.push_back("sgd");
  }
  auto forward_step = [](int node) { return node + 1; };
  const Device device = options.device;

  std::vector<TensorLifetime> lifetimes;
  for (size_t t = 0; t < graph->tensors.size(); ++t) {
    const GraphTensor& tensor = graph->tensors[t];
    if (tensor.producer == -2) continue;  // fused away
    const size_t bytes = numel(tensor.shape) * sizeof(float);
    const bool pinned = t == 0 || static_cast<int>(t) == graph->output;
    int first = tensor.producer < 0 ? 0 : forward_step(tensor.producer), last = first;
    for (int c : tensor.consumers) {
      last = std::max(last, forward_step(c));
      if (backward_step[c] >= 0 && graph->nodes[c].layer->backward_needs_inputs()) last = std::max(last, backward_step[c]);
    }
    if (tensor.producer >= 0 && backward_step[tensor.producer] >= 0 &&
        graph->nodes[tensor.producer].layer->backward_needs_output())
      last = std::max(last, backward_step[tensor.producer]);
    lifetimes.push_back({"act." + tensor.name, bytes, first, last, pinned});
    if (!training() || !tensor.requires_grad) continue;
    // A gradient lives from its first writer (the earliest consumer backward, or the loss) to its producer's backward.
    int g_first = static_cast<int>(steps.size()), g_last = 0;
    if (static_cast<int>(t) == graph->output) g_first = loss_step;
    for (int c : tensor.consumers)
      if (backward_step[c] >= 0) g_first = std::min(g_first, backward_step[c]);
    g_last = tensor.producer >= 0 ? backward_step[tensor.producer] : g_first;
    lifetimes.push_back({"grad." + tensor.name, bytes, g_first, g_last, t == 0});
  }
  for (int i = 0; i < layer_count; ++i) {
    const Layer& layer = *graph->nodes[i].layer;
    if (const size_t ws = layer.forward_workspace_bytes(device))
      lifetimes.push_back({"ws.forward." + layer.name(), ws, forward_step(i), forward_step(i), false});
    if (backward_step[i] < 0) continue;
    if (const size_t saved = layer.saved_bytes())
      lifetimes.push_back({"saved." + layer.name(), saved, forward_step(i), backward_step[i], false});
    if (const size_t ws = layer.backward_workspace_bytes(device))
      lifetimes.push_back({"ws.backward." + layer.name(), ws, backward_step[i], backward_step[i], false});
  }
  if (training()) {
    lifetimes.push_back({"target", output_count() * sizeof(float), 0, 0, true});
    lifetimes.push_back({"loss", sizeof(float), 0, 0, true});
    if (cuda()) lifetimes.push_back({"ws.loss", cuda::mse_scratch_bytes(output_count()), loss_step, loss_step, false});
  }
  plan = plan_memory(lifetimes, static_cast<int>(steps.size()));
  plan.steps = steps;

  size_t slab = 0;
  params.clear();
  for (const auto& spec : graph->params()) {
    params.push_back({spec, slab});
    slab += align_up(numel(spec.shape) * sizeof(float));
  }
  plan.slab_bytes = slab;

  runs.clear();
  backward_order.clear();
  for (int i = 0; i < layer_count; ++i) {
    NodeRun run;
    run.node = i;
    run.runs_backward = backward_step[i] >= 0;
    runs.push_back(run);
  }
  for (int i = layer_count - 1; i >= 0; --i)
    if (runs[i].runs_backward) backward_order.push_back(i);
}

void Engine::Impl::bind_arguments() {
  auto view = [&](int t, const std::string& prefix) {
    return TensorView{ptr(prefix + graph->tensors[t].name), graph->tensors[t].shape};
  };
  size_t param_index = 0;
  for (auto& run : runs) {
    const GraphNode& node = graph->nodes[run.node];
    const Layer& layer = *node.layer;
    LayerArgs& f = run.forward;
    for (int t : node.inputs) f.in.push_back(view(t, "act."));
    f.out = view(node.output, "act.");
    for (size_t k = 0; k < layer.param_count(); ++k, ++param_index) {
      f.params.push_back(reinterpret_cast<float*>(params_slab + params[param_index].offset));
      run.backward.dparams.push_back(reinterpret_cast<float*>(grads_slab + params[param_index].offset));
    }
    if (const size_t ws = layer.forward_workspace_bytes(options.device)) {
      f.workspace = ptr("ws.forward." + layer.name());
      f.workspace_bytes = ws;
    }
    if (!run.runs_backward) continue;
    LayerArgs& b = run.backward;
    b.in = f.in;
    b.out = f.out;
    b.params = f.params;
    b.dout = view(node.output, "grad.");
    if (layer.saved_bytes()) b.saved = f.saved = ptr("saved." + layer.name());
    if (const size_t ws = layer.backward_workspace_bytes(options.device)) {
      b.workspace = ptr("ws.backward." + layer.name());
      b.workspace_bytes = ws;
    }
  }
  // Gradient fan-out: the first consumer in backward order writes, later ones accumulate.
  std::set<int> written;
  for (int r : backward_order) {
    NodeRun& run = runs[r];
    for (int t : graph->nodes[run.node].inputs) {
      const bool wanted = graph->tensors[t].requires_grad;
      run.backward.din.push_back(wanted ? view(t, "grad.") : TensorView{nullptr, graph->tensors[t].shape});
      run.backward.din_accumulate.push_back(wanted && written.count(t));
      if (wanted) written.insert(t);
    }
  }
  input = ptr("act.input");
  output = ptr("act." + graph->tensors[graph->output].name);
  if (training()) {
    target = ptr("target");
    loss = ptr("loss");
    output_grad = ptr("grad." + graph->tensors[graph->output].name);
    if (cuda()) loss_scratch = ptr("ws.loss");
    if (graph->tensors[0].requires_grad) input_grad = ptr("grad.input");
  }
}

void Engine::Impl::upload(float* dst, const float* src, size_t count) {
  if (cuda())
    ctx->copy_to_device(dst, src, count * sizeof(float));
  else
    std::memcpy(dst, src, count * sizeof(float));
}

void Engine::Impl::download(float* dst, const float* src, size_t count) const {
  if (cuda())
    ctx->copy_to_host(dst, src, count * sizeof(float));
  else
    std::memcpy(dst, src, count * sizeof(float));
}

// Slabs start at zero (gradient and momentum padding must stay zero for the flat
// SGD); the planned region is poisoned with NaN so a read of anything unwritten shows.
void Engine::Impl::initialise() {
  const size_t dynamic_bytes = plan.dynamic_bytes;
  if (cuda()) {
    ANVIL_CUDA_CHECK(cudaMemsetAsync(arena, 0, 3 * plan.slab_bytes, ctx->stream()));
    ANVIL_CUDA_CHECK(cudaMemsetAsync(dynamic, 0xFF, dynamic_bytes, ctx->stream()));
  } else {
    std::memset(arena, 0, 3 * plan.slab_bytes);
    std::memset(dynamic, 0xFF, dynamic_bytes);
  }
  std::vector<float> host(slab_floats(), 0.f);
  for (const auto& slot : params) {
    float* dst = host.data() + slot.offset / sizeof(float);
    const uint64_t stream = random_stream(network.seed(), slot.spec.name);
    if (slot.spec.init == ParamSpec::Init::Normal)
      fill_normal(dst, numel(slot.spec.shape), stream);
    else
      fill_uniform(dst, numel(slot.spec.shape), stream, -slot.spec.bound, slot.spec.bound);
  }
  upload(reinterpret_cast<float*>(params_slab), host.data(), host.size());
  HostTensor x(graph->tensors[0].shape);
  fill_uniform(x.data.data(), x.size(), random_stream(network.seed(), "input"), 0.0, 1.0);
  upload(input, x.data.data(), x.data.size());
  if (training()) {
    HostTensor t(graph->tensors[graph->output].shape);
    fill_uniform(t.data.data(), t.size(), random_stream(network.seed(), "target"), 0.0, 1.0);
    upload(target, t.data.data(), t.data.size());
  }
  if (cuda()) ctx->synchronize();
}

void Engine::Impl::run_forward() {
  for (auto& run : runs) graph->nodes[run.node].layer->forward(options.device, ctx.get(), run.forward);
}

void Engine::Impl::run_loss_backward() {
  const int64_t count = output_count();
  if (cuda())
    cuda::mse_forward_backward(output, target, output_grad, loss, count, loss_scratch, ctx->stream());
  else
    *loss = cpu::mse_forward_backward(output, target, output_grad, count);
  for (int r : backward_order) graph->nodes[runs[r].node].layer->backward(options.device, ctx.get(), runs[r].backward);
}

void Engine::Impl::run_sgd() {
  auto* p = reinterpret_cast<float*>(params_slab);
  auto* g = reinterpret_cast<float*>(grads_slab);
  auto* m = reinterpret_cast<float*>(momentum_slab);
  const bool first = steps == 0;
  if (cuda())
    cuda::sgd_step(p, g, m, static_cast<int64_t>(slab_floats()), network.sgd(), first, ctx->stream());
  else
    cpu::sgd_step(p, g, m, static_cast<int64_t>(slab_floats()), network.sgd(), first);
}

void Engine::Impl::run_work(Work work) {
  run_forward();
  if (work == kForward) return;
  run_loss_backward();
  if (work == kTrainStep) run_sgd();
}

// CUDA engines capture each kind of work once and replay it. The first train
// step runs eagerly (it initialises the momentum), so the captured step is a
// later one. If capture fails, say so once and run eagerly from then on.
void Engine::Impl::enqueue(Work work) {
  const bool capturable = cuda() && options.cuda_graph && !graph_failed && (work != kTrainStep || steps >= 1);
  if (capturable && !graphs[work]) {
    cudaGraph_t captured = nullptr;
    ANVIL_CUDA_CHECK(cudaStreamBeginCapture(ctx->stream(), cudaStreamCaptureModeThreadLocal));
    std::string failure;
    try {
      run_work(work);
    } catch (const std::exception& e) {
      failure = e.what();
    }
    const cudaError_t end = cudaStreamEndCapture(ctx->stream(), &captured);
    if (failure.empty() && end == cudaSuccess) {
      const cudaError_t inst = cudaGraphInstantiate(&graphs[work], captured, 0);
      if (inst != cudaSuccess) failure = cudaGetErrorString(inst), graphs[work] = nullptr;
    } else if (failure.empty()) {
      failure = cudaGetErrorString(end);
    }
    if (captured) cudaGraphDestroy(captured);
    cudaGetLastError();
    if (!failure.empty()) {
      graph_failed = true;
      std::cerr << "anvil: CUDA-graph capture failed (" << failure << "); running eagerly\n";
    }
  }
  if (capturable && graphs[work])
    ANVIL_CUDA_CHECK(cudaGraphLaunch(graphs[work], ctx->stream()));
  else
    run_work(work);
}

// ---- public API ----

Engine::Engine(const Network& network, const Options& options) : impl_(std::make_unique<Impl>(network, options)) {
  impl_->build();
}

void Engine::require_arena() const {
  if (!impl_->arena) throw Error("this engine was built with Options::plan_only and cannot run");
}

Engine::~Engine() = default;

const Network& Engine::network() const { return impl_->network; }
const Options& Engine::options() const { return impl_->options; }
const MemoryPlan& Engine::plan() const { return impl_->plan; }
int64_t Engine::steps_done() const { return impl_->steps; }
size_t Engine::device_bytes() const { return impl_->plan.arena_bytes(); }

bool Engine::replaying_cuda_graph() const { return impl_->graphs[Impl::kTrainStep] != nullptr; }

Engine::DeviceCounters Engine::device_counters() const {
  if (!impl_->ctx) return {};
  return impl_->ctx->counters();
}

void Engine::set_input(const HostTensor& x) {
  require_arena();
  const Shape& want = impl_->graph->tensors[0].shape;
  if (x.shape != want) throw InputError("input has shape " + to_string(x.shape) + ", the network expects " + to_string(want));
  impl_->upload(impl_->input, x.data.data(), x.data.size());
}

void Engine::set_target(const HostTensor& t) {
  require_arena();
  if (!impl_->training()) throw Error("set_target needs an engine built for training (Mode::Train)");
  const Shape& want = impl_->graph->tensors[impl_->graph->output].shape;
  if (t.shape != want) throw InputError("target has shape " + to_string(t.shape) + ", the network output is " + to_string(want));
  impl_->upload(impl_->target, t.data.data(), t.data.size());
}



void Engine::enqueue_forward() {
  require_arena();
  impl_->enqueue(Impl::kForward);
}

void Engine::enqueue_gradients() {
  require_arena();
  if (!impl_->training()) throw Error("gradients need an engine built for training (Mode::Train)");
  impl_->enqueue(Impl::kGradients);
}

void Engine::enqueue_train_step() {
  require_arena();
  if (!impl_->training()) throw Error("train_step needs an engine built for training (Mode::Train)");
  impl_->enqueue(Impl::kTrainStep);
  ++impl_->steps;
}

void Engine::synchronize() {
  if (impl_->cuda()) impl_->ctx->synchronize();
}

HostTensor Engine::forward() {
  enqueue_forward();
  HostTensor y(impl_->graph->tensors[impl_->graph->output].shape);
  impl_->download(y.data.data(), impl_->output, y.data.size());
  return y;
}

float Engine::train_step() {
  enqueue_train_step();
  float value = 0;
  impl_->download(&value, impl_->loss, 1);
  return value;
}

std::map<std::string, HostTensor> Engine::parameters() const {
  require_arena();
  std::map<std::string, HostTensor> out;
  for (const auto& slot : impl_->params) {
    HostTensor t(slot.spec.shape);
    impl_->download(t.data.data(), reinterpret_cast<const float*>(impl_->params_slab + slot.offset), t.data.size());
    out[slot.spec.name] = std::move(t);
  }
  return out;
}

std::map<std::string, HostTensor> Engine::gradients() const {
  require_arena();
  if (!impl_->training()) throw Error("gradients need an engine built for training (Mode::Train)");
  std::map<std::string, HostTensor> out;
  for (const auto& slot : impl_->params) {
    HostTensor t(slot.spec.shape);
    impl_->download(t.data.data(), reinterpret_cast<const float*>(impl_->grads_slab + slot.offset), t.data.size());
    out[slot.spec.name] = std::move(t);
  }
  return out;
}

void Engine::load_parameters(const std::map<std::string, HostTensor>& given) {
  require_arena();
  for (const auto& entry : given) {
    bool known = false;
    for (const auto& slot : impl_->params) known = known || slot.spec.name == entry.first;
    if (!known) throw InputError("unknown parameter '" + entry.first + "' (the network has no such parameter)");
  }
  for (const auto& slot : impl_->params) {
    const auto it = given.find(slot.spec.name);
    if (it == given.end()) throw InputError("missing parameter '" + slot.spec.name + "'");
    if (it->second.shape != slot.spec.shape)
      throw InputError("parameter '" + slot.spec.name + "' has shape " + to_string(it->second.shape) + ", expected " +
                       to_string(slot.spec.shape));
  }
  for (const auto& slot : impl_->params) {
    const HostTensor& t = given.at(slot.spec.name);
    impl_->upload(reinterpret_cast<float*>(impl_->params_slab + slot.offset), t.data.data(), t.data.size());
  }
  if (impl_->cuda()) impl_->ctx->synchronize();
}

HostTensor Engine::input_gradient() const {
  require_arena();
  if (!impl_->input_grad) throw Error("input_gradient needs Options::input_grad and a training engine");
  HostTensor t(impl_->graph->tensors[0].shape);
  impl_->download(t.data.data(), impl_->input_grad, t.data.size());
  return t;
}

std::string Engine::describe() const {
  std::ostringstream s;
  const Impl& m = *impl_;
  s << "device " << to_string(m.options.device) << ", precision " << to_string(m.network.precision()) << ", "
    << (m.options.mode == Mode::Train ? "train" : "forward") << " plan\n";
  for (const auto& node : m.graph->nodes) {
    s << "  " << node.layer->name() << " [" << node.layer->type() << "] -> " << to_string(node.layer->output_shape());
    const size_t fws = node.layer->forward_workspace_bytes(m.options.device);
    const size_t bws = node.layer->backward_workspace_bytes(m.options.device);
    if (fws || bws) s << ", workspace fwd " << (fws >> 10) << " KiB / bwd " << (bws >> 10) << " KiB";
    s << "\n";
    const std::string algos = node.layer->describe_cuda();
    if (!algos.empty()) s << "      cuDNN: " << algos << "\n";
  }
  return s.str();
}

double Engine::time_ms(const std::function<void()>& work) {
  if (!impl_->cuda()) {
    const auto t0 = std::chrono::steady_clock::now();
    work();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  cudaStream_t stream = impl_->ctx->stream();
  cudaEvent_t start = nullptr, stop = nullptr;
  ANVIL_CUDA_CHECK(cudaEventCreate(&start));
  ANVIL_CUDA_CHECK(cudaEventCreate(&stop));
  float ms = 0;
  try {
    ANVIL_CUDA_CHECK(cudaEventRecord(start, stream));
    work();
    ANVIL_CUDA_CHECK(cudaEventRecord(stop, stream));
    ANVIL_CUDA_CHECK(cudaEventSynchronize(stop));
    ANVIL_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  } catch (...) {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    throw;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms;
}

std::vector<LayerTiming> Engine::profile_layers() {
  require_arena();
  Impl& m = *impl_;
  std::vector<LayerTiming> out;
  for (auto& run : m.runs) {
    Layer& layer = *m.graph->nodes[run.node].layer;
    out.push_back({layer.name(), time_ms([&] { layer.forward(m.options.device, m.ctx.get(), run.forward); }), 0});
  }
  if (m.training())
    for (int r : m.backward_order) {
      Layer& layer = *m.graph->nodes[m.runs[r].node].layer;
      out[r].backward_ms = time_ms([&] { layer.backward(m.options.device, m.ctx.get(), m.runs[r].backward); });
    }
  return out;
}

}  // namespace anvil
