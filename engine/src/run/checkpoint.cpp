// Checkpoints: the parameters, the optimizer state and the step count in one
// safetensors file, with the position of the run and the network's identity
// in its metadata. Everything a step depends on is in it, so training N steps,
// saving, loading and training N more gives the bits of 2N straight steps.
#include <charconv>
#include <cstdio>
#include <limits>
#include <map>
#include <string>

#include "anvil/error.hpp"
#include "anvil/output_file.hpp"
#include "anvil/safetensors.hpp"
#include "anvil/trainer.hpp"
#include "anvil/version.hpp"
#include "engine/src/run/engine_impl.hpp"
#include "engine/src/spec/network_spec.hpp"

namespace anvil {

namespace {

constexpr const char* kCheckpointFormat = "1";  // what the metadata and tensors hold; raised on any change

std::string hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

int64_t metadata_integer(const TensorFile& file, const std::string& path, const std::string& key) {
  const auto it = file.metadata.find(key);
  if (it == file.metadata.end()) throw InputError(path + ": not an anvil checkpoint (no metadata '" + key + "')");
  const std::string& text = it->second;  // digits only, as written: no sign, space or fraction
  int64_t v = -1;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec == std::errc() && end == text.data() + text.size() && !text.empty() && text[0] != '-' && v <= kMaxSteps)
    return v;
  throw InputError(path + ": metadata '" + key + "' is not an integer from 0 to 2^53: '" + it->second + "'");
}

// A position a run can reach: each number from 0 to 2^53, and each epoch and
// each batch of one took a step. Checked as written and as read.
void check_position(const TrainPosition& p, const std::string& path) {
  for (const int64_t v : {p.step, p.epoch, p.batch_in_epoch})
    if (v < 0 || v > kMaxSteps)
      throw InputError(path + ": the checkpoint's position (step " + std::to_string(p.step) + ", epoch " +
                       std::to_string(p.epoch) + ", batch " + std::to_string(p.batch_in_epoch) +
                       ") is not made of integers from 0 to 2^53");
  if (p.epoch > p.step || p.batch_in_epoch > p.step)
    throw InputError(path + ": the checkpoint's position does not add up: epoch " + std::to_string(p.epoch) +
                     ", batch " + std::to_string(p.batch_in_epoch) + " at step " + std::to_string(p.step));
}

// The attached dataset as a checkpoint records it (empty without one): a
// resume over a dataset of another size, or with the order changed, would not
// continue the run. (Its contents are not fingerprinted.)
std::string data_description(const DataFeed* feed, const DataOptions& options) {
  if (feed == nullptr) return "";
  return "samples " + std::to_string(feed->data().size()) + ", shuffle " + (options.shuffle ? "on" : "off") +
         ", keep_last " + (options.keep_last ? "on" : "off");
}

// With a dataset attached, a position's next batch must lie in its epochs: why it does not, or "".
std::string batch_outside_epochs(const DataFeed* feed, const TrainPosition& p) {
  if (feed == nullptr || p.batch_in_epoch < feed->plan().batches_per_epoch()) return "";
  return "batch " + std::to_string(p.batch_in_epoch) + " of an epoch of " +
         std::to_string(feed->plan().batches_per_epoch());
}

// The tensor that holds optimizer state `state` (e.g. exp_avg) of a parameter.
std::string state_tensor_name(const std::string& state, const std::string& parameter) {
  return "optimizer." + state + "." + parameter;
}

// The metadata of a checkpoint: what the run was, and where it stands.
std::map<std::string, std::string> checkpoint_metadata(const NetworkSpec& spec, int64_t batch,
                                                       const std::string& optimizer, int64_t optimizer_step,
                                                       const TrainPosition& position, const std::string& data) {
  std::map<std::string, std::string> metadata = {
      {"anvil.checkpoint", kCheckpointFormat},
      {"anvil.version", version()},
      {"network.name", spec.name},
      {"network.hash", hex(spec.hash)},
      {"batch", std::to_string(batch)},
      {"optimizer", optimizer},
      {"optimizer.step", std::to_string(optimizer_step)},
      {"step", std::to_string(position.step)},
      {"epoch", std::to_string(position.epoch)},
      {"batch_in_epoch", std::to_string(position.batch_in_epoch)},
      {"shuffle", "random_stream(seed " + std::to_string(spec.seed) + ", \"shuffle.<epoch>\")"}};
  if (!data.empty()) metadata["data"] = data;
  return metadata;
}

}  // namespace

