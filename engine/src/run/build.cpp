// Build: lower the network to ops (fusion rules on CUDA), build their
// descriptors, schedule and plan every buffer, make the one allocation, bind
// each op's arguments, choose cuDNN algorithms and initialise the parameters.
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <set>
#include <vector>

#include "anvil/error.hpp"
#include "anvil/random.hpp"
#include "engine/src/lower/fusion_rules.hpp"
#include "engine/src/run/engine_impl.hpp"
#include "engine/src/run/host_memory.hpp"

#if ANVIL_WITH_CUDA
#include "engine/src/cuda/check.hpp"
#include "engine/src/lower/channels_last.hpp"
#include "engine/src/run/autotune.hpp"
#endif

namespace anvil {

Engine::Impl::~Impl() {
  train_feed.reset();  // the feeds and the batch kept aside free through the context
  eval_feed.reset();
  batch_aside = {};
#if ANVIL_WITH_CUDA
  for (auto g : graphs)
    if (g) cudaGraphExecDestroy(g);
  if (ctx) {
    ctx->release(arena);
    return;
  }
#endif
  std::free(arena);
}

void Engine::Impl::build() {
#if ANVIL_WITH_CUDA
  if (cuda()) ctx = std::make_unique<CudaContext>();
#endif
  graph = network.build_graph();
  if (cuda() && options.fuse && network.fuse())
    apply_fusions(*graph, FusionSettings{options.phase_split, options.autotune, network.precision(),
                                         options.direct_conv, options.wgmma_conv, channels_last()});
#if ANVIL_WITH_CUDA
  if (cuda() && options.autotune) add_pool_alternatives(*graph);
#endif
  graph->mark_gradients(training() && options.input_grad);
  if (training()) {
    if (!graph->tensors[graph->output].requires_grad)
      throw InputError(network.source() +
                       ": the network has no parameters, so there is nothing to train "
                       "(with the input's gradient, --input-grad, there is)");
    loss = create_loss(network.spec());
    optimizer = create_optimizer(network.spec());
  } else {
    for (auto& node : graph->nodes) {
      node.layer->set_gradient_needs(false, false);
      for (auto& alternative : node.alternatives) alternative->set_gradient_needs(false, false);
      if (node.unfused) node.unfused->set_gradient_needs(false, false);
    }
  }

#if ANVIL_WITH_CUDA
  if (cuda()) {
    BuildSettings settings;
    settings.precision = network.precision();
    settings.deterministic = options.deterministic;
    settings.workspace_limit = options.workspace_limit;
    settings.autotune = options.autotune;
    settings.phase_split = options.phase_split;
    if (options.autotune) autotune_formulations(*graph, *ctx, settings, training());
    if (channels_last()) choose_channels_last(*graph);
    for (auto& node : graph->nodes) node.layer->build_cuda(*ctx, settings);
  }
#endif

  schedule = make_schedule(*graph, options.device, loss.get(), optimizer.get(), options.check_finite);
  plan = plan_memory(schedule.requests, static_cast<int>(schedule.steps.size()));
  plan.steps = schedule.steps;
  plan.slab_bytes = schedule.slab_bytes;
  if (options.plan_only) return;
  arena = allocate_arena(plan.arena_bytes());
  bind();
#if ANVIL_WITH_CUDA
  if (cuda())
    for (size_t i = 0; i < runs.size(); ++i)
      graph->nodes[i].layer->choose_algorithms(*ctx, runs[i].forward, runs[i].backward);
#endif
  initialise();
}

namespace {

// Refused before anything is allocated: on the host, an allocation beyond the memory there may
// succeed and then get the process killed when the arena is first written.
void require_memory(size_t bytes, size_t available, const std::string& where) {
  if (bytes > available)
    throw Error("out of " + where + " memory: the arena needs " + gib(bytes) + ", the " + where + " has " +
                gib(available) + " free");
}

}  // namespace

char* Engine::Impl::allocate_arena(size_t bytes) {
#if ANVIL_WITH_CUDA
  if (cuda()) {
    require_memory(bytes, ctx->free_memory(), "device");
    char* arena = static_cast<char*>(ctx->allocate(bytes));
    // Zeroed once: the build's algorithm searches and --autotune's timed runs read tensors nothing
    // has written yet (a filter gradient timed over dY), and must read defined values.
    // On the engine's (non-blocking) stream, waited for: nothing later may overtake it.
    ANVIL_CUDA_CHECK(cudaMemsetAsync(arena, 0, bytes, ctx->stream()));
    ANVIL_CUDA_CHECK(cudaStreamSynchronize(ctx->stream()));
    return arena;
  }
#endif
  const std::lock_guard<std::mutex> lock(host_memory_turn());
  require_memory(bytes, host_available_memory(), "host");
  char* host = static_cast<char*>(std::aligned_alloc(kArenaAlignment, align_up(bytes)));
  if (!host) throw Error("out of host memory: the arena needs " + gib(bytes));
  std::memset(host, 0, bytes);  // zeroed as on the device: every page taken now, not at the first step
  return host;
}

void Engine::Impl::bind() {
  const Schedule& s = schedule;
  auto view = [&](int request, int t) {
    return TensorView{reinterpret_cast<float*>(address(request)), graph->tensors[t].shape};
  };
  params = reinterpret_cast<float*>(address(s.param_slab));
  grads = reinterpret_cast<float*>(address(s.grad_slab));
  runs.assign(graph->nodes.size(), NodeRun{});
  size_t param_index = 0;
  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    const GraphNode& node = graph->nodes[i];
    const NodeSchedule& ns = s.nodes[i];
    NodeRun& run = runs[i];
    run.runs_backward = ns.backward_step >= 0;
    LayerArgs& f = run.forward;
    for (int t : node.inputs) f.in.push_back(view(s.activation[t], t));
    f.out = view(s.activation[node.output], node.output);
    for (size_t k = 0; k < node.layer->param_count(); ++k, ++param_index) {
      const size_t offset = s.params[param_index].offset / sizeof(float);
      f.params.push_back(params + offset);
      if (grads) run.backward.dparams.push_back(grads + offset);
    }
    for (int request : ns.buffers) f.buffers.push_back(address(request));
    LayerArgs& b = run.backward;
    b.buffers = f.buffers;
    if (!run.runs_backward) continue;
    b.in = f.in;
    b.out = f.out;
    b.params = f.params;
    b.dout = view(s.gradient[node.output], node.output);
  }
  // Gradient fan-out: the first consumer in backward order writes, later ones accumulate.
  std::set<int> written;
  for (int n : s.backward_order)
    for (int t : graph->nodes[n].inputs) {
      const bool wanted = graph->tensors[t].requires_grad;
      runs[n].backward.din.push_back(wanted ? view(s.gradient[t], t) : TensorView{nullptr, graph->tensors[t].shape});
      runs[n].backward.din_accumulate.push_back(wanted && written.count(t));
      if (wanted) written.insert(t);
    }
  input = reinterpret_cast<float*>(address(s.activation[0]));
  output = reinterpret_cast<float*>(address(s.activation[graph->output]));
  if (!training()) return;
  target = reinterpret_cast<float*>(address(s.target));
  loss_value = reinterpret_cast<float*>(address(s.loss));
  output_grad = reinterpret_cast<float*>(address(s.gradient[graph->output]));
  loss_scratch = address(s.loss_scratch);
  valid_elements = reinterpret_cast<int64_t*>(address(s.valid_elements));
  input_grad = reinterpret_cast<float*>(address(s.gradient[0]));
  optimizer_args.params = params;
  optimizer_args.grads = grads;
  optimizer_args.count = static_cast<int64_t>(slab_floats());
  for (int request : s.optimizer_state) optimizer_args.state.push_back(reinterpret_cast<float*>(address(request)));
  optimizer_args.step = reinterpret_cast<StepState*>(address(s.step_state));
  if (options.communicator) {  // data parallel: each node's gradients, a range of the slab
    std::vector<GradientBuckets::Range> ranges(graph->nodes.size());
    size_t slot = 0;
    for (size_t i = 0; i < graph->nodes.size(); ++i)
      for (size_t k = 0; k < graph->nodes[i].layer->param_count(); ++k, ++slot) {
        const ParamSlot& p = s.params[slot];
        float* end = grads + (p.offset + align_up(numel(p.spec.shape) * sizeof(float))) / sizeof(float);
        if (k == 0) ranges[i].first = grads + p.offset / sizeof(float);
        ranges[i].count = end - ranges[i].first;
      }
    buckets = std::make_unique<GradientBuckets>(*options.communicator, cuda_context(), s.backward_order, ranges);
  }
  flag = address(s.flag);
}

