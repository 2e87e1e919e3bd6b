// Feeds an engine's input and target from a dataset, one minibatch per step.
// Where the dataset fits the device budget it is uploaded once and the step
// gathers its own batch (kernels/cuda/gather.hpp), so a captured step has no
// host work and no host-to-device copy. Otherwise each batch is gathered on
// the host into pinned memory and copied on the engine's stream before the
// step. The CPU backend gathers on the host inside the step.
#pragma once

#include <cstdint>
#include <vector>

#include "anvil/dataset.hpp"
#include "anvil/engine.hpp"

namespace anvil {

class CudaContext;

// Where one step's batch goes: the engine's input and target, and the count of
// target elements that are real (the loss averages over those).
struct FeedTargets {
  float* input = nullptr;
  float* target = nullptr;
  int64_t* valid_elements = nullptr;
};

class DataFeed {
 public:
  // device_budget: the most device memory the dataset may take (CUDA).
  DataFeed(const Dataset& data, const BatchPlan& plan, Device device, CudaContext* ctx, size_t device_budget);
  ~DataFeed();
  DataFeed(const DataFeed&) = delete;
  DataFeed& operator=(const DataFeed&) = delete;

  // The dataset fed (InputError where it was moved from or assigned another since the feed was made).
  const Dataset& data() const;
  const Dataset* attached() const { return data_; }  // the object given, unchecked
  const InputFile& file() const { return file_; }    // the dataset's file, as it was when the feed was made
  // Whether this feed serves `data`: the same object, holding what it held when the feed was made
  // (an object at the same address, reassigned or loaded anew, is another dataset).
  bool serves(const Dataset& data) const { return data_ == &data && identity_ == data.identity(); }
  const BatchPlan& plan() const { return plan_; }
  bool on_device() const { return resident_; }
  // The epoch's sample order (plan().sample_count() indices: all of the dataset's, or a
  // data-parallel rank's slices), from batch `first_batch` on (one copy per epoch on CUDA);
  // Engine::start_epoch has checked that it is within the epoch.
  void start_epoch(const std::vector<int64_t>& order, int64_t first_batch);

  // Before a step, outside any captured graph: a feed that is not resident
  // gathers the next batch in pinned memory and copies it on the stream.
  void before_step(const FeedTargets& to);
  // Inside the step: a resident feed (or the CPU) gathers the batch here.
  void in_step(const FeedTargets& to);

 private:
  const Dataset* data_;
  uint64_t identity_;  // data_->identity() when the feed was made
  InputFile file_;
  BatchPlan plan_;
  bool resident_ = false;
  int64_t next_batch_ = 0;  // within the epoch, as the host counts
  std::vector<int64_t> host_order_;
  int64_t host_cursor_ = 0;  // the CPU's cursor (CUDA keeps its cursor on the device)
#if ANVIL_WITH_CUDA
  Device device_ = Device::Cpu;
  CudaContext* ctx_ = nullptr;
  // The dataset, the order and the cursor on the device (resident), or
  // pinned staging for one batch (not resident).
  float* device_inputs_ = nullptr;
  float* device_targets_ = nullptr;
  int64_t* device_order_ = nullptr;
  int64_t* device_cursor_ = nullptr;
  float* pinned_batch_ = nullptr;  // the valid count (8 bytes, aligned), then input rows, then target rows
  size_t pinned_bytes_ = 0;
#endif
};

}  // namespace anvil
