// Tests of `anvil train` over a dataset and of `anvil eval` (tools/anvil.cpp),
// run as separate processes on the CPU: what they print on a terminal and on a
// pipe, the metrics file, checkpoints and resume, signals, bad datasets and
// flags, the evaluated loss against one computed here, and --strict.
//
// Every run uses tests/data/dataset_epochs.json (batch 32, input (2, 6, 6),
// output (3, 3, 3)) and its datasets: 256 training samples (8 steps an epoch)
// and 64 validation samples, or small files written here.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/child_process.hpp"
#include "tests/contains.hpp"
#include "tests/require_gpu.hpp"
#include "tests/temp_dir_test.hpp"
#include "anvil/communicator.hpp"
#include "anvil/dataset.hpp"
#include "anvil/engine.hpp"
#include "anvil/error.hpp"
#include "anvil/network.hpp"
#include "anvil/safetensors.hpp"
#include "tests/terminal_run.hpp"

namespace {

using anvil::testing::Contains;

namespace fs = std::filesystem;
using anvil::HostTensor;
using anvil::Shape;
using anvil::TensorFile;
using anvil::testing::read_bytes;
using anvil::testing::write_bytes;

const std::string kCli = ANVIL_CLI_PATH;
const std::string kData = ANVIL_TEST_DATA_DIR;
const std::string kNet = kData + "/dataset_epochs.json";
const std::string kTrain = kData + "/dataset_epochs_train.safetensors";
const std::string kVal = kData + "/dataset_epochs_val.safetensors";

using anvil::testing::Child;
using anvil::testing::describe;
using anvil::testing::Finished;
using anvil::testing::mpirun_argv;

// ------------------------------------------------------------------ text

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::istringstream in(text);
  for (std::string part; std::getline(in, part, sep);) parts.push_back(part);
  return parts;
}

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (size_t at = 0; (at = text.find(from, at)) != std::string::npos; at += to.size())
    text.replace(at, from.size(), to);
  return text;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// The number after `key ` in a line of fields ("loss 0.123  smoothed ..."), or NaN.
double field(const std::string& line, const std::string& key) {
  std::smatch m;
  if (!std::regex_search(line, m, std::regex("(^|  )" + key + " ([^ ]+)"))) return std::nan("");
  return std::strtod(m[2].str().c_str(), nullptr);
}

bool close_rel(double got, double want, double rtol) {
  return std::fabs(got - want) <= rtol * std::max(std::fabs(want), 1e-30);
}

// ------------------------------------------------------------------ fixture

class CliTrain : public anvil::testing::TempDirTest {
 protected:
  // `anvil ARGS...` to the end (60 s at most: a hang is a failure, not a stuck test run).
  static Finished run(const std::vector<std::string>& args, double timeout_s = 60) {
    std::vector<std::string> argv{kCli};
    argv.insert(argv.end(), args.begin(), args.end());
    Child child(argv);
    if (!child.started()) {
      ADD_FAILURE() << "cannot start " << kCli;
      return {};
    }
    return child.finish(timeout_s);
  }

  // `anvil train NET --device cpu ARGS...`
  static Finished train(const std::vector<std::string>& args, const std::string& net = kNet) {
    std::vector<std::string> a{"train", net, "--device", "cpu"};
    a.insert(a.end(), args.begin(), args.end());
    return run(a);
  }
  static Finished eval(const std::vector<std::string>& args, const std::string& net = kNet) {
    std::vector<std::string> a{"eval", net, "--device", "cpu"};
    a.insert(a.end(), args.begin(), args.end());
    return run(a);
  }

  // A dataset of these shapes (values from a fixed generator), leaving out 'target' when asked.
  std::string write_dataset(const std::string& name, const Shape& input, const Shape& target,
                            bool with_target = true) const {
    std::mt19937 gen(7);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    TensorFile file;
    HostTensor x(input), y(target);
    for (float& v : x.data) v = u(gen);
    for (float& v : y.data) v = u(gen);
    file.tensors["input"] = x;
    if (with_target) file.tensors["target"] = y;
    const std::string p = path(name);
    anvil::write_safetensors(p, file);
    return p;
  }

  // dataset_epochs.json with `edit` applied, written into the temporary directory.
  std::string network_with(const std::string& name, const std::function<void(nlohmann::json&)>& edit) const {
    nlohmann::json j = nlohmann::json::parse(read_bytes(kNet));
    edit(j);
    const std::string p = path(name);
    write_bytes(p, j.dump(2));
    return p;
  }

  // The parameters after `steps` steps over the training set.
  std::string trained_weights(const std::string& name, int steps) const {
    const std::string p = path(name);
    const Finished r = train({"--data", kTrain, "--steps", std::to_string(steps), "--save", p});
    EXPECT_EQ(r.status, 0) << describe(r);
    return p;
  }

  // Exit 2 with exactly one line on stderr, "anvil: error: <message>", and nothing on stdout.
  static void expect_bad_input(const Finished& r, const std::string& message) {
    EXPECT_EQ(r.status, 2) << describe(r);
    EXPECT_EQ(r.err, "anvil: error: " + message + "\n") << describe(r);
    EXPECT_EQ(r.out, "") << describe(r);
  }
};

// ------------------------------------------------------------------ 1. terminal and pipe

// The header's second line says where the data lives; the tests below index the lines without it.
void expect_and_drop_data_line(std::vector<std::string>& lines, const std::string& text) {
  ASSERT_GE(lines.size(), 2u) << text;
  EXPECT_TRUE(starts_with(lines[1], "data: ")) << lines[1];
  EXPECT_PRED_FORMAT2(Contains, lines[1], "256 samples, in host memory (the CPU backend)");
  lines.erase(lines.begin() + 1);
}

// On a pseudo-terminal the progress is one line redrawn in place: "\r", erase-line, the
// fields, and no newline until the summary.
TEST_F(CliTrain, OnATerminalRedrawsOneLineThenTheSummary) {
  const anvil::testing::ChildOutput r = anvil::testing::run_child(
      {kCli, "train", kNet, "--device", "cpu", "--data", kTrain, "--epochs", "1", "--log-every", "2"},
      /*terminal=*/true, /*columns=*/200, /*timeout_s=*/60);
  ASSERT_FALSE(r.timed_out) << r.out;
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string text = replace_all(r.out, "\r\n", "\n");  // the terminal's own translation
  std::vector<std::string> lines = lines_of(text);
  expect_and_drop_data_line(lines, text);
  ASSERT_EQ(lines.size(), 5u) << text;  // the header, the progress line, three summary lines
  EXPECT_TRUE(starts_with(lines[0], "training dataset_epochs on cpu: 8 steps (8 per epoch), batch 32, ")) << lines[0];

  const std::vector<std::string> draws = split(lines[1], '\r');
  ASSERT_EQ(draws.size(), 6u) << lines[1];  // "" then the logged steps 1, 2, 4, 6, 8
  EXPECT_EQ(draws[0], "");
  const char* steps[] = {"step 1/8  ", "step 2/8  ", "step 4/8  ", "step 6/8  ", "step 8/8  "};
  for (size_t i = 1; i < draws.size(); ++i) {
    EXPECT_TRUE(starts_with(draws[i], std::string("\x1b[2K") + steps[i - 1])) << draws[i];
    EXPECT_LE(draws[i].size() - 4, 199u) << draws[i];
    EXPECT_PRED_FORMAT2(Contains, draws[i], "  smoothed ");
    EXPECT_PRED_FORMAT2(Contains, draws[i], "  ETA ");
  }
  EXPECT_PRED_FORMAT2(Contains, draws.back(), "ETA 0.0s");
  EXPECT_TRUE(starts_with(lines[2], "trained 8 steps in ")) << lines[2];
  EXPECT_TRUE(starts_with(lines[3], "loss: first ")) << lines[3];
  EXPECT_TRUE(starts_with(lines[4], "throughput: ")) << lines[4];
  EXPECT_EQ(text.find("best validation"), std::string::npos) << text;  // no --val
}

