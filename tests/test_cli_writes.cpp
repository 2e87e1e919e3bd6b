// What `anvil` leaves behind when it is killed, interrupted or runs out of
// disk while it writes an output (tools/anvil.cpp, anvil/output_file.hpp):
// the old complete file or the new complete one, never a part; no temporary
// file (.anvil-XXXXXX) after an error, SIGINT or SIGTERM (SIGKILL cannot be
// caught and may leave one); and a non-zero exit with one line naming the
// path and the reason.
//
// The kill tests run `anvil train` many times and end each run at a random
// moment from a seeded generator (ANVIL_KILL_SEED replaces the seed); the
// moment decides only which outcome a run reaches, every outcome is checked.
// A full disk is simulated with RLIMIT_FSIZE: a write past the limit fails
// with EFBIG ("File too large"), as one on a full disk fails with ENOSPC,
// since anvil ignores SIGXFSZ rather than be ended by it.
#include <gtest/gtest.h>

#include <signal.h>
#include <fcntl.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "anvil/engine.hpp"
#include "anvil/network.hpp"
#include "anvil/safetensors.hpp"
#include "tests/child_process.hpp"
#include "tests/contains.hpp"
#include "tests/temp_dir_test.hpp"

namespace {

using anvil::testing::Child;
using anvil::testing::Contains;
using anvil::testing::describe;
using anvil::testing::Finished;
namespace fs = std::filesystem;
using anvil::testing::read_bytes;
using anvil::testing::write_bytes;
using clock_type = std::chrono::steady_clock;

const std::string kCli = ANVIL_CLI_PATH;

// The temporary files of anvil's writer in `dir`.
std::vector<std::string> temporaries(const std::string& dir) {
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind(".anvil-", 0) == 0) found.push_back(e.path().string());
  return found;
}

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

// Half a million parameters (2 MiB of safetensors; 4 MiB as a checkpoint, with
// SGD's momentum) and little compute: writing is a good part of each run.
const char* const kWideNet = R"({
  "name": "wide",
  "input": [1, 512, 1, 1],
  "layers": [{"type": "conv2d", "name": "wide", "in_channels": 512, "out_channels": 1024, "kernel_size": 1}],
  "loss": "mse",
  "optimizer": {"type": "sgd", "lr": 0.01, "momentum": 0.9},
  "seed": 3
})";

class CliWrites : public anvil::testing::TempDirTest {
 protected:
  // The wide network and a dataset of four samples for it (four steps an epoch).
  void SetUp() override {
    TempDirTest::SetUp();
    net_ = path("wide.json");
    write_bytes(net_, kWideNet);
    anvil::TensorFile data;
    data.tensors["input"] = anvil::HostTensor({4, 512, 1, 1}, std::vector<float>(4 * 512, 0.5f));
    data.tensors["target"] = anvil::HostTensor({4, 1024, 1, 1}, std::vector<float>(4 * 1024, 0.25f));
    data_ = path("wide_data.safetensors");
    anvil::write_safetensors(data_, data);
  }

  // `anvil ARGS...` to the end (60 s at most), with in_child run before exec.
  static Finished run(const std::vector<std::string>& args, const std::function<void()>& in_child = nullptr) {
    std::vector<std::string> argv{kCli};
    argv.insert(argv.end(), args.begin(), args.end());
    Child child(argv, in_child);
    if (!child.started()) {
      ADD_FAILURE() << "cannot start " << kCli;
      return {};
    }
    return child.finish(60);
  }

  std::string net_, data_;
};

// ------------------------------------------------------------------ a full disk

// The child may write files of at most `bytes` bytes, with SIGXFSZ at its
// default action (ending the process): anvil itself turns a write beyond the
// limit into EFBIG, as `ulimit -f` in a shell would leave it.
std::function<void()> file_size_limit(rlim_t bytes) {
  return [bytes] { anvil::testing::limit_file_size(bytes, SIG_DFL); };
}

class CliFullDisk : public CliWrites {
 protected:
  // `args` (which write `out`) run once to make the old file, then again with
  // room for `room(old size)` bytes a file: exit 1 with one line naming `out`
  // and the reason, the old file byte for byte, and no temporary file.
  Finished expect_old_file_kept(const std::vector<std::string>& args, const std::string& out,
                                const std::function<rlim_t(rlim_t)>& room, const std::string& what) {
    const Finished first = run(args);
    EXPECT_EQ(first.status, 0) << describe(first);
    const std::string old = read_bytes(out);
    // Room for the 1 KiB shared-memory file that LLVM's OpenMP runtime (clang builds) makes at start.
    const rlim_t limit = room(old.size());
    EXPECT_GE(limit, 2048u) << "make the output larger";
    const Finished r = run(args, file_size_limit(limit));
    EXPECT_EQ(r.status, 1) << describe(r);
    EXPECT_EQ(r.err, "anvil: error: " + out + ": " + what + ": File too large\n") << describe(r);
    EXPECT_EQ(read_bytes(out), old);
    EXPECT_TRUE(temporaries(dir_).empty());
    return r;
  }

