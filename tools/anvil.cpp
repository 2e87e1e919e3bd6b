// anvil: the command-line front end (after Caffe's tools/caffe.cpp and trtexec).
//   anvil info  NET.json                       layers, shapes, parameters, fusion, memory plan
//   anvil run   NET.json [--input X] [--output Y]   a forward pass
//   anvil train NET.json --epochs E --data D [...]   training with a progress display
//   anvil eval  NET.json --data D [--weights W]  the mean loss over a dataset
//   anvil bench NET.json [--mode ...]           timings, per-layer breakdown, JSON export
//   anvil --version                             version, git commit, CUDA and cuDNN versions
// Exit codes: 0 success, 2 bad input, 1 runtime failure (a standard output that
// fails, a pipe closed by its reader, included), 3 training reached NaN or Inf,
// 128 + the signal for SIGHUP, SIGINT or SIGTERM.
#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <optional>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <nlohmann/json.hpp>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "anvil/communicator.hpp"
#include "anvil/data_parallel.hpp"
#include "anvil/dataset.hpp"
#include "anvil/engine.hpp"
#include "anvil/trainer.hpp"
#include "tools/train_report.hpp"
#include "anvil/error.hpp"
#include "anvil/output_file.hpp"
#include "anvil/safetensors.hpp"
#include "anvil/version.hpp"

namespace {

using anvil::Device;

std::string mib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

struct CommonFlags {
  std::string network;
  std::string device;     // "", "cpu" or "cuda"
  std::string precision;  // "", "fp32" or "tf32" ("": the network's)
  bool no_fuse = false;
  bool no_phase_split = false;
  bool no_direct_conv = false;
  bool no_wgmma_conv = false;
  bool no_channels_last = false;
  bool no_graph = false;
  bool nondeterministic = false;
  bool autotune = false;
  bool force = false;
};

void add_common(CLI::App* cmd, CommonFlags& f) {
  cmd->add_option("network", f.network, "network description (JSON)")->required();
  cmd->add_option("--device", f.device, "cpu or cuda (default: cuda when a GPU is present)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--precision", f.precision, "fp32 or tf32: overrides the network's \"precision\" (conv math on CUDA)")
      ->check(CLI::IsMember({"fp32", "tf32"}));
  cmd->add_flag("--no-fuse", f.no_fuse, "turn the fusion pass off (A/B checks)");
  cmd->add_flag("--no-phase-split", f.no_phase_split,
                "transposed convs (and under strict fp32 strided convs' input gradients) use cuDNN's backward-data, "
                "not the phase split (A/B checks)");
  cmd->add_flag("--no-direct-conv", f.no_direct_conv,
                "fused convs with few taps per output use cuDNN's conv, not anvil's direct kernel (A/B checks)");
  cmd->add_flag("--no-wgmma-conv", f.no_wgmma_conv,
                "fused stride-1 convs under tf32 use cuDNN's conv, not anvil's wgmma kernel (A/B checks)");
  cmd->add_flag("--no-channels-last", f.no_channels_last,
                "inference under tf32 keeps every activation packed (NCHW), none channels-last (A/B checks)");
  cmd->add_flag("--nondeterministic", f.nondeterministic,
                "allow non-deterministic cuDNN algorithms and take the fastest measured");
  cmd->add_flag("--force", f.force,
                "write through an output that is a symlink, character device or FIFO (--checkpoint and --save: "
                "a symlink to a file only)");
  cmd->add_flag("--autotune", f.autotune,
                "time each fused op's formulations and cuDNN's algorithms once at build, keep the fastest");
}

// Every numeric flag is decimal, checked on the text before CLI11 converts it:
// CLI11 reads "0x10" as 16, "010" as 8, " 5" as 5, "1e999" as infinity and
// "99999999999999999999" as INT64_MAX, without a word.
//
// A whole number that fits `limit`, handed on in canonical form (a transform:
// CLI11's check() may not change the text). Signs and the value's own bounds
// are the command's to check.
constexpr int64_t kMaxCount = int64_t(1) << 53;  // steps and epochs: far beyond any run, exact in a double
constexpr int64_t kMaxInt = INT32_MAX;           // iterations, stored as int
constexpr int64_t kMaxBenchIters = 10'000'000;   // each timed iteration's time is kept: 80 MB at most

CLI::Validator whole_number(int64_t limit) {
  return CLI::Validator(
      [limit](std::string& text) -> std::string {
        int64_t value = 0;
        const char* end = text.data() + text.size();
        const auto [last, ec] = std::from_chars(text.data(), end, value);
        const bool parsed = ec == std::errc() && last == end;
        if (ec == std::errc::result_out_of_range || (parsed && (value > limit || value < -limit)))
          return text + " is out of range (at most " + std::to_string(limit) + ")";
        if (!parsed) return text + " is not a whole number";
        text = std::to_string(value);  // leading zeros gone: CLI11 would read them as octal
        return "";
      },
      "INT");
}

// An on/off flag's value (--check-finite=false) as on (true) or off, or none
// for a word that is neither.
std::optional<bool> on_or_off_word(const std::string& text) {
  static const std::set<std::string> on{"true", "yes", "on", "1"}, off{"false", "no", "off", "0"};
  if (on.count(text)) return true;
  if (off.count(text)) return false;
  return std::nullopt;
}

// The value of an on/off flag: a yes or a no, not any number (CLI11 alone reads --check-finite=2 as on).
CLI::Validator on_or_off() {
  return CLI::Validator(
      [](std::string& text) -> std::string { return on_or_off_word(text) ? "" : text + " is not true or false"; },
      "BOOL");
}

// A finite number: digits, a point, an exponent.
CLI::Validator decimal_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double value = 0;
        const char* end = text.data() + text.size();
        const auto [last, ec] = std::from_chars(text.data(), end, value);
        if (ec == std::errc::result_out_of_range) return text + " is out of range";
        if (ec != std::errc() || last != end || !std::isfinite(value)) return text + " is not a decimal number";
        return "";
      },
      "NUMBER");
}

using NamedPaths = std::vector<std::pair<std::string, std::string>>;  // (flag, path); empty paths are skipped

// The outputs that must be files whatever --force says: a checkpoint is rewritten during the run
// and read back by --resume, and --save holds the run's result; written into a device or a pipe
// (/dev/tty, /dev/null, /dev/stdout, a FIFO) neither would be a file to find afterwards, and a
// FIFO without a reader would stall training at its first checkpoint. The other outputs (run
// --output, --dump-grads, bench --json, --metrics) may stream into one with --force.
bool must_be_a_file(const std::string& flag) { return flag == "--checkpoint" || flag == "--save"; }