// On a pipe every logged step is one plain line, then the summary; with --val the last
// line carries the validation loss and the summary its best.
TEST_F(CliTrain, OnAPipePrintsOnePlainLinePerLoggedStepThenTheSummary) {
  const Finished r = train({"--data", kTrain, "--val", kVal, "--epochs", "1", "--log-every", "2"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out.find('\r'), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find('\x1b'), std::string::npos) << r.out;
  std::vector<std::string> lines = lines_of(r.out);
  expect_and_drop_data_line(lines, r.out);
  ASSERT_EQ(lines.size(), 1u + 5u + 4u) << r.out;
  EXPECT_TRUE(starts_with(lines[0], "training dataset_epochs on cpu: 8 steps (8 per epoch), batch 32, ")) << lines[0];
  const int steps[] = {1, 2, 4, 6, 8};
  for (int i = 0; i < 5; ++i) {
    const std::string& line = lines[1 + i];
    EXPECT_TRUE(starts_with(line, "step " + std::to_string(steps[i]) + "/8  epoch ")) << line;
    EXPECT_GT(field(line, "loss"), 0) << line;
    EXPECT_PRED_FORMAT2(Contains, line, " steps/s  ");
    EXPECT_PRED_FORMAT2(Contains, line, " samples/s  ETA ");
    // Validation only at the end (no --val-every): only the last line shows it.
    EXPECT_EQ(line.find("  val ") != std::string::npos, i == 4) << line;
  }
  EXPECT_TRUE(starts_with(lines[6], "trained 8 steps in ")) << lines[6];
  // The summary's first and last loss are those of the first and last logged lines.
  std::smatch m;
  ASSERT_TRUE(std::regex_match(lines[7], m, std::regex("loss: first ([^,]+), last ([^ ]+) \\(smoothed [^)]+\\)")))
      << lines[7];
  EXPECT_EQ(std::stod(m[1]), field(lines[1], "loss"));
  EXPECT_EQ(std::stod(m[2]), field(lines[5], "loss"));
  ASSERT_TRUE(std::regex_match(lines[8], m, std::regex("best validation loss: ([^ ]+) at step 8"))) << lines[8];
  EXPECT_EQ(std::stod(m[1]), field(lines[5], "val"));
  EXPECT_TRUE(std::regex_match(lines[9], std::regex("throughput: [0-9.]+ steps/s, [0-9.]+ samples/s"))) << lines[9];
}

// --keep-last over 40 samples, batch 32: each epoch is a full batch, then one of 8 samples padded to
// 32 rows. Each line's samples/s over its steps/s is the samples of its one step (--log-every 1),
// and the summary's is the mean, 20: the padding rows are not samples.
TEST_F(CliTrain, SamplesPerSecondCountsOnlyTheRealSamplesOfAKeptPartialBatch) {
  const std::string d = write_dataset("forty.safetensors", {40, 2, 6, 6}, {40, 3, 3, 3});
  const Finished r = train({"--data", d, "--epochs", "2", "--keep-last", "--log-every", "1"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const std::vector<std::string> lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 2u + 4u + 3u) << r.out;
  const auto samples_per_step = [](const std::string& line, const std::string& pattern) {
    std::smatch m;
    if (!std::regex_search(line, m, std::regex(pattern))) return std::nan("");
    return std::stod(m[2]) / std::stod(m[1]);
  };
  const double want[] = {32, 8, 32, 8};
  for (int i = 0; i < 4; ++i) {
    const std::string& line = lines[2 + i];
    EXPECT_TRUE(close_rel(samples_per_step(line, "  ([0-9.]+) steps/s  ([0-9.]+) samples/s  "), want[i], 0.05)) << line;
  }
  EXPECT_TRUE(close_rel(samples_per_step(lines[8], "^throughput: ([0-9.]+) steps/s, ([0-9.]+) samples/s$"), 20, 0.05))
      << lines[8];
}

// ------------------------------------------------------------------ 2. metrics

TEST_F(CliTrain, MetricsAreOneJsonLinePerLoggedStepWithTheScheduledLrAndAppend) {
  // StepLR every 3 steps, halving: step k (1-based) uses 0.1 * 0.5^floor((k - 1) / 3).
  const std::string net = network_with("scheduled.json", [](nlohmann::json& j) {
    j["optimizer"]["lr_schedule"] = {{"type", "step"}, {"step_size", 3}, {"gamma", 0.5}};
  });
  const std::string metrics = path("metrics.jsonl"), params = path("params.safetensors");
  const Finished r = train({"--data", kTrain, "--val", kVal, "--val-every", "5", "--epochs", "2", "--log-every", "3",
                            "--metrics", metrics, "--save", params},
                           net);
  ASSERT_EQ(r.status, 0) << describe(r);

  const std::vector<std::string> lines = lines_of(read_bytes(metrics));
  // 16 steps, logged at 1, every 3 and the last; validated at 5, 10, 15 and the end.
  const std::vector<int64_t> logged{1, 3, 6, 9, 12, 15, 16};
  const std::vector<int64_t> val_step{-1, -1, 5, 5, 10, 15, 16};  // the latest validation; -1: none yet
  ASSERT_EQ(lines.size(), logged.size()) << read_bytes(metrics);
  const std::set<std::string> keys{"step", "epoch", "loss", "val_loss", "val_step", "lr", "elapsed_s"};
  std::vector<nlohmann::json> records;
  double elapsed = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    nlohmann::json j;
    ASSERT_NO_THROW(j = nlohmann::json::parse(lines[i])) << lines[i];
    records.push_back(j);
    std::set<std::string> got;
    for (auto it = j.begin(); it != j.end(); ++it) got.insert(it.key());
    EXPECT_EQ(got, keys) << lines[i];
    EXPECT_EQ(j.at("step").get<int64_t>(), logged[i]) << lines[i];
    const int64_t step = logged[i];
    ASSERT_TRUE(j.at("loss").is_number()) << lines[i];
    EXPECT_GT(j.at("loss").get<double>(), 0) << lines[i];
    const double want_lr = static_cast<float>(0.1 * std::pow(0.5, static_cast<double>((step - 1) / 3)));
    EXPECT_TRUE(close_rel(j.at("lr").get<double>(), want_lr, 1e-6)) << lines[i] << "\n  want lr " << want_lr;
    if (val_step[i] < 0) {
      EXPECT_TRUE(j.at("val_loss").is_null()) << lines[i];
      EXPECT_TRUE(j.at("val_step").is_null()) << lines[i];
    } else {
      ASSERT_TRUE(j.at("val_loss").is_number()) << lines[i];
      EXPECT_GT(j.at("val_loss").get<double>(), 0) << lines[i];
      EXPECT_EQ(j.at("val_step"), val_step[i]) << lines[i];
    }
    ASSERT_TRUE(j.at("elapsed_s").is_number()) << lines[i];
    EXPECT_GE(j.at("elapsed_s").get<double>(), elapsed) << lines[i];
    elapsed = j.at("elapsed_s").get<double>();
    ASSERT_TRUE(j.at("epoch").is_number_integer()) << lines[i];
  }
  // The epoch is the same numbering throughout: one more in the second epoch (steps 9..16).
  const int64_t first_epoch = records[0].at("epoch").get<int64_t>();
  for (size_t i = 0; i < records.size(); ++i)
    EXPECT_EQ(records[i].at("epoch").get<int64_t>(), first_epoch + (logged[i] - 1) / 8) << lines[i];
  // Validations 15 and 16 differ (one more step), and the last is what eval says of the saved parameters.
  EXPECT_NE(records[5].at("val_loss"), records[6].at("val_loss"));
  const Finished e = eval({"--data", kVal, "--weights", params}, net);
  ASSERT_EQ(e.status, 0) << describe(e);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(e.out, m, std::regex("^mean loss ([^ ]+) over 64 samples of "))) << e.out;
  EXPECT_TRUE(close_rel(std::stod(m[1]), records[6].at("val_loss").get<double>(), 1e-6)) << e.out << lines.back();

  // A second run appends to the same file and leaves the first run's lines as they were.
  const std::string before = read_bytes(metrics);
  const Finished again = train({"--data", kTrain, "--steps", "2", "--log-every", "3", "--metrics", metrics}, net);
  ASSERT_EQ(again.status, 0) << describe(again);
  const std::string after = read_bytes(metrics);
  ASSERT_TRUE(starts_with(after, before)) << after;
  const std::vector<std::string> added = lines_of(after.substr(before.size()));
  ASSERT_EQ(added.size(), 2u) << after;  // steps 1 and 2 (the last)
  for (size_t i = 0; i < added.size(); ++i) {
    const nlohmann::json j = nlohmann::json::parse(added[i]);
    EXPECT_EQ(j.at("step"), static_cast<int64_t>(i + 1)) << added[i];
    EXPECT_TRUE(j.at("val_loss").is_null()) << added[i];  // no --val
    EXPECT_TRUE(close_rel(j.at("lr").get<double>(), 0.1, 1e-6)) << added[i];
  }

  // A file whose last line is not ended (cut short by another writer) gets its newline first.
  const std::string cut = path("cut.jsonl");
  write_bytes(cut, R"({"step":1,"epoch":0,"lo)");
  ASSERT_EQ(train({"--steps", "1", "--metrics", cut}, net).status, 0);
  const std::vector<std::string> cut_lines = lines_of(read_bytes(cut));
  ASSERT_EQ(cut_lines.size(), 2u) << read_bytes(cut);
  EXPECT_EQ(cut_lines[0], R"({"step":1,"epoch":0,"lo)");
  EXPECT_EQ(nlohmann::json::parse(cut_lines[1]).at("step"), 1) << cut_lines[1];

  // A file that is not empty and does not start as metrics lines do (a file of parameters, notes
  // given by mistake) is refused before any step and left as it was.
  const std::string notes = path("notes.txt");
  write_bytes(notes, " { \"stepping\": 1}\n");
  for (const std::string& victim : {params, notes}) {
    const std::string before = read_bytes(victim);
    const Finished refused = train({"--steps", "1", "--metrics", victim}, net);
    EXPECT_EQ(refused.status, 2) << describe(refused);
    EXPECT_EQ(refused.err, "anvil: error: " + victim +
                               R"(: not a metrics file (it does not start with {"step"): )"
                               "anvil appends only to its own JSON lines; give a new name, "
                               "or remove it\n");
    EXPECT_EQ(read_bytes(victim), before);
  }
}

// --metrics into a FIFO whose reader goes away ends the run (SIGPIPE, or exit 1 naming the file):
// the writer holds no read end of its own that would keep the pipe open and block it for ever.
TEST_F(CliTrain, MetricsIntoAFifoWhoseReaderLeavesEndTheRun) {
  const std::string fifo = path("metrics.fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // the writer's open does not wait
  ASSERT_GE(reader, 0);
  Child child({kCli, "train", kNet, "--device", "cpu", "--data", kTrain, "--steps", "1000000", "--log-every", "1",
               "--metrics", fifo, "--force"});
  ASSERT_TRUE(child.started());
  EXPECT_TRUE(child.wait_for_output("\nstep 2/1000000  ", 30)) << child.out();
  ::close(reader);
  const Finished r = child.finish(30);
  EXPECT_FALSE(r.timed_out) << describe(r);
  EXPECT_TRUE(r.signal == SIGPIPE || r.status == 1) << describe(r);
}

// Whether the process catches `sig` (its handler is installed), from /proc/PID/status.
bool catches(pid_t pid, int sig) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("SigCgt:", 0) == 0) return (std::stoull(line.substr(7), nullptr, 16) >> (sig - 1)) & 1;
  return false;
}

