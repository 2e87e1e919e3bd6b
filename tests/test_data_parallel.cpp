// Data-parallel training (anvil/data_parallel.hpp): on the CPU through the
// in-process communicator, K = 2 and 4 ranks give the parameters of one engine
// at the same global batch (up to the order of the gradient sums), the ranks
// stay bitwise identical, and runs repeat bit for bit; checkpoints move
// between rank counts; a failing rank stops the others. On a GPU, one rank
// through NCCL (from ncclCommInitAll, or from a unique id as under mpirun) is
// bitwise the plain engine. Under mpirun (CPU only), rank 0's NCCL unique id
// reaches every process.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "anvil/communicator.hpp"
#include "anvil/data_parallel.hpp"
#include "anvil/error.hpp"
#include "anvil/random.hpp"
#include "anvil/safetensors.hpp"
#include "anvil/trainer.hpp"
#include "tests/child_process.hpp"
#include "tests/require_gpu.hpp"
#include "tests/temp_dir_test.hpp"
#include "tests/test_support.hpp"

namespace anvil {
namespace {

using testing::bitwise_equal;
using testing::data_path;
using Parameters = std::map<std::string, HostTensor>;

const Network& network() {
  static const Network net = Network::load(data_path("dataset_epochs.json"));  // batch 32
  return net;
}

const Dataset& dataset() {
  static const Dataset data = Dataset::load(data_path("dataset_epochs_train.safetensors"), {2, 6, 6}, {3, 3, 3});
  return data;
}

Options on(Device device) {
  Options o;
  o.device = device;
  return o;
}

TrainOptions steps(int64_t n) {
  TrainOptions o;
  o.steps = n;
  o.log_every = 1;
  return o;
}

// n steps on the dataset (after resuming, when asked), then a checkpoint (when asked).
void train_steps(Engine& engine, int64_t n, const std::string& resume, const std::string& checkpoint) {
  TrainOptions o = steps(n);
  o.checkpoint = checkpoint;
  Trainer trainer(engine, dataset(), nullptr, o, DataOptions{});
  if (!resume.empty()) trainer.resume(resume);
  trainer.run({});
  if (!checkpoint.empty()) trainer.save_checkpoint(checkpoint);
}

// One engine at the global batch: the reference.
Parameters train_alone(int64_t n, Device device = Device::Cpu, const std::string& resume = "",
                       const std::string& checkpoint = "") {
  Engine engine(network(), on(device));
  train_steps(engine, n, resume, checkpoint);
  return engine.parameters();
}

// K ranks; returns each rank's parameters.
std::vector<Parameters> train_ranks(int ranks, int64_t n, Device device = Device::Cpu, const std::string& resume = "",
                                    const std::string& checkpoint = "") {
  std::vector<Parameters> out(static_cast<size_t>(ranks));
  run_data_parallel(network(), on(device), ranks, {}, [&](Engine& engine, int rank) {
    train_steps(engine, n, resume, checkpoint);
    out[size_t(rank)] = engine.parameters();
  });
  return out;
}

void expect_close(const Parameters& got, const Parameters& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, value] : want) EXPECT_TRUE(testing::close(name, got.at(name), value, tol));
}

void expect_identical_ranks(const std::vector<Parameters>& ranks) {
  for (size_t r = 1; r < ranks.size(); ++r)
    for (const auto& [name, value] : ranks[0])
      EXPECT_TRUE(bitwise_equal(ranks[r].at(name), value)) << name << " rank " << r;
}

TEST(DataParallelCpu, TwoAndFourRanksTrainAsOneEngineAtTheGlobalBatch) {
  const Parameters alone = train_alone(5);
  const Parameters start = Engine(network(), on(Device::Cpu)).parameters();
  for (const int ranks : {2, 4}) {
    const std::vector<Parameters> got = train_ranks(ranks, 5);
    expect_identical_ranks(got);
    expect_close(got[0], alone, 1e-5);
    // Not vacuous: five steps moved the parameters far more than the tolerance.
    EXPECT_FALSE(testing::close("conv.weight", got[0].at("conv.weight"), start.at("conv.weight"), 1e-3));
  }
}

TEST(DataParallelCpu, RunsRepeatBitForBit) {
  const std::vector<Parameters> first = train_ranks(4, 5), second = train_ranks(4, 5);
  for (const auto& [name, value] : first[0]) EXPECT_TRUE(bitwise_equal(second[0].at(name), value)) << name;
}