// The slabs start at zero (their padding must stay zero for the flat
// updates); everything else is poisoned with NaN so a read of anything
// unwritten shows. Parameters, input and target come from the seeded generator.
void Engine::Impl::initialise() {
  auto fill = [&](void* dst, int value, size_t bytes) {
#if ANVIL_WITH_CUDA
    if (cuda()) {
      ANVIL_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, ctx->stream()));
      return;
    }
#endif
    std::memset(dst, value, bytes);
  };
  fill(arena, 0xFF, plan.arena_bytes());
  std::vector<int> slabs = {schedule.param_slab, schedule.grad_slab};
  slabs.insert(slabs.end(), schedule.optimizer_state.begin(), schedule.optimizer_state.end());
  for (int slab : slabs)
    if (slab != kNoBuffer) fill(address(slab), 0, schedule.slab_bytes);
  if (schedule.step_state != kNoBuffer) fill(address(schedule.step_state), 0, sizeof(StepState));  // step 0

  // Straight into the arena on the host; on a GPU through a buffer of one tensor, so
  // the host never holds a second copy of the slab (the memory check counts the arena).
  std::vector<float> staging;
  auto fill_tensor = [&](float* tensor, int64_t count, const std::function<void(float*)>& fill) {
    if (!cuda()) return fill(tensor);
    staging.resize(size_t(count));
    fill(staging.data());
    upload(tensor, staging.data(), size_t(count));
  };
  for (const auto& slot : schedule.params) {
    const int64_t count = numel(slot.spec.shape);
    const uint64_t stream = random_stream(network.seed(), slot.spec.name);
    fill_tensor(params + slot.offset / sizeof(float), count, [&](float* dst) {
      if (slot.spec.init == ParamSpec::Init::Normal)
        fill_normal(dst, count, stream);
      else
        fill_uniform(dst, count, stream, -slot.spec.bound, slot.spec.bound);
    });
  }
  // The seeded batch: a rank of a data-parallel run takes its rows of the global batch's.
  auto seeded = [&](float* tensor, const Shape& shape, const char* name) {
    const int64_t count = numel(shape);
    fill_tensor(tensor, count, [&](float* dst) {
      fill_uniform(dst, count, random_stream(network.seed(), name), 0.0, 1.0, count * rank());
    });
  };
  seeded(input, graph->tensors[0].shape, "input");
  if (training()) seeded(target, graph->tensors[graph->output].shape, "target");
  synchronize();
}

}  // namespace anvil
