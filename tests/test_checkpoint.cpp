// Checkpoints: N steps, a checkpoint, a fresh engine that loads it and N more
// steps give the bits of 2N straight steps, for every optimizer; a checkpoint
// of another network or optimizer, or a plain weights file, is refused.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <limits>
#include <string>

#include "anvil/error.hpp"
#include "anvil/trainer.hpp"
#include "tests/fifo_reader.hpp"
#include "tests/require_gpu.hpp"
#include "tests/test_support.hpp"

namespace anvil::testing {
namespace {

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "/anvil_ckpt_" + std::to_string(::getpid()) + "_" + name;
}

Options cpu_options() {
  Options o;
  o.device = Device::Cpu;
  return o;
}

struct ResumeCase {
  std::string network;
  Device device;
};

void PrintTo(const ResumeCase& c, std::ostream* os) { *os << c.network << " on " << to_string(c.device); }

void expect_same_parameters(const Engine& a, const Engine& b) {
  const auto pa = a.parameters(), pb = b.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& [name, value] : pa) EXPECT_TRUE(bitwise_equal(value, pb.at(name))) << name;
}

class CheckpointResume : public ::testing::TestWithParam<ResumeCase> {};

TEST_P(CheckpointResume, IsBitwiseEqualToStraightTraining) {
  const ResumeCase& c = GetParam();
  if (c.device == Device::Cuda) ANVIL_REQUIRE_GPU_OR_SKIP();
  const Network net = Network::load(data_path(c.network + ".json"));
  Options options;
  options.device = c.device;
  constexpr int kHalf = 3;
  Engine straight(net, options), first(net, options);
  for (int i = 0; i < 2 * kHalf; ++i) straight.train_step();
  for (int i = 0; i < kHalf; ++i) first.train_step();
  const std::string path = temp_path(c.network + ".safetensors");
  first.save_checkpoint(path, {kHalf, 0, kHalf});

  Engine resumed(net, options);
  const TrainPosition position = resumed.load_checkpoint(path);
  EXPECT_EQ(position.step, kHalf);
  EXPECT_EQ(position.batch_in_epoch, kHalf);
  EXPECT_EQ(resumed.steps_done(), kHalf);
  // The learning rate reads as the saved run's last step left it (it was 0, as before any step).
  ASSERT_GT(first.learning_rate(), 0.f);
  if (c.device == Device::Cpu)
    EXPECT_EQ(resumed.learning_rate(), first.learning_rate());
  else  // the saved run's from the device's pow and cos, the resumed one's from the host's
    EXPECT_FLOAT_EQ(resumed.learning_rate(), first.learning_rate());
  float last_straight = 0, last_resumed = 0;
  for (int i = 0; i < kHalf; ++i) last_resumed = resumed.train_step();
  last_straight = straight.train_step();  // one more for both, comparing the losses too
  last_resumed = resumed.train_step();
  EXPECT_EQ(last_resumed, last_straight);
  expect_same_parameters(straight, resumed);
  std::remove(path.c_str());
}

// SGD with momentum and a step schedule, Adam with a step schedule, AdamW with warmup and cosine,
// and on the GPU the headline network's fused path (captured steps, tensor-core kernels).
std::vector<ResumeCase> resume_cases() {
  std::vector<ResumeCase> out;
  for (const char* name : {"sgd_step_schedule", "adam_step", "adamw_cosine"})
    for (Device d : {Device::Cpu, Device::Cuda}) out.push_back({name, d});
  out.push_back({"kb74_small", Device::Cuda});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Optimizers, CheckpointResume, ::testing::ValuesIn(resume_cases()), [](const auto& info) {
  return info.param.network + (info.param.device == Device::Cuda ? "_gpu" : "_cpu");
});

