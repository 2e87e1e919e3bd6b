// The engine's dataset API: attaching training data, epochs, evaluation.
#include <cstring>
#include <mutex>

#include "anvil/error.hpp"
#include "engine/src/run/engine_impl.hpp"
#include "engine/src/run/host_memory.hpp"

#if ANVIL_WITH_CUDA
#include "engine/src/cuda/check.hpp"
#endif

namespace anvil {

namespace {

size_t device_budget(const DataOptions& options, [[maybe_unused]] CudaContext* ctx) {
  if (options.device_budget) return *options.device_budget;
#if ANVIL_WITH_CUDA
  if (ctx) return ctx->free_memory() / 2;
#endif
  return 0;
}

}  // namespace

void Engine::attach_data(const Dataset& data, const DataOptions& options) {
  require_arena();
  Impl& m = *impl_;
  if (!m.training()) throw Error("attach_data needs an engine built for training (Mode::Train)");
  data.check_fits(m.network);
  // Data parallel: batches of the global size, of which this rank takes its slice; its feed sees
  // only its slices, as an epoch of batches of its own size.
  const int64_t local = m.network.input_shape()[0];
  if (m.ranks() > 1 && options.keep_last)
    throw InputError("keep_last is refused with " + std::to_string(m.ranks()) +
                     " ranks, whatever the dataset's size (a partial last batch would not split evenly across "
                     "them); leave it out (the default) to train data-parallel");
  const BatchPlan global = data.batch_plan(m.global_batch(), options.keep_last);
  const BatchPlan plan = m.ranks() == 1 ? global : BatchPlan(global.batches_per_epoch() * local, local, false);
  // Before the new feed is made: no captured step reads the old one's freed buffers if it cannot be.
  detach_data();
  m.train_feed = std::make_unique<DataFeed>(data, plan, m.options.device, m.cuda_context(),
                                            device_budget(options, m.cuda_context()));
  m.data_options = options;
  start_epoch(0);
  ++m.data_attachments;
}

// The captured steps gather from the feed, or take the engine's own batch: either way they change.
void Engine::detach_data() {
  Impl& m = *impl_;
  m.forget_graph(Impl::kTrainStep);
  m.forget_graph(Impl::kGradients);
  m.train_feed.reset();
}

int64_t Engine::batches_per_epoch() const {
  if (!impl_->train_feed) throw Error("batches_per_epoch needs attach_data first");
  return impl_->train_feed->plan().batches_per_epoch();
}

void Engine::start_epoch(int64_t epoch, int64_t first_batch) {
  Impl& m = *impl_;
  if (!m.train_feed) throw Error("start_epoch needs attach_data first");
  const int64_t batches = m.train_feed->plan().batches_per_epoch();
  if (epoch < 0) throw InputError("start_epoch: the epoch must be >= 0, got " + std::to_string(epoch));
  if (first_batch < 0 || first_batch > batches)
    throw InputError("start_epoch: the first batch must be in 0.." + std::to_string(batches) +
                     " (the batches of an epoch), got " + std::to_string(first_batch));
  const Dataset& data = m.train_feed->data();
  if (m.ranks() == 1) {
    m.train_feed->start_epoch(epoch_order(data.size(), m.network.seed(), epoch, m.data_options.shuffle), first_batch);
    return;
  }
  // Each rank takes its slice of each global batch, in batch order, from the whole epoch's order. In-process
  // ranks make theirs one at a time: one whole order exists at once, and each host-memory check sees the others'.
  const std::lock_guard<std::mutex> lock(host_memory_turn());
  const std::vector<int64_t> order = epoch_order(data.size(), m.network.seed(), epoch, m.data_options.shuffle);
  const int64_t local = m.network.input_shape()[0];
  std::vector<int64_t> slices;
  slices.reserve(size_t(batches * local));
  for (int64_t b = 0; b < batches; ++b) {
    const auto first = order.begin() + b * m.global_batch() + m.rank() * local;
    slices.insert(slices.end(), first, first + local);
  }
  m.train_feed->start_epoch(slices, first_batch);
}

const Dataset* Engine::attached_data() const { return impl_->train_feed ? impl_->train_feed->attached() : nullptr; }

int64_t Engine::data_attachments() const { return impl_->data_attachments; }

bool Engine::data_on_device() const { return impl_->train_feed && impl_->train_feed->on_device(); }

float Engine::evaluate(const Dataset& data) {
  require_arena();
  Impl& m = *impl_;
  if (!m.training()) throw Error("evaluate needs an engine built for training (Mode::Train): it runs the loss");
  data.check_fits(m.network);
  // The last evaluated dataset stays uploaded; another one (another object, or one loaded anew) replaces it.
  if (!m.eval_feed || !m.eval_feed->serves(data)) {
    m.forget_graph(Impl::kEvaluate);  // before the feed it gathers from goes (as in attach_data)
    m.eval_feed.reset();
    m.eval_feed = std::make_unique<DataFeed>(data, data.batch_plan(m.network.input_shape()[0], true), m.options.device,
                                             m.cuda_context(), device_budget(m.data_options, m.cuda_context()));
  }
  DataFeed& feed = *m.eval_feed;
  feed.start_epoch(epoch_order(data.size(), 0, 0, false), 0);
  // The batches go where the caller's own batch and the last step's loss are: those are put back
  // after, so set_input, set_target, last_loss() and find_non_finite see the engine as it was.
  m.set_batch_aside();
  // Each batch's mean, weighted by its real elements: the mean over all of them.
  double sum = 0;
  const int64_t per_sample = data.floats_per_target();
  for (int64_t b = 0; b < feed.plan().batches_per_epoch(); ++b) {
    m.enqueue(Impl::kEvaluate);
    float batch_loss = 0;
    m.download(&batch_loss, m.loss_value, 1);
    sum += double(batch_loss) * double(feed.plan().samples_in_batch(b) * per_sample);
  }
  m.restore_batch();
  return static_cast<float>(sum / double(data.size() * per_sample));
}

void Engine::Impl::set_batch_aside() {
  BatchAside& aside = batch_aside;
  aside.input_bytes = size_t(numel(network.input_shape())) * sizeof(float);
  aside.target_bytes = size_t(output_count()) * sizeof(float);
  download(&aside.loss, loss_value, 1);
#if ANVIL_WITH_CUDA
  if (cuda()) {
    if (!aside.device) aside.device = {ctx->allocate(aside.input_bytes + aside.target_bytes), ReleaseOn{ctx.get()}};
    char* copy = static_cast<char*>(aside.device.get());
    ctx->copy_on_device(copy, input, aside.input_bytes);
    ctx->copy_on_device(copy + aside.input_bytes, target, aside.target_bytes);
    return;
  }
#endif
  aside.host.resize(aside.input_bytes + aside.target_bytes);
  std::memcpy(aside.host.data(), input, aside.input_bytes);
  std::memcpy(aside.host.data() + aside.input_bytes, target, aside.target_bytes);
}

void Engine::Impl::restore_batch() {
  const BatchAside& aside = batch_aside;
  upload(loss_value, &aside.loss, 1);
#if ANVIL_WITH_CUDA
  if (cuda()) {
    const char* copy = static_cast<const char*>(aside.device.get());
    ctx->copy_on_device(input, copy, aside.input_bytes);
    ctx->copy_on_device(target, copy + aside.input_bytes, aside.target_bytes);
    return;
  }
#endif
  std::memcpy(input, aside.host.data(), aside.input_bytes);
  std::memcpy(target, aside.host.data() + aside.input_bytes, aside.target_bytes);
}

}  // namespace anvil
