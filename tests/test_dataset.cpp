// Datasets, the epoch shuffle and the batch plan; and minibatch training over
// epochs on the CPU against the PyTorch run of tools/make_reference.py
// (tests/data/dataset_epochs*), driven from the host through the public API.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "anvil/dataset.hpp"
#include "anvil/error.hpp"
#include "anvil/random.hpp"
#include "anvil/trainer.hpp"
#include "tests/require_gpu.hpp"
#include "tests/test_support.hpp"

namespace anvil::testing {
namespace {

namespace fs = std::filesystem;

std::vector<int64_t> identity(int64_t n) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  return order;
}

Shape without_batch(const Shape& shape) { return Shape(shape.begin() + 1, shape.end()); }

// --- epoch_order -------------------------------------------------------------

TEST(EpochOrder, DrawsFromTheSpecifiedBits) {
  const uint64_t stream = random_stream(5, "shuffle.0");
  for (uint64_t i : {0ULL, 1ULL, 255ULL}) {
    EXPECT_EQ(random_bits(stream, i), splitmix64(stream + (i + 1) * 0x9E3779B97F4A7C15ULL)) << i;
  }
}

TEST(EpochOrder, IsAPermutation) {
  for (int64_t n : {1, 2, 7, 256, 1000}) {
    std::vector<int64_t> order = epoch_order(n, 3, 1, true);
    std::sort(order.begin(), order.end());
    EXPECT_EQ(order, identity(n)) << n << " samples";
  }
  EXPECT_TRUE(epoch_order(0, 3, 0, true).empty());
}

TEST(EpochOrder, IsTheIdentityWithoutShuffle) { EXPECT_EQ(epoch_order(100, 3, 4, false), identity(100)); }

TEST(EpochOrder, IsReproducibleAndDiffersBetweenEpochsAndSeeds) {
  const std::vector<int64_t> first = epoch_order(256, 5, 0, true);
  EXPECT_EQ(epoch_order(256, 5, 0, true), first);
  EXPECT_NE(first, identity(256));
  EXPECT_NE(epoch_order(256, 5, 1, true), first);
  EXPECT_NE(epoch_order(256, 6, 0, true), first);
}

// An epoch before the first has no order, as Engine::start_epoch refuses one.
TEST(EpochOrder, RefusesANegativeEpoch) {
  try {
    epoch_order(10, 5, -1, true);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "epoch_order: the epoch must be >= 0, got -1");
  }
}

// The values tools/make_reference.py's check_epoch_order pins its twin to.
TEST(EpochOrder, MatchesPinnedValues) {
  EXPECT_EQ(epoch_order(10, 5, 0, true), (std::vector<int64_t>{2, 1, 9, 7, 6, 8, 0, 4, 3, 5}));
  EXPECT_EQ(epoch_order(10, 5, 1, true), (std::vector<int64_t>{0, 7, 5, 2, 1, 3, 8, 6, 9, 4}));
}

// Fisher-Yates gives every permutation the same chance (a slip such as j < i
// instead of j <= i would never leave an element in place).
TEST(EpochOrder, DrawsEveryPermutationEquallyOften) {
  std::map<std::vector<int64_t>, int> counts;
  const int epochs = 24000;
  for (int epoch = 0; epoch < epochs; ++epoch) ++counts[epoch_order(4, 9, epoch, true)];
  ASSERT_EQ(counts.size(), 24u);
  for (const auto& [order, count] : counts) EXPECT_NEAR(count, epochs / 24, 150) << ::testing::PrintToString(order);
}

TEST(EpochOrder, MatchesThePythonTwin) {
  const Network net = Network::load(data_path("dataset_epochs.json"));
  const TensorFile ref = read_safetensors(data_path("dataset_epochs.safetensors"));
  for (int64_t epoch : {0, 1}) {
    const std::vector<float>& want = ref.tensors.at("order." + std::to_string(epoch)).data;
    const std::vector<int64_t> got = epoch_order(256, net.seed(), epoch, true);
    EXPECT_EQ(got, std::vector<int64_t>(want.begin(), want.end())) << "epoch " << epoch;
  }
}

// --- BatchPlan ---------------------------------------------------------------

TEST(BatchPlan, DropsTheLastPartialBatch) {
  const BatchPlan plan(256, 48, false);
  ASSERT_EQ(plan.batches_per_epoch(), 5);
  const std::vector<int64_t> order = epoch_order(256, 1, 0, true);
  for (int64_t b = 0; b < 5; ++b) {
    EXPECT_EQ(plan.first_position(b), 48 * b);
    EXPECT_EQ(plan.samples_in_batch(b), 48);
    EXPECT_EQ(plan.samples(order, b), std::vector<int64_t>(order.begin() + 48 * b, order.begin() + 48 * (b + 1)));
  }
  EXPECT_THROW(plan.samples_in_batch(5), InputError);
  EXPECT_THROW(plan.first_position(-1), InputError);
  EXPECT_THROW(plan.samples(std::vector<int64_t>(255), 0), InputError);  // an order of another dataset
  EXPECT_THROW(BatchPlan(-5, 2, true), InputError);
  EXPECT_THROW(epoch_order(int64_t(1) << 62, 0, 0, true), InputError);
  // Within the 2^40 limit, but 8 TiB of indices: refused by the host's memory, not by bad_alloc.
  try {
    epoch_order(int64_t(1) << 40, 0, 0, true);
    ADD_FAILURE() << "an order of 2^40 samples was made";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("epoch_order: the order of 1099511627776 samples takes 8192.0 GiB, more than"),
              std::string::npos)
        << e.what();
  }
}