void Engine::Impl::refuse_own_inputs(const std::string& path) const {
  const InputFile& source = network.spec().source_file;
  if (source.replaced_by(path))
    throw InputError(path + ": the checkpoint would overwrite the network file " + source.absolute);
  for (const DataFeed* feed : {train_feed.get(), eval_feed.get()})
    if (feed && feed->file().replaced_by(path))
      throw InputError(path + ": the checkpoint would overwrite the dataset " + feed->file().absolute);
}

void Engine::save_checkpoint(const std::string& path, const TrainPosition& position) const {
  require_arena();
  const Impl& m = *impl_;
  if (!m.training()) throw Error("save_checkpoint needs an engine built for training (Mode::Train)");
  check_position(position, path);
  if (const std::string why = batch_outside_epochs(m.train_feed.get(), position); !why.empty())
    throw InputError(path + ": " + why + " (the attached dataset's)");
  check_output_is_a_file(path, "a checkpoint");  // never written into a device or a pipe
  m.refuse_own_inputs(path);
  TensorFile file;
  file.tensors = m.read_slab(m.params, "the checkpoint's parameters");
  const std::vector<std::string> states = m.optimizer->state_names();
  for (size_t k = 0; k < states.size(); ++k)
    for (auto& [name, tensor] : m.read_slab(m.optimizer_args.state[k], "the checkpoint's optimizer state"))
      file.tensors[state_tensor_name(states[k], name)] = std::move(tensor);
  StepState state;
  m.download_bytes(&state, m.optimizer_args.step, sizeof state);
  // A loaded optimizer step of 2^53 (a forged checkpoint) grows past what load_checkpoint reads.
  if (state.step > kMaxSteps)
    throw InputError(path + ": the optimizer's step count " + std::to_string(state.step) +
                     " is past 2^53: a checkpoint of it could not be loaded");
  file.metadata = checkpoint_metadata(m.network.spec(), m.global_batch(), m.optimizer->describe(), state.step, position,
                                      data_description(m.train_feed.get(), m.data_options));
  write_safetensors(path, file);
}

void Engine::check_checkpoint_fits(const std::string& path) const {
  require_arena();
  const Impl& m = *impl_;
  if (!m.training()) throw Error("check_checkpoint_fits needs an engine built for training (Mode::Train)");
  check_output_is_a_file(path, "a checkpoint");
  m.refuse_own_inputs(path);
  std::map<std::string, Shape> shapes;
  const std::vector<std::string> states = m.optimizer->state_names();
  for (const auto& slot : m.schedule.params) {
    shapes.emplace(slot.spec.name, slot.spec.shape);
    for (const std::string& state : states) shapes.emplace(state_tensor_name(state, slot.spec.name), slot.spec.shape);
  }
  // The widest numbers a run can reach.
  const TrainPosition last{kMaxSteps, kMaxSteps, kMaxSteps};
  check_safetensors_header(path, shapes,
                           checkpoint_metadata(m.network.spec(), m.global_batch(), m.optimizer->describe(),
                                               std::numeric_limits<int64_t>::max(), last,
                                               data_description(m.train_feed.get(), m.data_options)));
}

