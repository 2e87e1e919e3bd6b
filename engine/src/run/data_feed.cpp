#include "engine/src/run/data_feed.hpp"

#include <cstring>

#include "anvil/error.hpp"
#include "engine/src/run/host_memory.hpp"
#include "kernels/cpu/gather.hpp"

#if ANVIL_WITH_CUDA
#include "engine/src/cuda/check.hpp"
#include "engine/src/cuda/context.hpp"
#include "kernels/cuda/gather.hpp"
#endif

namespace anvil {

DataFeed::DataFeed(const Dataset& data, const BatchPlan& plan, [[maybe_unused]] Device device,
                   [[maybe_unused]] CudaContext* ctx, [[maybe_unused]] size_t device_budget)
    : data_(&data), identity_(data.identity()), file_(data.file()), plan_(plan) {
  const size_t samples = static_cast<size_t>(plan.sample_count());
  {
    const std::lock_guard<std::mutex> lock(host_memory_turn());
    if (const auto why = beyond_host_memory(samples * sizeof(int64_t)))
      throw Error(data.path() + ": the sample order of " + std::to_string(samples) + " samples takes " + *why);
    host_order_.resize(samples);
  }
#if ANVIL_WITH_CUDA
  device_ = device;
  ctx_ = ctx;
  if (device_ != Device::Cuda) return;
  const size_t input_bytes = data.inputs().data.size() * sizeof(float);
  const size_t target_bytes = data.targets().data.size() * sizeof(float);
  const size_t order_bytes = host_order_.size() * sizeof(int64_t);
  resident_ = input_bytes + target_bytes + order_bytes <= device_budget;
  if (resident_) {
    device_inputs_ = static_cast<float*>(ctx_->allocate(input_bytes));
    device_targets_ = static_cast<float*>(ctx_->allocate(target_bytes));
    device_order_ = static_cast<int64_t*>(ctx_->allocate(order_bytes));
    device_cursor_ = static_cast<int64_t*>(ctx_->allocate(sizeof(int64_t)));
    ctx_->copy_to_device(device_inputs_, data.inputs().data.data(), input_bytes);
    ctx_->copy_to_device(device_targets_, data.targets().data.data(), target_bytes);
    ctx_->synchronize();  // the host buffers may go before the copies would have run
  } else {
    const int64_t rows = plan_.batch_size();
    pinned_bytes_ =
        size_t(rows * (data.floats_per_sample() + data.floats_per_target())) * sizeof(float) + sizeof(int64_t);
    ANVIL_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&pinned_batch_), pinned_bytes_));
  }
#endif
}

DataFeed::~DataFeed() {
#if ANVIL_WITH_CUDA
  if (ctx_) {
    for (void* p : {static_cast<void*>(device_inputs_), static_cast<void*>(device_targets_),
                    static_cast<void*>(device_order_), static_cast<void*>(device_cursor_)})
      ctx_->release(p);
    if (pinned_batch_) ANVIL_CUDA_CHECK_PRINT(cudaFreeHost(pinned_batch_));
  }
#endif
}

const Dataset& DataFeed::data() const {
  // The object must outlive the engine (engine.hpp); what it holds may still change under it.
  if (data_->identity() != identity_)
    throw InputError(
        "the dataset given to attach_data was moved from or assigned another since: attach the one "
        "to train on again");
  return *data_;
}

void DataFeed::start_epoch(const std::vector<int64_t>& order, int64_t first_batch) {
  if (order.size() != host_order_.size()) throw Error("internal error: an epoch order of the wrong length");
  host_order_ = order;
  next_batch_ = first_batch;
  host_cursor_ = first_batch;
#if ANVIL_WITH_CUDA
  if (resident_) {
    ctx_->copy_to_device(device_order_, host_order_.data(), host_order_.size() * sizeof(int64_t));
    ctx_->copy_to_device(device_cursor_, &host_cursor_, sizeof(int64_t));
    ctx_->synchronize();  // host_cursor_ changes under the copy otherwise
  }
#endif
}

void DataFeed::before_step([[maybe_unused]] const FeedTargets& to) {
  data();                                        // still the dataset attached: the gathers below and in_step read it
  if (next_batch_ >= plan_.batches_per_epoch())  // nothing has run yet: the engine is as it was
    throw Error("every batch of this epoch (" + std::to_string(plan_.batches_per_epoch()) +
                ") has been taken; call start_epoch for the next epoch");
#if ANVIL_WITH_CUDA
  if (device_ == Device::Cuda && !resident_) {
    // The previous batch's copy must be done before its staging is reused.
    ctx_->synchronize();
    const int64_t rows = plan_.batch_size(), in_floats = rows * data_->floats_per_sample();
    const int64_t target_floats = rows * data_->floats_per_target();
    auto* valid = reinterpret_cast<int64_t*>(pinned_batch_);  // first: 8-byte aligned whatever the row sizes
    float* in = pinned_batch_ + sizeof(int64_t) / sizeof(float);
    float* target = in + in_floats;
    cpu::gather_batch(data_->inputs().data.data(), data_->floats_per_sample(), host_order_.data(), plan_.sample_count(),
                      next_batch_, rows, in);
    cpu::gather_batch(data_->targets().data.data(), data_->floats_per_target(), host_order_.data(),
                      plan_.sample_count(), next_batch_, rows, target);
    *valid = cpu::valid_rows(plan_.sample_count(), next_batch_, rows) * data_->floats_per_target();
    ctx_->copy_to_device(to.input, in, size_t(in_floats) * sizeof(float));
    ctx_->copy_to_device(to.target, target, size_t(target_floats) * sizeof(float));
    ctx_->copy_to_device(to.valid_elements, valid, sizeof(int64_t));
  }
#endif
  ++next_batch_;
}

void DataFeed::in_step(const FeedTargets& to) {
  const int64_t rows = plan_.batch_size();
#if ANVIL_WITH_CUDA
  if (device_ == Device::Cuda) {
    if (!resident_) return;
    cuda::gather_batch(device_inputs_, data_->floats_per_sample(), device_order_, plan_.sample_count(), device_cursor_,
                       rows, to.input, ctx_->stream());
    cuda::gather_batch(device_targets_, data_->floats_per_target(), device_order_, plan_.sample_count(), device_cursor_,
                       rows, to.target, ctx_->stream());
    cuda::finish_batch(device_cursor_, plan_.sample_count(), rows, data_->floats_per_target(), to.valid_elements,
                       ctx_->stream());
    return;
  }
#endif
  cpu::gather_batch(data_->inputs().data.data(), data_->floats_per_sample(), host_order_.data(), plan_.sample_count(),
                    host_cursor_, rows, to.input);
  cpu::gather_batch(data_->targets().data.data(), data_->floats_per_target(), host_order_.data(), plan_.sample_count(),
                    host_cursor_, rows, to.target);
  *to.valid_elements = cpu::valid_rows(plan_.sample_count(), host_cursor_, rows) * data_->floats_per_target();
  ++host_cursor_;
}

}  // namespace anvil