// Whether the process sleeps in the open of a FIFO, waiting for the other end (Linux's
// wait_for_partner, shown in /proc/PID/wchan where the kernel shows it).
bool waits_in_fifo_open(pid_t pid) {
  std::ifstream wchan("/proc/" + std::to_string(pid) + "/wchan");
  std::string where;
  return std::getline(wchan, where) && where == "wait_for_partner";
}

// --metrics into a FIFO that no reader opens waits for one (as a shell redirection would), but a
// signal still ends the run: it once only noted the signal for after the step in progress, and the
// open waited on for ever (`timeout` could not stop it; only SIGKILL did).
TEST_F(CliTrain, MetricsIntoAFifoWithoutAReaderStillStopsOnASignal) {
  const std::string fifo = path("unread.fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  Child child({kCli, "train", kNet, "--device", "cpu", "--data", kTrain, "--steps", "5", "--metrics", fifo, "--force"});
  ASSERT_TRUE(child.started());
  // Once the run catches SIGTERM (training's handlers are in place) or waits in the open.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  bool ready = false;
  while (!ready && std::chrono::steady_clock::now() < deadline) {
    ready = catches(child.pid(), SIGTERM) || waits_in_fifo_open(child.pid());
    if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  if (!ready) GTEST_SKIP() << "neither the run's handlers nor its wait in the open show in /proc";
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  child.send(SIGTERM);
  const Finished r = child.finish(20);
  EXPECT_FALSE(r.timed_out) << describe(r);
  EXPECT_TRUE(r.signal == SIGTERM || r.status == 128 + SIGTERM) << describe(r);
  EXPECT_EQ(r.err, "") << describe(r);
  EXPECT_EQ(fs::symlink_status(fifo).type(), fs::file_type::fifo);
}

// Flags that would be silently wrong: an output path that is the next flag, a budget without data,
// weights a resumed run would ignore; and a network name or file name with control bytes is escaped on stdout.
TEST_F(CliTrain, FlagsThatWouldBeSilentlyWrongAreRefused) {
  expect_bad_input(train({"--steps", "1", "--save", "--data"}),
                   "--save --data: looks like a flag, not a file name (write ./--data for a file named so)");
  expect_bad_input(train({"--steps", "1", "--data-budget", "5"}), "--data-budget needs --data");
  const Finished bench = run({"bench", kNet, "--device", "cpu", "--data-budget", "5"});
  EXPECT_EQ(bench.status, 2) << describe(bench);
  EXPECT_EQ(bench.err, "anvil: error: --data-budget needs --data\n") << describe(bench);  // (stdout says FAILED)
  const std::string ck = path("resume.safetensors"), w = trained_weights("w.safetensors", 1);
  ASSERT_EQ(train({"--data", kTrain, "--steps", "1", "--checkpoint", ck}).status, 0);
  expect_bad_input(train({"--data", kTrain, "--steps", "2", "--resume", ck, "--weights", w}),
                   "--weights: a resumed run takes its parameters from the checkpoint (--resume); give one");
  const std::string named = network_with("named.json", [](nlohmann::json& j) { j["name"] = "two\nlines\x1b[31m"; });
  const Finished r = train({"--steps", "1"}, named);
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_PRED_FORMAT2(Contains, r.out, "training two\\nlines\\x1b[31m on cpu: ");
  // So is a file name: each report stays one line.
  const std::string odd = path("saved\nfake line.safetensors");
  const Finished saved = train({"--steps", "1", "--save", odd});
  ASSERT_EQ(saved.status, 0) << describe(saved);
  EXPECT_PRED_FORMAT2(Contains, saved.out, "saved parameters to " + path("saved\\nfake line.safetensors") + "\n");
  EXPECT_EQ(anvil::read_safetensors(odd).tensors.size(), anvil::read_safetensors(w).tensors.size());
  const std::string odd_net = network_with("odd\nnet.json", [](nlohmann::json&) {});
  const Finished info = run({"info", odd_net, "--device", "cpu"});
  ASSERT_EQ(info.status, 0) << describe(info);
  EXPECT_PRED_FORMAT2(Contains, info.out, " (" + path("odd\\nnet.json") + "): input ");
}

// --checkpoint and --save are files, written by rename: a character device or a pipe is refused
// before any step, with or without --force (which once let the run train, then fail at its end on
// /dev/tty without a terminal, write nothing to keep into /dev/null, or wait at the first
// checkpoint for a FIFO's reader), also through a symlink (not refused as a link that --force
// would write through). The outputs that may stream still take a device with --force.
TEST_F(CliTrain, CheckpointAndSaveIntoADeviceOrAPipeAreRefusedBeforeAnyStep) {
  const std::string fifo = path("out.fifo"), link = path("to_tty");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  fs::create_symlink("/dev/tty", link);
  const std::string tail = " must be a regular file or a new name (written to a temporary file, then renamed)";
  for (const char* flag : {"--save", "--checkpoint"}) {
    for (const std::vector<std::string>& force : {std::vector<std::string>{}, {"--force"}}) {
      const std::vector<std::pair<std::string, std::string>> cases = {{"/dev/tty", "it is a character device"},
                                                                      {"/dev/null", "it is a character device"},
                                                                      {fifo, "it is a pipe or FIFO"},
                                                                      {link, "it leads to a character device"}};
      for (const auto& [out, kind] : cases) {
        std::vector<std::string> args = {"--data", kTrain, "--steps", "3", "--checkpoint-every", "1", flag, out};
        if (std::string(flag) == "--save") args.erase(args.begin() + 4, args.begin() + 6);  // no --checkpoint-every
        args.insert(args.end(), force.begin(), force.end());
        SCOPED_TRACE(std::string(flag) + " " + out + (force.empty() ? "" : " --force"));
        expect_bad_input(train(args),
                         std::string(flag) + " " + out + ": cannot write: " + kind + ", and " + flag + tail);
      }
    }
  }
  EXPECT_EQ(fs::symlink_status(fifo).type(), fs::file_type::fifo);
  EXPECT_TRUE(fs::is_symlink(link));
  // A symlink to a file is still written through with --force (and refused as a link without).
  const std::string to_file = path("to_file");
  fs::create_symlink("saved.safetensors", to_file);
  expect_bad_input(train({"--steps", "1", "--save", to_file}),
                   "--save " + to_file + ": will not write: it is a symlink (--force writes through it)");
  const Finished through = train({"--steps", "1", "--save", to_file, "--force"});
  ASSERT_EQ(through.status, 0) << describe(through);
  EXPECT_TRUE(fs::is_symlink(to_file));
  EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(path("saved.safetensors"))));
  // --dump-grads may stream: into /dev/null with --force, as before.
  const Finished dumped = train({"--steps", "1", "--dump-grads", "/dev/null", "--force"});
  EXPECT_EQ(dumped.status, 0) << describe(dumped);
  EXPECT_PRED_FORMAT2(Contains, dumped.out, "wrote gradients of step 1 to /dev/null\n");
}

// ------------------------------------------------------------------ 3. checkpoints and resume

TEST_F(CliTrain, ACheckpointAndAResumeGiveTheBitsOfStraightTraining) {
  const std::string a = path("a.safetensors"), b = path("b.safetensors"), c = path("c.safetensors");
  const Finished straight = train({"--data", kTrain, "--epochs", "2", "--save", a});
  ASSERT_EQ(straight.status, 0) << describe(straight);

  const Finished first = train({"--data", kTrain, "--steps", "11", "--checkpoint", c});
  ASSERT_EQ(first.status, 0) << describe(first);
  const TensorFile checkpoint = anvil::read_safetensors(c);
  EXPECT_EQ(checkpoint.metadata.at("anvil.checkpoint"), "1");
  EXPECT_EQ(checkpoint.metadata.at("step"), "11");
  EXPECT_EQ(checkpoint.metadata.at("epoch"), "1");
  EXPECT_EQ(checkpoint.metadata.at("batch_in_epoch"), "3");
  EXPECT_EQ(checkpoint.metadata.at("network.name"), "dataset_epochs");

  const Finished resumed = train({"--data", kTrain, "--epochs", "2", "--resume", c, "--save", b});
  ASSERT_EQ(resumed.status, 0) << describe(resumed);
  EXPECT_PRED_FORMAT2(Contains, resumed.out, "resumed from " + c + " at step 11 (epoch 1, batch 3)\n");
  EXPECT_PRED_FORMAT2(Contains, resumed.out, "step 16/16  ");

  const TensorFile fa = anvil::read_safetensors(a), fb = anvil::read_safetensors(b);
  ASSERT_EQ(fa.tensors.size(), fb.tensors.size());
  ASSERT_FALSE(fa.tensors.empty());
  for (const auto& [name, t] : fa.tensors) {
    ASSERT_EQ(fb.tensors.count(name), 1u) << name;
    const HostTensor& u = fb.tensors.at(name);
    ASSERT_EQ(t.shape, u.shape) << name;
    EXPECT_EQ(std::memcmp(t.data.data(), u.data.data(), t.data.size() * sizeof(float)), 0)
        << name << " differs between 16 straight steps and 11 + 5 resumed";
  }
  EXPECT_EQ(fa.metadata.at("steps"), "16");
  EXPECT_EQ(fb.metadata.at("steps"), "16");
}

