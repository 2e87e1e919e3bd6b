// Non-finite values (--check-finite): a cheap check of the loss, the
// gradients and the parameters after a step; a copy of the last state that
// passed it; and a train step run eagerly, op by op, that names where the
// first NaN or infinity appears. A trainer that finds one goes back to the
// good state and replays the steps since with traced_train_step.
#include <cstring>
#include <string>

#include "anvil/error.hpp"
#include "engine/src/run/engine_impl.hpp"
#include "kernels/cpu/finite.hpp"

#if ANVIL_WITH_CUDA
#include "engine/src/cuda/check.hpp"
#include "kernels/cuda/finite.hpp"
#endif

namespace anvil {

std::string NonFinite::describe() const {
  std::string text = "non-finite " + kind + " first appears in " + tensor;
  return stage.empty() ? text : text + " (" + stage + ")";
}

bool Engine::Impl::finite(const float* data, int64_t count) {
  if (data == nullptr || count == 0) return true;
#if ANVIL_WITH_CUDA
  if (cuda()) {
    auto* device_flag = static_cast<unsigned*>(flag);
    ANVIL_CUDA_CHECK(cudaMemsetAsync(device_flag, 0, sizeof(unsigned), ctx->stream()));
    cuda::flag_non_finite(data, count, device_flag, ctx->stream());
    unsigned found = 0;
    download_bytes(&found, device_flag, sizeof found);
    return found == 0;
  }
#endif
  return cpu::all_finite(data, count);
}

std::optional<NonFinite> Engine::Impl::first_non_finite_parameter(const float* slab, const char* kind,
                                                                  const std::string& stage) {
  if (finite(slab, static_cast<int64_t>(slab_floats()))) return std::nullopt;  // one check for the common case
  for (const auto& slot : schedule.params)
    if (!finite(slab + slot.offset / sizeof(float), numel(slot.spec.shape)))
      return NonFinite{kind, slot.spec.name, stage};
  return std::nullopt;  // only in the slab's padding, which no step reads
}

namespace {

void require_check_finite(const Engine& engine, const char* what) {
  if (engine.options().mode != Mode::Train || !engine.options().check_finite)
    throw Error(std::string(what) + " needs an engine built for training with Options::check_finite");
}

}  // namespace

std::optional<NonFinite> Engine::find_non_finite() {
  require_arena();
  Impl& m = *impl_;
  require_check_finite(*this, "find_non_finite");
  if (m.gradients_made) {  // before any step the loss and the gradients hold nothing yet
    if (!m.finite(m.loss_value, 1)) return NonFinite{"value", "the loss", ""};
    if (auto found = m.first_non_finite_parameter(m.grads, "gradient", "")) return found;
  }
  return m.first_non_finite_parameter(m.params, "parameter", "");
}

// Copies the training state to its good copy (keep) or back (restore).
void Engine::Impl::copy_good_state(bool keep) {
  auto copy = [&](void* live, int request, size_t bytes) {
    void* kept = address(request);
    void* dst = keep ? kept : live;
    const void* src = keep ? live : kept;
#if ANVIL_WITH_CUDA
    if (cuda()) return ctx->copy_on_device(dst, src, bytes);
#endif
    std::memcpy(dst, src, bytes);
  };
  copy(params, schedule.good_slabs[0], schedule.slab_bytes);
  for (size_t k = 0; k < optimizer_args.state.size(); ++k)
    copy(optimizer_args.state[k], schedule.good_slabs[k + 1], schedule.slab_bytes);
  copy(optimizer_args.step, schedule.good_step_state, sizeof(StepState));
}

void Engine::keep_good_state() {
  require_arena();
  require_check_finite(*this, "keep_good_state");
  impl_->copy_good_state(true);
  impl_->good_steps = impl_->steps;
}

void Engine::restore_good_state() {
  require_arena();
  Impl& m = *impl_;
  require_check_finite(*this, "restore_good_state");
  if (!m.good_steps) throw Error("restore_good_state: keep_good_state was never called");
  m.copy_good_state(false);
  m.steps = *m.good_steps;
  m.synchronize();
}

// Forward, loss and backward of one step, op by op, each result checked as it is made. The whole
// step runs whatever is found (data-parallel ranks must all reach the same collectives); the first
// finding is kept.
std::optional<NonFinite> Engine::Impl::traced_gradients(DataFeed* feed) {
  std::optional<NonFinite> found;
  auto check = [&](const float* data, int64_t count, NonFinite what) {
    if (!found && !finite(data, count)) found = std::move(what);
  };
  if (feed) {
    feed->before_step({input, target, valid_elements});
    feed->in_step({input, target, valid_elements});
  }
  found = first_non_finite_parameter(params, "parameter", "the parameters the step starts from");
  const int64_t target_count = output_count();
  check(input, numel(graph->tensors[0].shape), {"input", "the batch", "the data"});
  check(target, target_count, {"target", "the batch", "the data"});
  for (size_t i = 0; i < runs.size(); ++i) {
    Layer& layer = *graph->nodes[i].layer;
    layer.forward(options.device, cuda_context(), runs[i].forward);
    const TensorView& out = runs[i].forward.out;
    check(out.data, numel(out.shape), {"output", layer.name(), "forward of " + layer.name()});
  }
  run_loss(true, feed != nullptr);
  check(loss_value, 1, {"value", "the loss", "its outputs and targets are finite"});
  check(output_grad, target_count, {"gradient", "the output", "the loss"});
  std::vector<size_t> first_param(graph->nodes.size() + 1, 0);  // each node's first parameter slot
  for (size_t i = 0; i < graph->nodes.size(); ++i)
    first_param[i + 1] = first_param[i] + graph->nodes[i].layer->param_count();
  for (int n : schedule.backward_order) {
    Layer& layer = *graph->nodes[n].layer;
    const LayerArgs& args = runs[n].backward;
    layer.backward(options.device, cuda_context(), args);
    const std::string stage = "backward of " + layer.name();
    for (size_t k = 0; k < args.din.size(); ++k)
      check(args.din[k].data, numel(args.din[k].shape),
            {"gradient", graph->tensors[graph->nodes[n].inputs[k]].name, stage});
    for (size_t k = 0; k < args.dparams.size(); ++k) {
      const ParamSpec& spec = schedule.params[first_param[n] + k].spec;
      check(args.dparams[k], numel(spec.shape), {"gradient", spec.name, stage});
    }
    if (buckets) buckets->after_backward_of(n);
  }
  if (buckets) buckets->join();
  return found;
}

// Data parallel: whether any rank found something (every rank must ask, at the same point).
bool Engine::Impl::any_rank(bool mine) {
  if (!options.communicator) return mine;
  float vote = mine ? 1.f : 0.f;
  auto* shared = static_cast<float*>(flag);
  upload(shared, &vote, 1);
  average_across_ranks(shared, 1);
  download(&vote, shared, 1);
  return vote > 0.f;
}

bool Engine::any_rank(bool mine) {
  require_arena();
  // The vote's device word is bound with the training buffers: a forward-only engine has none.
  if (!impl_->training()) throw Error("any_rank needs an engine built for training (Mode::Train)");
  return impl_->any_rank(mine);
}

std::optional<NonFinite> Engine::traced_train_step() {
  require_arena();
  Impl& m = *impl_;
  require_check_finite(*this, "traced_train_step");
  std::optional<NonFinite> found = m.traced_gradients(m.feed_of(Impl::kTrainStep));
  ++m.steps;  // once the step has taken its batch (an exhausted epoch throws first, as train_step does)
  m.gradients_made = true;
  // The vote comes before the optimizer: its update takes the gradients averaged over the ranks, so
  // a rank's NaN reaches every rank's parameters, and only this rank's own checks are its own.
  const bool any_rank_found = m.any_rank(found.has_value());
  m.average_loss_across_ranks();
  m.run_optimizer();
  if (any_rank_found && !found) found = NonFinite{"value", "another rank's step", "", true};
  if (any_rank_found) return found;
  // Every rank's step was finite until the update, which is the same on every rank.
  return m.first_non_finite_parameter(m.params, "parameter", "the optimizer step");
}

}  // namespace anvil