TEST(BatchPlan, KeepsTheLastPartialBatch) {
  const BatchPlan plan(256, 48, true);
  ASSERT_EQ(plan.batches_per_epoch(), 6);
  EXPECT_EQ(plan.samples_in_batch(4), 48);
  EXPECT_EQ(plan.first_position(5), 240);
  EXPECT_EQ(plan.samples_in_batch(5), 16);
  const std::vector<int64_t> order = epoch_order(256, 1, 0, true);
  EXPECT_EQ(plan.samples(order, 5), std::vector<int64_t>(order.begin() + 240, order.end()));
}

TEST(BatchPlan, CountsWholeEpochsAndSmallDatasets) {
  EXPECT_EQ(BatchPlan(256, 32, false).batches_per_epoch(), 8);
  EXPECT_EQ(BatchPlan(256, 32, true).batches_per_epoch(), 8);  // nothing is left over
  EXPECT_EQ(BatchPlan(32, 32, false).batches_per_epoch(), 1);  // a single-batch file
  const BatchPlan small(10, 32, true);                         // keep-last allows one batch smaller than the batch size
  ASSERT_EQ(small.batches_per_epoch(), 1);
  EXPECT_EQ(small.samples_in_batch(0), 10);
}

void expect_input_error(const std::function<void()>& action, const std::string& message) {
  try {
    action();
    ADD_FAILURE() << "no error; expected: " << message;
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

TEST(BatchPlan, RefusesBatchesThatCannotBeFilled) {
  expect_input_error([] { BatchPlan(10, 32, false); }, "fewer samples (10) than one batch (32)");
  expect_input_error([] { BatchPlan(10, 0, true); }, "the batch size must be at least 1, got 0");
}

// --- Dataset -----------------------------------------------------------------

class DatasetFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("anvil_dataset_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // data.safetensors with an `input` and a `target` of these shapes (each value its flat index),
  // leaving out a tensor whose shape is null.
  std::string write(const Shape* input, const Shape* target) const {
    TensorFile file;
    for (const auto& [name, shape] : {std::pair{"input", input}, std::pair{"target", target}}) {
      if (shape == nullptr) continue;
      HostTensor t(*shape);
      std::iota(t.data.begin(), t.data.end(), 0.0f);
      file.tensors[name] = t;
    }
    const std::string path = (dir_ / "data.safetensors").string();
    write_safetensors(path, file);
    return path;
  }
  std::string write(const Shape& input, const Shape& target) const { return write(&input, &target); }

  // Dataset::load with the sample shapes of a network taking (3, 7, 7) and giving (2): one exact line.
  static void expect_load_error(const std::string& path, const std::string& problem) {
    expect_input_error([&] { Dataset::load(path, {3, 7, 7}, {2}); }, path + ": " + problem);
  }

  fs::path dir_;
};

TEST_F(DatasetFile, HoldsEachTensorContiguouslyAndGathersBatches) {
  Dataset data = Dataset::load(write({5, 2, 3}, {5, 4}), {2, 3}, {4});
  EXPECT_EQ(data.size(), 5);
  EXPECT_EQ(data.sample_shape(), (Shape{2, 3}));
  EXPECT_EQ(data.target_sample_shape(), (Shape{4}));
  EXPECT_EQ(data.floats_per_sample(), 6);
  EXPECT_EQ(data.floats_per_target(), 4);
  EXPECT_EQ(data.inputs().shape, (Shape{5, 2, 3}));
  EXPECT_EQ(data.input_sample(3), data.inputs().data.data() + 18);
  EXPECT_EQ(data.target_sample(4)[3], 19.0f);

  const HostTensor x = data.input_batch({4, 0});
  EXPECT_EQ(x.shape, (Shape{2, 2, 3}));
  EXPECT_EQ(x.data, (std::vector<float>{24, 25, 26, 27, 28, 29, 0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(data.target_batch({1}).data, (std::vector<float>{4, 5, 6, 7}));
  EXPECT_THROW(data.input_batch({5}), InputError);
  EXPECT_THROW(data.input_sample(-1), InputError);
  // A moved-from dataset has no samples: its accessors and the engine say so, and read nothing.
  const Dataset moved = std::move(data);
  EXPECT_EQ(data.size(), 0);
  EXPECT_EQ(data.sample_shape(), Shape{});
  expect_input_error([&] { data.input_batch({}); },
                     "an empty anvil::Dataset (moved from): make one with Dataset::load");
  EXPECT_THROW(data.input_sample(0), InputError);
  const Network net =
      Network::parse(R"({"name": "n", "input": [1, 2, 3, 1], "layers": [{"type": "channel_scale"}]})", "n.json");
  Options options;
  options.device = Device::Cpu;
  Engine engine(net, options);
  expect_input_error([&] { engine.attach_data(data, {}); },
                     "an empty anvil::Dataset (moved from): make one with Dataset::load");
  expect_input_error([&] { engine.evaluate(data); },
                     "an empty anvil::Dataset (moved from): make one with Dataset::load");
  EXPECT_EQ(moved.size(), 5);
}

TEST_F(DatasetFile, RefusesASampleShapeThatIsNotTheNetworks) {
  expect_load_error(write({4, 3, 8, 8}, {4, 2}),
                    "tensor 'input' has sample shape (3, 8, 8), the network takes (3, 7, 7)");
  expect_load_error(write({4, 3, 7, 7}, {4, 3}), "tensor 'target' has sample shape (3), the network outputs (2)");
}

TEST_F(DatasetFile, RefusesDifferentSampleCounts) {
  expect_load_error(write({64, 3, 7, 7}, {60, 2}), "tensor 'input' holds 64 samples and 'target' 60");
}

TEST_F(DatasetFile, RefusesFewerSamplesThanOneBatch) {
  const std::string path = write({20, 3, 7, 7}, {20, 2});
  const Dataset data = Dataset::load(path, {3, 7, 7}, {2});
  expect_input_error([&] { data.batch_plan(32, false); },
                     path + ": tensor 'input': fewer samples (20) than one batch (32)");
  EXPECT_EQ(data.batch_plan(32, true).batches_per_epoch(), 1);
}

TEST_F(DatasetFile, RefusesAWrongDtype) {
  // Our writer writes F32 only; relabel the input's dtype (same length, so the offsets stay valid).
  const std::string path = write({4, 3, 7, 7}, {4, 2});
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const size_t dtype = bytes.find("\"F32\"");  // the header's first entry is 'input' (keys are sorted)
  ASSERT_NE(dtype, std::string::npos);
  bytes.replace(dtype, 5, "\"I32\"");
  std::ofstream(path, std::ios::binary) << bytes;
  expect_load_error(path, "tensor 'input' has dtype I32; a dataset holds F16, BF16, F32 or F64 floats");
}

TEST_F(DatasetFile, RefusesATruncatedFile) {
  const std::string path = write({4, 3, 7, 7}, {4, 2});
  const auto size = fs::file_size(path);
  fs::resize_file(path, size - 8);  // the target's data comes last
  expect_load_error(path,
                    "tensor 'target': data_offsets [2352, 2384] are out of range: the data region has 2376 bytes");
}

TEST_F(DatasetFile, RefusesAMissingTensor) {
  const Shape input{4, 3, 7, 7};
  expect_load_error(write(&input, nullptr), "no tensor named 'target' (a dataset holds 'input' and 'target')");
}

TEST_F(DatasetFile, RefusesAScalar) {
  expect_load_error(write(Shape{}, Shape{4, 2}),
                    "tensor 'input' is a scalar; its first dimension must count the samples");
}

TEST_F(DatasetFile, RefusesAnEmptyDataset) {
  expect_load_error(write({0, 3, 7, 7}, {0, 2}), "tensor 'input' holds no samples");
}

// --- training over epochs against PyTorch --------------------------------------

// What one run of the reference recorded, and the names of its tensors.
struct ReferenceRun {
  const TensorFile& file;
  std::string prefix;  // "" or "keep_last."
  int64_t batch_size, epochs;
  bool keep_last;
};

// Trains as `anvil train --data` does (anvil::Trainer: the engine gathers its own batches) from the
// reference's initial parameters, checking the loss of every step, the validation loss after each
// epoch (when `val` is given) and the final parameters.
void train_against_reference(const Network& net, const ReferenceRun& run, const Dataset* val,
                             Device device = Device::Cpu) {
  const Dataset train = Dataset::load(data_path("dataset_epochs_train.safetensors"), without_batch(net.input_shape()),
                                      without_batch(net.output_shape()));
  Options options;
  options.device = device;
  Engine engine(net, options);
  engine.load_parameters(same_names(run.file, engine.parameters()));
  DataOptions data;
  data.keep_last = run.keep_last;
  TrainOptions o;
  o.epochs = run.epochs;
  o.log_every = 1;
  o.val_every = train.batch_plan(run.batch_size, run.keep_last).batches_per_epoch();  // after each epoch
  Trainer trainer(engine, train, val, o, data);

  const std::vector<float>& losses = run.file.tensors.at(run.prefix + "losses").data;
  ASSERT_EQ(int64_t(losses.size()), trainer.total_steps());
  int64_t validations = 0;
  Trainer::Callbacks callbacks;
  callbacks.on_log = [&](const TrainProgress& p) {
    const float want = losses.at(size_t(p.step - 1));
    EXPECT_NEAR(p.loss, want, 1e-5 * std::fabs(want)) << "step " << p.step;
  };
  callbacks.on_validation = [&](int64_t step, float val_loss) {
    const float want = run.file.tensors.at("val_losses").data.at(size_t(validations++));
    EXPECT_NEAR(val_loss, want, 1e-5 * want) << "validation at step " << step;
  };
  trainer.run(callbacks);
  EXPECT_EQ(validations, val ? run.epochs : 0);
  for (const auto& [name, value] : engine.parameters()) {
    EXPECT_TRUE(close(run.prefix + "after." + name, value, run.file.tensors.at(run.prefix + "after." + name), 1e-5));
  }
}

TEST(DatasetTraining, ThreeShuffledEpochsWithValidationMatchPyTorch) {
  const Network net = Network::load(data_path("dataset_epochs.json"));
  const TensorFile ref = read_safetensors(data_path("dataset_epochs.safetensors"));
  ASSERT_EQ(ref.metadata.at("batch"), std::to_string(net.input_shape()[0]));
  const Dataset val = Dataset::load(data_path("dataset_epochs_val.safetensors"), without_batch(net.input_shape()),
                                    without_batch(net.output_shape()));
  train_against_reference(net, {ref, "", net.input_shape()[0], std::stoll(ref.metadata.at("epochs")), false}, &val);
}

TEST(DatasetTraining, KeepLastWithAPartialBatchMatchesPyTorch) {
  const TensorFile ref = read_safetensors(data_path("dataset_epochs.safetensors"));
  const int64_t batch = std::stoll(ref.metadata.at("keep_last.batch"));
  Shape input = Network::load(data_path("dataset_epochs.json")).input_shape();
  input[0] = batch;
  const Network net = network_with(data_path("dataset_epochs.json"), {{"input", input}});
  train_against_reference(net, {ref, "keep_last.", batch, std::stoll(ref.metadata.at("keep_last.epochs")), true},
                          nullptr);
}

// A validation set of another network's shapes is refused when the trainer is made, naming its file,
// not at the first validation after some training.
TEST(DatasetTraining, AValidationSetOfOtherShapesIsRefusedBeforeTraining) {
  const Network net = Network::load(data_path("dataset_epochs.json"));
  const Dataset train = Dataset::load(data_path("dataset_epochs_train.safetensors"), without_batch(net.input_shape()),
                                      without_batch(net.output_shape()));
  TensorFile other;
  other.tensors["input"] = HostTensor({3, 2}, {0.5f, -1, 2, 0.25f, 3, -4});
  other.tensors["target"] = HostTensor({3, 1}, {1, 2, 3});
  const std::string path = ::testing::TempDir() + "/anvil_other_val_" + std::to_string(::getpid()) + ".safetensors";
  write_safetensors(path, other);
  const Dataset val = Dataset::load(path, {2}, {1});
  Options options;
  options.device = Device::Cpu;
  Engine engine(net, options);
  TrainOptions o;
  o.epochs = 2;
  o.val_every = 1;
  try {
    Trainer trainer(engine, train, &val, o, DataOptions{});
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), path + ": samples (2) -> (1), the network takes " +
                                         to_string(without_batch(net.input_shape())) + " -> " +
                                         to_string(without_batch(net.output_shape())));
  }
  EXPECT_EQ(engine.steps_done(), 0);
  std::remove(path.c_str());
}

// The library's start_epoch refuses an epoch or a first batch outside the dataset's, in one line.
TEST(DatasetTraining, StartEpochRefusesPositionsOutsideTheData) {
  const Network net = Network::load(data_path("dataset_epochs.json"));
  const Dataset train = Dataset::load(data_path("dataset_epochs_train.safetensors"), without_batch(net.input_shape()),
                                      without_batch(net.output_shape()));
  Options options;
  options.device = Device::Cpu;
  Engine engine(net, options);
  auto message = [&](int64_t epoch, int64_t first_batch) -> std::string {
    try {
      engine.start_epoch(epoch, first_batch);
    } catch (const InputError& e) {
      return e.what();
    } catch (const Error& e) {
      return std::string("Error: ") + e.what();
    }
    return "<no error>";
  };
  EXPECT_EQ(message(0, 0), "Error: start_epoch needs attach_data first");
  engine.attach_data(train, DataOptions{});
  const int64_t batches = engine.batches_per_epoch();
  ASSERT_GT(batches, 1);
  const std::string range =
      "start_epoch: the first batch must be in 0.." + std::to_string(batches) + " (the batches of an epoch), got ";
  EXPECT_EQ(message(0, -1), range + "-1");
  EXPECT_EQ(message(3, batches + 1), range + std::to_string(batches + 1));
  EXPECT_EQ(message(-1, 0), "start_epoch: the epoch must be >= 0, got -1");
  // In range: the next step trains on the epoch's last batch.
  EXPECT_EQ(message(2, batches - 1), "<no error>");
  EXPECT_TRUE(std::isfinite(engine.train_step()));
  // At the epoch's end, a step has no batch to take: it says so and changes nothing.
  EXPECT_EQ(message(0, batches), "<no error>");
  const auto before = engine.parameters();
  try {
    engine.train_step();
    ADD_FAILURE() << "a step past the epoch's end trained";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "every batch of this epoch (" + std::to_string(batches) +
                                         ") has been taken; call start_epoch for the next epoch");
  }
  for (const auto& [name, value] : engine.parameters()) EXPECT_EQ(value.data, before.at(name).data) << name;
  EXPECT_EQ(message(1, 0), "<no error>");
  EXPECT_TRUE(std::isfinite(engine.train_step()));
}

// The object given to attach_data must outlive the engine; what it holds may still change under
// it. Moved from, or assigned another dataset, it is refused at the next step and nothing runs
// (a step used to gather from the moved-from one's null rows, or read past a smaller one's end).
TEST(DatasetTraining, AnAttachedDatasetMovedFromOrReassignedIsRefused) {
  const Network net = Network::load(data_path("dataset_epochs.json"));
  auto load = [&](const std::string& name) {
    return Dataset::load(data_path(name), without_batch(net.input_shape()), without_batch(net.output_shape()));
  };
  const std::string refused =
      "the dataset given to attach_data was moved from or assigned another since: attach the one to train on again";
  Options options;
  options.device = Device::Cpu;
  for (const bool move : {true, false}) {
    SCOPED_TRACE(move ? "moved from" : "assigned another");
    Engine engine(net, options);
    Dataset train = load("dataset_epochs_train.safetensors");
    engine.attach_data(train, DataOptions{});
    EXPECT_TRUE(std::isfinite(engine.train_step()));
    Dataset elsewhere = load("dataset_epochs_val.safetensors");  // fewer samples than train
    if (move)
      elsewhere = std::move(train);
    else
      train = std::move(elsewhere);
    EXPECT_EQ(train.identity() == 0, move);
    const auto before = engine.parameters();
    for (const std::function<void()>& step :
         {std::function<void()>([&] { engine.train_step(); }), std::function<void()>([&] { engine.start_epoch(1); })}) {
      try {
        step();
        ADD_FAILURE() << "no error";
      } catch (const InputError& e) {
        EXPECT_EQ(std::string(e.what()), refused);
      }
    }
    EXPECT_EQ(engine.steps_done(), 1);
    for (const auto& [name, value] : engine.parameters()) EXPECT_EQ(value.data, before.at(name).data) << name;
    engine.attach_data(move ? elsewhere : train, DataOptions{});  // attached again, where the samples are now
    EXPECT_TRUE(std::isfinite(engine.train_step()));
  }
}

// One Trainer at a time trains an engine: a second one's attach_data, or a dataset attached under
// a Trainer of the engine's own batch, is refused where it would train on the wrong data.
TEST(DatasetTraining, ATrainerRefusesAnEngineFeedingFromAnotherDataset) {
  const Network net = Network::load(data_path("dataset_epochs.json"));
  auto load = [&](const std::string& name) {
    return Dataset::load(data_path(name), without_batch(net.input_shape()), without_batch(net.output_shape()));
  };
  const Dataset train = load("dataset_epochs_train.safetensors"), val = load("dataset_epochs_val.safetensors");
  Options options;
  options.device = Device::Cpu;
  Engine engine(net, options);
  TrainOptions o;
  o.epochs = 1;
  Trainer first(engine, train, nullptr, o, DataOptions{});
  Trainer second(engine, val, nullptr, o, DataOptions{});
  auto error_of = [](const std::function<void()>& action) -> std::string {
    try {
      action();
    } catch (const Error& e) {
      return e.what();
    }
    return "<no error>";
  };
  const std::string another =
      "a dataset was attached to the engine since this Trainer was made (attach_data, or a "
      "second Trainer): one Trainer at a time trains an engine";
  EXPECT_EQ(error_of([&] { first.run({}); }), another);
  EXPECT_EQ(engine.steps_done(), 0);
  EXPECT_EQ(error_of([&] { second.run({}); }), "<no error>");
  EXPECT_EQ(engine.steps_done(), second.position().step);
  EXPECT_GT(engine.steps_done(), 0);
  // The same dataset attached again counts too: its batch plan and order may differ from the ones
  // the Trainer counts its position in (keep_last here adds a batch to each epoch).
  DataOptions keep_last;
  keep_last.keep_last = true;
  engine.attach_data(val, keep_last);
  EXPECT_EQ(error_of([&] { second.run({}); }), another);
  Trainer third(engine, val, nullptr, o, DataOptions{});
  Trainer fourth(engine, val, nullptr, o, keep_last);
  EXPECT_EQ(error_of([&] { third.run({}); }), another);

  TrainOptions own;
  own.steps = 2;
  const std::string attached =
      "the engine has a dataset attached (attach_data): this Trainer trains on the "
      "engine's own batch; give the dataset to the Trainer instead";
  EXPECT_EQ(error_of([&] { Trainer(engine, own); }), attached);
  engine.detach_data();  // back to the engine's own batch
  EXPECT_EQ(engine.attached_data(), nullptr);
  EXPECT_EQ(error_of([&] { Trainer(engine, own).run({}); }), "<no error>");
  // A Trainer whose constructor throws after attaching its dataset leaves none attached.
  Engine refused(net, options);
  TrainOptions too_long;
  too_long.epochs = kMaxSteps;
  EXPECT_EQ(error_of([&] { Trainer(refused, train, nullptr, too_long, DataOptions{}); }),
            std::to_string(kMaxSteps) + " epochs of 8 steps are more than 2^53 steps");
  EXPECT_EQ(refused.attached_data(), nullptr);
  EXPECT_EQ(error_of([&] { Trainer(refused, own); }), "<no error>");
  Engine plain(net, options);
  Trainer on_own_batch(plain, own);
  plain.attach_data(train, DataOptions{});
  EXPECT_EQ(error_of([&] { on_own_batch.run({}); }), attached);
  EXPECT_EQ(plain.steps_done(), 0);
}

// The checkpoint path is checked when the Trainer is made, as the CLI checks --checkpoint: one
// that cannot be written, or that names the network's file or a dataset the run reads, is refused
// before any step. Saved later (Engine or Trainer), a checkpoint never replaces the network's file,
// the attached dataset or the last evaluated one, by any name; the files stay as they were.
TEST(DatasetTraining, ACheckpointIsRefusedWhereItCouldNotBeWrittenOrWouldReplaceAnInput) {
  const std::string dir = ::testing::TempDir() + "/anvil_trainer_ckpt_" + std::to_string(::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string net_path = dir + "/net.json", train_path = dir + "/train.safetensors",
                    val_path = dir + "/val.safetensors";
  fs::copy_file(data_path("dataset_epochs.json"), net_path);
  fs::copy_file(data_path("dataset_epochs_train.safetensors"), train_path);
  fs::copy_file(data_path("dataset_epochs_val.safetensors"), val_path);
  fs::create_symlink(train_path, dir + "/link.safetensors");
  fs::create_hard_link(val_path, dir + "/val_link.safetensors");
  // Messages name an input by its absolute path when it was loaded.
  auto named = [](const std::string& path) { return fs::path(path).lexically_normal().string(); };
  const Network net = Network::load(net_path);
  auto load = [&](const std::string& path) {
    return Dataset::load(path, without_batch(net.input_shape()), without_batch(net.output_shape()));
  };
  const Dataset train = load(train_path), val = load(val_path);
  Options options;
  options.device = Device::Cpu;
  Engine engine(net, options);
  auto error_of = [&](const std::string& checkpoint) -> std::string {
    TrainOptions o;
    o.epochs = 1;
    o.checkpoint = checkpoint;
    try {
      Trainer trainer(engine, train, &val, o, DataOptions{});
    } catch (const InputError& e) {
      return e.what();
    }
    return "<no error>";
  };
  EXPECT_EQ(error_of(train_path), train_path + ": the checkpoint would overwrite the dataset " + named(train_path));
  EXPECT_EQ(error_of(dir + "/link.safetensors"),
            dir + "/link.safetensors: the checkpoint would overwrite the dataset " + named(train_path));
  EXPECT_EQ(error_of(dir + "/../" + fs::path(dir).filename().string() + "/val.safetensors"),
            dir + "/../" + fs::path(dir).filename().string() +
                "/val.safetensors: the checkpoint would overwrite the dataset " + named(val_path));
  EXPECT_EQ(error_of(dir + "/missing/c.safetensors"),
            dir + "/missing/c.safetensors: cannot write: directory '" + dir + "/missing' does not exist");
  EXPECT_EQ(error_of(dir), dir + ": cannot write: it is a directory");
  EXPECT_EQ(error_of(train_path + "/c.safetensors"),
            train_path + "/c.safetensors: cannot write in '" + train_path + "': Not a directory");
  EXPECT_EQ(error_of(dir + "/" + std::string(300, 'c')),
            dir + "/" + std::string(300, 'c') + ": cannot write: File name too long");
  EXPECT_EQ(error_of(net_path), net_path + ": the checkpoint would overwrite the network file " + named(net_path));
  EXPECT_EQ(error_of(dir + "/c.safetensors"), "<no error>");
  EXPECT_EQ(engine.steps_done(), 0);
  EXPECT_FALSE(fs::exists(dir + "/c.safetensors"));  // checked, not written

  TrainOptions o;
  o.epochs = 1;
  Trainer trainer(engine, train, &val, o, DataOptions{});
  engine.evaluate(val);
  const std::map<std::string, std::string> before = {
      {net_path, read_text(net_path)}, {train_path, read_text(train_path)}, {val_path, read_text(val_path)}};
  auto save_error = [&](const std::function<void()>& save) -> std::string {
    try {
      save();
    } catch (const InputError& e) {
      return e.what();
    }
    return "<no error>";
  };
  EXPECT_EQ(save_error([&] { engine.save_checkpoint(net_path, {}); }),
            net_path + ": the checkpoint would overwrite the network file " + named(net_path));
  EXPECT_EQ(save_error([&] { trainer.save_checkpoint(train_path); }),
            train_path + ": the checkpoint would overwrite the dataset " + named(train_path));
  EXPECT_EQ(save_error([&] { trainer.save_checkpoint(dir + "/val_link.safetensors"); }),
            dir + "/val_link.safetensors: the checkpoint would overwrite the dataset " + named(val_path));
  for (const auto& [path, bytes] : before) EXPECT_EQ(read_text(path), bytes) << path;
  EXPECT_EQ(save_error([&] { trainer.save_checkpoint(dir + "/c.safetensors"); }), "<no error>");
  fs::remove_all(dir);
}

// The inputs are told by which file they were when loaded and by their absolute names then: loaded
// by relative paths, they stay refused after the process changes directory, under their new
// relative names, and after one is replaced by rename.
TEST(DatasetTraining, InputsLoadedByRelativePathsStayRefusedAfterTheCurrentDirectoryMoves) {
  const std::string dir = ::testing::TempDir() + "/anvil_ckpt_cwd_" + std::to_string(::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir + "/a");
  fs::create_directories(dir + "/b");
  fs::copy_file(data_path("dataset_epochs.json"), dir + "/a/net.json");
  fs::copy_file(data_path("dataset_epochs_train.safetensors"), dir + "/a/train.safetensors");
  fs::copy_file(data_path("dataset_epochs_val.safetensors"), dir + "/a/val.safetensors");
  struct CurrentDirectory {
    fs::path saved = fs::current_path();
    ~CurrentDirectory() { fs::current_path(saved); }
  } restore;
  fs::current_path(dir + "/a");
  const Network net = Network::load("net.json");
  auto load = [&](const std::string& path) {
    return Dataset::load(path, without_batch(net.input_shape()), without_batch(net.output_shape()));
  };
  const Dataset train = load("train.safetensors"), val = load("val.safetensors");
  Options options;
  options.device = Device::Cpu;
  Engine engine(net, options);
  engine.attach_data(train, DataOptions{});
  engine.evaluate(val);
  fs::current_path(dir + "/b");
  const std::map<std::string, std::string> before = {{"../a/net.json", read_text("../a/net.json")},
                                                     {"../a/train.safetensors", read_text("../a/train.safetensors")},
                                                     {"../a/val.safetensors", read_text("../a/val.safetensors")}};
  auto save_error = [&](const std::string& path) -> std::string {
    try {
      engine.save_checkpoint(path, {});
    } catch (const InputError& e) {
      return e.what();
    }
    return "<no error>";
  };
  const std::string a = fs::path(dir + "/a").lexically_normal().string();  // messages name the files absolutely
  EXPECT_EQ(save_error("../a/net.json"),
            "../a/net.json: the checkpoint would overwrite the network file " + a + "/net.json");
  EXPECT_EQ(save_error("../a/train.safetensors"),
            "../a/train.safetensors: the checkpoint would overwrite the dataset " + a + "/train.safetensors");
  EXPECT_EQ(save_error("../a/val.safetensors"),
            "../a/val.safetensors: the checkpoint would overwrite the dataset " + a + "/val.safetensors");
  for (const auto& [path, bytes] : before) EXPECT_EQ(read_text(path), bytes) << path;
  EXPECT_EQ(save_error("net.json"), "<no error>");  // b/net.json is another file of the same name
  EXPECT_TRUE(fs::exists("net.json"));
  // Replaced by rename since (an editor's save): another inode, still the file the name gave.
  fs::copy_file("../a/net.json", "../a/net.json.new");
  fs::rename("../a/net.json.new", "../a/net.json");
  EXPECT_EQ(save_error("../a/net.json"),
            "../a/net.json: the checkpoint would overwrite the network file " + a + "/net.json");
  fs::current_path(restore.saved);
  fs::remove_all(dir);
}

// --- evaluate() -----------------------------------------------------------------

// The validation set of dataset_epochs with every target replaced (another dataset of the same
// size), written to a file in the test's temporary directory.
Dataset val_with_targets(const Network& net, float target, const std::string& name) {
  TensorFile file = read_safetensors(data_path("dataset_epochs_val.safetensors"));
  for (float& v : file.tensors.at("target").data) v = target;
  const std::string path = ::testing::TempDir() + "/anvil_eval_" + std::to_string(::getpid()) + "_" + name;
  write_safetensors(path, file);
  Dataset data = Dataset::load(path, without_batch(net.input_shape()), without_batch(net.output_shape()));
  std::remove(path.c_str());
  return data;
}

// evaluate() gathers its batches where the engine's own input, target and last loss are, and puts
// those back: an engine that evaluates trains and infers on its own batch exactly as one that does
// not, and a non-finite validation loss is not the training loss (find_non_finite, the checkpoint
// check). A dataset object loaded anew at the same address is another dataset: its own loss, never
// the previous one's upload or its plan.
void evaluate_leaves_the_engine_as_it_was(Device device) {
  const Network net = network_with(data_path("dataset_epochs.json"), {{"precision", "fp32"}});
  Options options;
  options.device = device;
  options.check_finite = true;
  Engine evaluating(net, options), plain(net, options);
  // The loss a new engine with evaluating's parameters gives: one that has never evaluated anything.
  auto fresh_loss = [&](const Dataset& data) {
    Engine fresh(net, options);
    fresh.load_parameters(evaluating.parameters());
    return fresh.evaluate(data);
  };
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  HostTensor x(net.input_shape()), t(net.output_shape());
  for (HostTensor* tensor : {&x, &t})
    for (float& v : tensor->data) v = uniform(rng);
  for (Engine* e : {&evaluating, &plain}) {
    e->set_input(x);
    e->set_target(t);
    e->train_step();
  }
  Dataset val = Dataset::load(data_path("dataset_epochs_val.safetensors"), without_batch(net.input_shape()),
                              without_batch(net.output_shape()));
  const float val_loss = evaluating.evaluate(val);
  EXPECT_EQ(val_loss, fresh_loss(val));
  EXPECT_EQ(evaluating.last_loss(), plain.last_loss());
  EXPECT_TRUE(bitwise_equal(evaluating.forward(), plain.forward()));
  EXPECT_EQ(evaluating.train_step(), plain.train_step());
  for (const auto& [name, value] : plain.parameters())
    EXPECT_TRUE(bitwise_equal(evaluating.parameters().at(name), value)) << name;

  // Targets of 1e20: every batch's mean square overflows float. The loss is inf; the step's is not.
  EXPECT_TRUE(std::isinf(evaluating.evaluate(val_with_targets(net, 1e20f, "huge"))));
  EXPECT_FALSE(evaluating.find_non_finite().has_value());
  EXPECT_TRUE(std::isfinite(evaluating.last_loss()));

  // The same variable reassigned: another size, then the same size with other targets.
  val = Dataset::load(data_path("dataset_epochs_train.safetensors"), without_batch(net.input_shape()),
                      without_batch(net.output_shape()));
  EXPECT_EQ(evaluating.evaluate(val), fresh_loss(val));
  for (const float target : {0.25f, 0.75f}) {
    val = val_with_targets(net, target, "same_size");
    EXPECT_EQ(evaluating.evaluate(val), fresh_loss(val)) << "targets " << target;
  }
}

TEST(Evaluate, LeavesTheEngineAsItWasOnTheCpu) { evaluate_leaves_the_engine_as_it_was(Device::Cpu); }

TEST(Evaluate, LeavesTheEngineAsItWasOnTheGpu) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  evaluate_leaves_the_engine_as_it_was(Device::Cuda);
}

// The dataset and the room for the engine's own batch stay after the first evaluate(): a second
// of the same dataset allocates and frees nothing, and agrees bitwise.
TEST(Evaluate, AgainOnTheGpuAllocatesNothing) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const Network net = network_with(data_path("dataset_epochs.json"), {{"precision", "fp32"}});
  Options options;
  options.device = Device::Cuda;
  Engine engine(net, options);
  const Dataset val = Dataset::load(data_path("dataset_epochs_val.safetensors"), without_batch(net.input_shape()),
                                    without_batch(net.output_shape()));
  const float first = engine.evaluate(val);
  const auto before = engine.device_counters();
  EXPECT_EQ(engine.evaluate(val), first);
  const auto after = engine.device_counters();
  EXPECT_EQ(after.allocations, before.allocations);
  EXPECT_EQ(after.frees, before.frees);
}

}  // namespace
}  // namespace anvil::testing