// Fails before any work when an output could not be written at the end, or
// could reach something by accident: every output must be a new name or a
// regular file (a symlink, character device or FIFO only with --force, which
// writes through it, and for --checkpoint and --save a symlink to a file only;
// a directory, block device or socket never), no two outputs may share a
// file, and no output may be an input (a checkpoint may be resumed from and
// written again).
void check_outputs(const NamedPaths& outputs, const NamedPaths& inputs, bool force) {
  std::map<std::string, std::pair<std::string, std::string>> written;  // file -> (flag, path)
  for (const auto& [flag, path] : outputs) {
    if (path.empty()) continue;
    if (path[0] == '-')  // "--save --data": the flag parser took the next flag as the value
      throw anvil::InputError(flag + " " + path + ": looks like a flag, not a file name (write ./" + path +
                              " for a file named so)");
    if (must_be_a_file(flag)) {  // before the --force refusal below, which would point to --force
      try {
        anvil::check_output_is_a_file(path, flag);
      } catch (const anvil::Error& e) {
        throw anvil::InputError(flag + " " + e.what());
      }
    }
    struct stat st {};
    if (lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode) && !force) {
      const char* kind = S_ISLNK(st.st_mode) ? "a symlink" : "not a regular file";
      throw anvil::InputError(flag + " " + path + ": will not write: it is " + kind + " (--force writes through it)");
    }
    try {
      anvil::check_output_path(path);
    } catch (const anvil::Error& e) {
      throw anvil::InputError(flag + " " + e.what());
    }
    const auto [it, fresh] =
        written.emplace(anvil::same_file_key(anvil::output_target(path)), std::make_pair(flag, path));
    if (!fresh) throw anvil::InputError(flag + " " + path + ": the same file as " + it->second.first);
  }
  for (const auto& [flag, path] : inputs) {
    if (path.empty()) continue;
    const auto it = written.find(anvil::same_file_key(path));
    if (it == written.end()) continue;
    const auto& [out_flag, out_path] = it->second;
    if (!(flag == "--resume" && out_flag == "--checkpoint"))
      throw anvil::InputError(out_flag + " " + out_path + ": would overwrite " + flag + " " + path);
  }
}

// Lines for stderr held until the inputs are checked and the work starts (train: until its first
// logged step went through; eval: until its result), so that an error before then stays one line:
// which device anvil chose where --device was left out, and the tensors of --weights the network
// does not use. A non-finite error before then carries the weights' line on its own (main):
// non-finite weights are one reason for it.
std::string device_notice, weights_notice;

void print_notices() {
  for (std::string* notice : {&device_notice, &weights_notice}) {
    if (!notice->empty()) std::cerr << *notice << "\n";
    notice->clear();
  }
}

anvil::Options options_for(const CommonFlags& f, anvil::Mode mode) {
  anvil::Options o;
  o.mode = mode;
  o.fuse = !f.no_fuse;
  o.phase_split = !f.no_phase_split;
  o.direct_conv = !f.no_direct_conv;
  o.wgmma_conv = !f.no_wgmma_conv;
  o.channels_last = !f.no_channels_last;
  o.cuda_graph = !f.no_graph;
  o.deterministic = !f.nondeterministic;
  o.autotune = f.autotune;
  if (f.device.empty()) {
    const bool gpu = anvil::cuda_available();
    o.device = gpu ? Device::Cuda : Device::Cpu;
    device_notice =
        std::string("device: ") + anvil::to_string(o.device) + (gpu ? " (a GPU is present)" : " (no GPU found)");
  } else {
    o.device = f.device == "cuda" ? Device::Cuda : Device::Cpu;
    // A build without CUDA leaves the refusal, and its reason, to the Engine.
    if (o.device == Device::Cuda && ANVIL_WITH_CUDA && !anvil::cuda_available())
      throw anvil::InputError("--device cuda: no CUDA device is available on this machine");
  }
  return o;
}

// Parameters by name from a safetensors file (a PyTorch state_dict or an anvil checkpoint).
// Tensors the network does not use are listed (in weights_notice) and ignored, or refused with --strict.
void load_weights(anvil::Engine& engine, const std::string& path, bool strict, bool report_unused = true) {
  const anvil::ParameterSelection w =
      anvil::select_parameters(anvil::read_safetensors(path), path, engine.parameter_shapes(), strict);
  engine.load_parameters(w.parameters);
  if (report_unused && !w.unused.empty())
    weights_notice = "weights: " + anvil::unused_tensors_message(path, w.unused) + " (ignored)";
}

anvil::Shape without_batch(const anvil::Shape& s) { return {s.begin() + 1, s.end()}; }

// A name or path from the user as the terminal should show it: control bytes escaped, as in messages,
// so that a file name holding a newline cannot start a line of its own.
std::string shown(const std::string& text) { return anvil::Error::one_line(text); }

// --data-budget in MiB when given; otherwise the engine's default, half the free device memory.
std::optional<size_t> data_budget(double mib, bool given) {
  if (!given) return std::nullopt;
  if (!(mib >= 0 && mib <= 1e12)) {
    char text[32];  // 1e308 reads as 1e+308, not as 309 digits; 1e12 + 1 keeps its last digit
    std::snprintf(text, sizeof text, "%.15g", mib);
    throw anvil::InputError(std::string("--data-budget: must be a number of MiB from 0 to 1e12, got ") + text);
  }
  return static_cast<size_t>(mib * (1 << 20));
}

const char* where_the_data_is(const anvil::Engine& engine) {
  if (engine.options().device == Device::Cpu) return "in host memory (the CPU backend)";
  return engine.data_on_device() ? "on the device: each step gathers its batch inside the captured graph"
                                 : "in host memory: each batch is gathered there and copied before its step";
}

anvil::Dataset load_dataset(const std::string& path, const anvil::Network& net) {
  return anvil::Dataset::load(path, without_batch(net.input_shape()), without_batch(net.output_shape()));
}

// The network file with the command's overrides: --batch when given (0: not given; the flags are
// checked before) and --precision. Every command loads its network here.
anvil::Network load_network(const CommonFlags& f, int64_t batch = 0) {
  anvil::Network net = anvil::Network::load(f.network);
  if (batch > 0) net = net.with_batch(batch);
  if (!f.precision.empty())
    net = net.with_precision(f.precision == "fp32" ? anvil::Precision::FP32 : anvil::Precision::TF32);
  return net;
}

// The mode info and bench take without --mode: training, as `anvil train` does, unless the network
// has no parameters (nothing to train) and no flag asks for training.
std::string default_mode(const anvil::Network& net, bool training_asked) {
  return net.parameter_count() == 0 && !training_asked ? "forward" : "train";
}