  static rlim_t half(rlim_t size) { return size / 2; }
};

TEST_F(CliFullDisk, SaveKeepsTheOldParameters) {
  const std::string out = path("params.safetensors");
  const Finished r = expect_old_file_kept({"train", net_, "--device", "cpu", "--steps", "2", "--save", out}, out, half,
                                          "cannot write");
  EXPECT_EQ(r.out.find("saved parameters"), std::string::npos) << r.out;
}

TEST_F(CliFullDisk, CheckpointKeepsTheOldCheckpoint) {
  const std::string out = path("run.ckpt");
  expect_old_file_kept({"train", net_, "--device", "cpu", "--data", data_, "--steps", "2", "--checkpoint", out,
                        "--checkpoint-every", "1"},
                       out, half, "cannot write");
}

// It once replaced a good file with 0 bytes, then printed PASSED and exited 0.
TEST_F(CliFullDisk, BenchJsonKeepsTheOldFileAndFails) {
  // 65 layers, each listed in the JSON: some 7 KiB.
  nlohmann::json deep = nlohmann::json::parse(kWideNet);
  deep["input"] = {1, 2, 4, 4};
  deep["layers"] = {{{"type", "channel_scale"}, {"name", "scale"}}};
  for (int i = 0; i < 64; ++i) deep["layers"].push_back({{"type", "leaky_relu"}, {"negative_slope", 0.1}});
  const std::string net = path("deep.json"), out = path("bench.json");
  write_bytes(net, deep.dump());
  const Finished r = expect_old_file_kept(
      {"bench", net, "--device", "cpu", "--iters", "2", "--warmup", "0", "--json", out}, out, half, "cannot write");
  EXPECT_EQ(r.out.find("PASSED"), std::string::npos) << r.out;
  EXPECT_PRED_FORMAT2(Contains, r.out, "FAILED\n");
}

// The metrics file is appended to: a line that does not fit is taken back whole.
TEST_F(CliFullDisk, MetricsKeepOnlyWholeLines) {
  const std::string out = path("metrics.jsonl");
  expect_old_file_kept(
      {"train", net_, "--device", "cpu", "--steps", "20", "--log-every", "1", "--metrics", out}, out,
      [](rlim_t size) { return size + 20; }, "cannot write the metrics file");
}

// stdout on a full device: exit 1 and one line, not exit 0 with the report lost.
TEST_F(CliFullDisk, StdoutOnAFullDeviceFails) {
  const auto stdout_to_dev_full = [] {
    const int fd = ::open("/dev/full", O_WRONLY);
    if (fd >= 0) ::dup2(fd, STDOUT_FILENO);
  };
  const std::vector<std::vector<std::string>> commands = {{"info", net_, "--device", "cpu"}, {"--version"}, {"--help"}};
  for (const auto& args : commands) {
    const Finished r = run(args, stdout_to_dev_full);
    EXPECT_EQ(r.status, 1) << args[0] << "\n" << describe(r);
    EXPECT_EQ(r.err, "anvil: error: writing the standard output failed: No space left on device\n") << describe(r);
  }
  const Finished ok = run({"info", net_, "--device", "cpu"});
  EXPECT_EQ(ok.status, 0) << describe(ok);
  EXPECT_PRED_FORMAT2(Contains, ok.out, "total parameters");
}

// A pipe on stdout whose reader has gone (`| head -1` that has exited): bench stops before its
// timing loop with one line and exit 1, rather than time every iteration into the void.
TEST_F(CliFullDisk, BenchIntoAPipeWithoutReaderStopsBeforeTiming) {
  const auto started = clock_type::now();
  const Finished r =
      run({"bench", net_, "--device", "cpu", "--iters", "100000"}, anvil::testing::stdout_to_a_pipe_without_reader);
  EXPECT_EQ(r.status, 1) << describe(r);
  EXPECT_EQ(r.err, "anvil: error: writing the standard output failed: Broken pipe\n") << describe(r);
  EXPECT_LT(clock_type::now() - started, std::chrono::seconds(30)) << "it ran the iterations";
}