namespace anvil::testing {
namespace {

// The same runs on the GPU: the dataset on the device, each step gathering its own batch inside the
// captured CUDA graph (fp32 precision, so the tolerance is float's).
TEST(DatasetTrainingGpu, EpochsWithValidationAndAPartialBatchMatchPyTorch) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const TensorFile ref = read_safetensors(data_path("dataset_epochs.safetensors"));
  const Network net = network_with(data_path("dataset_epochs.json"), {{"precision", "fp32"}});
  const Dataset val = Dataset::load(data_path("dataset_epochs_val.safetensors"), without_batch(net.input_shape()),
                                    without_batch(net.output_shape()));
  train_against_reference(net, {ref, "", net.input_shape()[0], std::stoll(ref.metadata.at("epochs")), false}, &val,
                          Device::Cuda);
  const int64_t batch = std::stoll(ref.metadata.at("keep_last.batch"));
  Shape input = net.input_shape();
  input[0] = batch;
  const Network partial = network_with(data_path("dataset_epochs.json"), {{"input", input}, {"precision", "fp32"}});
  train_against_reference(partial, {ref, "keep_last.", batch, std::stoll(ref.metadata.at("keep_last.epochs")), true},
                          nullptr, Device::Cuda);
}

}  // namespace
}  // namespace anvil::testing