TEST_F(CliTrain, ResumeRefusesACheckpointOfAnotherNetworkBatchOrAWeightsFile) {
  const std::string other = network_with("other.json", [](nlohmann::json& j) {
    j["name"] = "other";
    j["layers"][1]["negative_slope"] = 0.3;
  });
  const std::string c = path("other.ckpt.safetensors");
  const Finished w = train({"--data", kTrain, "--steps", "2", "--checkpoint", c}, other);
  ASSERT_EQ(w.status, 0) << describe(w);

  const Finished r = train({"--data", kTrain, "--epochs", "1", "--resume", c});
  EXPECT_EQ(r.status, 2) << describe(r);
  EXPECT_TRUE(starts_with(r.err, "anvil: error: " + c + ": the checkpoint is of another network ('other', hash "))
      << describe(r);
  EXPECT_PRED_FORMAT2(Contains, r.err, "; this one is 'dataset_epochs', hash ");
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.out, "");

  // A checkpoint of this network at another batch size.
  const std::string mine = path("mine.ckpt.safetensors");
  ASSERT_EQ(train({"--data", kTrain, "--steps", "1", "--checkpoint", mine}).status, 0);
  expect_bad_input(train({"--data", kTrain, "--epochs", "1", "--batch", "16", "--resume", mine}),
                   mine + ": the checkpoint was written at batch 32, this run's batch is 16");

  // --precision is how a run computes, as --no-fuse is, not another network: the checkpoint resumes.
  const Finished fp32 = train({"--data", kTrain, "--steps", "2", "--precision", "fp32", "--resume", mine});
  EXPECT_EQ(fp32.status, 0) << describe(fp32);

  // A file of parameters is not a checkpoint; the refused run creates no metrics file.
  const std::string params = trained_weights("params.safetensors", 1), metrics = path("refused.jsonl");
  expect_bad_input(train({"--data", kTrain, "--epochs", "1", "--resume", params, "--metrics", metrics}),
                   params + ": not an anvil checkpoint (use --weights for a file of parameters)");
  EXPECT_FALSE(std::filesystem::exists(metrics));
}

// A run that diverges to NaN or Inf (--check-finite, on by default) names the step and where it
// starts, exits 3, leaves the checkpoint of the last good step and writes no --save. With
// --no-check-finite, the logged loss still stops it (exit 3).
TEST_F(CliTrain, ADivergingRunNamesTheStepExits3AndKeepsTheLastGoodCheckpoint) {
  nlohmann::json doc = nlohmann::json::parse(std::ifstream(kNet));
  doc["optimizer"] = {{"type", "sgd"}, {"lr", 1e9}};
  const std::string net = path("diverging.json");
  std::ofstream(net) << doc.dump();
  const std::string ck = path("ck.safetensors"), saved = path("saved.safetensors"), checked = path("checked.jsonl");
  std::ofstream(saved) << "an older file";
  auto records_of = [](const std::string& file) {
    std::vector<nlohmann::json> records;
    std::ifstream in(file);
    for (std::string line; std::getline(in, line);) records.push_back(nlohmann::json::parse(line));
    return records;
  };

  const Finished r = train({"--data", kTrain, "--steps", "40", "--log-every", "10", "--checkpoint", ck,
                            "--checkpoint-every", "1", "--save", saved},
                           net);
  EXPECT_EQ(r.status, 3) << describe(r);
  std::smatch m;
  ASSERT_TRUE(std::regex_match(r.err, m,
                               std::regex(R"(anvil: error: step (\d+): non-finite \w+ first appears in .+ \(.+\)\n)")))
      << describe(r);
  const int64_t bad = std::stoll(m[1]);
  EXPECT_GT(bad, 1);
  EXPECT_EQ(anvil::read_safetensors(ck).metadata.at("step"), std::to_string(bad - 1));
  std::ifstream old(saved);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(old), {}), "an older file");
  // Without a checkpoint each step, the logged step whose check finds it has its record, as without
  // the check (flagged where its loss is not finite: the NaN may be in a gradient or a parameter yet).
  const Finished logged = train({"--steps", "40", "--log-every", "10", "--metrics", checked}, net);
  ASSERT_EQ(logged.status, 3) << describe(logged);
  const std::vector<nlohmann::json> checked_records = records_of(checked);
  ASSERT_EQ(checked_records.size(), 2u) << describe(logged);  // steps 1 and 10
  EXPECT_EQ(checked_records.back()["step"], 10);
  EXPECT_EQ(checked_records.back()["loss"].is_null(), checked_records.back().value("loss_nonfinite", false));

  const std::string metrics = path("unchecked.jsonl");
  const Finished unchecked =
      train({"--steps", "40", "--log-every", "10", "--no-check-finite", "--metrics", metrics}, net);
  EXPECT_EQ(unchecked.status, 3) << describe(unchecked);  // a non-finite loss, found without the replay
  EXPECT_TRUE(std::regex_match(unchecked.err, std::regex("anvil: error: step 10: the loss became (nan|inf|-inf)\n")))
      << describe(unchecked);  // never "-nan"
  // The step's record is written, its loss null and flagged (plot_metrics draws a gap there).
  const std::vector<nlohmann::json> records = records_of(metrics);
  ASSERT_EQ(records.size(), 2u) << describe(unchecked);  // steps 1 and 10
  EXPECT_EQ(records.back()["step"], 10);
  EXPECT_TRUE(records.back()["loss"].is_null()) << records.back().dump();
  EXPECT_EQ(records.back()["loss_nonfinite"], true) << records.back().dump();
}

// A validation loss that is not finite (finite targets whose squared error overflows float) stops
// the run as a non-finite training loss does, with or without --check-finite: exit 3, one line,
// the step's metrics record flagged, the checkpoints before it kept, none of it and no --save.
TEST_F(CliTrain, ANonFiniteValidationLossExits3AndKeepsTheCheckpointBeforeIt) {
  const std::string huge = write_dataset("huge.safetensors", {64, 2, 6, 6}, {64, 3, 3, 3});
  TensorFile file = anvil::read_safetensors(huge);
  std::fill(file.tensors.at("target").data.begin(), file.tensors.at("target").data.end(), 3e38f);
  anvil::write_safetensors(huge, file);
  for (const char* check : {"--check-finite", "--no-check-finite"}) {
    SCOPED_TRACE(check);
    const std::string ck = path("ck.safetensors"), saved = path("saved.safetensors"), metrics = path("m.jsonl");
    fs::remove(ck);
    fs::remove(metrics);
    std::ofstream(saved) << "an older file";
    const Finished r =
        train({"--data", kTrain, "--val", huge, "--val-every", "2", "--steps", "6", "--log-every", "2", "--checkpoint",
               ck, "--checkpoint-every", "1", "--save", saved, "--metrics", metrics, check});
    EXPECT_EQ(r.status, 3) << describe(r);
    EXPECT_EQ(r.err, "anvil: error: step 2: the validation loss is inf\n") << describe(r);
    EXPECT_EQ(anvil::read_safetensors(ck).metadata.at("step"), "1");
    EXPECT_EQ(read_bytes(saved), "an older file");
    std::vector<nlohmann::json> records;
    for (const std::string& line : lines_of(read_bytes(metrics))) records.push_back(nlohmann::json::parse(line));
    ASSERT_EQ(records.size(), 2u) << describe(r);  // steps 1 and 2
    EXPECT_EQ(records.back()["step"], 2);
    EXPECT_TRUE(records.back()["loss"].is_number()) << records.back().dump();  // the training loss is fine
    EXPECT_TRUE(records.back()["val_loss"].is_null()) << records.back().dump();
    EXPECT_EQ(records.back()["val_loss_nonfinite"], true) << records.back().dump();
  }
}