// Only a loaded network knows its file: one parsed from text under a label that names a file is
// not refused a checkpoint there, as the label is not read as a path.
TEST(Checkpoint, AParsedNetworksLabelIsNotItsFile) {
  const std::string path = temp_path("labelled.json");
  const std::string text = read_text(data_path("sgd_step_schedule.json"));
  { std::ofstream(path) << text; }
  Engine loaded(Network::load(path), cpu_options()), parsed(Network::parse(text, path), cpu_options());
  try {
    loaded.save_checkpoint(path, {});
    ADD_FAILURE() << "the network file was overwritten";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("would overwrite the network file"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_text(path), text);
  parsed.save_checkpoint(path, {});
  EXPECT_EQ(parsed.load_checkpoint(path).step, 0);
  std::remove(path.c_str());
}

TEST(Checkpoint, RefusesAnotherNetworkOrOptimizerOrAPlainWeightsFile) {
  const Network net = Network::load(data_path("adam_step.json"));
  Engine engine(net, cpu_options());
  engine.train_step();
  const std::string path = temp_path("refuse.safetensors");
  engine.save_checkpoint(path, {1, 0, 1});

  // The same layers with another learning rate is another network: its hash differs.
  const nlohmann::json schedule = {{"type", "step"}, {"step_size", 2}, {"gamma", 0.5}};
  const Network other = network_with(data_path("adam_step.json"),
                                     {{"optimizer", {{"type", "adam"}, {"lr", 0.5}, {"lr_schedule", schedule}}}});
  Engine different(other, cpu_options());
  try {
    different.load_checkpoint(path);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("the checkpoint is of another network"), std::string::npos) << e.what();
  }
  // Another optimizer type (also part of the hash) is named as the difference, both sides given.
  const Network sgd = network_with(data_path("adam_step.json"), {{"optimizer", {{"type", "sgd"}, {"lr", 0.1}}}});
  Engine with_sgd(sgd, cpu_options());
  try {
    with_sgd.load_checkpoint(path);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()),
              path + ": the checkpoint's optimizer (adam, step schedule) differs from this network's (sgd)");
  }
  // A weights file (no checkpoint metadata) is not a checkpoint.
  TensorFile weights;
  weights.tensors = engine.parameters();
  const std::string weights_path = temp_path("weights.safetensors");
  write_safetensors(weights_path, weights);
  try {
    engine.load_checkpoint(weights_path);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("not an anvil checkpoint"), std::string::npos) << e.what();
  }
  // A checkpoint missing a state tensor names it, and leaves the engine as it was.
  TensorFile broken = read_safetensors(path);
  broken.tensors.erase("optimizer.exp_avg_sq.head.weight");
  write_safetensors(path, broken);
  const auto before = engine.parameters();
  try {
    engine.load_checkpoint(path);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer.exp_avg_sq.head.weight"), std::string::npos) << e.what();
  }
  for (const auto& [name, value] : engine.parameters()) EXPECT_TRUE(bitwise_equal(value, before.at(name))) << name;
  std::remove(path.c_str());
  std::remove(weights_path.c_str());
}