// mode_name: --mode, empty where not given; check_finite_asked: --check-finite given (it is on by default).
int cmd_info(const CommonFlags& f, std::string mode_name, bool input_grad, bool check_finite, bool check_finite_asked) {
  // A forward plan computes no gradient and takes no step: the training flags are refused, before
  // the network is read (a default mode is forward only where neither is given).
  if (input_grad && mode_name == "forward") throw anvil::InputError("--input-grad needs --mode train");
  if (check_finite_asked && mode_name == "forward") throw anvil::InputError("--check-finite needs --mode train");
  const anvil::Network net = load_network(f);
  if (mode_name.empty()) mode_name = default_mode(net, input_grad || check_finite_asked);
  anvil::Options o = options_for(f, mode_name == "forward" ? anvil::Mode::Forward : anvil::Mode::Train);
  o.input_grad = input_grad;
  o.check_finite = check_finite && o.mode == anvil::Mode::Train;  // as `anvil train` plans it
  // CUDA builds fully so the chosen cuDNN algorithms show; the CPU plan needs no arena.
  o.plan_only = o.device == Device::Cpu;
  const anvil::Engine engine(net, o);
  print_notices();

  std::printf("network %s (%s): input %s, output %s, precision %s, seed %llu\n", shown(net.name()).c_str(),
              shown(net.source()).c_str(), anvil::to_string(net.input_shape()).c_str(),
              anvil::to_string(net.output_shape()).c_str(), anvil::to_string(net.precision()),
              static_cast<unsigned long long>(net.seed()));
  std::printf("\n%-22s %-18s %-22s %-24s %10s\n", "layer", "type", "inputs", "output shape", "params");
  for (const auto& l : net.layers()) {
    std::string inputs;
    for (const auto& i : l.inputs) inputs += (inputs.empty() ? "" : ",") + i;
    std::printf("%-22s %-18s %-22s %-24s %10lld\n", l.name.c_str(), l.type.c_str(), inputs.c_str(),
                anvil::to_string(l.output_shape).c_str(), static_cast<long long>(l.param_count));
  }
  std::printf("total parameters: %lld\n", static_cast<long long>(net.parameter_count()));

  const auto groups = net.fuse() ? net.fusion_groups() : std::vector<std::vector<std::string>>{};
  // The fusion rules are CUDA-only: without CUDA, groups is empty.
  const char* off = !net.fuse()        ? ": turned off by \"fuse\": false"
                    : !ANVIL_WITH_CUDA ? ": none, anvil was built without CUDA"
                                       : "";
  std::printf("\nfusion (CUDA backend)%s:\n", off);
  if (!*off && groups.empty()) std::printf("  no fusable chains\n");
  for (const auto& g : groups) {
    std::string chain;
    for (const auto& n : g) chain += (chain.empty() ? "" : " + ") + n;
    std::printf("  merge %s -> one fused op\n", chain.c_str());
  }

  const anvil::MemoryPlan& plan = engine.plan();
  std::printf("\nmemory plan (%s, %s): %zu tensors over %zu steps\n", anvil::to_string(o.device), mode_name.c_str(),
              plan.tensors.size(), plan.steps.size());
  std::printf("  slabs (params, and in training grads and the optimizer state%s): %s each\n",
              o.check_finite ? ", and for --check-finite a good copy of the params and the state" : "",
              mib(plan.slab_bytes).c_str());
  std::printf("  arena (one allocation): %s (most live at one step: %s; one buffer per tensor: %s)\n",
              mib(plan.arena_bytes()).c_str(), mib(plan.live_peak_bytes).c_str(), mib(plan.naive_bytes).c_str());
  std::printf("\n%-44s %12s %12s %7s %7s\n", "tensor", "offset", "bytes", "first", "last");
  for (const auto& t : plan.tensors)
    std::printf("%-44s %12zu %12zu %7d %7d%s\n", t.name.c_str(), t.offset, t.bytes, t.first, t.last,
                t.pinned ? "  pinned" : "");
  std::printf("\nas built:\n%s", engine.describe().c_str());
  return 0;
}

int cmd_run(const CommonFlags& f, const std::string& weights, const std::string& input, const std::string& output) {
  check_outputs({{"--output", output}}, {{"the network file", f.network}, {"--weights", weights}, {"--input", input}},
                f.force);
  const anvil::Network net = load_network(f);
  anvil::Engine engine(net, options_for(f, anvil::Mode::Forward));
  if (!weights.empty()) load_weights(engine, weights, false);
  if (!input.empty()) {
    const anvil::TensorFile file = anvil::read_safetensors(input);
    engine.set_input(anvil::require_tensor(file, input, "input", net.input_shape()));
  }
  print_notices();
  const auto t0 = std::chrono::steady_clock::now();
  anvil::HostTensor y = engine.forward();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  double sum = 0, sq = 0;
  for (float v : y.data) sum += v, sq += double(v) * v;
  const double mean = sum / y.size(), norm = std::sqrt(sq);
  std::printf("output %s: mean %.6g, L2 norm %.6g (%.1f ms)\n", anvil::to_string(y.shape).c_str(),
              std::isnan(mean) ? NAN : mean, std::isnan(norm) ? NAN : norm, ms);  // "nan", never "-nan"
  if (!output.empty()) {
    anvil::TensorFile out;
    out.tensors["output"] = std::move(y);  // one host copy of the output, not two
    out.metadata["network"] = net.name();
    anvil::write_safetensors(output, out);
    std::printf("wrote %s\n", shown(output).c_str());
  }
  return 0;
}

struct TrainFlags {
  int64_t steps = 0, epochs = 0, batch = 0, log_every = 10, val_every = 0, checkpoint_every = 0;
  double data_budget_mib = 0;
  std::string weights, data, val, save, dump_grads, metrics, checkpoint, resume;
  bool input_grad = false, no_shuffle = false, keep_last = false, strict = false, check_finite = true;
  std::string gpus;  // --gpus: a count or a list of ids
  int ranks = 1;     // --ranks: in-process ranks on the CPU
  bool ranks_given = false;
  bool steps_given = false, epochs_given = false, batch_given = false, budget_given = false;  // set after parsing
};

// The message of a failed standard output, with the errno of the write where it is known.
std::string stdout_failure_message(int error) {
  return std::string("writing the standard output failed") +
         (error != 0 ? std::string(": ") + std::strerror(error) : std::string());
}

// Why the standard output failed, or empty where every write so far went through.
std::string stdout_failure() {
  errno = 0;
  const bool flushed = std::fflush(stdout) == 0;
  const int error = errno;
  if (flushed && !std::ferror(stdout)) return "";
  return stdout_failure_message(flushed ? 0 : error);
}
bool error_said = false;  // the run's one "anvil: error:" line has been printed (say_error)

void say_error(const std::string& message) {
  std::cerr << "anvil: error: " << message << "\n";
  error_said = true;
}

// A standard output that has failed already (a `| head` that has exited) ends a long command
// before its work rather than after.
void stop_if_stdout_failed() {
  const std::string failure = stdout_failure();
  if (failure.empty()) return;
  throw anvil::Error(failure);
}

// SIGHUP, SIGINT and SIGTERM end training after the step in progress (and a checkpoint, when
// asked for), as does a standard output that fails.
std::atomic<bool> stop_requested{false};
volatile std::sig_atomic_t stop_signal = 0;

extern "C" void request_stop(int signal) {
  stop_signal = signal;
  stop_requested.store(true);
}

// request_stop for SIGHUP, SIGINT and SIGTERM while training runs, unless they are
// ignored (a background job of a script: Ctrl-C is not meant for it). The
// previous handling comes back with restore(): a signal during the final
// writes then ends the run at once, and the writer removes its temporary file.
class StopOnSignals {
 public:
  StopOnSignals() { install(); }
  void install() {
    struct sigaction stop {};
    stop.sa_handler = request_stop;
    stop.sa_flags = SA_RESTART;
    sigemptyset(&stop.sa_mask);
    for (int i = 0; i < kCount; ++i) {
      sigaction(kSignals[i], nullptr, &previous_[i]);
      if (previous_[i].sa_handler != SIG_IGN) sigaction(kSignals[i], &stop, nullptr);
    }
  }
  void restore() {
    for (int i = 0; i < kCount; ++i) sigaction(kSignals[i], &previous_[i], nullptr);
  }

 private:
  static constexpr int kCount = 3;
  static constexpr int kSignals[kCount] = {SIGHUP, SIGINT, SIGTERM};
  struct sigaction previous_[kCount] = {};
};

void check_positive(const char* flag, int64_t value) {
  if (value < 1)
    throw anvil::InputError(std::string(flag) + ": must be a positive integer, got " + std::to_string(value));
}

void write_parameters(const std::string& path, anvil::Engine& engine, const anvil::Network& net) {
  anvil::TensorFile out;
  out.tensors = engine.parameters();
  out.metadata["network"] = net.name();
  out.metadata["steps"] = std::to_string(engine.steps_done());
  anvil::write_safetensors(path, out);
  std::printf("saved parameters to %s\n", shown(path).c_str());
}