// Data parallel from the CLI: --ranks K on the CPU trains as one engine at the global batch (rank 0
// alone prints and writes), its checkpoint resumes without ranks, and bad rank or GPU settings are
// one line and exit 2 before any work.
TEST_F(CliTrain, RanksTrainAsOneEngineAndOnlyRankZeroWrites) {
  const std::string one = path("one.safetensors"), two = path("two.safetensors"), ck = path("ck.safetensors");
  ASSERT_EQ(train({"--data", kTrain, "--steps", "6", "--save", one}).status, 0);
  const Finished r = train({"--data", kTrain, "--steps", "6", "--save", two, "--ranks", "2"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_PRED_FORMAT2(Contains, r.out,
                      "on cpu, data parallel (in-process, 2 ranks): 6 steps (8 per epoch), batch 32, ");
  EXPECT_EQ(lines_of(r.out).size(), lines_of(train({"--data", kTrain, "--steps", "6", "--save", one}).out).size())
      << describe(r);
  const TensorFile a = anvil::read_safetensors(one), b = anvil::read_safetensors(two);
  for (const auto& [name, t] : a.tensors) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < t.data.size(); ++i) {
      diff += std::pow(double(t.data[i]) - b.tensors.at(name).data[i], 2);
      norm += std::pow(double(t.data[i]), 2);
    }
    EXPECT_LE(std::sqrt(diff / norm), 1e-5) << name;
  }
  ASSERT_EQ(train({"--data", kTrain, "--steps", "3", "--ranks", "4", "--checkpoint", ck}).status, 0);
  const Finished resumed = train({"--data", kTrain, "--steps", "6", "--resume", ck});
  EXPECT_EQ(resumed.status, 0) << describe(resumed);
  EXPECT_PRED_FORMAT2(Contains, resumed.out, "resumed from " + ck + " at step 3 (epoch 0, batch 3)\n");

  expect_bad_input(train({"--steps", "2", "--ranks", "0"}), "--ranks: must be a positive integer, got 0");
  expect_bad_input(train({"--data", kTrain, "--steps", "2", "--ranks", "2", "--keep-last"}),
                   "--keep-last is refused with 2 ranks, whatever the dataset's size (a partial last batch would not "
                   "split evenly across them); leave it out to train data-parallel");
  expect_bad_input(train({"--steps", "2", "--ranks", "2", "--input-grad", "--dump-grads", ck}),
                   "--input-grad: each of the 2 ranks holds only its slice of the input gradient, of its own loss; "
                   "train on one rank to dump it");
  expect_bad_input(train({"--steps", "2", "--ranks", "3"}),
                   "the batch of 32 does not split evenly across 3 ranks (--batch sets the global batch)");
  expect_bad_input(train({"--steps", "2", "--gpus", "2"}),
                   "--gpus needs --device cuda (--ranks K runs ranks on the CPU)");
  // With a GPU, --gpus itself is refused; without one (or without CUDA) --device cuda is, first.
  for (const char* gpus : {"4096", "0,x"}) {
    const Finished g = run({"train", kNet, "--device", "cuda", "--steps", "2", "--gpus", gpus});
    EXPECT_EQ(g.status, 2) << describe(g);
    EXPECT_EQ(std::count(g.err.begin(), g.err.end(), '\n'), 1) << g.err;
    EXPECT_TRUE(starts_with(g.err, anvil::cuda_available() ? "anvil: error: --gpus: " : "anvil: error: "))
        << describe(g);
  }
}

// One rank per process under mpirun, on the CPU backend (MPI_Allreduce): bitwise the in-process
// ranks' result at the same global batch, one display and one metrics file (rank 0's), a
// checkpoint that resumes in one process, and bad settings refused with one line and exit 2.
TEST_F(CliTrain, MpiProcessesTrainAsInProcessRanks) {
  if (!anvil::mpi_available() || mpirun_argv(1).empty())
    GTEST_SKIP() << "needs MPI at build and mpirun on PATH (Debian: libopenmpi-dev, openmpi-bin)";
  auto under_mpirun = [&](int processes, const std::vector<std::string>& args) {
    std::vector<std::string> a = mpirun_argv(processes);
    a.insert(a.end(), {kCli, "train", kNet, "--device", "cpu"});
    a.insert(a.end(), args.begin(), args.end());
    Child child(a);
    if (!child.started()) ADD_FAILURE() << "cannot start " << a[0];
    return child.finish(120);
  };
  const std::string mpi = path("mpi.safetensors"), ranks = path("ranks.safetensors"), ck = path("ck.safetensors");
  const std::string metrics = path("metrics.jsonl"), single_metrics = path("single.jsonl");
  const Finished r = under_mpirun(2, {"--data", kTrain, "--steps", "6", "--log-every", "2", "--save", mpi,
                                      "--checkpoint", ck, "--metrics", metrics});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_PRED_FORMAT2(Contains, r.out, "on cpu, data parallel (MPI, 2 processes): 6 steps (8 per epoch), batch 32, ");
  const Finished in_process = train({"--data", kTrain, "--steps", "6", "--log-every", "2", "--save", ranks, "--ranks",
                                     "2", "--metrics", single_metrics});
  ASSERT_EQ(in_process.status, 0) << describe(in_process);
  // Rank 0 alone prints (mpirun gives the ranks a terminal, so the display differs from a pipe's).
  for (const std::string once : {"training dataset_epochs on cpu", "\ntrained 6 steps in ", "saved parameters to "}) {
    EXPECT_NE(r.out.find(once), std::string::npos) << once << "\n" << describe(r);
    EXPECT_EQ(r.out.find(once), r.out.rfind(once)) << once << "\n" << describe(r);
  }
  EXPECT_EQ(read_bytes(mpi), read_bytes(ranks)) << "the saved parameters differ";
  EXPECT_EQ(lines_of(read_bytes(metrics)).size(), lines_of(read_bytes(single_metrics)).size());

  const Finished resumed = train({"--data", kTrain, "--steps", "8", "--resume", ck});
  EXPECT_EQ(resumed.status, 0) << describe(resumed);
  EXPECT_PRED_FORMAT2(Contains, resumed.out, "resumed from " + ck + " at step 6 (epoch 0, batch 6)\n");

  const Finished uneven = under_mpirun(3, {"--steps", "2"});
  EXPECT_EQ(uneven.status, 2) << describe(uneven);
  EXPECT_PRED_FORMAT2(
      Contains, uneven.err,
      "anvil: error: the batch of 32 does not split evenly across 3 ranks (--batch sets the global batch)\n");
  const Finished both = under_mpirun(2, {"--steps", "2", "--ranks", "2"});
  EXPECT_EQ(both.status, 2) << describe(both);
  EXPECT_PRED_FORMAT2(Contains, both.err, "anvil: error: under mpirun every process is one rank");
}

// Under mpirun on GPUs each process takes the GPU of its local rank. One process more than the
// host has GPUs: that rank refuses with one line naming the count, and the job ends rather than
// leaving the others waiting in NCCL's setup. (Several processes through NCCL need a GPU each:
// the 2-GPU run.)
TEST_F(CliTrain, MpiProcessesBeyondTheHostsGpusAreRefused) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  if (!anvil::mpi_available() || !anvil::nccl_available() || mpirun_argv(1).empty())
    GTEST_SKIP() << "needs MPI and NCCL at build and mpirun on PATH (Debian: libopenmpi-dev, openmpi-bin)";
  const int gpus = anvil::cuda_device_count();
  std::vector<std::string> a = mpirun_argv(gpus + 1);
  a.insert(a.end(),
           {kCli, "train", kNet, "--device", "cuda", "--steps", "2", "--batch", std::to_string(4 * (gpus + 1))});
  Child child(a);
  ASSERT_TRUE(child.started()) << "cannot start " << a[0];
  const Finished r = child.finish(120);
  EXPECT_NE(r.status, 0) << describe(r);
  EXPECT_PRED_FORMAT2(Contains, r.err,
                      "anvil: error: rank " + std::to_string(gpus) + " is process " + std::to_string(gpus + 1) +
                          " on its host, which has " + std::to_string(gpus) + " GPUs (one process per GPU)\n");
}

// ------------------------------------------------------------------ 4. signals

class CliSignals : public CliTrain {
 protected:
  // A long run (800000 steps) with a checkpoint, started in the background.
  std::vector<std::string> long_run(const std::string& checkpoint, const std::vector<std::string>& extra) const {
    std::vector<std::string> args = {kCli,       "train",  kNet,          "--device", "cpu",          "--data",  kTrain,
                                     "--epochs", "100000", "--log-every", "1000",     "--checkpoint", checkpoint};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }

  // SIGINT or SIGTERM once it has logged step 1 (the handlers are installed by then): it
  // finishes the step (data-parallel ranks: together, within 10 steps), writes the
  // checkpoint and exits 128 + the signal; the summary counts the steps to the checkpoint's.
  void stop_with(int sig, const std::vector<std::string>& extra = {}) {
    const std::string sub = path("run" + std::to_string(sig));
    fs::create_directories(sub);
    const std::string c = sub + "/c.safetensors";
    Child child(long_run(c, extra), [sig] { ::signal(sig, SIG_DFL); });  // as under nohup, it may be ignored
    ASSERT_TRUE(child.started());
    ASSERT_TRUE(child.wait_for_output("\nstep 1/800000  ", 30)) << child.out();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // some steps past the first
    child.send(sig);
    const Finished r = child.finish(30);
    ASSERT_FALSE(r.timed_out) << describe(r);
    EXPECT_EQ(r.status, 128 + sig) << describe(r);
    EXPECT_EQ(r.signal, 0) << describe(r);
    std::smatch m;
    ASSERT_TRUE(std::regex_search(
        r.out, m, std::regex("stopped by signal " + std::to_string(sig) + ": checkpoint of step ([0-9]+) written to ")))
        << describe(r);
    EXPECT_PRED_FORMAT2(Contains, r.out, "written to " + c + "\n");
    const int64_t step = std::stoll(m[1]);
    EXPECT_GE(step, 1);  // step 1 was logged before the signal
    // The summary was printed before it stopped, counting every step trained (not only the logged ones).
    EXPECT_PRED_FORMAT2(Contains, r.out, "\ntrained " + std::to_string(step) + " steps in ");

    TensorFile file;
    ASSERT_NO_THROW(file = anvil::read_safetensors(c));
    EXPECT_EQ(file.metadata.at("anvil.checkpoint"), "1");
    EXPECT_EQ(file.metadata.at("step"), std::to_string(step));
    // Nothing but the checkpoint next to it (no temporary file).
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(sub)) names.push_back(e.path().filename().string());
    EXPECT_EQ(names, std::vector<std::string>{"c.safetensors"});

    // It resumes: one more epoch from where it stopped.
    const Finished resumed = train({"--data", kTrain, "--epochs", std::to_string(step / 8 + 1), "--resume", c});
    EXPECT_EQ(resumed.status, 0) << describe(resumed);
    EXPECT_PRED_FORMAT2(Contains, resumed.out, "resumed from " + c + " at step " + std::to_string(step) + " ");
  }
};

TEST_F(CliSignals, SigintWritesTheCheckpointAndExits130) { stop_with(SIGINT); }