// An output written through stdout into a pipe without reader: the write's failure is the one
// line, not followed by the standard output's own.
TEST_F(CliFullDisk, AnOutputThroughStdoutIntoAClosedPipeSaysOneLine) {
  const std::vector<std::vector<std::string>> commands = {
      {"run", net_, "--device", "cpu", "--output", "/dev/stdout", "--force"},
      {"train", net_, "--device", "cpu", "--steps", "2", "--log-every", "1", "--metrics", "/dev/stdout", "--force"}};
  for (const auto& args : commands) {
    const Finished r = run(args, anvil::testing::stdout_to_a_pipe_without_reader);
    EXPECT_EQ(r.status, 1) << args[0] << "\n" << describe(r);
    EXPECT_EQ(r.err.rfind("anvil: error: ", 0), 0u) << describe(r);
    EXPECT_PRED_FORMAT2(Contains, r.err, "Broken pipe");
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << describe(r);
  }
}

// A closed standard descriptor: the next file opened would take its number
// (and the progress text). Closed stdout: refused before any work; closed
// stderr or stdin: the run goes on, its files get only their own content.
TEST_F(CliWrites, ClosedStandardDescriptorsTakeNoFile) {
  const std::string metrics = path("metrics.jsonl");
  const std::vector<std::string> args = {"train", net_,          "--device", "cpu",       "--steps",
                                         "3",     "--log-every", "1",        "--metrics", metrics};
  const Finished no_stdout = run(args, [] { ::close(STDOUT_FILENO); });
  EXPECT_EQ(no_stdout.status, 1) << describe(no_stdout);
  EXPECT_EQ(no_stdout.err, "anvil: error: the standard output is closed\n") << describe(no_stdout);
  EXPECT_FALSE(fs::exists(metrics));
  for (int fd : {STDIN_FILENO, STDERR_FILENO}) {
    const Finished r = run(args, [fd] { ::close(fd); });
    EXPECT_EQ(r.status, 0) << fd << "\n" << describe(r);
    EXPECT_PRED_FORMAT2(Contains, r.out, "step 3/3");
    std::ifstream in(metrics);
    int lines = 0;
    for (std::string line; std::getline(in, line); ++lines)
      EXPECT_TRUE(nlohmann::json::accept(line)) << fd << ": not a metrics record: " << line;
    EXPECT_EQ(lines, 3) << fd;
    fs::remove(metrics);
  }
}

// ------------------------------------------------------------------ kills

unsigned kill_seed(unsigned fallback) {
  const char* env = std::getenv("ANVIL_KILL_SEED");
  return env != nullptr ? static_cast<unsigned>(std::strtoul(env, nullptr, 10)) : fallback;
}

class CliKills : public CliWrites {
 protected:
  static constexpr int kRuns = 50;

  void SetUp() override {
    CliWrites::SetUp();
    out_dir_ = path("out");
    fs::create_directories(out_dir_);
    anvil::Options o;
    o.device = anvil::Device::Cpu;
    o.mode = anvil::Mode::Train;
    engine_.emplace(anvil::Network::load(net_), o);
  }

  // What a run may leave as its output besides the old file.
  enum class Output { Parameters, Checkpoint };

