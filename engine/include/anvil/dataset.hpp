// Datasets for training in minibatches: a safetensors file holding `input` of
// shape [S, sample shape...] and `target` of shape [S, target shape...], where
// the sample shape is the network's input shape without its batch dimension
// and the target shape the network's output shape without it.
//
//   anvil::Dataset data = anvil::Dataset::load("train.safetensors", sample_shape, target_shape);
//   anvil::BatchPlan plan = data.batch_plan(32, /*keep_last=*/false);
//   for (int64_t epoch = 0; epoch < epochs; ++epoch) {
//     const std::vector<int64_t> order = anvil::epoch_order(data.size(), seed, epoch, /*shuffle=*/true);
//     for (int64_t b = 0; b < plan.batches_per_epoch(); ++b) {
//       const std::vector<int64_t> samples = plan.samples(order, b);
//       engine.set_input(data.input_batch(samples));
//       engine.set_target(data.target_batch(samples));
//       engine.train_step();
//     }
//   }
//
// The shuffle is a specification that tools/make_reference.py implements too
// (its `epoch_order`), so a PyTorch run can see the same batches:
//
//   epoch_order(S, seed, epoch, shuffle):
//     order = [0, 1, ..., S - 1]
//     if shuffle:                                   Fisher-Yates, from the back
//       stream = random_stream(seed, "shuffle." + decimal(epoch))
//       for i = S - 1 down to 1:
//         j = random_bits(stream, i) mod (i + 1)    (random.hpp; unsigned 64-bit)
//         swap(order[i], order[j])
//
// Batch b of an epoch holds the samples at positions [b * B, b * B + n) of the
// epoch's order, n = B except for the last batch of a keep-last plan.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "anvil/output_file.hpp"
#include "anvil/tensor.hpp"

namespace anvil {

class Network;

// The epoch's sample order: a permutation of [0, S) (the identity without shuffle). InputError for
// S beyond 0 .. 2^40 or an epoch below 0.
std::vector<int64_t> epoch_order(int64_t sample_count, uint64_t seed, int64_t epoch, bool shuffle);

// How an epoch of S samples splits into batches of B: floor(S / B) full batches,
// plus one partial batch of S mod B samples when keep_last is set (and S mod B > 0).
class BatchPlan {
 public:
  // Throws InputError when B < 1, or when B > S and keep_last is off (no batch at all).
  BatchPlan(int64_t sample_count, int64_t batch_size, bool keep_last);

  int64_t sample_count() const { return sample_count_; }
  int64_t batch_size() const { return batch_size_; }
  bool keep_last() const { return keep_last_; }
  int64_t batches_per_epoch() const;

  // Batch `index` of an epoch covers positions [first_position, first_position + samples_in_batch)
  // of the epoch's order (a device-side gather can read the order at that offset).
  int64_t first_position(int64_t index) const;
  int64_t samples_in_batch(int64_t index) const;  // B, or S mod B for a keep-last partial batch
  // The sample indices of batch `index`: that slice of `order` (an epoch_order result).
  std::vector<int64_t> samples(const std::vector<int64_t>& order, int64_t index) const;

 private:
  void check_index(int64_t index) const;

  int64_t sample_count_, batch_size_;
  bool keep_last_;
};

// A validated dataset in host memory: one contiguous row-major buffer per tensor.
class Dataset {
 public:
  // Shapes are per sample (no leading sample count). Every problem is an InputError
  // of one line naming the file and the tensor: a missing tensor, a dtype the reader
  // refuses, a truncated file, a tensor without a sample dimension, a sample shape
  // that is not the network's, sample counts that differ, no samples at all, a NaN or an
  // infinity (naming its index and sample).
  static Dataset load(const std::string& path, const Shape& sample_shape, const Shape& target_sample_shape);

  // Copies share the identity; a moved-from dataset has none (an engine it was attached to refuses it).
  Dataset(const Dataset&) = default;
  Dataset& operator=(const Dataset&) = default;
  Dataset(Dataset&& other) noexcept;
  Dataset& operator=(Dataset&& other) noexcept;

  const std::string& path() const { return path_; }
  // Which file it was loaded from (an engine refuses to write a checkpoint over it).
  const InputFile& file() const { return file_; }
  // A number no other load gives (copies share it; 0 once moved from): an engine
  // holding a dataset tells a new one at the same address from it by this.
  uint64_t identity() const { return identity_; }
  int64_t size() const { return inputs_.shape.empty() ? 0 : inputs_.shape[0]; }  // the sample count S
  Shape sample_shape() const;
  Shape target_sample_shape() const;
  int64_t floats_per_sample() const { return floats_per_sample_; }
  int64_t floats_per_target() const { return floats_per_target_; }

  // The whole tensors, [S, ...]: for uploading once.
  const HostTensor& inputs() const { return inputs_; }
  const HostTensor& targets() const { return targets_; }
  // Sample i (InputError outside 0..size()-1).
  const float* input_sample(int64_t i) const;
  const float* target_sample(int64_t i) const;

  // The given samples stacked into one batch, [samples.size(), sample shape...].
  HostTensor input_batch(const std::vector<int64_t>& samples) const;
  HostTensor target_batch(const std::vector<int64_t>& samples) const;

  // BatchPlan(size(), batch_size, keep_last) whose errors name this file and 'input'.
  BatchPlan batch_plan(int64_t batch_size, bool keep_last) const;

  // Throws an InputError naming this file where its samples are not net's input or its targets
  // not net's output (per sample), as training and evaluate() would.
  void check_fits(const Network& net) const;

 private:
  Dataset() = default;  // a Dataset is made by load: never empty (a moved-from one has no samples)

  std::string path_;
  InputFile file_;
  uint64_t identity_ = 0;  // 0: not loaded
  HostTensor inputs_, targets_;
  int64_t floats_per_sample_ = 0, floats_per_target_ = 0;
};

}  // namespace anvil