TEST_F(CliSignals, SigtermWritesTheCheckpointAndExits143) { stop_with(SIGTERM); }

TEST_F(CliSignals, SighupWritesTheCheckpointAndExits129) { stop_with(SIGHUP); }

TEST_F(CliSignals, DataParallelRanksStopTogether) { stop_with(SIGINT, {"--ranks", "2"}); }

// A standard output whose reader is gone (a `| head` that has exited): no death by SIGPIPE, but
// the stop a signal makes, after the first logged step, with the checkpoint and one line, exit 1.
TEST_F(CliSignals, AClosedPipeOnStdoutStopsTrainingWithTheCheckpoint) {
  const std::string sub = path("pipe");
  fs::create_directories(sub);
  const std::string c = sub + "/c.safetensors";
  Child child(long_run(c, {}), anvil::testing::stdout_to_a_pipe_without_reader);
  ASSERT_TRUE(child.started());
  const Finished r = child.finish(60);
  ASSERT_FALSE(r.timed_out) << describe(r);
  EXPECT_EQ(r.signal, 0) << describe(r);
  EXPECT_EQ(r.status, 1) << describe(r);
  EXPECT_EQ(r.err,
            "anvil: error: writing the standard output failed: Broken pipe; training stopped at step 1, "
            "checkpoint written to " +
                c + "\n");
  TensorFile file;
  ASSERT_NO_THROW(file = anvil::read_safetensors(c));
  EXPECT_EQ(file.metadata.at("step"), "1");
}

// SIGKILL and SIGINT at random moments of runs writing checkpoints: tests/test_cli_writes.cpp.

// ------------------------------------------------------------------ 5. bad datasets and flags

// dataset_epochs: input (2, 6, 6), output (3, 3, 3), batch 32.
TEST_F(CliTrain, ADatasetWithAnotherSampleShapeIsOneLineNamingFileAndTensor) {
  const std::string d = write_dataset("shape.safetensors", {64, 2, 5, 5}, {64, 3, 3, 3});
  expect_bad_input(train({"--data", d, "--epochs", "1"}),
                   d + ": tensor 'input' has sample shape (2, 5, 5), the network takes (2, 6, 6)");
  const std::string t = write_dataset("target.safetensors", {64, 2, 6, 6}, {64, 3, 2, 2});
  expect_bad_input(train({"--data", t, "--epochs", "1"}),
                   t + ": tensor 'target' has sample shape (3, 2, 2), the network outputs (3, 3, 3)");
  // The validation set and eval's dataset are checked the same way, and named.
  expect_bad_input(train({"--data", kTrain, "--val", d, "--epochs", "1"}),
                   d + ": tensor 'input' has sample shape (2, 5, 5), the network takes (2, 6, 6)");
  expect_bad_input(eval({"--data", t}),
                   t + ": tensor 'target' has sample shape (3, 2, 2), the network outputs (3, 3, 3)");
}

TEST_F(CliTrain, ADatasetWithDifferentSampleCountsIsBadInput) {
  const std::string d = write_dataset("counts.safetensors", {64, 2, 6, 6}, {60, 3, 3, 3});
  expect_bad_input(train({"--data", d, "--epochs", "1"}), d + ": tensor 'input' holds 64 samples and 'target' 60");
  expect_bad_input(eval({"--data", d}), d + ": tensor 'input' holds 64 samples and 'target' 60");
}

TEST_F(CliTrain, ADatasetSmallerThanOneBatchIsBadInputUnlessTheLastBatchIsKept) {
  const std::string d = write_dataset("small.safetensors", {20, 2, 6, 6}, {20, 3, 3, 3});
  expect_bad_input(train({"--data", d, "--epochs", "1"}),
                   d + ": tensor 'input': fewer samples (20) than one batch (32)");
  expect_bad_input(train({"--data", kTrain, "--epochs", "1", "--batch", "257"}),
                   kTrain + ": tensor 'input': fewer samples (256) than one batch (257)");
  const Finished kept = train({"--data", d, "--epochs", "2", "--keep-last"});
  EXPECT_EQ(kept.status, 0) << describe(kept);
  EXPECT_PRED_FORMAT2(Contains, kept.out, ": 2 steps (1 per epoch), batch 32, ");
}

TEST_F(CliTrain, ADatasetWithAnIntegerInputIsBadInputNamingTheDtype) {
  // write_safetensors writes F32 only: relabel 'input' (the header's first entry, keys sorted) as
  // I32, the same width, so every offset stays valid.
  const std::string d = write_dataset("i32.safetensors", {64, 2, 6, 6}, {64, 3, 3, 3});
  std::string bytes = read_bytes(d);
  const size_t at = bytes.find("\"F32\"");
  ASSERT_NE(at, std::string::npos);
  ASSERT_LT(at, bytes.find("\"target\""));
  bytes.replace(at, 5, "\"I32\"");
  write_bytes(d, bytes);
  expect_bad_input(train({"--data", d, "--epochs", "1"}),
                   d + ": tensor 'input' has dtype I32; a dataset holds F16, BF16, F32 or F64 floats");
  expect_bad_input(eval({"--data", d}),
                   d + ": tensor 'input' has dtype I32; a dataset holds F16, BF16, F32 or F64 floats");
}

TEST_F(CliTrain, ATruncatedDatasetIsBadInputNamingTheTensor) {
  const std::string d = write_dataset("cut.safetensors", {64, 2, 6, 6}, {64, 3, 3, 3});
  fs::resize_file(d, fs::file_size(d) - 8);  // 'target' comes last
  const Finished r = train({"--data", d, "--epochs", "1"});
  EXPECT_EQ(r.status, 2) << describe(r);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_TRUE(starts_with(r.err, "anvil: error: " + d + ": tensor 'target': ")) << r.err;
  EXPECT_PRED_FORMAT2(Contains, r.err, "out of range");
}

TEST_F(CliTrain, ADatasetWithoutATargetIsBadInput) {
  const std::string d = write_dataset("no_target.safetensors", {64, 2, 6, 6}, {64, 3, 3, 3}, /*with_target=*/false);
  expect_bad_input(train({"--data", d, "--epochs", "1"}),
                   d + ": no tensor named 'target' (a dataset holds 'input' and 'target')");
  expect_bad_input(eval({"--data", d}), d + ": no tensor named 'target' (a dataset holds 'input' and 'target')");
}

TEST_F(CliTrain, InconsistentFlagsAreOneLineAndNothingRuns) {
  const std::string save = path("never.safetensors");
  expect_bad_input(train({"--epochs", "1", "--save", save}),
                   "--epochs, --val, --resume, --checkpoint, --keep-last and --no-shuffle need --data");
  expect_bad_input(train({"--data", kTrain, "--steps", "5", "--epochs", "1", "--save", save}),
                   "give --steps N or --epochs E (one of them)");
  expect_bad_input(train({"--data", kTrain, "--batch", "-1", "--epochs", "1", "--save", save}),
                   "--batch: must be a positive integer, got -1");  // --batch 0: see BatchZeroIsBadInput
  expect_bad_input(train({"--data", kTrain, "--log-every", "0", "--epochs", "1", "--save", save}),
                   "--log-every: must be a positive integer, got 0");
  expect_bad_input(train({"--data", kTrain, "--epochs", "1", "--checkpoint-every", "2", "--save", save}),
                   "--checkpoint-every needs --checkpoint");
  expect_bad_input(train({"--data", kTrain, "--epochs", "1", "--val-every", "-1", "--save", save}),
                   "--val-every: must be >= 0, got -1");
  expect_bad_input(train({"--data", kTrain, "--epochs", "1", "--val-every", "2", "--save", save}),
                   "--val-every needs --val");
  expect_bad_input(train({"--data", kTrain, "--epochs", "1", "--strict", "--save", save}), "--strict needs --weights");
  expect_bad_input(eval({"--data", kTrain, "--strict"}), "--strict needs --weights");
  // A file where the output's directory should be.
  expect_bad_input(train({"--data", kTrain, "--epochs", "1", "--save", kTrain + "/model.safetensors"}),
                   "--save " + kTrain + "/model.safetensors: cannot write in '" + kTrain + "': Not a directory");
  expect_bad_input(train({"--data", kTrain, "--epochs", "1", "--data-budget", "-5", "--save", save}),
                   "--data-budget: must be a number of MiB from 0 to 1e12, got -5");
  expect_bad_input(train({"--data", kTrain, "--epochs", "1", "--data-budget", "1e308", "--save", save}),
                   "--data-budget: must be a number of MiB from 0 to 1e12, got 1e+308");
  expect_bad_input(train({"--data", kTrain, "--epochs", "1", "--data-budget", "1000000000001", "--save", save}),
                   "--data-budget: must be a number of MiB from 0 to 1e12, got 1000000000001");
  // Epochs within the flag's limit whose steps are not (8 per epoch): refused, not wrapped.
  expect_bad_input(train({"--data", kTrain, "--epochs", "9007199254740992", "--save", save}),
                   "9007199254740992 epochs of 8 steps are more than 2^53 steps");
  // An empty value would read as not given (no save, no checkpoint): every flag that takes one refuses it.
  for (const char* flag :
       {"--save", "--checkpoint", "--metrics", "--dump-grads", "--weights", "--resume", "--val", "--gpus"})
    expect_bad_input(train({"--data", kTrain, "--epochs", "1", flag, ""}), std::string(flag) + ": an empty value");
  expect_bad_input(eval({"--data", ""}), "--data: an empty value");
  // A file name longer than the file system takes: refused before any work, not at the final rename.
  const std::string long_name = path(std::string(300, 'n') + ".safetensors");
  expect_bad_input(train({"--data", kTrain, "--epochs", "1", "--save", long_name}),
                   "--save " + long_name + ": cannot write: File name too long");
  // An output that is a directory is refused before any work, not after the training.
  expect_bad_input(train({"--data", kTrain, "--epochs", "1", "--checkpoint", dir_, "--save", save}),
                   "--checkpoint " + dir_ + ": cannot write: it is a directory");
  EXPECT_FALSE(fs::exists(save));
}