// Without a dataset each rank takes its rows of the seeded generator's global batch.
TEST(DataParallelCpu, TheSeededBatchIsSlicedToo) {
  Engine alone(network(), on(Device::Cpu));
  Trainer(alone, steps(4)).run({});
  std::vector<Parameters> got(2);
  run_data_parallel(network(), on(Device::Cpu), 2, {}, [&](Engine& engine, int rank) {
    Trainer(engine, steps(4)).run({});
    got[size_t(rank)] = engine.parameters();
  });
  expect_identical_ranks(got);
  expect_close(got[0], alone.parameters(), 1e-5);
}

class DataParallelCheckpoint : public testing::TempDirTest {};

// A checkpoint written by 2 ranks resumes on 1, and one written by 1 resumes on 4.
TEST_F(DataParallelCheckpoint, ResumesOnAnyNumberOfRanks) {
  const Parameters straight = train_alone(7);
  const std::string two = path("two.safetensors"), one = path("one.safetensors");
  train_ranks(2, 3, Device::Cpu, "", two);
  EXPECT_EQ(read_safetensors(two).metadata.at("batch"), "32");  // the global batch
  expect_close(train_alone(7, Device::Cpu, two), straight, 1e-5);
  train_alone(4, Device::Cpu, "", one);
  const std::vector<Parameters> resumed = train_ranks(4, 7, Device::Cpu, one);
  expect_identical_ranks(resumed);
  expect_close(resumed[0], straight, 1e-5);
}

TEST(DataParallelCpu, BadSetupsAreRefusedBeforeAnyWork) {
  const auto nothing = [](Engine&, int) { ADD_FAILURE() << "a rank ran"; };
  EXPECT_THROW(run_data_parallel(network(), on(Device::Cpu), 3, {}, nothing), InputError);  // 32 over 3
  EXPECT_THROW(run_data_parallel(network(), on(Device::Cpu), 0, {}, nothing), InputError);
  EXPECT_THROW(run_data_parallel(network(), on(Device::Cpu), 2, {0, 1}, nothing), InputError);  // GPUs on the CPU
  DataOptions keep_last;
  keep_last.keep_last = true;
  EXPECT_THROW(
      run_data_parallel(network(), on(Device::Cpu), 2, {},
                        [&](Engine& engine, int) { Trainer(engine, dataset(), nullptr, steps(1), keep_last); }),
      InputError);
}

// A rank that fails stops the others (which would wait in the all-reduce for ever), and its own
// failure is what the caller sees.
TEST(DataParallelCpu, AFailingRankStopsTheOthers) {
  try {
    run_data_parallel(network(), on(Device::Cpu), 4, {}, [&](Engine& engine, int rank) {
      if (rank == 2) throw InputError("rank 2 gave up");
      Trainer(engine, steps(50)).run({});
    });
    ADD_FAILURE() << "no exception";
  } catch (const PeerFailure& e) {
    ADD_FAILURE() << "the peer's failure was reported: " << e.what();
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "rank 2 gave up");
  }
}

// A rank whose work returns while another still averages (ranks running different steps): the
// waiting rank fails with one line instead of waiting for ever. No work at all is refused.
TEST(DataParallelCpu, ARankThatReturnsEarlyDoesNotLeaveAnotherWaiting) {
  for (const int extra_rank : {0, 1}) {
    try {
      run_data_parallel(network(), on(Device::Cpu), 2, {}, [&](Engine& engine, int rank) {
        engine.train_step();
        if (rank == extra_rank) engine.train_step();
      });
      ADD_FAILURE() << "no exception";
    } catch (const Error& e) {
      EXPECT_STREQ(e.what(),
                   "in-process communicator: another rank's work returned while this rank averages "
                   "(every rank must run the same steps)");
    }
  }
  EXPECT_THROW(run_data_parallel(network(), on(Device::Cpu), 2, {}, RankWork{}), InputError);
}

