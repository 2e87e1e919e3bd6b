#include "anvil/dataset.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <utility>

#include "anvil/error.hpp"
#include "anvil/network.hpp"
#include "anvil/output_file.hpp"
#include "anvil/random.hpp"
#include "anvil/safetensors.hpp"
#include "engine/src/run/host_memory.hpp"

namespace anvil {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& problem) { throw InputError(path + ": " + problem); }

// Takes the tensor `name` out of the file, checking that it is [S, expected sample shape...].
HostTensor take_samples(TensorFile& file, const std::string& path, const std::string& name, const Shape& expected,
                        const std::string& network_role) {
  const auto skipped = file.skipped.find(name);
  if (skipped != file.skipped.end())
    fail(path, "tensor '" + name + "' has dtype " + skipped->second + "; a dataset holds F16, BF16, F32 or F64 floats");
  const auto it = file.tensors.find(name);
  if (it == file.tensors.end()) fail(path, "no tensor named '" + name + "' (a dataset holds 'input' and 'target')");
  HostTensor tensor = std::move(it->second);
  if (tensor.shape.empty()) {
    fail(path, "tensor '" + name + "' is a scalar; its first dimension must count the samples");
  }
  const Shape sample(tensor.shape.begin() + 1, tensor.shape.end());
  if (sample != expected) {
    fail(path, "tensor '" + name + "' has sample shape " + to_string(sample) + ", the network " + network_role + " " +
                   to_string(expected));
  }
  return tensor;
}

// A NaN or an infinity would silently poison every step that draws its sample, and the mean of an
// evaluation: refused, naming the first one and its sample.
void require_finite(const std::string& path, const std::string& name, const HostTensor& tensor,
                    int64_t floats_per_row) {
  const auto bad = std::find_if(tensor.data.begin(), tensor.data.end(), [](float v) { return !std::isfinite(v); });
  if (bad == tensor.data.end()) return;
  const int64_t index = bad - tensor.data.begin();
  fail(path, "tensor '" + name + "' holds " +
                 (std::isnan(*bad) ? "NaN"
                  : *bad > 0       ? "Inf"
                                   : "-Inf") +
                 " at index " + std::to_string(index) + " (sample " + std::to_string(index / floats_per_row) +
                 "); a dataset must hold finite values");
}

constexpr const char* kMovedFrom = "an empty anvil::Dataset (moved from): make one with Dataset::load";

// Sample `row` of a [S, ...] tensor (none in a moved-from dataset's).
const float* row_pointer(const HostTensor& all, int64_t floats_per_row, int64_t row) {
  const int64_t samples = all.shape.empty() ? 0 : all.shape[0];
  if (row < 0 || row >= samples)
    throw InputError("sample " + std::to_string(row) + " of a dataset of " + std::to_string(samples));
  return all.data.data() + row * floats_per_row;
}

HostTensor gather(const HostTensor& all, int64_t floats_per_row, const std::vector<int64_t>& rows) {
  if (all.shape.empty()) throw InputError(kMovedFrom);
  for (int64_t row : rows) row_pointer(all, floats_per_row, row);  // every index checked before the batch is made
  Shape shape = all.shape;
  shape[0] = static_cast<int64_t>(rows.size());
  HostTensor batch(std::move(shape));
  float* out = batch.data.data();
  for (int64_t row : rows) {
    const float* in = row_pointer(all, floats_per_row, row);
    out = std::copy(in, in + floats_per_row, out);
  }
  return batch;
}

}  // namespace

std::vector<int64_t> epoch_order(int64_t sample_count, uint64_t seed, int64_t epoch, bool shuffle) {
  if (sample_count < 0 || sample_count > kMaxTensorElements)
    throw InputError("epoch_order: the sample count must be from 0 to 2^40, got " + std::to_string(sample_count));
  if (epoch < 0) throw InputError("epoch_order: the epoch must be >= 0, got " + std::to_string(epoch));
  if (const auto why = beyond_host_memory(size_t(sample_count) * sizeof(int64_t)))
    throw Error("epoch_order: the order of " + std::to_string(sample_count) + " samples takes " + *why);
  std::vector<int64_t> order(static_cast<size_t>(sample_count));
  for (int64_t i = 0; i < sample_count; ++i) order[i] = i;
  if (!shuffle) return order;
  const uint64_t stream = random_stream(seed, "shuffle." + std::to_string(epoch));
  for (int64_t i = sample_count - 1; i >= 1; --i) {
    const uint64_t j = random_bits(stream, static_cast<uint64_t>(i)) % static_cast<uint64_t>(i + 1);
    std::swap(order[i], order[j]);
  }
  return order;
}

BatchPlan::BatchPlan(int64_t sample_count, int64_t batch_size, bool keep_last)
    : sample_count_(sample_count), batch_size_(batch_size), keep_last_(keep_last) {
  if (sample_count < 0) throw InputError("the sample count must be >= 0, got " + std::to_string(sample_count));
  if (batch_size < 1) throw InputError("the batch size must be at least 1, got " + std::to_string(batch_size));
  if (batch_size > sample_count && !keep_last) {
    throw InputError("fewer samples (" + std::to_string(sample_count) + ") than one batch (" +
                     std::to_string(batch_size) + ")");
  }
}