// ------------------------------------------------------------------ 6. eval

// The mean squared error over every element of a dataset, from forward() of a CPU engine
// with these parameters (the network's seeded ones when empty), in double.
double mse_over(const std::string& data_path, const std::map<std::string, HostTensor>& params) {
  const anvil::Network net = anvil::Network::load(kNet);
  anvil::Options o;
  o.device = anvil::Device::Cpu;
  o.mode = anvil::Mode::Forward;
  anvil::Engine engine(net, o);
  if (!params.empty()) engine.load_parameters(params);
  const anvil::Dataset data = anvil::Dataset::load(data_path, {2, 6, 6}, {3, 3, 3});
  const int64_t batch = net.input_shape()[0];
  double sum = 0;
  int64_t count = 0;
  for (int64_t first = 0; first < data.size(); first += batch) {
    // A last partial batch is padded with sample 0; only its real samples count.
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < batch; ++i) rows.push_back(first + i < data.size() ? first + i : 0);
    const int64_t real = std::min(batch, data.size() - first);
    engine.set_input(data.input_batch(rows));
    const HostTensor y = engine.forward();
    const HostTensor t = data.target_batch(rows);
    const int64_t n = real * data.floats_per_target();
    for (int64_t k = 0; k < n; ++k) {
      const double d = static_cast<double>(y.data[k]) - t.data[k];
      sum += d * d;
    }
    count += n;
  }
  return sum / static_cast<double>(count);
}

// "mean loss X over S samples of D": X.
double eval_loss(const Finished& r, int64_t samples, const std::string& data) {
  std::smatch m;
  const std::string want = " over " + std::to_string(samples) + " samples of " + data + "\n";
  if (!std::regex_match(r.out, m, std::regex("mean loss ([^ ]+)( over .*\n)")) || m[2] != want) {
    ADD_FAILURE() << "not 'mean loss X" << want << "': " << describe(r);
    return std::nan("");
  }
  return std::stod(m[1]);
}

TEST_F(CliTrain, EvalPrintsTheMeanSquaredErrorOverTheWholeDataset) {
  const std::string w = trained_weights("w.safetensors", 3);
  const std::map<std::string, HostTensor> params = anvil::read_safetensors(w).tensors;
  const double train_mse = mse_over(kTrain, params), val_mse = mse_over(kVal, params);
  const double init_mse = mse_over(kVal, {});

  const Finished t = eval({"--data", kTrain, "--weights", w});
  ASSERT_EQ(t.status, 0) << describe(t);
  EXPECT_EQ(t.err, "");
  const double got_train = eval_loss(t, 256, kTrain);
  EXPECT_TRUE(close_rel(got_train, train_mse, 1e-6)) << got_train << " vs " << train_mse;

  const Finished v = eval({"--data", kVal, "--weights", w});
  ASSERT_EQ(v.status, 0) << describe(v);
  const double got_val = eval_loss(v, 64, kVal);
  EXPECT_TRUE(close_rel(got_val, val_mse, 1e-6)) << got_val << " vs " << val_mse;

  // Without --weights: the network's seeded parameters.
  const Finished i = eval({"--data", kVal});
  ASSERT_EQ(i.status, 0) << describe(i);
  const double got_init = eval_loss(i, 64, kVal);
  EXPECT_TRUE(close_rel(got_init, init_mse, 1e-6)) << got_init << " vs " << init_mse;
  EXPECT_NE(got_init, got_val);  // the weights were used

  // At a batch that does not divide the dataset (256 = 5 x 48 + 16) every sample counts once.
  const Finished p = eval({"--data", kTrain, "--weights", w, "--batch", "48"});
  ASSERT_EQ(p.status, 0) << describe(p);
  const double got_partial = eval_loss(p, 256, kTrain);
  EXPECT_TRUE(close_rel(got_partial, train_mse, 1e-6)) << got_partial << " vs " << train_mse;

  // The library's own evaluate() agrees.
  anvil::Options o;
  o.device = anvil::Device::Cpu;
  anvil::Engine engine(anvil::Network::load(kNet), o);
  engine.load_parameters(params);
  const float lib = engine.evaluate(anvil::Dataset::load(kTrain, {2, 6, 6}, {3, 3, 3}));
  EXPECT_TRUE(close_rel(lib, train_mse, 1e-6)) << lib << " vs " << train_mse;
}

// A network without parameters (an average pool) has a loss to evaluate though nothing to train:
// 5 samples at batch 2, the last batch partial, against the mean computed here.
TEST_F(CliTrain, EvalOfANetworkWithoutParameters) {
  const std::string net = path("pool.json"), data = write_dataset("pool_data.safetensors", {5, 1, 4, 4}, {5, 1, 2, 2});
  write_bytes(net, R"({"name": "pool", "input": [2, 1, 4, 4], "layers": [{"type": "avg_pool2d", "kernel_size": 2}]})");
  const TensorFile file = anvil::read_safetensors(data);
  const HostTensor& x = file.tensors.at("input");
  const HostTensor& t = file.tensors.at("target");
  double sum = 0;
  for (int64_t i = 0; i < t.size(); ++i) {  // target (s, 0, r, c) pools input (s, 0, 2r..2r+1, 2c..2c+1)
    const int64_t s = i / 4, r = i / 2 % 2, c = i % 2;
    double mean = 0;
    for (int64_t dr = 0; dr < 2; ++dr)
      for (int64_t dc = 0; dc < 2; ++dc) mean += x.data[s * 16 + (2 * r + dr) * 4 + 2 * c + dc] / 4.0;
    sum += (mean - t.data[i]) * (mean - t.data[i]);
  }
  const Finished r = eval({"--data", data}, net);
  ASSERT_EQ(r.status, 0) << describe(r);
  const double got = eval_loss(r, 5, data);
  EXPECT_TRUE(close_rel(got, sum / double(t.size()), 1e-6)) << got << " vs " << sum / double(t.size());

  // Finite data whose squared error overflows float: the mean loss is inf, reported as train reports
  // a non-finite loss (exit code 3), not printed as a result.
  TensorFile huge;
  huge.tensors["input"] = HostTensor{{5, 1, 4, 4}, std::vector<float>(80, 3e38f)};
  huge.tensors["target"] = HostTensor{{5, 1, 2, 2}, std::vector<float>(20, -3e38f)};
  const std::string huge_path = path("huge.safetensors");
  anvil::write_safetensors(huge_path, huge);
  const Finished inf = eval({"--data", huge_path}, net);
  EXPECT_EQ(inf.status, 3) << describe(inf);
  EXPECT_EQ(inf.out, "");
  EXPECT_EQ(inf.err, "anvil: error: the mean loss over " + huge_path + " is inf\n") << describe(inf);
}

// bench times a network without parameters where the build's message points: with --input-grad.
// Without --mode it times the forward pass, as info plans it, where a train step would be refused.
TEST_F(CliTrain, BenchOfANetworkWithoutParametersTakesTheInputGradient) {
  const std::string net = path("pool.json");
  write_bytes(net, R"({"name": "pool", "input": [2, 1, 4, 4], "layers": [{"type": "avg_pool2d", "kernel_size": 2}]})");
  const std::vector<std::string> bench = {"bench", net, "--device", "cpu", "--iters", "2", "--warmup", "0"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = bench;
    args.insert(args.end(), extra.begin(), extra.end());
    return run(args);
  };
  const Finished refused = with({"--mode", "fwdbwd"});
  EXPECT_EQ(refused.status, 2) << describe(refused);
  EXPECT_PRED_FORMAT2(Contains, refused.err, "nothing to train (with the input's gradient, --input-grad, there is)");
  for (const char* mode : {"fwdbwd", "train"}) {
    const Finished r = with({"--mode", mode, "--input-grad"});
    EXPECT_EQ(r.status, 0) << describe(r);
    EXPECT_PRED_FORMAT2(Contains, r.out, "2 iterations after 0 warm-up");
  }
  const Finished plain = with({});
  EXPECT_EQ(plain.status, 0) << describe(plain);
  EXPECT_PRED_FORMAT2(Contains, plain.out, ", mode forward, ");
  EXPECT_PRED_FORMAT2(Contains, plain.out, "2 iterations after 0 warm-up");
  const Finished input_grad = with({"--input-grad"});
  EXPECT_EQ(input_grad.status, 0) << describe(input_grad);
  EXPECT_PRED_FORMAT2(Contains, input_grad.out, ", mode train, ");
  const Finished forward = with({"--mode", "forward", "--input-grad"});
  EXPECT_EQ(forward.status, 2) << describe(forward);
  EXPECT_EQ(forward.err, "anvil: error: --input-grad needs --mode fwdbwd or train\n") << describe(forward);
}

TEST_F(CliTrain, EvalNeedsData) {
  const Finished r = eval({});
  EXPECT_EQ(r.status, 2) << describe(r);
  EXPECT_PRED_FORMAT2(Contains, r.err, "--data");
}

// ------------------------------------------------------------------ 7. --strict