// A divergence is replayed by the ranks together and named as on one engine; only rank 0 writes
// checkpoints.
TEST(DataParallelCpu, ANonFiniteStepIsFoundByTheRanksTogether) {
  const Network diverging =
      testing::network_with(data_path("dataset_epochs.json"), {{"optimizer", {{"type", "sgd"}, {"lr", 1e12}}}});
  Options checked = on(Device::Cpu);
  checked.check_finite = true;
  TrainOptions o = steps(20);
  o.log_every = 5;
  o.check_finite = true;
  std::string alone;
  try {
    Engine engine(diverging, checked);
    Trainer(engine, dataset(), nullptr, o, DataOptions{}).run({});
  } catch (const NonFiniteError& e) {
    alone = e.what();
  }
  ASSERT_TRUE(std::regex_match(alone, std::regex("step [0-9]+: non-finite .*"))) << alone;
  try {
    run_data_parallel(diverging, checked, 2, {},
                      [&](Engine& engine, int) { Trainer(engine, dataset(), nullptr, o, DataOptions{}).run({}); });
    ADD_FAILURE() << "no exception";
  } catch (const NonFiniteError& e) {
    EXPECT_EQ(alone.substr(0, alone.find(':')), std::string(e.what()).substr(0, alone.find(':'))) << e.what();
  }
}

// A NaN in one rank's batch is that rank's alone: the averaged gradient carries it into every
// rank's parameters, but only the rank whose batch held it names it; the others are told it was
// another rank's, and the caller of a data-parallel run sees the rank's own finding.
TEST(DataParallelCpu, ANonFiniteBatchOnOneRankIsNamedByThatRank) {
  Options checked = on(Device::Cpu);
  checked.check_finite = true;
  auto poison_batch = [](Engine& engine) {
    Shape shape = network().input_shape();
    shape[0] /= 2;  // the rank's share of the batch
    HostTensor x(shape);
    fill_uniform(x.data.data(), x.size(), 7, -1.0, 1.0);
    x.data[5] = std::nanf("");
    engine.set_input(x);
  };
  for (const int bad_rank : {0, 1}) {
    std::vector<std::optional<NonFinite>> found(2);
    run_data_parallel(network(), checked, 2, {}, [&](Engine& engine, int rank) {
      if (rank == bad_rank) poison_batch(engine);
      found[size_t(rank)] = engine.traced_train_step();
    });
    ASSERT_TRUE(found[0] && found[1]) << "bad rank " << bad_rank;
    const NonFinite& own = *found[size_t(bad_rank)];
    EXPECT_EQ(own.describe(), "non-finite input first appears in the batch (the data)");
    EXPECT_FALSE(own.on_another_rank);
    EXPECT_TRUE(found[size_t(1 - bad_rank)]->on_another_rank) << found[size_t(1 - bad_rank)]->describe();
  }
  TrainOptions o = steps(3);
  o.check_finite = true;
  try {
    run_data_parallel(network(), checked, 2, {}, [&](Engine& engine, int rank) {
      if (rank == 1) poison_batch(engine);
      Trainer(engine, o).run({});
    });
    ADD_FAILURE() << "no exception";
  } catch (const NonFiniteError& e) {
    EXPECT_STREQ(e.what(), "step 1: non-finite input first appears in the batch (the data)");
  }
}

TEST(DataParallelCpu, InProcessCommunicatorAveragesInRankOrder) {
  auto comms = in_process_communicators(3);
  EXPECT_EQ(comms[2]->rank(), 2);
  EXPECT_EQ(comms[0]->size(), 3);
  std::vector<std::vector<float>> buffers = {{1.f, 1e8f, -3.f}, {2.f, 1.f, 0.5f}, {4.f, -1e8f, 7.f}};
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r)
    threads.emplace_back([&, r] { comms[size_t(r)]->average(buffers[size_t(r)].data(), 3, nullptr); });
  for (auto& t : threads) t.join();
  for (const auto& b : buffers) {
    EXPECT_EQ(b[0], 7.f / 3.f);
    EXPECT_EQ(b[1], 1.f / 3.f);  // summed in double: 1e8 + 1 - 1e8 keeps the 1
    EXPECT_EQ(b[2], 4.5f / 3.f);
  }
}

// any_rank is a vote among training ranks: a forward-only engine with a communicator, which has
// no device word for the vote, refuses it instead of writing through a null pointer.
TEST(DataParallelCpu, AnyRankNeedsATrainingEngine) {
  auto comms = in_process_communicators(1);
  Options forward = on(Device::Cpu);
  forward.mode = Mode::Forward;
  forward.communicator = comms[0].get();
  Engine inference(network(), forward);
  try {
    inference.any_rank(true);
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "any_rank needs an engine built for training (Mode::Train)");
  }
  Options train = on(Device::Cpu);
  train.communicator = comms[0].get();
  Engine trainer(network(), train);
  EXPECT_TRUE(trainer.any_rank(true));
  EXPECT_FALSE(trainer.any_rank(false));
}