int64_t BatchPlan::batches_per_epoch() const {
  const bool partial = keep_last_ && sample_count_ % batch_size_ != 0;
  return sample_count_ / batch_size_ + (partial ? 1 : 0);
}

void BatchPlan::check_index(int64_t index) const {
  if (index < 0 || index >= batches_per_epoch()) {
    throw InputError("batch " + std::to_string(index) + " of an epoch of " + std::to_string(batches_per_epoch()) +
                     " batches");
  }
}

int64_t BatchPlan::first_position(int64_t index) const {
  check_index(index);
  return index * batch_size_;
}

int64_t BatchPlan::samples_in_batch(int64_t index) const {
  check_index(index);
  return std::min(batch_size_, sample_count_ - index * batch_size_);
}

std::vector<int64_t> BatchPlan::samples(const std::vector<int64_t>& order, int64_t index) const {
  if (static_cast<int64_t>(order.size()) != sample_count_) {
    throw InputError("an order of " + std::to_string(static_cast<int64_t>(order.size())) + " samples for a plan of " +
                     std::to_string(sample_count_));
  }
  const auto first = order.begin() + first_position(index);
  return std::vector<int64_t>(first, first + samples_in_batch(index));
}

Dataset::Dataset(Dataset&& other) noexcept { *this = std::move(other); }

Dataset& Dataset::operator=(Dataset&& other) noexcept {
  if (this == &other) return *this;
  path_ = std::move(other.path_);
  file_ = std::move(other.file_);
  identity_ = std::exchange(other.identity_, 0);
  inputs_ = std::exchange(other.inputs_, HostTensor{});
  targets_ = std::exchange(other.targets_, HostTensor{});
  floats_per_sample_ = std::exchange(other.floats_per_sample_, 0);
  floats_per_target_ = std::exchange(other.floats_per_target_, 0);
  return *this;
}

Dataset Dataset::load(const std::string& path, const Shape& sample_shape, const Shape& target_sample_shape) {
  TensorFile file = read_safetensors(path);  // reports dtypes and truncation, naming the tensor
  static std::atomic<uint64_t> loads{0};
  Dataset data;
  data.path_ = path;
  data.file_ = InputFile::read_now(path);
  data.identity_ = ++loads;
  data.inputs_ = take_samples(file, path, "input", sample_shape, "takes");
  data.targets_ = take_samples(file, path, "target", target_sample_shape, "outputs");
  const int64_t inputs = data.inputs_.shape[0], targets = data.targets_.shape[0];
  if (inputs != targets) {
    fail(path, "tensor 'input' holds " + std::to_string(inputs) + " samples and 'target' " + std::to_string(targets));
  }
  if (inputs == 0) fail(path, "tensor 'input' holds no samples");
  data.floats_per_sample_ = numel(sample_shape);
  data.floats_per_target_ = numel(target_sample_shape);
  require_finite(path, "input", data.inputs_, data.floats_per_sample_);
  require_finite(path, "target", data.targets_, data.floats_per_target_);
  return data;
}

namespace {
Shape without_samples(const Shape& shape) { return shape.empty() ? Shape{} : Shape(shape.begin() + 1, shape.end()); }
}  // namespace

Shape Dataset::sample_shape() const { return without_samples(inputs_.shape); }
Shape Dataset::target_sample_shape() const { return without_samples(targets_.shape); }

void Dataset::check_fits(const Network& net) const {
  if (size() == 0) throw InputError(kMovedFrom);
  const Shape sample(net.input_shape().begin() + 1, net.input_shape().end());
  const Shape target(net.output_shape().begin() + 1, net.output_shape().end());
  if (sample_shape() != sample || target_sample_shape() != target)
    throw InputError(path_ + ": samples " + to_string(sample_shape()) + " -> " + to_string(target_sample_shape()) +
                     ", the network takes " + to_string(sample) + " -> " + to_string(target));
}

const float* Dataset::input_sample(int64_t i) const { return row_pointer(inputs_, floats_per_sample_, i); }
const float* Dataset::target_sample(int64_t i) const { return row_pointer(targets_, floats_per_target_, i); }

HostTensor Dataset::input_batch(const std::vector<int64_t>& samples) const {
  return gather(inputs_, floats_per_sample_, samples);
}
HostTensor Dataset::target_batch(const std::vector<int64_t>& samples) const {
  return gather(targets_, floats_per_target_, samples);
}

BatchPlan Dataset::batch_plan(int64_t batch_size, bool keep_last) const {
  try {
    return BatchPlan(size(), batch_size, keep_last);
  } catch (const InputError& e) {
    fail(path_, std::string("tensor 'input': ") + e.what());
  }
}

}  // namespace anvil