void write_gradients(const std::string& path, anvil::Engine& engine, const anvil::Network& net, bool input_grad) {
  anvil::TensorFile out;
  out.tensors = engine.gradients();
  if (input_grad) out.tensors["grad.input"] = engine.input_gradient();
  out.metadata["network"] = net.name();
  out.metadata["step"] = std::to_string(engine.steps_done());
  anvil::write_safetensors(path, out);
  std::printf("wrote gradients of step %lld to %s\n", static_cast<long long>(engine.steps_done()), shown(path).c_str());
}

// --gpus K (the first K GPUs) or --gpus 0,2 (those), checked before any work; --ranks K on the CPU.
std::vector<int> parse_gpus(const std::string& text) {
  std::vector<int> gpus;
  const bool count = text.find(',') == std::string::npos;
  std::stringstream items(text);
  for (std::string item; std::getline(items, item, ',');) {
    int value = -1;
    const auto [end, error] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (item.empty() || error != std::errc() || end != item.data() + item.size() || value < 0 || value > 1 << 20)
      throw anvil::InputError("--gpus: '" + text + "' is not a GPU count or a list of GPU ids such as 0,2");
    if (std::find(gpus.begin(), gpus.end(), value) != gpus.end())
      throw anvil::InputError("--gpus: GPU " + item + " is given twice");
    gpus.push_back(value);
  }
  if (count) {
    if (gpus.empty() || gpus[0] < 1) throw anvil::InputError("--gpus: give at least 1 GPU");
    const int k = gpus[0];
    gpus.clear();
    for (int g = 0; g < k; ++g) gpus.push_back(g);
  }
  if (!anvil::nccl_available())
    throw anvil::InputError("--gpus: this anvil was built without NCCL (CMake found no nccl.h and libnccl)");
  const int present = anvil::cuda_device_count();
  for (const int g : gpus)
    if (g >= present)
      throw anvil::InputError("--gpus: GPU " + std::to_string(g) + " does not exist (this machine has " +
                              std::to_string(present) + ")");
  return gpus;
}

// One rank's training (the only one without --gpus or --ranks): its engine, its trainer, and for
// rank 0 the progress display, the metrics and the files. Returns the exit code.
int train_rank(anvil::Engine& engine, int rank, const anvil::Network& net, const TrainFlags& t,
               const anvil::Dataset* train_data, const anvil::Dataset* val_data, StopOnSignals& stop_on_signals) {
  const bool writer = rank == 0;
  if (!t.weights.empty()) load_weights(engine, t.weights, t.strict, writer);
  anvil::TrainOptions to;
  to.steps = t.steps;
  to.epochs = t.epochs;
  to.log_every = t.log_every;
  to.val_every = t.val_every;
  to.checkpoint = t.checkpoint;
  to.checkpoint_every = t.checkpoint_every;
  to.check_finite = t.check_finite;
  // The data: a dataset of minibatches, or (without --data) one batch from the seeded generator.
  std::optional<anvil::Trainer> trainer;
  if (train_data) {
    anvil::DataOptions data;
    data.shuffle = !t.no_shuffle;
    data.keep_last = t.keep_last;
    data.device_budget = data_budget(t.data_budget_mib, t.budget_given);
    trainer.emplace(engine, *train_data, val_data, to, data);
    if (!t.resume.empty()) {
      trainer->resume(t.resume);
      if (trainer->finished())
        throw anvil::InputError("--resume " + t.resume + ": the checkpoint is at step " +
                                std::to_string(trainer->position().step) + ", nothing is left of " +
                                std::to_string(trainer->total_steps()) + " steps");
    }
  } else {
    trainer.emplace(engine, to);
  }
  const int64_t total = trainer->total_steps();
  const bool epochs = trainer->steps_per_epoch() > 0;
  const anvil::Communicator* ranks = engine.options().communicator;
  // Opened once the data, the weights and the checkpoint are checked: a refused run leaves no file.
  std::optional<anvil::cli::MetricsWriter> metrics;
  if (writer && !t.metrics.empty()) {
    // Opening what is not a regular file (a FIFO, with --force) can wait for ever for a reader.
    // Meanwhile a signal ends the run at once, as before training: caught, it would only be noted
    // for after a step, and the open would wait on. One noted already ends the run before the open.
    struct stat st {};
    const bool may_wait = ::stat(t.metrics.c_str(), &st) == 0 && !S_ISREG(st.st_mode);
    if (may_wait) stop_on_signals.restore();
    if (!may_wait || !stop_requested.load()) metrics.emplace(t.metrics);
    if (may_wait) stop_on_signals.install();
  }
  if (writer) {
    std::printf("training %s on %s%s: %lld steps%s, batch %lld, %s arena%s\n", shown(net.name()).c_str(),
                anvil::to_string(engine.options().device),
                ranks ? (", data parallel (" + ranks->describe() + ")").c_str() : "", static_cast<long long>(total),
                epochs ? (" (" + std::to_string(trainer->steps_per_epoch()) + " per epoch)").c_str() : "",
                static_cast<long long>(net.input_shape()[0]), mib(engine.device_bytes()).c_str(),
                ranks ? " per rank" : "");
    if (epochs)
      std::printf("data: %s, %lld samples, %s\n", shown(t.data).c_str(), static_cast<long long>(train_data->size()),
                  where_the_data_is(engine));
    if (trainer->position().step > 0)
      std::printf("resumed from %s at step %lld (epoch %lld, batch %lld)\n", shown(t.resume).c_str(),
                  static_cast<long long>(trainer->position().step), static_cast<long long>(trainer->position().epoch),
                  static_cast<long long>(trainer->position().batch_in_epoch));
    std::fflush(stdout);
  }

  std::optional<anvil::cli::TrainReporter> report;
  std::string stdout_failed;
  bool validation_failed = false;  // not finite: run() throws after this step's on_log
  anvil::Trainer::Callbacks callbacks;
  if (writer) {
    report.emplace(stdout, isatty(fileno(stdout)) != 0, metrics ? &*metrics : nullptr);
    // With --keep-last an epoch's last batch is padded to the batch: samples/s counts its real samples only.
    report->begin(total, trainer->steps_per_epoch(), net.input_shape()[0], trainer->position().step,
                  t.keep_last ? train_data->size() : 0);
    // Epochs are shown and logged counting from 1 (0: training on one batch, no epochs).
    callbacks.on_log = [&](const anvil::TrainProgress& p) {
      if (std::isfinite(p.loss) && !validation_failed) print_notices();  // the first logged step went through
      report->log(p.step, epochs ? p.epoch + 1 : 0, p.loss, p.lr);
      // A reader that went away (| head) or a full disk under stdout: stop as a signal would.
      if (stdout_failed.empty() && std::ferror(stdout)) {
        stdout_failed = stdout_failure_message(report->write_error());
        stop_requested.store(true);
      }
    };
    callbacks.on_validation = [&](int64_t step, float val) {
      validation_failed = !std::isfinite(val);
      report->validation(step, val);
    };
  }
  trainer->run(callbacks, &stop_requested);
  if (writer) {
    print_notices();  // a run stopped before its first step
    report->end(trainer->position().step);
    stop_on_signals.restore();
  }
  if (!trainer->finished() && stop_signal == 0) {  // rank 0's standard output failed, or (MPI) another's signal
    if (!t.checkpoint.empty()) trainer->save_checkpoint(t.checkpoint);
    if (writer) {
      say_error((stdout_failed.empty() ? "another rank was stopped" : stdout_failed) + "; training stopped at step " +
                std::to_string(trainer->position().step) +
                (t.checkpoint.empty() ? "" : ", checkpoint written to " + shown(t.checkpoint)));
    }
    return 1;
  }
  if (!trainer->finished()) {  // a signal stopped it (one that came after the last step changes nothing)
    const int code = 128 + static_cast<int>(stop_signal);
    if (!t.checkpoint.empty()) {
      trainer->save_checkpoint(t.checkpoint);
      if (writer)
        std::printf("stopped by signal %d: checkpoint of step %lld written to %s\n", static_cast<int>(stop_signal),
                    static_cast<long long>(trainer->position().step), shown(t.checkpoint).c_str());
    } else if (writer) {
      std::printf("stopped by signal %d at step %lld\n", static_cast<int>(stop_signal),
                  static_cast<long long>(engine.steps_done()));
    }
    return code;
  }
  if (!t.checkpoint.empty()) trainer->save_checkpoint(t.checkpoint);
  if (!t.save.empty()) trainer->check_finite();  // on every rank: a finding is replayed by all
  if (!writer) return 0;
  if (!t.save.empty()) write_parameters(t.save, engine, net);
  if (!t.dump_grads.empty()) write_gradients(t.dump_grads, engine, net, t.input_grad);
  return 0;
}