TrainPosition Engine::load_checkpoint(const std::string& path) {
  require_arena();
  Impl& m = *impl_;
  if (!m.training()) throw Error("load_checkpoint needs an engine built for training (Mode::Train)");
  TensorFile file = read_safetensors(path);
  const NetworkSpec& spec = m.network.spec();
  const auto hash = file.metadata.find("network.hash");
  const auto format = file.metadata.find("anvil.checkpoint");
  if (format == file.metadata.end() || hash == file.metadata.end())
    throw InputError(path + ": not an anvil checkpoint (use --weights for a file of parameters)");
  if (format->second != kCheckpointFormat)
    throw InputError(path + ": checkpoint format '" + format->second + "'; this anvil reads format " +
                     kCheckpointFormat);
  // The optimizer is part of the network's hash: named first, it is the difference the message gives.
  const auto optimizer = file.metadata.find("optimizer");
  if (optimizer == file.metadata.end() || optimizer->second != m.optimizer->describe())
    throw InputError(path + ": the checkpoint's optimizer (" +
                     (optimizer == file.metadata.end() ? std::string("none recorded") : optimizer->second) +
                     ") differs from this network's (" + m.optimizer->describe() + ")");
  if (hash->second != hex(spec.hash)) {
    const auto name = file.metadata.find("network.name");
    throw InputError(path + ": the checkpoint is of another network ('" +
                     (name == file.metadata.end() ? std::string("unnamed") : name->second) + "', hash " + hash->second +
                     "; this one is '" + spec.name + "', hash " + hex(spec.hash) + ")");
  }
  if (metadata_integer(file, path, "batch") != m.global_batch())
    throw InputError(path + ": the checkpoint was written at batch " + file.metadata.at("batch") +
                     ", this run's batch is " + std::to_string(m.global_batch()));
  TrainPosition position;
  position.step = metadata_integer(file, path, "step");
  position.epoch = metadata_integer(file, path, "epoch");
  position.batch_in_epoch = metadata_integer(file, path, "batch_in_epoch");
  check_position(position, path);
  // The data it was written over (checkpoints written without a dataset, or before this key, have none),
  // first: where it differs, that names why the position below may not fit.
  const auto data = file.metadata.find("data");
  const std::string this_data = data_description(m.train_feed.get(), m.data_options);
  if (!this_data.empty() && data != file.metadata.end() && data->second != this_data)
    throw InputError(path + ": the checkpoint was written over other data or another order (" + data->second +
                     "); this run's: " + this_data);
  if (const std::string why = batch_outside_epochs(m.train_feed.get(), position); !why.empty())
    throw InputError(path + ": " + why + " (another dataset or batch size?)");
  // The learning rate and Adam's corrections are recomputed from the step: learning_rate() reads them.
  const StepState state = m.optimizer->state_after(metadata_integer(file, path, "optimizer.step"));

  // Moved out of the file, not copied: a second copy of the parameters and state may not fit.
  auto take = [&](const std::string& name, const Shape& shape) {
    require_tensor(file, path, name, shape);
    return std::move(file.tensors.at(name));
  };
  std::map<std::string, HostTensor> params;
  for (const auto& slot : m.schedule.params) params[slot.spec.name] = take(slot.spec.name, slot.spec.shape);
  const std::vector<std::string> states = m.optimizer->state_names();
  std::vector<std::map<std::string, HostTensor>> state_slabs(states.size());
  for (size_t k = 0; k < states.size(); ++k)
    for (const auto& slot : m.schedule.params)
      state_slabs[k][slot.spec.name] = take(state_tensor_name(states[k], slot.spec.name), slot.spec.shape);
  // Everything is checked: now write.
  m.write_slab(m.params, params);
  for (size_t k = 0; k < states.size(); ++k) m.write_slab(m.optimizer_args.state[k], state_slabs[k]);
  m.upload_bytes(m.optimizer_args.step, &state, sizeof state);
  m.steps = position.step;
  m.synchronize();
  return position;
}

}  // namespace anvil