  // `runs` runs of `anvil ARGS` (writing `out`, which holds the old file
  // `old` before each), each sent `sig` after a random delay: half of them
  // anywhere in the run, half after training, while the outputs are written.
  void kill_runs(const std::vector<std::string>& args, const std::string& out, Output kind, int sig, unsigned seed) {
    const std::string old = read_bytes(out);
    ASSERT_FALSE(old.empty());
    std::vector<std::string> argv{kCli};
    argv.insert(argv.end(), args.begin(), args.end());

    // One run to the end, to spread the delays over: its length, and the time from
    // the summary ("trained N steps", printed before the final writes) to its end.
    double whole_s = 0, writes_s = 0;
    {
      const auto start = clock_type::now();
      Child child(argv);
      ASSERT_TRUE(child.wait_for_output("\ntrained ", 60)) << child.out();
      const double trained_s = seconds_since(start);
      const Finished r = child.finish(60);
      ASSERT_EQ(r.status, 0) << describe(r);
      whole_s = seconds_since(start);
      writes_s = whole_s - trained_s;
      expect_complete(out, kind);
      write_bytes(out, old);
    }

    std::mt19937 gen(seed);
    int finished_first = 0, temporary_at_signal = 0, temporary_left = 0, kept_old = 0, wrote_new = 0;
    const auto start = clock_type::now();
    for (int i = 0; i < kRuns; ++i) {
      const bool during_writes = i % 2 == 1;
      const double delay_s = std::uniform_real_distribution<double>(0, during_writes ? writes_s : whole_s)(gen);
      SCOPED_TRACE("run " + std::to_string(i) + " (seed " + std::to_string(seed) + "): signal " + std::to_string(sig) +
                   " " + std::to_string(delay_s) + " s after " + (during_writes ? "the summary" : "the start"));
      Finished r;
      {
        Child child(argv);
        ASSERT_TRUE(child.started());
        if (during_writes) {
          ASSERT_TRUE(child.wait_for_output("\ntrained ", 60)) << child.out();
        }
        std::this_thread::sleep_for(std::chrono::duration<double>(delay_s));
        temporary_at_signal += !temporaries(out_dir_).empty();
        child.send(sig);
        r = child.finish(60);
      }
      ASSERT_FALSE(r.timed_out) << describe(r);
      finished_first += r.status == 0;
      // Ended by the signal, stopped by it after a step (130), or done before it came.
      const bool stopped = sig == SIGINT && r.status == 128 + SIGINT;
      ASSERT_TRUE(r.signal == sig || stopped || r.status == 0) << describe(r);

      const std::vector<std::string> left = temporaries(out_dir_);
      if (sig == SIGKILL) {
        ASSERT_LE(left.size(), 1u);
        temporary_left += static_cast<int>(left.size());
        for (const std::string& t : left) fs::remove(t);
      } else {
        ASSERT_TRUE(left.empty()) << left.front();
      }
      // A run that finished, or that stopped and wrote its checkpoint, left the new file;
      // one that stopped after a step never writes --save.
      const bool must_be_new = r.status == 0 || (stopped && kind == Output::Checkpoint);
      const bool must_be_old = stopped && kind == Output::Parameters;
      if (read_bytes(out) == old) {
        ASSERT_FALSE(must_be_new) << describe(r);
        ++kept_old;
      } else {
        ASSERT_FALSE(must_be_old) << describe(r);
        ASSERT_NO_FATAL_FAILURE(expect_complete(out, kind)) << describe(r);
        ++wrote_new;
        write_bytes(out, old);
      }
    }
    std::printf(
        "[ info     ] signal %d (seed %u), %d runs in %.1f s: %d kept the old file, %d left a new one "
        "(%d had finished first); a temporary file was there at %d signals; %d were left\n",
        sig, seed, kRuns, seconds_since(start), kept_old, wrote_new, finished_first, temporary_at_signal,
        temporary_left);
    RecordProperty("signalled_during_a_write", temporary_at_signal);
  }

  // `out` is a complete output: it reads back whole and holds what it should.
  void expect_complete(const std::string& out, Output kind) {
    if (kind == Output::Checkpoint) {
      ASSERT_NO_THROW(engine_->load_checkpoint(out));
      return;
    }
    anvil::TensorFile file;
    ASSERT_NO_THROW(file = anvil::read_safetensors(out));
    ASSERT_EQ(file.tensors.count("wide.weight"), 1u);
    EXPECT_EQ(file.tensors.at("wide.weight").shape, (anvil::Shape{1024, 512, 1, 1}));
    EXPECT_EQ(file.tensors.size(), 2u);
    EXPECT_EQ(file.metadata.count("steps"), 1u);
  }

  void save_runs(int sig, unsigned seed) {
    const std::string out = out_dir_ + "/params.safetensors";
    anvil::TensorFile old;
    old.tensors = engine_->parameters();
    old.metadata["network"] = "an older file";
    anvil::write_safetensors(out, old);
    kill_runs({"train", net_, "--device", "cpu", "--steps", "3", "--save", out}, out, Output::Parameters, sig, seed);
  }

  void checkpoint_runs(int sig, unsigned seed) {
    const std::string out = out_dir_ + "/run.ckpt";
    // The old file must differ from any the runs write: a run stopped before its first step writes
    // the initial parameters at position 0, so the old one says step 1.
    engine_->save_checkpoint(out, anvil::TrainPosition{1, 0, 1});
    kill_runs({"train", net_, "--device", "cpu", "--data", data_, "--steps", "4", "--checkpoint", out,
               "--checkpoint-every", "1"},
              out, Output::Checkpoint, sig, seed);
  }

  std::string out_dir_;
  std::optional<anvil::Engine> engine_;  // for loading the checkpoints written
};

TEST_F(CliKills, SigkillDuringSave) { save_runs(SIGKILL, kill_seed(1)); }
TEST_F(CliKills, SigintDuringSave) { save_runs(SIGINT, kill_seed(2)); }
TEST_F(CliKills, SigkillDuringCheckpoints) { checkpoint_runs(SIGKILL, kill_seed(3)); }
TEST_F(CliKills, SigintDuringCheckpoints) { checkpoint_runs(SIGINT, kill_seed(4)); }

}  // namespace
