// Non-finite values (Options::check_finite, TrainOptions::check_finite): the
// replayed step and the place named must be the ones a check after every
// single step finds; a traced step without a finding is an ordinary step, bit
// for bit; the last good checkpoint survives; and misuse is an Error. On the
// CPU, and on the GPU where there is one.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "anvil/dataset.hpp"
#include "anvil/engine.hpp"
#include "anvil/error.hpp"
#include "anvil/network.hpp"
#include "anvil/safetensors.hpp"
#include "anvil/trainer.hpp"
#include "tests/require_gpu.hpp"
#include "tests/temp_dir_test.hpp"
#include "tests/test_support.hpp"

namespace anvil {
namespace {

using testing::bitwise_equal;
using testing::data_path;
using testing::network_with;

// dataset_epochs.json (conv, leaky_relu, channel_scale, avg_pool) with plain SGD at a learning
// rate that makes it diverge within a few steps; in what part of the step depends on the rate.
Network diverging(double lr) {
  return network_with(data_path("dataset_epochs.json"), {{"optimizer", {{"type", "sgd"}, {"lr", lr}}}});
}

Options checked(Device device) {
  Options o;
  o.device = device;
  o.check_finite = true;
  return o;
}

// The step at which a check after every step first finds a NaN or an infinity.
int64_t first_bad_step(const Network& net, Device device, int64_t max_steps) {
  Engine engine(net, checked(device));
  for (int64_t step = 1; step <= max_steps; ++step) {
    engine.enqueue_train_step();
    if (engine.find_non_finite()) return step;
  }
  return -1;
}

// What Trainer::run throws, or "" when it finishes.
std::string run_message(Engine& engine, const TrainOptions& options) {
  Trainer trainer(engine, options);
  try {
    trainer.run({});
  } catch (const NonFiniteError& e) {
    return e.what();
  }
  return "";
}

class CheckFinite : public ::testing::TestWithParam<Device> {
 protected:
  void SetUp() override {
    if (GetParam() == Device::Cuda) ANVIL_REQUIRE_GPU_OR_SKIP();
  }
};

// Checked only every 7th step, the trainer still names the step a check after every step finds,
// and a place inside it.
TEST_P(CheckFinite, TheReplayNamesTheStepWhereItStarts) {
  for (const double lr : {1e12, 1e9, 1e4}) {
    const Network net = diverging(lr);
    const int64_t want = first_bad_step(net, GetParam(), 40);
    ASSERT_GT(want, 1) << "lr " << lr << " should diverge after the first step";
    Engine engine(net, checked(GetParam()));
    TrainOptions o;
    o.steps = 40;
    o.log_every = 7;
    o.check_finite = true;
    const std::string message = run_message(engine, o);
    std::smatch m;
    ASSERT_TRUE(std::regex_match(message, m,
                                 std::regex(R"(step (\d+): non-finite (output|value|gradient|parameter) )"
                                            R"(first appears in .+ \(.+\))")))
        << "lr " << lr << ": " << message;
    EXPECT_EQ(std::stoll(m[1]), want) << message;
  }
}

// A traced step that finds nothing is the step enqueue_train_step takes: the same parameters, bit for bit.
TEST_P(CheckFinite, ATracedStepIsAnOrdinaryStep) {
  const Network net = Network::load(data_path("dataset_epochs.json"));
  Engine plain(net, checked(GetParam())), traced(net, checked(GetParam()));
  for (int step = 0; step < 5; ++step) {
    plain.enqueue_train_step();
    ASSERT_FALSE(traced.traced_train_step()) << "step " << step + 1;
  }
  EXPECT_EQ(traced.steps_done(), 5);
  const auto want = plain.parameters(), got = traced.parameters();
  for (const auto& [name, value] : want) EXPECT_TRUE(bitwise_equal(got.at(name), value)) << name;
}

TEST_P(CheckFinite, AnInfiniteWeightIsNamedBeforeTheFirstStep) {
  const Network net = Network::load(data_path("dataset_epochs.json"));
  Engine engine(net, checked(GetParam()));
  auto params = engine.parameters();
  params.at("conv.weight").data[5] = std::numeric_limits<float>::infinity();
  engine.load_parameters(params);
  TrainOptions o;
  o.steps = 3;
  o.check_finite = true;
  EXPECT_EQ(run_message(engine, o),
            "step 1: non-finite parameter first appears in conv.weight (the parameters the step starts from)");
}

TEST_P(CheckFinite, ANaNInTheBatchIsNamed) {
  const Network net = Network::load(data_path("dataset_epochs.json"));
  for (const char* which : {"input", "target"}) {
    Engine engine(net, checked(GetParam()));
    const bool input = std::string(which) == "input";
    HostTensor batch(input ? net.input_shape() : net.output_shape());
    for (size_t i = 0; i < batch.data.size(); ++i) batch.data[i] = 0.25f + 0.001f * float(i % 97);
    batch.data[batch.data.size() / 3] = std::nanf("");
    input ? engine.set_input(batch) : engine.set_target(batch);
    TrainOptions o;
    o.steps = 2;
    o.check_finite = true;
    EXPECT_EQ(run_message(engine, o),
              std::string("step 1: non-finite ") + which + " first appears in the batch (the data)");
  }
}

TEST_P(CheckFinite, AFiniteRunIsUntouched) {
  const Network net = Network::load(data_path("dataset_epochs.json"));
  Engine checked_engine(net, checked(GetParam()));
  Options plain_options;
  plain_options.device = GetParam();
  Engine plain(net, plain_options);
  TrainOptions o;
  o.steps = 9;
  o.log_every = 2;
  o.check_finite = true;
  EXPECT_EQ(run_message(checked_engine, o), "");
  o.check_finite = false;
  EXPECT_EQ(run_message(plain, o), "");
  const auto want = plain.parameters(), got = checked_engine.parameters();
  for (const auto& [name, value] : want) EXPECT_TRUE(bitwise_equal(got.at(name), value)) << name;
}

INSTANTIATE_TEST_SUITE_P(Devices, CheckFinite, ::testing::Values(Device::Cpu, Device::Cuda),
                         [](const auto& info) { return std::string(to_string(info.param)); });

class CheckFiniteCheckpoint : public testing::TempDirTest {};

// Checkpoints every step: the one left is the last good step's, and every value in it is finite.
TEST_F(CheckFiniteCheckpoint, TheLastGoodCheckpointIsKept) {
  const Network net = diverging(1e9);
  const int64_t bad = first_bad_step(net, Device::Cpu, 40);
  ASSERT_GT(bad, 1);
  const Dataset data = Dataset::load(data_path("dataset_epochs_train.safetensors"), {2, 6, 6}, {3, 3, 3});
  Engine engine(net, checked(Device::Cpu));
  TrainOptions o;
  o.steps = 40;
  o.log_every = 100;
  o.checkpoint = path("ck.safetensors");
  o.checkpoint_every = 1;
  o.check_finite = true;
  DataOptions no_shuffle;
  no_shuffle.shuffle = false;
  Trainer trainer(engine, data, nullptr, o, no_shuffle);
  EXPECT_THROW(trainer.run({}), NonFiniteError);
  const TensorFile kept = read_safetensors(o.checkpoint);
  EXPECT_EQ(kept.metadata.at("step"), std::to_string(bad - 1));
  for (const auto& [name, tensor] : kept.tensors)
    for (const float v : tensor.data) ASSERT_TRUE(std::isfinite(v)) << name;
}

// A validation loss that overflows float (finite targets near the float maximum) ends the run
// whatever check_finite, on a step that is not logged too: on_validation has it, no checkpoint of it.
TEST_F(CheckFiniteCheckpoint, ANonFiniteValidationLossEndsTheRun) {
  const Dataset data = Dataset::load(data_path("dataset_epochs_train.safetensors"), {2, 6, 6}, {3, 3, 3});
  TensorFile huge = read_safetensors(data_path("dataset_epochs_val.safetensors"));
  for (float& v : huge.tensors.at("target").data) v = 3e38f;
  write_safetensors(path("huge.safetensors"), huge);
  const Dataset val = Dataset::load(path("huge.safetensors"), {2, 6, 6}, {3, 3, 3});
  for (const bool check : {true, false}) {
    SCOPED_TRACE(check);
    Engine engine(Network::load(data_path("dataset_epochs.json")), checked(Device::Cpu));
    TrainOptions o;
    o.steps = 8;
    o.log_every = 100;  // steps 1 and 8 only: the validation at step 3 is not logged
    o.val_every = 3;
    o.checkpoint = path("ck.safetensors");
    o.checkpoint_every = 1;
    o.check_finite = check;
    Trainer trainer(engine, data, &val, o, DataOptions{});
    std::vector<float> reported;
    Trainer::Callbacks callbacks;
    callbacks.on_validation = [&](int64_t, float v) { reported.push_back(v); };
    try {
      trainer.run(callbacks);
      ADD_FAILURE() << "no NonFiniteError";
    } catch (const NonFiniteError& e) {
      EXPECT_EQ(std::string(e.what()), "step 3: the validation loss is inf");
    }
    ASSERT_EQ(reported.size(), 1u);
    EXPECT_TRUE(std::isinf(reported[0]));
    EXPECT_EQ(read_safetensors(o.checkpoint).metadata.at("step"), "2");
  }
}

// Before the first step the loss and the gradient slab hold nothing (the arena is poisoned with
// NaN): a check then (a checkpoint on a signal before any step) looks at the parameters only.
TEST(CheckFiniteApi, ACheckBeforeTheFirstStepLooksAtTheParametersOnly) {
  Engine engine(Network::load(data_path("dataset_epochs.json")), checked(Device::Cpu));
  EXPECT_FALSE(engine.find_non_finite());
  TrainOptions o;
  o.steps = 1;
  o.check_finite = true;
  Trainer trainer(engine, o);
  EXPECT_NO_THROW(trainer.check_finite());
}

// Before run() there is no good state to replay from: Trainer::check_finite (and save_checkpoint,
// which calls it) still names what it found.
TEST_F(CheckFiniteCheckpoint, ACheckBeforeRunNamesWhatItFinds) {
  Engine engine(Network::load(data_path("dataset_epochs.json")), checked(Device::Cpu));
  auto params = engine.parameters();
  params.at("conv.weight").data[3] = -std::numeric_limits<float>::infinity();
  engine.load_parameters(params);
  TrainOptions o;
  o.steps = 1;
  o.check_finite = true;
  Trainer trainer(engine, o);
  for (int call = 0; call < 2; ++call) {
    try {
      call == 0 ? trainer.check_finite() : trainer.save_checkpoint(path("never_written.ckpt"));
      ADD_FAILURE() << "no NonFiniteError";
    } catch (const NonFiniteError& e) {
      EXPECT_EQ(std::string(e.what()), "step 0: non-finite parameter first appears in conv.weight") << call;
    }
  }
  EXPECT_FALSE(std::filesystem::exists(path("never_written.ckpt")));
}

// After resume() the state kept by an earlier run() is not this run's: a finding names what it
// found, with no replay from a state before the checkpoint.
TEST_F(CheckFiniteCheckpoint, AResumeForgetsTheGoodStateKeptBefore) {
  Engine engine(Network::load(data_path("dataset_epochs.json")), checked(Device::Cpu));
  TrainOptions o;
  o.steps = 3;
  o.check_finite = true;
  Trainer trainer(engine, o);
  trainer.run({});
  trainer.save_checkpoint(path("at3.ckpt"));
  trainer.resume(path("at3.ckpt"));
  auto params = engine.parameters();
  params.at("conv.weight").data[1] = std::numeric_limits<float>::quiet_NaN();
  engine.load_parameters(params);
  try {
    trainer.check_finite();
    ADD_FAILURE() << "no NonFiniteError";
  } catch (const NonFiniteError& e) {
    EXPECT_EQ(std::string(e.what()), "step 3: non-finite parameter first appears in conv.weight");
  }
}

TEST(CheckFiniteApi, MisuseIsAnError) {
  const Network net = Network::load(data_path("dataset_epochs.json"));
  Options unchecked;
  unchecked.device = Device::Cpu;
  Engine plain(net, unchecked);
  EXPECT_THROW(plain.find_non_finite(), Error);
  EXPECT_THROW(plain.keep_good_state(), Error);
  EXPECT_THROW(plain.traced_train_step(), Error);
  TrainOptions o;
  o.steps = 1;
  o.check_finite = true;
  EXPECT_THROW(Trainer(plain, o), Error);
  Engine engine(net, checked(Device::Cpu));
  EXPECT_THROW(engine.restore_good_state(), Error);  // nothing kept yet
  o.epochs = 2;
  EXPECT_THROW(Trainer(engine, o), InputError);  // epochs need a dataset
}

// A traced step past the epoch's end takes no batch and counts no step, as train_step.
TEST(CheckFiniteApi, ATracedStepWithNoBatchLeftCountsNoStep) {
  const Network net = Network::load(data_path("dataset_epochs.json"));
  const Shape input(net.input_shape().begin() + 1, net.input_shape().end());
  const Shape output(net.output_shape().begin() + 1, net.output_shape().end());
  const Dataset train = Dataset::load(data_path("dataset_epochs_train.safetensors"), input, output);
  Engine engine(net, checked(Device::Cpu));
  engine.attach_data(train, DataOptions{});
  const int64_t batches = engine.batches_per_epoch();
  for (int64_t b = 0; b < batches; ++b) EXPECT_FALSE(engine.traced_train_step());
  EXPECT_EQ(engine.steps_done(), batches);
  EXPECT_THROW(engine.traced_train_step(), Error);
  EXPECT_THROW(engine.train_step(), Error);
  EXPECT_EQ(engine.steps_done(), batches);
}

}  // namespace
}  // namespace anvil