// A rank whose communicator is destroyed, before or while another averages, has left: the other's
// average throws instead of waiting for ever. An absurd rank count is refused up front.
TEST(DataParallelCpu, ADestroyedRanksPeersStopWaitingForIt) {
  std::vector<float> data = {1.f, 2.f};
  auto comms = in_process_communicators(2);
  comms[1].reset();
  EXPECT_THROW(comms[0]->average(data.data(), 2, nullptr), Error);

  comms = in_process_communicators(2);
  std::string error;
  std::thread waiting([&] {
    try {
      comms[0]->average(data.data(), 2, nullptr);
    } catch (const Error& e) {
      error = e.what();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  comms[1].reset();
  waiting.join();
  EXPECT_NE(error.find("another rank's work returned while this rank averages"), std::string::npos) << error;

  EXPECT_THROW(in_process_communicators(kMaxInProcessRanks + 1), InputError);
  EXPECT_THROW(in_process_communicators(0), InputError);
}

// A communicator of the caller's whose rank is not one of its ranks: each rank takes the slice of
// every batch at its rank, so the engine refuses it before it reads past the epoch's order.
TEST(DataParallelCpu, ACommunicatorsRankOutsideItsSizeIsRefused) {
  struct Fixed : Communicator {
    int rank_, size_;
    Fixed(int rank, int size) : rank_(rank), size_(size) {}
    int rank() const override { return rank_; }
    int size() const override { return size_; }
    std::string describe() const override { return "fixed"; }
    void average(float*, int64_t, void*) override { ADD_FAILURE() << "averaged"; }
    void abort() override {}
  };
  const std::pair<Fixed, std::string> cases[] = {{{2, 2}, "Options::communicator: rank 2 is not from 0 to 1"},
                                                 {{-1, 2}, "Options::communicator: rank -1 is not from 0 to 1"},
                                                 {{0, 0}, "Options::communicator: its size is 0, not at least 1"},
                                                 {{0, -3}, "Options::communicator: its size is -3, not at least 1"}};
  for (auto [comm, want] : cases) {
    Options o = on(Device::Cpu);
    o.communicator = &comm;
    try {
      Engine engine(network(), o);
      ADD_FAILURE() << want;
    } catch (const InputError& e) {
      EXPECT_EQ(std::string(e.what()), want);
    }
  }
  Fixed last(1, 2);  // the same engine at a rank that is one builds
  Options o = on(Device::Cpu);
  o.communicator = &last;
  EXPECT_NO_THROW(Engine(network(), o));
}

// A null buffer or a negative count is refused before the rank joins the collective.
TEST(DataParallelCpu, AverageRefusesANullBufferOrANegativeCount) {
  auto comms = in_process_communicators(1);
  EXPECT_THROW(comms[0]->average(nullptr, 5, nullptr), InputError);
  std::vector<float> data = {1.f, 2.f};
  EXPECT_THROW(comms[0]->average(data.data(), -1, nullptr), InputError);
  comms[0]->average(data.data(), 2, nullptr);  // one rank: its own values
  EXPECT_EQ(data, (std::vector<float>{1.f, 2.f}));
}

// Two threads averaging on one rank's communicator (one engine per rank, misused): the second is
// refused and the first stops with it, instead of a round that waits for ever on the missing rank.
TEST(DataParallelCpu, OneRankAveragingOnTwoThreadsIsRefused) {
  auto comms = in_process_communicators(2);
  std::vector<std::vector<float>> buffers(2, std::vector<float>(3, 1.f));
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      try {
        comms[0]->average(buffers[size_t(t)].data(), 3, nullptr);
      } catch (const Error& e) {
        errors[size_t(t)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  std::sort(errors.begin(), errors.end());  // whichever thread came second is refused
  EXPECT_EQ(errors[0], "in-process communicator: another rank failed");
  EXPECT_EQ(errors[1], "in-process communicator: rank 0 is averaging on two threads at once (one engine per rank)");
}

// One rank through NCCL is the plain engine, bit for bit, and the step, the all-reduce included,
// is still one captured CUDA graph.
TEST(DataParallelGpu, OneRankThroughNcclIsThePlainEngineBitwise) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  ASSERT_TRUE(nccl_available()) << "the CUDA build found no NCCL";
  const Parameters alone = train_alone(5, Device::Cuda);
  bool graph = false;
  std::vector<Parameters> got(1);
  run_data_parallel(network(), on(Device::Cuda), 1, {}, [&](Engine& engine, int) {
    Trainer(engine, dataset(), nullptr, steps(5), DataOptions{}).run({});
    graph = engine.replaying_cuda_graph();
    got[0] = engine.parameters();
  });
  EXPECT_TRUE(graph);
  for (const auto& [name, value] : alone) EXPECT_TRUE(bitwise_equal(got[0].at(name), value)) << name;
}

// The half of the mpirun ranks' CUDA path that needs no GPU: rank 0's NCCL unique id reaches
// every process intact (mpi_nccl_unique_id, MPI_Bcast). Three processes under mpirun each print
// the id they hold (tests/helpers/mpi_nccl_id.cpp).
TEST(DataParallelMpi, RankZerosNcclIdReachesEveryProcess) {
  constexpr int kProcesses = 3;
  std::vector<std::string> argv = testing::mpirun_argv(kProcesses);
  if (!mpi_available() || !nccl_available() || argv.empty())
    GTEST_SKIP() << "needs MPI and NCCL at build and mpirun on PATH (Debian: libopenmpi-dev, openmpi-bin)";
  argv.push_back(ANVIL_MPI_NCCL_ID);
  testing::Child child(argv);
  ASSERT_TRUE(child.started()) << "cannot start " << argv[0];
  const testing::Finished run = child.finish(120);
  ASSERT_EQ(run.status, 0) << testing::describe(run);
  const std::regex line("rank ([0-9]+) of ([0-9]+): ([0-9a-f]+)");
  std::set<int> ranks;
  std::set<std::string> ids;
  std::istringstream out(run.out);
  for (std::string text; std::getline(out, text);) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(text, m, line)) << text;
    EXPECT_EQ(std::stoi(m[2].str()), kProcesses);
    ranks.insert(std::stoi(m[1].str()));
    ids.insert(m[3].str());
  }
  EXPECT_EQ(ranks, (std::set<int>{0, 1, 2})) << run.out;
  ASSERT_EQ(ids.size(), 1u) << "the processes hold different ids:\n" << run.out;
  EXPECT_EQ(ids.begin()->size(), 2 * 128u) << "NCCL's unique id is 128 bytes";
  EXPECT_NE(ids.begin()->find_first_not_of('0'), std::string::npos) << "an id of zeros";
}

// What each `mpirun` process builds once MPI_Bcast has brought it rank 0's unique id
// (mpi_nccl_communicator), with one rank: ncclCommInitRank from the id, bitwise the plain engine.
// (Two processes would need two GPUs: NCCL takes one GPU per rank.)
TEST(DataParallelGpu, OneRankFromAUniqueIdIsThePlainEngineBitwise) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  ASSERT_TRUE(nccl_available()) << "the CUDA build found no NCCL";
  const Parameters alone = train_alone(5, Device::Cuda);
  EXPECT_THROW(nccl_communicator("not an id", 0, 1), Error);
  EXPECT_THROW(nccl_communicator(nccl_unique_id(), 1, 1), Error);  // rank out of range: NCCL's error, named
  const std::unique_ptr<Communicator> comm = nccl_communicator(nccl_unique_id(), 0, 1);
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  Options options = on(Device::Cuda);
  options.communicator = comm.get();
  Engine engine(network(), options);
  train_steps(engine, 5, "", "");
  for (const auto& [name, value] : alone) EXPECT_TRUE(bitwise_equal(engine.parameters().at(name), value)) << name;
}

TEST(DataParallelGpu, MoreGpusThanExistOrTwiceTheSameAreRefused) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const auto nothing = [](Engine&, int) { ADD_FAILURE() << "a rank ran"; };
  EXPECT_THROW(run_data_parallel(network(), on(Device::Cuda), 2, {0, 0}, nothing), InputError);
  EXPECT_THROW(run_data_parallel(network(), on(Device::Cuda), 1, {4096}, nothing), InputError);
}

}  // namespace
}  // namespace anvil
