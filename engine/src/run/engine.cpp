// The public API of the engine; the work is in build.cpp, execute.cpp and parameter_io.cpp.
#include <algorithm>
#include <chrono>
#include <sstream>

#include "anvil/error.hpp"
#include "engine/src/run/engine_impl.hpp"

#if ANVIL_WITH_CUDA
#include "engine/src/cuda/check.hpp"
#endif

namespace anvil {

const char* to_string(Device d) { return d == Device::Cuda ? "cuda" : d == Device::Cpu ? "cpu" : "not a Device"; }

#if ANVIL_WITH_CUDA
#else
// A build without CUDA (ANVIL_WITH_CUDA=OFF): no device to ask about, and no
// CUDA engine. Asking for one is bad input (exit code 2 in the CLI).
namespace {
[[noreturn]] void refuse_cuda() {
  throw InputError("anvil was built without CUDA (ANVIL_WITH_CUDA=OFF); use --device cpu");
}
}  // namespace

bool cuda_available() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_device_name() { refuse_cuda(); }
std::string cudnn_version() { refuse_cuda(); }
size_t device_memory_used() { refuse_cuda(); }
#endif

namespace {
// What a caller can get wrong that the engine would not notice later: an enum
// value made by a cast, a training option given to a forward-only engine (which
// would ignore it), and a communicator whose rank is not one of its ranks
// (each rank takes the slice of every batch at its rank).
const Options& validated(const Options& o) {
  if (o.device != Device::Cpu && o.device != Device::Cuda)
    throw InputError("Options::device: " + std::to_string(static_cast<int>(o.device)) + " is not a Device");
  if (o.mode != Mode::Forward && o.mode != Mode::Train)
    throw InputError("Options::mode: " + std::to_string(static_cast<int>(o.mode)) + " is not a Mode");
  if (o.mode == Mode::Forward && o.input_grad)
    throw InputError(
        "Options::input_grad needs Mode::Train: a forward-only engine (Mode::Forward) computes no "
        "gradient, of the input or of anything else");
  if (o.mode == Mode::Forward && o.check_finite)
    throw InputError(
        "Options::check_finite needs Mode::Train: a forward-only engine (Mode::Forward) takes no "
        "training step to check");
  if (o.communicator) {
    const int size = o.communicator->size(), rank = o.communicator->rank();
    if (size < 1) throw InputError("Options::communicator: its size is " + std::to_string(size) + ", not at least 1");
    if (rank < 0 || rank >= size)
      throw InputError("Options::communicator: rank " + std::to_string(rank) + " is not from 0 to " +
                       std::to_string(size - 1));
  }
  return o;
}
}  // namespace

Engine::Engine(const Network& network, const Options& options)
    : impl_(std::make_unique<Impl>(network, validated(options))) {
#if !ANVIL_WITH_CUDA
  if (options.device == Device::Cuda) refuse_cuda();
#endif
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

bool Engine::replaying_cuda_graph() const {
#if ANVIL_WITH_CUDA
  return impl_->graphs[Impl::kTrainStep] != nullptr;
#else
  return false;
#endif
}

Engine::DeviceCounters Engine::device_counters() const {
#if ANVIL_WITH_CUDA
  if (impl_->ctx) return impl_->ctx->counters();
#endif
  return {};
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

void Engine::synchronize() { impl_->synchronize(); }

std::string Engine::describe() const {
  std::ostringstream s;
  const Impl& m = *impl_;
  s << "device " << to_string(m.options.device) << ", precision " << to_string(m.network.precision()) << ", "
    << (m.options.mode == Mode::Train ? "train" : "forward") << " plan\n";
  if (m.training()) s << "  loss " << m.loss->describe() << ", optimizer " << m.optimizer->describe() << "\n";
  for (const auto& node : m.graph->nodes) {
    s << "  " << node.layer->name() << " [" << node.layer->type() << "] -> " << to_string(node.layer->output_shape())
      << "\n";
    const std::string algos = node.layer->describe_cuda();
    if (!algos.empty()) s << "      runs: " << algos << "\n";
    if (!node.choice.empty()) s << "      formulation: " << node.choice << "\n";
  }
  return s.str();
}

double Engine::time_ms(const std::function<void()>& work) {
  if (!work) throw InputError("time_ms: no work given to time");
#if ANVIL_WITH_CUDA
  if (impl_->cuda()) return impl_->ctx->time_ms(work);
#endif
  const auto t0 = std::chrono::steady_clock::now();
  work();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<LayerTiming> Engine::profile_layers() {
  require_arena();
  Impl& m = *impl_;
  // One untimed run, then the median of kRuns timed ones: a single run also timed the first
  // launch's lazy set-up (cuDNN's, the driver's), which made small layers look slower.
  constexpr int kRuns = 5;
  auto layer_ms = [&](const std::function<void()>& work) {
    work();
    std::vector<double> ms;
    for (int i = 0; i < kRuns; ++i) ms.push_back(time_ms(work));
    std::nth_element(ms.begin(), ms.begin() + kRuns / 2, ms.end());
    return ms[kRuns / 2];
  };
  std::vector<LayerTiming> out;
  for (size_t i = 0; i < m.runs.size(); ++i) {
    Layer& layer = *m.graph->nodes[i].layer;
    out.push_back(
        {layer.name(), layer_ms([&] { layer.forward(m.options.device, m.cuda_context(), m.runs[i].forward); }), 0});
  }
  if (m.training())
    for (int n : m.schedule.backward_order) {
      Layer& layer = *m.graph->nodes[n].layer;
      out[n].backward_ms = layer_ms([&] { layer.backward(m.options.device, m.cuda_context(), m.runs[n].backward); });
    }
  return out;
}

}  // namespace anvil