int cmd_train(const CommonFlags& f, const TrainFlags& t) {
  if (t.steps_given == t.epochs_given) throw anvil::InputError("give --steps N or --epochs E (one of them)");
  if (t.steps_given) check_positive("--steps", t.steps);
  if (t.epochs_given) check_positive("--epochs", t.epochs);
  if (t.batch_given) check_positive("--batch", t.batch);
  check_positive("--log-every", t.log_every);
  if (t.ranks_given) check_positive("--ranks", t.ranks);
  if (t.val_every < 0) throw anvil::InputError("--val-every: must be >= 0, got " + std::to_string(t.val_every));
  if (t.checkpoint_every < 0)
    throw anvil::InputError("--checkpoint-every: must be >= 0, got " + std::to_string(t.checkpoint_every));
  if (t.checkpoint_every > 0 && t.checkpoint.empty()) throw anvil::InputError("--checkpoint-every needs --checkpoint");
  if (t.data.empty() &&
      (t.epochs > 0 || !t.val.empty() || !t.resume.empty() || !t.checkpoint.empty() || t.keep_last || t.no_shuffle))
    throw anvil::InputError("--epochs, --val, --resume, --checkpoint, --keep-last and --no-shuffle need --data");
  if (t.val.empty() && t.val_every > 0) throw anvil::InputError("--val-every needs --val");
  if (t.strict && t.weights.empty()) throw anvil::InputError("--strict needs --weights");
  if (t.budget_given && t.data.empty()) throw anvil::InputError("--data-budget needs --data");
  if (!t.resume.empty() && !t.weights.empty())
    throw anvil::InputError("--weights: a resumed run takes its parameters from the checkpoint (--resume); give one");
  check_outputs(
      {{"--save", t.save}, {"--dump-grads", t.dump_grads}, {"--checkpoint", t.checkpoint}, {"--metrics", t.metrics}},
      {{"the network file", f.network},
       {"--weights", t.weights},
       {"--data", t.data},
       {"--val", t.val},
       {"--resume", t.resume}},
      f.force);
  anvil::Options o = options_for(f, anvil::Mode::Train);
  o.input_grad = t.input_grad;
  o.check_finite = t.check_finite;
  std::vector<int> gpus;
  int ranks = t.ranks;
  const int processes = anvil::launched_ranks();  // under mpirun: one rank per process
  if (processes > 1) {
    if (!t.gpus.empty() || t.ranks_given)
      throw anvil::InputError(
          "under mpirun every process is one rank (on its host's GPU local rank): give no "
          "--gpus or --ranks");
    ranks = processes;
  }
  if (!t.gpus.empty()) {
    if (o.device != Device::Cuda)
      throw anvil::InputError(std::string(f.device.empty() ? "--gpus: no CUDA device is available on this machine"
                                                           : "--gpus needs --device cuda") +
                              " (--ranks K runs ranks on the CPU)");
    if (t.ranks_given) throw anvil::InputError("give --gpus or --ranks, not both");
    gpus = parse_gpus(t.gpus);
    ranks = static_cast<int>(gpus.size());
  } else if (t.ranks_given && o.device != Device::Cpu) {
    throw anvil::InputError("--ranks runs in-process ranks on the CPU (--device cpu); on GPUs use --gpus");
  }
  if (t.input_grad && ranks > 1)
    throw anvil::InputError("--input-grad: each of the " + std::to_string(ranks) +
                            " ranks holds only its slice of the input gradient, of its own loss; train on one "
                            "rank to dump it");
  if (t.keep_last && ranks > 1)  // the library says so too, by its own name (keep_last)
    throw anvil::InputError("--keep-last is refused with " + std::to_string(ranks) +
                            " ranks, whatever the dataset's size (a partial last batch would not split evenly "
                            "across them); leave it out to train data-parallel");
  const anvil::Network net = load_network(f, t.batch);
  if (net.input_shape()[0] % ranks != 0)
    throw anvil::InputError("the batch of " + std::to_string(net.input_shape()[0]) + " does not split evenly across " +
                            std::to_string(ranks) + " ranks (--batch sets the global batch)");

  std::optional<anvil::Dataset> train_data, val_data;
  if (!t.data.empty()) train_data.emplace(load_dataset(t.data, net));
  if (!t.val.empty()) val_data.emplace(load_dataset(t.val, net));
  StopOnSignals stop_on_signals;
  const anvil::Dataset* train = train_data ? &*train_data : nullptr;
  const anvil::Dataset* val = val_data ? &*val_data : nullptr;
  int code = 0;
  if (processes > 1) {
    anvil::run_mpi_rank(net, o, [&](anvil::Engine& engine, int rank) {
      code = train_rank(engine, rank, net, t, train, val, stop_on_signals);
    });
    anvil::mpi_finalize();
    return code;
  }
  if (gpus.empty() && !t.ranks_given) {
    anvil::Engine engine(net, o);
    return train_rank(engine, 0, net, t, train, val, stop_on_signals);
  }
  anvil::run_data_parallel(net, o, ranks, gpus, [&](anvil::Engine& engine, int rank) {
    const int rank_code = train_rank(engine, rank, net, t, train, val, stop_on_signals);
    if (rank == 0) code = rank_code;
  });
  return code;
}

int cmd_eval(const CommonFlags& f, const std::string& weights, const std::string& data, int64_t batch, bool batch_given,
             bool strict) {
  if (batch_given) check_positive("--batch", batch);
  if (strict && weights.empty()) throw anvil::InputError("--strict needs --weights");
  const anvil::Network net = load_network(f, batch);
  // Before the engine: a batch beyond the data would only be padding, and its arena could be
  // refused for memory, which would not name the reason.
  const anvil::Dataset dataset = load_dataset(data, net);
  if (batch_given && batch > dataset.size())
    throw anvil::InputError("--batch " + std::to_string(batch) + " is more than the " + std::to_string(dataset.size()) +
                            " samples of " + shown(data) + " (the rest of a batch would be padding)");
  anvil::Options o = options_for(f, anvil::Mode::Train);
  // evaluate() runs the forward and the loss of a training engine, and one needs something to
  // differentiate: a network without parameters has only its input (its gradient is never run).
  o.input_grad = net.parameter_count() == 0;
  anvil::Engine engine(net, o);
  if (!weights.empty()) load_weights(engine, weights, strict);
  // The notices wait for the result: a failed evaluation is its one error line.
  const float loss = engine.evaluate(dataset);
  // Finite data can still overflow float on the way (as train stops, eval fails: exit 3).
  if (!std::isfinite(loss))
    throw anvil::NonFiniteError("the mean loss over " + shown(data) + " is " + anvil::NonFiniteError::shown(loss));
  print_notices();
  std::printf("mean loss %.9g over %lld samples of %s\n", loss, static_cast<long long>(dataset.size()),
              shown(data).c_str());
  return 0;
}