// A network whose checkpoint header would pass the readers' 100 MB limit (many
// long parameter names, three copies of each under Adam) is refused when the
// trainer is made, before any step, not after the run; a fitting one is not.
TEST(Checkpoint, AHeaderBeyondTheReadersLimitIsRefusedBeforeTraining) {
  constexpr int kLayers = 60000;  // 3 copies of 2 x 60000 names of ~300 bytes: ~115 MB of header
  nlohmann::json layers = nlohmann::json::array();
  for (int i = 0; i < kLayers; ++i) {
    const std::string id = std::to_string(i);
    layers.push_back({{"type", "conv2d"},
                      {"name", id + std::string(256 - id.size(), 'x')},
                      {"in_channels", 1},
                      {"out_channels", 1},
                      {"kernel_size", 1}});
  }
  const nlohmann::json wide = {{"name", "wide"},
                               {"input", {1, 1, 1, 1}},
                               {"layers", layers},
                               {"loss", "mse"},
                               {"optimizer", {{"type", "adam"}, {"lr", 0.001}}}};
  const std::string path = temp_path("wide.safetensors");
  Engine engine(Network::parse(wide.dump(), "wide.json"), cpu_options());
  TrainOptions options;
  options.steps = 1;
  options.checkpoint = path;
  try {
    Trainer trainer(engine, options);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {  // the network's names: exit 2 in the CLI
    EXPECT_NE(std::string(e.what()).find("beyond the 100000000-byte limit of safetensors readers"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(engine.steps_done(), 0);
  EXPECT_NE(::access(path.c_str(), F_OK), 0);

  // A fitting one is checked, and written at the end.
  Engine small(Network::load(data_path("adam_step.json")), cpu_options());
  options.checkpoint = temp_path("small.safetensors");
  Trainer fits(small, options);
  fits.run({});
  fits.save_checkpoint(options.checkpoint);
  EXPECT_EQ(read_safetensors(options.checkpoint).metadata.at("step"), "1");
  std::remove(options.checkpoint.c_str());
}

// A checkpoint is a regular file, replaced by rename: a path to a character device or a pipe is
// refused by the Trainer when it is made, before any step (it took the steps, then wrote into
// /dev/null, failed on /dev/full, or blocked on a FIFO without reader), and by save_checkpoint
// and check_checkpoint_fits themselves.
TEST(Checkpoint, ADeviceOrAPipeIsRefusedBeforeTraining) {
  const std::string fifo = temp_path("checkpoint.fifo");
  std::remove(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  FifoReader reader(fifo);  // so that a write into it would not wait for a reader: it would show
  ASSERT_TRUE(reader.opened());
  const std::string tail =
      ", and a checkpoint must be a regular file or a new name (written to a temporary file, "
      "then renamed)";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"/dev/null", "/dev/null: cannot write: it is a character device" + tail},
      {"/dev/full", "/dev/full: cannot write: it is a character device" + tail},
      {fifo, fifo + ": cannot write: it is a pipe or FIFO" + tail}};
  Engine engine(Network::load(data_path("adam_step.json")), cpu_options());
  for (const auto& [path, want] : cases) {
    SCOPED_TRACE(path);
    TrainOptions options;
    options.steps = 2;
    options.checkpoint = path;
    options.checkpoint_every = 1;
    try {
      Trainer trainer(engine, options);
      ADD_FAILURE() << "no error";
    } catch (const InputError& e) {
      EXPECT_EQ(std::string(e.what()), want);
    }
    EXPECT_EQ(engine.steps_done(), 0);
    try {
      engine.check_checkpoint_fits(path);
      ADD_FAILURE() << "check_checkpoint_fits: no error";
    } catch (const InputError& e) {
      EXPECT_EQ(std::string(e.what()), want);
    }
  }
  engine.train_step();
  for (const auto& [path, want] : cases) {
    try {
      engine.save_checkpoint(path, {1, 0, 1});
      ADD_FAILURE() << path << ": save_checkpoint: no error";
    } catch (const InputError& e) {
      EXPECT_EQ(std::string(e.what()), want);
    }
  }
  EXPECT_EQ(reader.finish().size(), 0u);
  struct stat st {};
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  std::remove(fifo.c_str());
}

// Forged metadata: counters past 2^53 (whose increments would overflow) or not
// as anvil writes them, a future format, a position that does not add up, and
// another network's hash without a name are InputErrors that say so.
TEST(Checkpoint, RefusesForgedCountersAndNamesAnUnnamedNetwork) {
  const Network net = Network::load(data_path("adam_step.json"));
  Engine engine(net, cpu_options());
  engine.train_step();
  const std::string path = temp_path("forged.safetensors");
  engine.save_checkpoint(path, {1, 0, 1});
  const TensorFile good = read_safetensors(path);
  auto error_with = [&](const std::string& key, const std::string& value) -> std::string {
    TensorFile forged = good;
    forged.metadata[key] = value;
    write_safetensors(path, forged);
    try {
      engine.load_checkpoint(path);
    } catch (const InputError& e) {
      return e.what();
    }
    return "<no error>";
  };
  for (const char* key : {"step", "epoch", "optimizer.step"})
    EXPECT_EQ(error_with(key, "9223372036854775807"),
              path + ": metadata '" + key + "' is not an integer from 0 to 2^53: '9223372036854775807'");
  for (const char* text : {" 1", "+1", "1.0", "", "-0", "1 "})  // only the digits anvil writes
    EXPECT_EQ(error_with("step", text), path + ": metadata 'step' is not an integer from 0 to 2^53: '" + text + "'");
  EXPECT_EQ(error_with("anvil.checkpoint", "2"), path + ": checkpoint format '2'; this anvil reads format 1");
  EXPECT_EQ(error_with("epoch", "2"), path + ": the checkpoint's position does not add up: epoch 2, batch 1 at step 1");
  EXPECT_EQ(error_with("batch_in_epoch", "5"),
            path + ": the checkpoint's position does not add up: epoch 0, batch 5 at step 1");
  TensorFile unnamed = good;
  unnamed.metadata.erase("network.name");
  unnamed.metadata["network.hash"] = "0123456789abcdef";
  write_safetensors(path, unnamed);
  try {
    engine.load_checkpoint(path);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("the checkpoint is of another network ('unnamed', hash 0123456789abcdef"),
              std::string::npos)
        << e.what();
  }
  std::remove(path.c_str());
}

// save_checkpoint writes only a position load_checkpoint reads back: the same rules, checked before
// anything is written, so an old checkpoint at the path stays.
TEST(Checkpoint, APositionThatCouldNotBeReadBackIsNotWritten) {
  const Network net = Network::load(data_path("adam_step.json"));
  Engine engine(net, cpu_options());
  engine.train_step();
  const std::string path = temp_path("position.safetensors");
  engine.save_checkpoint(path, {1, 0, 1});
  const std::string old = read_text(path);
  auto error_with = [&](const TrainPosition& position) -> std::string {
    try {
      engine.save_checkpoint(path, position);
    } catch (const InputError& e) {
      return e.what();
    }
    return "<no error>";
  };
  const int64_t huge = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(error_with({-5, -3, -1}),
            path + ": the checkpoint's position (step -5, epoch -3, batch -1) is not made of integers from 0 to 2^53");
  EXPECT_EQ(error_with({huge, 0, 0}), path + ": the checkpoint's position (step " + std::to_string(huge) +
                                          ", epoch 0, batch 0) is not made of integers from 0 to 2^53");
  EXPECT_EQ(error_with({kMaxSteps, kMaxSteps + 1, 0}),
            path + ": the checkpoint's position (step " + std::to_string(kMaxSteps) + ", epoch " +
                std::to_string(kMaxSteps + 1) + ", batch 0) is not made of integers from 0 to 2^53");
  EXPECT_EQ(error_with({3, 4, 0}), path + ": the checkpoint's position does not add up: epoch 4, batch 0 at step 3");
  EXPECT_EQ(error_with({3, 0, 4}), path + ": the checkpoint's position does not add up: epoch 0, batch 4 at step 3");
  EXPECT_EQ(read_text(path), old);
  engine.save_checkpoint(path, {kMaxSteps, kMaxSteps, kMaxSteps});  // the widest a run reaches
  EXPECT_EQ(engine.load_checkpoint(path).step, kMaxSteps);
  std::remove(path.c_str());
}

// The optimizer's step is not cross-checked against the position, so a checkpoint may hold 2^53;
// a step after loading it took the count past what load_checkpoint reads, and save_checkpoint
// wrote a checkpoint that could not be resumed. Now it refuses, and the old file stays.
TEST(Checkpoint, AnOptimizerStepPast2To53IsNotWritten) {
  const Network net = Network::load(data_path("adam_step.json"));
  Engine engine(net, cpu_options());
  engine.train_step();
  const std::string path = temp_path("optimizer_step.safetensors");
  engine.save_checkpoint(path, {1, 0, 1});
  TensorFile forged = read_safetensors(path);
  forged.metadata["optimizer.step"] = std::to_string(kMaxSteps);
  write_safetensors(path, forged);
  engine.load_checkpoint(path);
  engine.train_step();
  const std::string old = read_text(path);
  try {
    engine.save_checkpoint(path, {2, 0, 2});
    ADD_FAILURE() << "a checkpoint with optimizer.step past 2^53 was written";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), path + ": the optimizer's step count " + std::to_string(kMaxSteps + 1) +
                                         " is past 2^53: a checkpoint of it could not be loaded");
  }
  EXPECT_EQ(read_text(path), old);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace anvil::testing

namespace anvil::testing {
namespace {

// Across epochs and shuffles: 11 steps (into the second epoch of 8), a checkpoint, a fresh engine resumed
// from it for 5 more steps, against 16 straight steps.
void resume_across_epochs(Device device) {
  const Network net = Network::load(data_path("dataset_epochs.json"));
  const Shape sample(net.input_shape().begin() + 1, net.input_shape().end());
  const Shape target(net.output_shape().begin() + 1, net.output_shape().end());
  const Dataset data = Dataset::load(data_path("dataset_epochs_train.safetensors"), sample, target);
  Options options;
  options.device = device;
  auto run = [&](Engine& engine, int64_t steps, const std::string& resume_from, DataOptions data_options = {}) {
    TrainOptions o;
    o.steps = steps;
    Trainer trainer(engine, data, nullptr, o, data_options);
    if (!resume_from.empty()) trainer.resume(resume_from);
    trainer.run({});
    return trainer.position();
  };
  Engine straight(net, options), first(net, options), resumed(net, options);
  run(straight, 16, "");
  const TrainPosition at = run(first, 11, "");
  EXPECT_EQ(at.epoch, 1);
  EXPECT_EQ(at.batch_in_epoch, 3);
  const std::string path = temp_path(std::string("epochs_") + to_string(device) + ".safetensors");
  first.save_checkpoint(path, at);
  const TrainPosition end = run(resumed, 16, path);
  EXPECT_EQ(end.step, 16);
  EXPECT_EQ(end.epoch, 2);
  expect_same_parameters(straight, resumed);
  EXPECT_EQ(read_safetensors(path).metadata.at("data"), "samples 256, shuffle on, keep_last off");
  // Another order, or other data (the record of another dataset), is refused
  // before anything is written: the engine keeps its parameters.
  const auto before = resumed.parameters();
  auto refusal = [&](const DataOptions& options) -> std::string {
    try {
      run(resumed, 16, path, options);
    } catch (const InputError& e) {
      return e.what();
    }
    return "<no error>";
  };
  DataOptions unshuffled;
  unshuffled.shuffle = false;
  EXPECT_EQ(refusal(unshuffled), path +
                                     ": the checkpoint was written over other data or another order (samples 256, "
                                     "shuffle on, keep_last off); this run's: samples 256, shuffle off, keep_last off");
  TensorFile other = read_safetensors(path);
  other.metadata["data"] = "samples 65, shuffle on, keep_last off";
  write_safetensors(path, other);
  EXPECT_EQ(refusal({}), path +
                             ": the checkpoint was written over other data or another order (samples 65, "
                             "shuffle on, keep_last off); this run's: samples 256, shuffle on, keep_last off");
  // A position beyond this run's epoch that the recorded data explains: the data is named, not the batch.
  TensorFile kept = read_safetensors(path);
  kept.metadata["data"] = "samples 256, shuffle on, keep_last on";
  kept.metadata["batch_in_epoch"] = "8";
  write_safetensors(path, kept);
  EXPECT_EQ(refusal({}), path +
                             ": the checkpoint was written over other data or another order (samples 256, "
                             "shuffle on, keep_last on); this run's: samples 256, shuffle on, keep_last off");
  // A batch beyond the epoch (another dataset, another batch size) likewise.
  TensorFile forged = read_safetensors(path);
  forged.metadata.erase("data");            // as a checkpoint written before the record
  forged.metadata["batch_in_epoch"] = "8";  // the epoch has 8 batches, 0 to 7
  write_safetensors(path, forged);
  try {
    run(resumed, 16, path);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), path + ": batch 8 of an epoch of 8 (another dataset or batch size?)");
  }
  // Saving refuses that position too, before writing: the file at the path stays as it was.
  const std::string forged_text = read_text(path);
  try {
    first.save_checkpoint(path, {16, 1, 8});
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), path + ": batch 8 of an epoch of 8 (the attached dataset's)");
  }
  EXPECT_EQ(read_text(path), forged_text);
  for (const auto& [name, value] : resumed.parameters()) EXPECT_TRUE(bitwise_equal(value, before.at(name))) << name;
  std::remove(path.c_str());
}

TEST(CheckpointResumeAcrossEpochs, CpuIsBitwiseEqualToStraightTraining) { resume_across_epochs(Device::Cpu); }

TEST(CheckpointResumeAcrossEpochs, GpuIsBitwiseEqualToStraightTraining) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  resume_across_epochs(Device::Cuda);
}

}  // namespace
}  // namespace anvil::testing