TEST_F(CliTrain, AnExtraTensorInTheWeightsIsListedOrWithStrictRefused) {
  const std::string w = trained_weights("w.safetensors", 2);
  TensorFile file = anvil::read_safetensors(w);
  file.tensors["head.extra"] = HostTensor({2, 2}, {1, 2, 3, 4});
  const std::string extra = path("extra.safetensors");
  anvil::write_safetensors(extra, file);
  const std::string listed = extra + ": 1 tensor is not a parameter of this network: head.extra";

  const std::string saved = path("saved.safetensors");
  const Finished loose = train({"--data", kTrain, "--steps", "1", "--weights", extra, "--save", saved});
  EXPECT_EQ(loose.status, 0) << describe(loose);
  EXPECT_EQ(loose.err, "weights: " + listed + " (ignored)\n") << describe(loose);
  EXPECT_TRUE(fs::exists(saved));

  const std::string never = path("never.safetensors");
  expect_bad_input(train({"--data", kTrain, "--steps", "1", "--weights", extra, "--strict", "--save", never}),
                   listed + " (--strict)");
  EXPECT_FALSE(fs::exists(never));

  // eval: the same line, and the parameters loaded are the file's.
  const Finished e = eval({"--data", kVal, "--weights", extra});
  EXPECT_EQ(e.status, 0) << describe(e);
  EXPECT_EQ(e.err, "weights: " + listed + " (ignored)\n");
  const Finished plain = eval({"--data", kVal, "--weights", w});
  EXPECT_EQ(e.out.substr(0, e.out.find(" over ")), plain.out.substr(0, plain.out.find(" over ")));
  expect_bad_input(eval({"--data", kVal, "--weights", extra, "--strict"}), listed + " (--strict)");
  EXPECT_EQ(eval({"--data", kVal, "--weights", w, "--strict"}).status, 0);
}

// The line listing unused tensors is held until the run's work starts (train: until its first logged
// step went through; eval: until its result), so a run that fails after loading such weights still
// ends with its one error line. The line once came first, and the error after it.
TEST_F(CliTrain, UnusedWeightsAndAFailureAreOneLine) {
  TensorFile file = anvil::read_safetensors(trained_weights("w.safetensors", 2));
  file.tensors["head.extra"] = HostTensor({2, 2}, {1, 2, 3, 4});
  const std::string listed = "1 tensor is not a parameter of this network: head.extra";
  const std::string extra = path("extra.safetensors");
  anvil::write_safetensors(extra, file);

  // eval: a non-finite loss (here from a NaN weight) is the error line, and it keeps the list.
  file.tensors.at("conv.weight").data[0] = std::nanf("");
  const std::string nan_weights = path("nan.safetensors");
  anvil::write_safetensors(nan_weights, file);
  const Finished e = eval({"--data", kVal, "--weights", nan_weights});
  EXPECT_EQ(e.status, 3) << describe(e);
  EXPECT_EQ(e.out, "");
  EXPECT_EQ(e.err, "anvil: error: the mean loss over " + kVal + " is nan; weights: " + nan_weights + ": " + listed +
                       " (ignored)\n")
      << describe(e);

  // train: the NaN weight fails the first step, found by the check (or, without it, as the loss);
  // the same line carries the list. Where the device was left out, its line waits too.
  const std::string found =
      "step 1: non-finite parameter first appears in conv.weight (the parameters the step "
      "starts from)";
  const std::string weights_line = "; weights: " + nan_weights + ": " + listed + " (ignored)\n";
  for (const auto& [check, error] : {std::pair<std::string, std::string>{"--check-finite", found},
                                     {"--no-check-finite", "step 1: the loss became nan"}}) {
    const Finished t = train({"--data", kTrain, "--steps", "2", "--weights", nan_weights, check});
    EXPECT_EQ(t.status, 3) << describe(t);
    EXPECT_EQ(t.err, "anvil: error: " + error + weights_line) << describe(t);
  }
  const Finished any_device = run({"train", kNet, "--data", kTrain, "--steps", "2", "--weights", nan_weights});
  EXPECT_EQ(any_device.status, 3) << describe(any_device);
  EXPECT_EQ(std::count(any_device.err.begin(), any_device.err.end(), '\n'), 1) << describe(any_device);
  EXPECT_PRED_FORMAT2(Contains, any_device.err, weights_line);  // on that one line, at its end
  // A first step whose validation loss overflows (finite weights) is one line too.
  const std::string huge = write_dataset("huge.safetensors", {64, 2, 6, 6}, {64, 3, 3, 3});
  TensorFile huge_file = anvil::read_safetensors(huge);
  std::fill(huge_file.tensors.at("target").data.begin(), huge_file.tensors.at("target").data.end(), 3e38f);
  anvil::write_safetensors(huge, huge_file);
  const Finished v = train({"--data", kTrain, "--val", huge, "--val-every", "1", "--steps", "2", "--weights", extra});
  EXPECT_EQ(v.status, 3) << describe(v);
  EXPECT_EQ(v.err,
            "anvil: error: step 1: the validation loss is inf; weights: " + extra + ": " + listed + " (ignored)\n")
      << describe(v);

  // run and train: bad input checked after the weights load.
  TensorFile input;
  input.tensors["input"] = HostTensor({1, 2}, {1, 2});
  const std::string bad_input = path("input.safetensors");
  anvil::write_safetensors(bad_input, input);
  expect_bad_input(run({"run", kNet, "--device", "cpu", "--weights", extra, "--input", bad_input}),
                   bad_input + ": tensor 'input' has shape (1, 2), expected (32, 2, 6, 6)");
  expect_bad_input(train({"--data", kTrain, "--steps", "1", "--weights", extra, "--data-budget", "1e13"}),
                   "--data-budget: must be a number of MiB from 0 to 1e12, got 10000000000000");
}

// ------------------------------------------------------------------ known CLI bugs
// Each reproduces a bug found while writing these tests (tools/anvil.cpp is not changed
// here); enable it with the fix.

// `--batch 0` is taken as "the network's batch" (cmd_train and cmd_eval check the value only
// when it is not 0), so it trains and evaluates at batch 32 and exits 0.
TEST_F(CliTrain, BatchZeroIsBadInput) {
  expect_bad_input(train({"--data", kTrain, "--batch", "0", "--epochs", "1"}),
                   "--batch: must be a positive integer, got 0");
  expect_bad_input(eval({"--data", kTrain, "--batch", "0"}), "--batch: must be a positive integer, got 0");
  // Beyond a dimension's range (it once passed, to fail later as out of memory, exit 1).
  expect_bad_input(train({"--batch", "4294967296", "--steps", "1"}),
                   "--batch: 4294967296 is out of range (at most 2147483647)");
  expect_bad_input(eval({"--data", kTrain, "--batch", "2147483648"}),
                   "--batch: 2147483648 is out of range (at most 2147483647)");
  // Beyond the data: refused by that reason before an arena is planned (it was "out of host memory").
  expect_bad_input(
      eval({"--data", kTrain, "--batch", "100000000"}),
      "--batch 100000000 is more than the 256 samples of " + kTrain + " (the rest of a batch would be padding)");
  const Finished all = eval({"--data", kTrain, "--batch", "256"});
  EXPECT_EQ(all.status, 0) << describe(all);
}

// The display counts epochs from 1 ("step 1/16  epoch 1/2" ... "step 16/16  epoch 2/2"), as the
// metrics file does, while the Trainer's TrainProgress::epoch is 0-based.
TEST_F(CliTrain, TheEpochShownCountsFromOne) {
  const Finished r = train({"--data", kTrain, "--epochs", "2", "--log-every", "8"});
  ASSERT_EQ(r.status, 0) << describe(r);
  std::vector<std::string> lines = lines_of(r.out);
  expect_and_drop_data_line(lines, r.out);
  ASSERT_GE(lines.size(), 4u) << r.out;
  EXPECT_TRUE(starts_with(lines[1], "step 1/16  epoch 1/2  ")) << lines[1];
  EXPECT_TRUE(starts_with(lines[2], "step 8/16  epoch 1/2  ")) << lines[2];
  EXPECT_TRUE(starts_with(lines[3], "step 16/16  epoch 2/2  ")) << lines[3];
}

// A resumed run reports the steps of the run it resumed as its own: resumed at step 600
// and trained to 610, it prints "trained 610 steps", and its first steps/s and the summary's
// throughput divide all 610 steps by the resumed run's time (TrainReporter::begin starts
// last_step_ at 0, not at the resumed step).
TEST_F(CliTrain, AResumedRunCountsOnlyItsOwnSteps) {
  const std::string c = path("c.safetensors");
  ASSERT_EQ(train({"--data", kTrain, "--steps", "600", "--log-every", "600", "--checkpoint", c}).status, 0);
  const Finished r = train({"--data", kTrain, "--steps", "610", "--log-every", "5", "--resume", c});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_PRED_FORMAT2(Contains, r.out, "\ntrained 10 steps in ");
}

// --checkpoint without --data is accepted and ignored: exit 0 and no file (the check that
// refuses --epochs, --val, --resume, --checkpoint-every and --keep-last without --data
// leaves --checkpoint out). Either refusing it, as here, or writing the file would do.
TEST_F(CliTrain, CheckpointWithoutDataIsBadInput) {
  const std::string c = path("c.safetensors");
  const Finished r = train({"--steps", "3", "--checkpoint", c});
  EXPECT_EQ(r.status, 2) << describe(r);
  EXPECT_PRED_FORMAT2(Contains, r.err, "--checkpoint");
  EXPECT_FALSE(fs::exists(c));
}

}  // namespace