struct BenchFlags {
  std::string mode, json, data;  // mode empty: not given (cmd_bench picks, as info does)
  int iters = 50, warmup = 10;
  int64_t batch = 0;
  double data_budget_mib = 0;
  bool input_grad = false;
  bool batch_given = false, budget_given = false;  // set after parsing
};

double percentile(const std::vector<double>& sorted, double q) {
  const double pos = q * (sorted.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (pos - lo) * (sorted[hi] - sorted[lo]);
}

// Times --iters repetitions after --warmup (left out), each with CUDA events on
// the engine's stream; then each layer once for the breakdown.
int cmd_bench(const CommonFlags& f, const BenchFlags& b, const std::string& command_line) {
  if (b.iters < 1) throw anvil::InputError("--iters: must be a positive integer, got " + std::to_string(b.iters));
  if (b.warmup < 0) throw anvil::InputError("--warmup: must be >= 0, got " + std::to_string(b.warmup));
  if (b.batch_given) check_positive("--batch", b.batch);
  if (b.budget_given && b.data.empty()) throw anvil::InputError("--data-budget needs --data");
  // A forward pass computes no gradient (the engine would refuse it too) and takes no batch from a dataset.
  if (b.input_grad && b.mode == "forward") throw anvil::InputError("--input-grad needs --mode fwdbwd or train");
  if (!b.data.empty() && !b.mode.empty() && b.mode != "train") throw anvil::InputError("--data needs --mode train");
  check_outputs({{"--json", b.json}}, {{"the network file", f.network}, {"--data", b.data}}, f.force);
  const anvil::Network net = load_network(f, b.batch);
  const std::string mode = b.mode.empty() ? default_mode(net, b.input_grad || !b.data.empty()) : b.mode;
  const bool forward = mode == "forward";
  anvil::Options o = options_for(f, forward ? anvil::Mode::Forward : anvil::Mode::Train);
  o.input_grad = b.input_grad;
  const bool cuda = o.device == Device::Cuda;
  const std::string gpu = cuda ? anvil::cuda_device_name() : "none";
  const std::string cudnn = cuda ? anvil::cudnn_version() : "none";
  std::printf("command: %s\n", shown(command_line).c_str());
  std::printf("device: %s (%s), cuDNN %s, precision %s, mode %s, CUDA graph %s, fusion %s\n",
              anvil::to_string(o.device), gpu.c_str(), cudnn.c_str(), anvil::to_string(net.precision()), mode.c_str(),
              o.cuda_graph && cuda ? "on" : "off", o.fuse && net.fuse() && cuda ? "on" : "off");
  const size_t used_before = cuda ? anvil::device_memory_used() : 0;
  anvil::Engine engine(net, o);
  // With --data, each step takes its minibatch from the dataset, as `anvil train --data` does.
  std::optional<anvil::Dataset> data;
  if (!b.data.empty()) {
    data.emplace(load_dataset(b.data, net));
    anvil::DataOptions options;
    options.device_budget = data_budget(b.data_budget_mib, b.budget_given);
    engine.attach_data(*data, options);
    std::printf("data: %s, %lld samples, %s\n", shown(b.data).c_str(), static_cast<long long>(data->size()),
                where_the_data_is(engine));
  }
  print_notices();
  stop_if_stdout_failed();
  const size_t used = cuda ? anvil::device_memory_used() - used_before : engine.device_bytes();

  int64_t epoch = 0, batch_in_epoch = 0;
  auto next_epoch_if_done = [&] {  // outside the timed work: one upload of the order per epoch
    if (data && batch_in_epoch == engine.batches_per_epoch()) engine.start_epoch(++epoch), batch_in_epoch = 0;
  };
  auto work = [&] {
    if (forward)
      engine.enqueue_forward();
    else if (mode == "fwdbwd")
      engine.enqueue_gradients();
    else
      engine.enqueue_train_step(), ++batch_in_epoch;
  };
  for (int i = 0; i < b.warmup; ++i) next_epoch_if_done(), work();
  engine.synchronize();
  std::vector<double> times;
  times.reserve(static_cast<size_t>(b.iters));  // before the timed work: no reallocation inside it
  for (int i = 0; i < b.iters; ++i) {
    next_epoch_if_done();
    times.push_back(engine.time_ms(work));
  }
  double mean = 0;
  for (double v : times) mean += v / times.size();
  std::sort(times.begin(), times.end());  // for the percentiles, min and max
  const double median = percentile(times, 0.5), p99 = percentile(times, 0.99);
  const double batch = static_cast<double>(net.input_shape()[0]);
  std::printf("%d iterations after %d warm-up: min %.4f  median %.4f  mean %.4f  p99 %.4f  max %.4f ms\n", b.iters,
              b.warmup, times.front(), median, mean, p99, times.back());
  std::printf("throughput: %.1f samples/s (batch %.0f)\n", batch / (median / 1e3), batch);
  std::printf("arena %s; device memory used by the engine %s\n", mib(engine.device_bytes()).c_str(), mib(used).c_str());

  const auto layers = engine.profile_layers();
  std::printf("\n%-44s %12s %12s\n", "layer (alone, median of 5 runs)", "forward ms", "backward ms");
  for (const auto& l : layers) std::printf("%-44s %12.4f %12.4f\n", l.layer.c_str(), l.forward_ms, l.backward_ms);

  if (!b.json.empty()) {
    nlohmann::json j = {
        {"command", command_line},
        {"gpu", gpu},
        {"cudnn_version", cudnn},
        {"precision", anvil::to_string(net.precision())},
        {"device", anvil::to_string(o.device)},
        {"mode", mode},
        {"iters", b.iters},
        {"warmup", b.warmup},
        {"cuda_graph", o.cuda_graph && cuda},
        {"fuse", o.fuse && net.fuse() && cuda},
        {"batch", net.input_shape()[0]},
        {"ms", {{"min", times.front()}, {"median", median}, {"mean", mean}, {"p99", p99}, {"max", times.back()}}},
        {"samples_per_s", batch / (median / 1e3)},
        {"arena_bytes", engine.device_bytes()},
        {"device_bytes_used", used},
        {"data", b.data},
        {"data_on_device", engine.data_on_device()},
        {"result", "PASSED"}};
    for (const auto& l : layers)
      j["layers"].push_back({{"name", l.layer}, {"forward_ms", l.forward_ms}, {"backward_ms", l.backward_ms}});
    // Bytes that are not UTF-8 (a path, a name) become U+FFFD rather than fail the run's end.
    const std::string text = j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    anvil::write_output_file(b.json,
                             [&](std::FILE* f) { return std::fwrite(text.data(), 1, text.size(), f) == text.size(); });
    std::printf("wrote %s\n", shown(b.json).c_str());
  }
  std::printf("PASSED\n");
  return 0;
}

// A full disk or a closed file under stdout must not pass for success: rc 0 becomes 1. A run that
// said its error line already (an output through /dev/stdout says the same failure) says no other.
int with_stdout_checked(int rc) {
  if (error_said) return rc;
  const std::string failure = stdout_failure();
  if (failure.empty()) return rc;
  say_error(failure);
  return rc == 0 ? 1 : rc;
}

// A closed standard descriptor would go to the next file anvil opens (a
// --metrics file would take the progress text), so each is reopened on
// /dev/null first. A closed stdout is then an error before any work, as a
// failed write to it is after. False: stdout was closed.
bool open_standard_descriptors() {
  bool closed[3];
  for (int fd = 0; fd < 3; ++fd) closed[fd] = ::fcntl(fd, F_GETFD) == -1 && errno == EBADF;
  for (int fd = 0; fd < 3; ++fd)
    if (closed[fd] && ::open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd) {  // the lowest free fd
      say_error("a standard descriptor is closed and /dev/null cannot take its place");
      return false;
    }
  if (!closed[STDOUT_FILENO]) return true;
  say_error("the standard output is closed");
  return false;
}

// Whether opt is an on/off flag (--check-finite), which takes true or false: a flag (no value
// expected) whose value may be given. --help is CLI11's own, made before the defaults.
bool on_off_flag(const CLI::App& app, const CLI::Option& opt) {
  return opt.get_expected_max() == 0 && !opt.get_disable_flag_override() && &opt != app.get_help_ptr();
}

// A flag written with a value (--no-shuffle=false, --force=): CLI11 reads an empty value as the
// flag given, and refuses another value in its own words. Either is refused here, naming the
// flag; the on/off flags (--check-finite) take true or false through on_or_off.
std::optional<std::string> flag_value_error(CLI::App& app, int argc, char** argv) {
  std::vector<CLI::App*> apps = app.get_subcommands([](CLI::App*) { return true; });
  apps.push_back(&app);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") break;  // positional words follow
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) continue;
    const std::string name = arg.substr(0, eq);
    for (CLI::App* a : apps) {
      const CLI::Option* opt = a->get_option_no_throw(name);
      if (opt == nullptr || opt->get_expected_max() > 0) continue;  // not a flag: its value is checked after
      if (on_off_flag(*a, *opt)) {
        if (eq + 1 < arg.size()) break;
        return name + ": an empty value (give true or false)";
      }
      return name + " takes no value, got '" + shown(arg) + "'";
    }
  }
  return std::nullopt;
}

// An on/off flag given both ways (--check-finite --no-check-finite), which CLI11 settles quietly by
// the last. CLI11 hands a negated name's value already turned over, so the words say which way.
std::optional<std::string> contradicting_flag_error(const CLI::App& app) {
  for (const CLI::App* sub : app.get_subcommands())
    for (const CLI::Option* opt : sub->get_options()) {
      if (!on_off_flag(*sub, *opt)) continue;
      bool on = false, off = false;
      for (const std::string& value : opt->results()) (on_or_off_word(value).value_or(true) ? on : off) = true;
      if (!(on && off)) continue;
      std::string names;  // both forms, as either may have been typed: --check-finite/--no-check-finite
      for (const std::string& name : opt->get_lnames()) names += (names.empty() ? "--" : "/--") + name;
      return names + ": given both on and off (give it once)";
    }
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  if (!open_standard_descriptors()) return 1;
  // A write past the file size limit (ulimit -f) fails with EFBIG and is
  // reported like a full disk, rather than ending the process by SIGXFSZ.
  std::signal(SIGXFSZ, SIG_IGN);
  // Likewise a write to a pipe whose reader went away: an error (training stops and checkpoints).
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"anvil: train and run neural networks described in JSON, on cuDNN or the CPU reference"};
  app.option_defaults()->disable_flag_override();  // --input-grad=5 is an error, not a quiet "true"
  app.require_subcommand(1);
  app.set_version_flag("--version", anvil::build_info);  // handled before the subcommand is required

  CommonFlags info_flags, run_flags, train_flags;
  std::string info_mode;  // empty: not given (cmd_info picks)
  auto* info = app.add_subcommand("info", "print layers, shapes, parameters, fusion groups and the memory plan");
  add_common(info, info_flags);
  info->add_option("--mode", info_mode,
                   "plan for train or forward (default: train; forward for a network without parameters)")
      ->check(CLI::IsMember({"train", "forward"}));
  bool info_input_grad = false, info_check_finite = true;
  info->add_flag("--input-grad", info_input_grad, "plan training with d(loss)/d(input) too, as train --input-grad");
  info->add_flag("--check-finite,!--no-check-finite", info_check_finite,
                 "plan training with room for train's --check-finite (default on, as train's; --mode train only)")
      ->disable_flag_override(false)
      ->check(on_or_off());

  std::string weights, input, output;
  auto* run = app.add_subcommand("run", "run the forward pass");
  add_common(run, run_flags);
  run->add_option("--weights", weights, "parameters (safetensors, PyTorch names)");
  run->add_option("--input", input, "safetensors file holding the tensor 'input' (default: seeded generator)");
  run->add_option("--output", output, "write the tensor 'output' here (safetensors)");

  TrainFlags train_opts;
  auto* train = app.add_subcommand("train", "train over a dataset or a generated batch, with a progress display");
  add_common(train, train_flags);
  train->add_option("--steps", train_opts.steps, "number of optimizer steps (or --epochs)")
      ->transform(whole_number(kMaxCount));
  train->add_option("--epochs", train_opts.epochs, "passes over --data (or --steps)")
      ->transform(whole_number(kMaxCount));
  train->add_option("--data", train_opts.data,
                    "dataset: safetensors with 'input' [S, sample...] and 'target' [S, output...] (default: one "
                    "generated batch)");
  train->add_option("--val", train_opts.val,
                    "validation dataset: its mean loss every --val-every steps and at the end (not finite: exit 3)");
  train->add_option("--val-every", train_opts.val_every, "validate every N steps (default: only at the end)")
      ->transform(whole_number(kMaxCount));
  train->add_option("--batch", train_opts.batch, "batch size (default: the network's input batch)")
      ->transform(whole_number(anvil::kMaxDimension));
  train->add_flag("--no-shuffle", train_opts.no_shuffle, "take each epoch in file order (default: a seeded shuffle)");
  train->add_flag("--keep-last", train_opts.keep_last,
                  "also train on the last partial batch of each epoch (default: it is dropped)");
  train
      ->add_option("--data-budget", train_opts.data_budget_mib,
                   "MiB of device memory the dataset may take (default: half the free memory)")
      ->check(decimal_number());
  train->add_option("--weights", train_opts.weights, "initial parameters (safetensors)");
  train->add_flag("--strict", train_opts.strict, "refuse weights files with tensors the network does not use");
  train->add_option("--checkpoint", train_opts.checkpoint,
                    "checkpoint file, written at the end, every --checkpoint-every steps and on SIGINT/SIGTERM");
  train
      ->add_option("--checkpoint-every", train_opts.checkpoint_every,
                   "write --checkpoint every N steps (default 0: only at the end)")
      ->transform(whole_number(kMaxCount));
  train->add_option("--resume", train_opts.resume, "continue from a checkpoint of this network");
  train->add_option("--log-every", train_opts.log_every, "read the loss and report every N steps (default 10)")
      ->transform(whole_number(kMaxCount));
  train->add_option("--metrics", train_opts.metrics, "append one JSON line per logged step to this file");
  train->add_option("--save", train_opts.save, "write the parameters after training (safetensors)");
  train->add_option("--dump-grads", train_opts.dump_grads, "write the gradients of the last step (safetensors)");
  train->add_flag("--no-graph", train_flags.no_graph, "do not capture the step as a CUDA graph");
  train->add_option("--gpus", train_opts.gpus,
                    "data parallel over GPUs through NCCL: a count (the first K) or ids such as 0,2; the batch is "
                    "the global one");
  train->add_option("--ranks", train_opts.ranks, "data parallel on the CPU: K in-process ranks (--device cpu)")
      ->transform(whole_number(1024));
  train
      ->add_flag("--check-finite,!--no-check-finite", train_opts.check_finite,
                 "look for NaN and Inf every --log-every steps and before any write; on one, name the step and "
                 "where it starts, exit 3 (default on; off, a non-finite logged or validation loss still ends the run "
                 "with exit 3)")
      ->disable_flag_override(false)  // --check-finite=false reads as meant
      ->check(on_or_off());
  train->add_flag("--input-grad", train_opts.input_grad,
                  "also compute d(loss)/d(input); --dump-grads writes it as grad.input");

  CommonFlags eval_flags;
  std::string eval_weights, eval_data;
  int64_t eval_batch = 0;
  bool eval_strict = false;
  auto* eval = app.add_subcommand("eval", "the mean loss over a dataset");
  add_common(eval, eval_flags);
  eval->add_option("--data", eval_data, "dataset (safetensors with 'input' and 'target')")->required();
  eval->add_option("--weights", eval_weights, "parameters (safetensors, PyTorch names)");
  eval->add_option("--batch", eval_batch, "batch size (default: the network's)")
      ->transform(whole_number(anvil::kMaxDimension));
  eval->add_flag("--strict", eval_strict, "refuse weights files with tensors the network does not use");

  CommonFlags bench_flags;
  BenchFlags bench_opts;
  auto* bench = app.add_subcommand("bench", "time forward, fwd+bwd or train steps; per-layer breakdown; JSON export");
  add_common(bench, bench_flags);
  bench
      ->add_option("--mode", bench_opts.mode,
                   "forward, fwdbwd or train (forward + loss + backward + the network's optimizer; the default, "
                   "but forward for a network without parameters)")
      ->check(CLI::IsMember({"forward", "fwdbwd", "train"}));
  bench->add_option("--iters", bench_opts.iters, "timed iterations (default 50, at most 10000000: each time is kept)")
      ->transform(whole_number(kMaxBenchIters));
  bench->add_option("--warmup", bench_opts.warmup, "untimed warm-up iterations (default 10)")
      ->transform(whole_number(kMaxInt));
  bench->add_option("--batch", bench_opts.batch, "batch size of the timed engine (default: the network's input batch)")
      ->transform(whole_number(anvil::kMaxDimension));
  bench->add_option("--json", bench_opts.json, "write every timing to this JSON file");
  bench->add_flag("--no-graph", bench_flags.no_graph, "do not replay CUDA graphs");
  bench->add_flag("--input-grad", bench_opts.input_grad,
                  "fwdbwd and train steps also compute d(loss)/d(input), as train --input-grad (what a network "
                  "without parameters trains)");
  bench->add_option("--data", bench_opts.data, "train steps take their batches from this dataset (--mode train)");
  bench
      ->add_option("--data-budget", bench_opts.data_budget_mib,
                   "MiB of device memory the dataset may take (default: half the free memory; 0: host memory)")
      ->check(decimal_number());

  // An empty value ("--save ''") would read as not given: refuse it where a value is taken.
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
    for (CLI::Option* opt : sub->get_options([](CLI::Option* o) { return o->get_expected_max() > 0; }))
      opt->check(CLI::Validator([](std::string& text) { return text.empty() ? "an empty value" : ""; }, ""));

  std::string command_line = "anvil";
  for (int i = 1; i < argc; ++i) command_line += std::string(" ") + argv[i];
  if (const auto error = flag_value_error(app, argc, argv)) {
    say_error(*error);
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 answers --version before it looks at the other words: any other is stray.
    if (e.get_name() == "CallForVersion")
      for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]) != "--version") {
          say_error("--version takes no other arguments, got '" + shown(argv[i]) + "'");
          return 2;
        }
    // CLI11 says only "A subcommand is required", even where a word was given in its place.
    if (e.get_name() == "RequiredError" && app.get_subcommands().empty()) {
      const std::vector<CLI::App*> subs = app.get_subcommands([](CLI::App*) { return true; });
      std::string names;
      for (size_t i = 0; i < subs.size(); ++i)
        names += (i == 0 ? "" : i + 1 == subs.size() ? " or " : ", ") + subs[i]->get_name();
      const std::vector<std::string> stray = app.remaining();
      say_error(
          (stray.empty() ? std::string("a subcommand is required") : "'" + shown(stray[0]) + "' is not a subcommand") +
          " (give " + names + ")");
      return 2;
    }
    if (e.get_exit_code() == 0) {  // --help, --version: through stdio, where a failed write is seen
      std::ostringstream text;
      const int rc = app.exit(e, text, std::cerr);
      std::fputs(text.str().c_str(), stdout);
      return with_stdout_checked(rc);
    }
    say_error(anvil::Error::one_line(e.what()));  // one line, as every error
    return 2;
  }
  if (const auto error = contradicting_flag_error(app)) {
    say_error(*error);
    return 2;
  }
  const int rc = [&]() -> int {
    try {
      if (*info)
        return cmd_info(info_flags, info_mode, info_input_grad, info_check_finite,
                        info_check_finite && info->count("--check-finite") > 0);
      if (*run) return cmd_run(run_flags, weights, input, output);
      train_opts.steps_given = train->count("--steps") > 0;
      train_opts.epochs_given = train->count("--epochs") > 0;
      train_opts.batch_given = train->count("--batch") > 0;
      train_opts.budget_given = train->count("--data-budget") > 0;
      train_opts.ranks_given = train->count("--ranks") > 0;
      bench_opts.batch_given = bench->count("--batch") > 0;
      bench_opts.budget_given = bench->count("--data-budget") > 0;
      if (*train) return cmd_train(train_flags, train_opts);
      if (*eval)
        return cmd_eval(eval_flags, eval_weights, eval_data, eval_batch, eval->count("--batch") > 0, eval_strict);
      if (*bench) return cmd_bench(bench_flags, bench_opts, command_line);
    } catch (const anvil::InputError& e) {
      say_error(e.what());
      if (*bench) std::printf("FAILED\n");
      return 2;
    } catch (const anvil::NonFiniteError& e) {
      say_error(e.what() + (weights_notice.empty() ? "" : "; " + weights_notice));  // not printed yet
      return 3;
    } catch (const std::bad_alloc&) {
      say_error("out of host memory");
      if (*bench) std::printf("FAILED\n");
      return 1;
    } catch (const std::exception& e) {
      say_error(anvil::Error::one_line(e.what()));
      if (*bench) std::printf("FAILED\n");
      return 1;
    } catch (...) {  // nothing may end the process without a message
      say_error("an unknown exception");
      if (*bench) std::printf("FAILED\n");
      return 1;
    }
    return 1;
  }();
  return with_stdout_checked(rc);
}
