// Tests of the command-line tool (tools/anvil.cpp), run as a separate process.
//
// Exit codes: 0 success, 2 bad input (network, tensors, flags), 1 runtime
// failure. Errors are one line on stderr. Numbers that training and the
// forward pass produce are compared with the PyTorch references in
// tests/data (see tests/data/README.md), never with anvil's own output.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "tests/child_process.hpp"
#include "tests/cli_run.hpp"
#include "tests/sanitizers.hpp"
#include "tests/contains.hpp"
#include "tests/fifo_reader.hpp"
#include "tests/temp_dir_test.hpp"
#include "anvil/engine.hpp"
#include "anvil/network.hpp"
#include "anvil/safetensors.hpp"
#include "anvil/version.hpp"

namespace {

using anvil::testing::CliResult;
using anvil::testing::Contains;
using anvil::testing::describe;
using anvil::testing::lines_of;
using anvil::testing::quote;
using anvil::testing::read_text;

namespace fs = std::filesystem;

const std::string kData = ANVIL_TEST_DATA_DIR;
const std::string kSmall = kData + "/kb74_small.json";
const std::string kSmallRef = kData + "/kb74_small.safetensors";
const std::string kHeadline = std::string(ANVIL_SOURCE_DIR) + "/examples/kernelbench74.json";

void expect_close(const anvil::HostTensor& got, const anvil::HostTensor& want, double rtol, const std::string& what) {
  ASSERT_EQ(got.shape, want.shape) << what;
  int misses = 0;
  for (size_t i = 0; i < want.data.size() && misses < 5; ++i) {
    const double tol = rtol * std::max(1.0, std::fabs(static_cast<double>(want.data[i])));
    if (!(std::fabs(static_cast<double>(got.data[i]) - want.data[i]) <= tol)) {
      ADD_FAILURE() << what << "[" << i << "]: got " << got.data[i] << ", want " << want.data[i];
      ++misses;
    }
  }
}

class Cli : public anvil::testing::TempDirTest {
 protected:
  // Runs the CLI with `args` (already quoted where needed), capturing stdout and stderr separately.
  // env: assignments for the child, e.g. "CUDA_VISIBLE_DEVICES=" (no GPU visible to it).
  CliResult run(const std::string& args, const std::string& env = "") const {
    return anvil::testing::run_cli(args, path(".stderr"), env);
  }

  std::string write_file(const std::string& name, const std::string& text) const {
    const std::string p = path(name);
    std::ofstream out(p, std::ios::binary);
    out << text;
    return p;
  }
};

// ---------------------------------------------------------------- usage

TEST_F(Cli, HelpExitsZero) {
  const CliResult top = run("--help");
  EXPECT_EQ(top.status, 0) << describe(top);
  for (const char* sub : {"info", "run", "train"}) EXPECT_PRED_FORMAT2(Contains, top.out, sub);

  const CliResult info = run("info --help");
  EXPECT_EQ(info.status, 0) << describe(info);
  for (const char* flag : {"--device", "--mode", "--no-fuse", "--nondeterministic"})
    EXPECT_PRED_FORMAT2(Contains, info.out, flag);

  const CliResult train = run("train --help");
  EXPECT_EQ(train.status, 0) << describe(train);
  for (const char* flag : {"--steps", "--save", "--dump-grads", "--data", "--weights"})
    EXPECT_PRED_FORMAT2(Contains, train.out, flag);
}

TEST_F(Cli, UsageErrorsExitTwo) {
  EXPECT_EQ(run("").status, 2);
  EXPECT_EQ(run("frobnicate").status, 2);
  EXPECT_EQ(run("info").status, 2);  // the network is required
  EXPECT_EQ(run("info " + quote(kSmall) + " --bogus").status, 2);
  EXPECT_EQ(run("info " + quote(kSmall) + " --device tpu").status, 2);
  EXPECT_EQ(run("info " + quote(kSmall) + " --device cpu --mode backward").status, 2);
  EXPECT_EQ(run("train " + quote(kSmall) + " --device cpu").status, 2);  // --steps is required
}

// A word where the subcommand goes is named, with the subcommands, in one line
// (CLI11 alone said only "A subcommand is required").
TEST_F(Cli, AnUnknownSubcommandIsNamed) {
  const std::string list = " (give info, run, train, eval or bench)";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"frobnicate", "'frobnicate' is not a subcommand" + list},
      {"frobnicate " + quote(kSmall) + " --device cpu", "'frobnicate' is not a subcommand" + list},
      {"--bogus", "'--bogus' is not a subcommand" + list},
      {"", "a subcommand is required" + list},
  };
  for (const auto& [args, message] : cases) {
    const CliResult r = run(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << describe(r);
    EXPECT_EQ(r.err, "anvil: error: " + message + "\n") << args;
    EXPECT_EQ(r.out, "") << args;
  }
}

TEST_F(Cli, VersionNamesTheVersionAndTheCommit) {
  const CliResult r = run("--version");  // no subcommand needed
  ASSERT_EQ(r.status, 0) << describe(r);
  const std::vector<std::string> lines = lines_of(r.out);
  ASSERT_FALSE(lines.empty()) << describe(r);
  const std::string prefix = std::string("anvil ") + ANVIL_VERSION_STRING + " (commit ";
  ASSERT_EQ(lines[0].substr(0, prefix.size()), prefix) << r.out;
  EXPECT_TRUE(std::regex_match(lines[0].substr(prefix.size()), std::regex(R"(([0-9a-f]{7,}(-dirty)?|unknown)\))")))
      << lines[0];
  EXPECT_STREQ(anvil::version(), ANVIL_VERSION_STRING);  // the library matches its header
#if ANVIL_WITH_CUDA
  ASSERT_EQ(lines.size(), 2u) << r.out;
  EXPECT_TRUE(std::regex_match(lines[1], std::regex(R"(CUDA runtime \d+\.\d+ \(built with \d+\.\d+\), )"
                                                    R"(cuDNN \d+\.\d+\.\d+ \(built with \d+\.\d+\.\d+\))")))
      << lines[1];
#else
  EXPECT_EQ(lines.size(), 1u) << r.out;
#endif
}

// --version stands alone: another word beside it is refused in one line, as a
// stray word is elsewhere, not ignored.
TEST_F(Cli, VersionWithAnotherArgumentIsRefused) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--version extra", "extra"},
      {"extra --version", "extra"},
      {"--version info " + quote(kSmall), "info"},
      {"--version --device cpu", "--device"},
  };
  for (const auto& [args, word] : cases) {
    const CliResult r = run(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << describe(r);
    EXPECT_EQ(r.err, "anvil: error: --version takes no other arguments, got '" + word + "'\n") << args;
    EXPECT_EQ(r.out, "") << args;
  }
}

// ---------------------------------------------------------------- info

TEST_F(Cli, InfoDescribesTheHeadlineNetwork) {
  const CliResult r = run("info " + quote(kHeadline) + " --device cpu");
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_EQ(r.err, "");
  for (const char* layer : {"conv_transpose", "leaky_relu_1", "multiplier", "leaky_relu_3", "max_pool3d_4"})
    EXPECT_PRED_FORMAT2(Contains, r.out, layer);
  for (const char* word : {"fusion", "arena", "conv_transpose3d", "channel_scale"})
    EXPECT_PRED_FORMAT2(Contains, r.out, word);
  if (ANVIL_WITH_CUDA)
    EXPECT_PRED_FORMAT2(Contains, r.out,
                        "merge conv_transpose + leaky_relu_1 + multiplier + leaky_relu_3 + max_pool3d_4");
  else
    EXPECT_PRED_FORMAT2(Contains, r.out, "fusion (CUDA backend): none, anvil was built without CUDA");
  EXPECT_PRED_FORMAT2(Contains, r.out, "output (16, 32, 16, 32, 32)");
  EXPECT_PRED_FORMAT2(Contains, r.out, "total parameters: " + std::to_string(16 * 32 * 27 + 32 + 32));
  // The plan lists the tensors of the training schedule.
  for (const char* tensor : {"act.input", "grad.conv_transpose", "target", "loss"})
    EXPECT_PRED_FORMAT2(Contains, r.out, tensor);
}

double arena_mib(const std::string& info_output) {
  const std::string key = "arena (one allocation): ";
  const size_t at = info_output.find(key);
  if (at == std::string::npos) return -1;
  return std::atof(info_output.c_str() + at + key.size());
}

TEST_F(Cli, InfoForwardPlanIsSmallerThanTrainPlan) {
  const CliResult train = run("info " + quote(kHeadline) + " --device cpu");
  const CliResult forward = run("info " + quote(kHeadline) + " --device cpu --mode forward");
  ASSERT_EQ(train.status, 0) << describe(train);
  ASSERT_EQ(forward.status, 0) << describe(forward);
  const double t = arena_mib(train.out), f = arena_mib(forward.out);
  ASSERT_GT(t, 0) << train.out;
  ASSERT_GT(f, 0) << forward.out;
  EXPECT_LT(f, t);
  EXPECT_EQ(forward.out.find("grad."), std::string::npos) << "a forward plan has no gradients";
  // The numbers agree with the library's plan: training as `anvil train` plans it by default, with
  // room for --check-finite; without it (--no-check-finite), smaller.
  const CliResult unchecked = run("info " + quote(kHeadline) + " --device cpu --no-check-finite");
  ASSERT_EQ(unchecked.status, 0) << describe(unchecked);
  anvil::Options o;
  o.device = anvil::Device::Cpu;
  o.plan_only = true;
  for (const bool check_finite : {true, false}) {
    o.check_finite = check_finite;
    const anvil::Engine engine(anvil::Network::load(kHeadline), o);
    EXPECT_NEAR(check_finite ? t : arena_mib(unchecked.out),
                static_cast<double>(engine.plan().arena_bytes()) / (1 << 20),
                0.051);  // printed with one decimal
  }
  EXPECT_LT(arena_mib(unchecked.out), t);
  const CliResult forward_checked = run("info " + quote(kHeadline) + " --device cpu --mode forward --check-finite");
  EXPECT_EQ(forward_checked.status, 2) << describe(forward_checked);
  EXPECT_EQ(forward_checked.err, "anvil: error: --check-finite needs --mode train\n");
  EXPECT_EQ(unchecked.out.find("good copy"), std::string::npos);
  EXPECT_PRED_FORMAT2(Contains, train.out, "and for --check-finite a good copy of the params and the state");
}

// The arena `anvil info` plans is the one `anvil train` allocates, with and without --check-finite.
TEST_F(Cli, InfoPlansTheArenaTrainAllocates) {
  const std::string net = quote(anvil::testing::data_path("dataset_epochs.json"));
  for (const std::string flag : {"", " --no-check-finite"}) {
    const CliResult info = run("info " + net + " --device cpu" + flag);
    const CliResult train = run("train " + net + " --device cpu --steps 1" + flag);
    ASSERT_EQ(info.status, 0) << describe(info);
    ASSERT_EQ(train.status, 0) << describe(train);
    char planned[32];
    std::snprintf(planned, sizeof planned, ", %.1f MiB arena", arena_mib(info.out));
    EXPECT_PRED_FORMAT2(Contains, train.out, planned) << flag;
  }
}

// A network without parameters has nothing to train, but the input's gradient: info describes
// its forward pass without being asked (it once refused, wanting --mode forward), plans training
// with --input-grad, as train computes it, and says how when --mode train leaves that out.
TEST_F(Cli, InfoOfANetworkWithoutParametersPlansForwardOrTheInputGradient) {
  const std::string p = write_file("pool.json", R"({"name": "pool", "input": [2, 3, 5, 5], "layers": [
    {"type": "max_pool2d", "kernel_size": 3, "stride": 1, "padding": 1}, {"type": "relu"}]})");
  const CliResult plain = run("info " + quote(p) + " --device cpu");
  ASSERT_EQ(plain.status, 0) << describe(plain);
  EXPECT_EQ(plain.err, "");
  EXPECT_PRED_FORMAT2(Contains, plain.out, "total parameters: 0");
  EXPECT_PRED_FORMAT2(Contains, plain.out, "memory plan (cpu, forward)");
  const std::string nothing_to_train = "anvil: error: " + p +
                                       ": the network has no parameters, so there is nothing "
                                       "to train (with the input's gradient, --input-grad, there is)\n";
  for (const std::string& args : {"info " + quote(p) + " --mode train", "train " + quote(p) + " --steps 1"}) {
    const CliResult trained = run(args + " --device cpu");
    EXPECT_EQ(trained.status, 2) << describe(trained);
    EXPECT_EQ(trained.err, nothing_to_train) << args;
  }
  const CliResult planned = run("info " + quote(p) + " --device cpu --input-grad");
  ASSERT_EQ(planned.status, 0) << describe(planned);
  EXPECT_PRED_FORMAT2(Contains, planned.out, "grad.input");
  const CliResult forward = run("info " + quote(p) + " --device cpu --mode forward --input-grad");
  EXPECT_EQ(forward.status, 2) << describe(forward);
  EXPECT_EQ(forward.err, "anvil: error: --input-grad needs --mode train\n");
}

// A forward-only engine computes no gradient (the library refuses Options::input_grad there): each
// command that builds one refuses the training flags in one line, before it reads the network or
// prints anything (a network that does not exist is never looked at). run and eval have no such flag.
TEST_F(Cli, TrainingFlagsForAForwardOnlyEngineAreRefusedBeforeAnyWork) {
  const std::string missing = quote(path("missing.json"));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"info " + missing + " --device cpu --mode forward --input-grad", "--input-grad needs --mode train"},
      {"info " + missing + " --device cpu --mode forward --check-finite", "--check-finite needs --mode train"},
      {"bench " + missing + " --device cpu --mode forward --input-grad", "--input-grad needs --mode fwdbwd or train"},
      {"bench " + missing + " --device cpu --mode forward --data " + quote(kSmallRef), "--data needs --mode train"},
      {"bench " + quote(kSmall) + " --device cpu --mode fwdbwd --data " + quote(kSmallRef),
       "--data needs --mode train"},
      {"run " + quote(kSmall) + " --device cpu --input-grad", "The following argument was not expected: --input-grad"},
      {"eval " + quote(kSmall) + " --device cpu --data " + quote(kSmallRef) + " --input-grad",
       "The following argument was not expected: --input-grad"},
  };
  for (const auto& [args, message] : cases) {
    const CliResult r = run(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << describe(r);
    EXPECT_EQ(r.err, "anvil: error: " + message + "\n") << args;
    // bench says FAILED on stdout after any error, and nothing before it.
    EXPECT_EQ(r.out, args.rfind("bench", 0) == 0 ? "FAILED\n" : "") << args;
  }
}

TEST_F(Cli, InfoWithFuseFalseSaysTheFusionIsOff) {
  std::string text = read_text(kSmall);
  const size_t brace = text.rfind('}');
  ASSERT_NE(brace, std::string::npos);
  text.insert(brace, ", \"fuse\": false\n");
  const std::string p = write_file("nofuse.json", text);
  const CliResult r = run("info " + quote(p) + " --device cpu");
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_PRED_FORMAT2(Contains, r.out, "turned off by \"fuse\": false");
}

// ---------------------------------------------------------------- bad networks

TEST_F(Cli, InvalidNetworkIsOneLineNamingFileAndJsonPath) {
  const std::string p = write_file("bad.json", R"({"name": "bad", "input": [2, 4, 8, 8, 8], "layers": [
    {"type": "relu"},
    {"type": "max_pool3d", "kernel_size": 2, "stride": -1}]})");
  const CliResult r = run("info " + quote(p) + " --device cpu");
  EXPECT_EQ(r.status, 2) << describe(r);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "anvil: error: " + p + ": layers[1].stride: must be a positive integer, got -1\n");
  // Every subcommand validates the same way.
  const CliResult train = run("train " + quote(p) + " --device cpu --steps 1");
  EXPECT_EQ(train.status, 2) << describe(train);
  EXPECT_EQ(train.err, r.err);
}

TEST_F(Cli, JsonSyntaxErrorIsOneLineWithLineAndColumn) {
  const std::string p =
      write_file("syntax.json", "{\n  \"name\": \"x\",\n  \"input\": [1, 2, 3, 4]\n  \"layers\": []\n}\n");
  const CliResult r = run("run " + quote(p) + " --device cpu");
  EXPECT_EQ(r.status, 2) << describe(r);
  ASSERT_EQ(lines_of(r.err).size(), 1u) << r.err;
  EXPECT_PRED_FORMAT2(Contains, r.err, "anvil: error: " + p + ": invalid JSON: ");
  EXPECT_PRED_FORMAT2(Contains, r.err, "line 4, column");
}

TEST_F(Cli, MissingNetworkFile) {
  const std::string p = path("does_not_exist.json");
  const CliResult r = run("info " + quote(p) + " --device cpu");
  EXPECT_EQ(r.status, 2) << describe(r);
  EXPECT_EQ(r.err, "anvil: error: " + p + ": cannot open the network file: No such file or directory\n");
}

// Under an address-space limit (ulimit -v) a document too large to parse within it is refused in
// one line, exit 2: the parse's memory budget counts the limit. Before, the parse ran into the
// limit and std::bad_alloc reached a JSON tree's destructor, which aborted the process.
TEST_F(Cli, AnAddressSpaceLimitRefusesABigDocumentInOneLine) {
#if defined(ANVIL_UNDER_ASAN)
  GTEST_SKIP() << "AddressSanitizer maps terabytes of shadow memory: it cannot start under ulimit -v";
#endif
  // 36 MB of JSON: 12 million empty objects, some 1.3 GB as a JSON tree.
  std::string text = R"({"name": "x", "input": [1, 2, 4, 4], "layers": [{"type": "relu"}], "extra": [)";
  for (int i = 0; i < 12000000; ++i) text += "{},";
  text += "{}]}";
  const std::string net = write_file("big.json", text);
  text.clear();
  const auto one_gib = [] {
    rlimit limit{};
    ::getrlimit(RLIMIT_AS, &limit);
    limit.rlim_cur = std::min<rlim_t>(limit.rlim_max, rlim_t(1) << 30);
    ::setrlimit(RLIMIT_AS, &limit);
  };
  anvil::testing::Child child({ANVIL_CLI_PATH, "info", net, "--device", "cpu"}, one_gib);
  ASSERT_TRUE(child.started());
  const anvil::testing::Finished r = child.finish(60);
  EXPECT_EQ(r.status, 2) << "signal " << r.signal << "\n" << r.err;
  EXPECT_EQ(lines_of(r.err).size(), 1u) << r.err;
  EXPECT_PRED_FORMAT2(Contains, r.err, "the JSON document would take more memory to hold than the ");
}

// ---------------------------------------------------------------- run

TEST_F(Cli, RunWritesTheOutputTensor) {
  const std::string out = path("out.safetensors");
  const CliResult r = run("run " + quote(kSmall) + " --device cpu --output " + quote(out));
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_PRED_FORMAT2(Contains, r.out, "wrote " + out);
  const anvil::TensorFile file = anvil::read_safetensors(out);
  const anvil::Network net = anvil::Network::load(kSmall);
  ASSERT_EQ(file.tensors.count("output"), 1u);
  EXPECT_EQ(file.tensors.at("output").shape, net.output_shape());
  EXPECT_EQ(file.metadata.count("network") ? file.metadata.at("network") : "", "kb74_small");
  // Without --input and --weights the generator fills input and parameters, as the reference did.
  const anvil::TensorFile ref = anvil::read_safetensors(kSmallRef);
  expect_close(file.tensors.at("output"), ref.tensors.at("output"), 1e-4, "output");
}

TEST_F(Cli, RunUsesTheGivenInput) {
  // A zero input leaves only the bias: every output of channel c is
  // leaky(leaky(bias[c]) * multiplier[c]) with slope 0.2, from the reference parameters.
  const anvil::Network net = anvil::Network::load(kSmall);
  anvil::TensorFile in;
  in.tensors["input"] = anvil::HostTensor(net.input_shape());
  const std::string input = path("zeros.safetensors");
  anvil::write_safetensors(input, in);
  const std::string out = path("out.safetensors");
  const CliResult r = run("run " + quote(kSmall) + " --device cpu --input " + quote(input) + " --output " + quote(out));
  ASSERT_EQ(r.status, 0) << describe(r);
  const anvil::HostTensor y = anvil::read_safetensors(out).tensors.at("output");
  const anvil::TensorFile ref = anvil::read_safetensors(kSmallRef);
  const auto& bias = ref.tensors.at("conv_transpose.bias").data;
  const auto& m = ref.tensors.at("multiplier").data;
  auto leaky = [](double v) { return v > 0 ? v : 0.2 * v; };
  ASSERT_EQ(y.shape, net.output_shape());
  const int64_t channels = y.shape[1], per_channel = anvil::numel(y.shape) / (y.shape[0] * channels);
  for (int64_t i = 0; i < y.size(); i += 7) {
    const int64_t c = (i / per_channel) % channels;
    const double want = leaky(leaky(bias[c]) * m[c]);
    ASSERT_NEAR(y.data[i], want, 1e-5) << "element " << i << ", channel " << c;
  }
}

// An input of NaNs whose sign bit is set gives an output of such NaNs: its summary says "nan", as
// the loss messages do, never "-nan".
TEST_F(Cli, RunSummarisesANanOutputAsNan) {
  const anvil::Network net = anvil::Network::load(kSmall);
  anvil::TensorFile in;
  in.tensors["input"] = anvil::HostTensor(net.input_shape());
  std::fill(in.tensors["input"].data.begin(), in.tensors["input"].data.end(), std::copysign(NAN, -1.f));
  const std::string input = path("nans.safetensors");
  anvil::write_safetensors(input, in);
  const CliResult r = run("run " + quote(kSmall) + " --device cpu --input " + quote(input));
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_PRED_FORMAT2(Contains, r.out, ": mean nan, L2 norm nan (");
}

TEST_F(Cli, RunInputOfTheWrongShapeNamesTensorAndShapes) {
  anvil::TensorFile in;
  in.tensors["input"] = anvil::HostTensor({2, 16, 4, 8, 7});
  const std::string input = path("wrong.safetensors");
  anvil::write_safetensors(input, in);
  const CliResult r = run("run " + quote(kSmall) + " --device cpu --input " + quote(input));
  EXPECT_EQ(r.status, 2) << describe(r);
  EXPECT_EQ(r.err,
            "anvil: error: " + input + ": tensor 'input' has shape (2, 16, 4, 8, 7), expected (2, 16, 4, 8, 8)\n");
}

TEST_F(Cli, RunInputFileWithoutAnInputTensor) {
  anvil::TensorFile in;
  in.tensors["x"] = anvil::HostTensor({2, 16, 4, 8, 8});
  const std::string input = path("noinput.safetensors");
  anvil::write_safetensors(input, in);
  const CliResult r = run("run " + quote(kSmall) + " --device cpu --input " + quote(input));
  EXPECT_EQ(r.status, 2) << describe(r);
  EXPECT_EQ(r.err, "anvil: error: " + input + ": no tensor named 'input'\n");
}

TEST_F(Cli, TruncatedSafetensorsIsBadInput) {
  const anvil::Network net = anvil::Network::load(kSmall);
  anvil::TensorFile in;
  in.tensors["input"] = anvil::HostTensor(net.input_shape());
  const std::string good = path("good.safetensors");
  anvil::write_safetensors(good, in);
  const auto size = fs::file_size(good);
  for (const uintmax_t keep : {uintmax_t(4), uintmax_t(40), size / 2, size - 1}) {
    SCOPED_TRACE("kept " + std::to_string(keep) + " of " + std::to_string(size) + " bytes");
    const std::string bad = path("truncated.safetensors");
    fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
    fs::resize_file(bad, keep);
    const CliResult r = run("run " + quote(kSmall) + " --device cpu --input " + quote(bad));
    EXPECT_EQ(r.status, 2) << describe(r);
    EXPECT_EQ(lines_of(r.err).size(), 1u) << r.err;
    EXPECT_PRED_FORMAT2(Contains, r.err, "anvil: error: " + bad + ": ");
    const CliResult w = run("run " + quote(kSmall) + " --device cpu --weights " + quote(bad));
    EXPECT_EQ(w.status, 2) << describe(w);
  }
}

TEST_F(Cli, WeightsMissingAParameter) {
  anvil::TensorFile ref = anvil::read_safetensors(kSmallRef);
  anvil::TensorFile weights;
  weights.tensors["conv_transpose.weight"] = ref.tensors.at("conv_transpose.weight");
  weights.tensors["conv_transpose.bias"] = ref.tensors.at("conv_transpose.bias");
  const std::string p = path("partial.safetensors");
  anvil::write_safetensors(p, weights);
  const CliResult r = run("run " + quote(kSmall) + " --device cpu --weights " + quote(p));
  EXPECT_EQ(r.status, 2) << describe(r);
  EXPECT_EQ(r.err, "anvil: error: " + p + ": no tensor named 'multiplier'\n");
}

// ---------------------------------------------------------------- train

struct StepLine {
  long step = 0, total = 0;
  double loss = NAN;
};

std::vector<StepLine> step_lines(const std::string& out) {
  std::vector<StepLine> steps;
  for (const auto& line : lines_of(out)) {
    StepLine s;
    if (std::sscanf(line.c_str(), "step %ld/%ld loss %lf", &s.step, &s.total, &s.loss) == 3) steps.push_back(s);
  }
  return steps;
}

TEST_F(Cli, TrainSavesParametersAndGradients) {
  const std::string params = path("params.safetensors"), grads = path("grads.safetensors");
  const CliResult r = run("train " + quote(kSmall) + " --device cpu --steps 3 --log-every 1 --save " + quote(params) +
                          " --dump-grads " + quote(grads));
  ASSERT_EQ(r.status, 0) << describe(r);
  const anvil::TensorFile ref = anvil::read_safetensors(kSmallRef);

  // Not a terminal, --log-every 1: one line per step, "step k/3  loss ...", with PyTorch's losses.
  const auto steps = step_lines(r.out);
  ASSERT_EQ(steps.size(), 3u) << r.out;
  for (size_t i = 0; i < steps.size(); ++i) {
    EXPECT_EQ(steps[i].step, static_cast<long>(i + 1));
    EXPECT_EQ(steps[i].total, 3);
    const double want = ref.tensors.at("losses").data[i];
    EXPECT_NEAR(steps[i].loss, want, 1e-4 * std::max(1.0, std::fabs(want))) << "step " << i + 1;
  }
  EXPECT_PRED_FORMAT2(Contains, r.out, "step 3/3  loss ");

  const std::vector<std::pair<std::string, anvil::Shape>> expected = {
      {"conv_transpose.weight", {16, 32, 3, 3, 3}}, {"conv_transpose.bias", {32}}, {"multiplier", {32, 1, 1, 1}}};
  const anvil::TensorFile p = anvil::read_safetensors(params);
  const anvil::TensorFile g = anvil::read_safetensors(grads);
  EXPECT_EQ(p.tensors.size(), expected.size());
  EXPECT_EQ(g.tensors.size(), expected.size());
  for (const auto& [name, shape] : expected) {
    ASSERT_EQ(p.tensors.count(name), 1u) << name;
    ASSERT_EQ(g.tensors.count(name), 1u) << name;
    EXPECT_EQ(p.tensors.at(name).shape, shape) << name;
    EXPECT_EQ(g.tensors.at(name).shape, shape) << name;
    // After three steps of torch.optim.SGD (lr 0.1, momentum 0.9) on the same input and target.
    expect_close(p.tensors.at(name), ref.tensors.at("after3." + name), 1e-4, name);
    double norm = 0;
    for (float v : g.tensors.at(name).data) {
      ASSERT_TRUE(std::isfinite(v)) << name;
      norm += double(v) * v;
    }
    EXPECT_GT(norm, 0) << "gradient of " << name << " is all zero";
  }
  EXPECT_EQ(p.metadata.count("steps") ? p.metadata.at("steps") : "", "3");
}

TEST_F(Cli, DumpGradsAfterOneStepMatchesPyTorch) {
  const std::string grads = path("grads.safetensors");
  const CliResult r = run("train " + quote(kSmall) + " --device cpu --steps 1 --dump-grads " + quote(grads));
  ASSERT_EQ(r.status, 0) << describe(r);
  const anvil::TensorFile ref = anvil::read_safetensors(kSmallRef);
  const anvil::TensorFile g = anvil::read_safetensors(grads);
  for (const char* name : {"conv_transpose.weight", "conv_transpose.bias", "multiplier"}) {
    ASSERT_EQ(g.tensors.count(name), 1u) << name;
    expect_close(g.tensors.at(name), ref.tensors.at(std::string("grad.") + name), 1e-4, name);
  }
}

TEST_F(Cli, TrainDataWithTheWrongTargetShape) {
  const anvil::Network net = anvil::Network::load(kSmall);
  anvil::TensorFile data;
  data.tensors["input"] = anvil::HostTensor(net.input_shape());
  data.tensors["target"] = anvil::HostTensor({2, 32, 4, 8});
  const std::string p = path("data.safetensors");
  anvil::write_safetensors(p, data);
  const CliResult r = run("train " + quote(kSmall) + " --device cpu --steps 1 --data " + quote(p));
  EXPECT_EQ(r.status, 2) << describe(r);
  EXPECT_EQ(r.err, "anvil: error: " + p +
                       ": tensor 'target' has sample shape (32, 4, 8), the network outputs (32, 4, 8, 8)\n");
}

TEST_F(Cli, SaveIntoAMissingDirectoryFailsWithoutCreatingAnything) {
  const std::string missing = path("no_such_dir");
  const std::string target = missing + "/params.safetensors";
  const CliResult r = run("train " + quote(kSmall) + " --device cpu --steps 1 --save " + quote(target));
  EXPECT_EQ(r.status, 2) << describe(r);  // refused before training starts
  EXPECT_EQ(lines_of(r.err).size(), 1u) << r.err;
  EXPECT_PRED_FORMAT2(Contains, r.err, "anvil: error: --save " + target + ": cannot write");
  EXPECT_EQ(step_lines(r.out).size(), 0u);
  EXPECT_FALSE(fs::exists(missing));
  // Nothing else appeared next to it either (only the CLI's own stderr capture, already removed).
  EXPECT_TRUE(fs::is_empty(dir_)) << "the temporary directory is not empty";
}

TEST_F(Cli, BenchReportsStatisticsLayersAndJson) {
  const std::string json_path = path("bench.json");
  const CliResult r =
      run("bench " + quote(kSmall) + " --device cpu --mode train --iters 4 --warmup 1 --json " + quote(json_path));
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_PRED_FORMAT2(Contains, r.out, "command: anvil bench");
  EXPECT_PRED_FORMAT2(Contains, r.out, "4 iterations after 1 warm-up");
  EXPECT_PRED_FORMAT2(Contains, r.out, "conv_transpose");
  EXPECT_EQ(r.out.substr(r.out.size() - 7), "PASSED\n");
  const nlohmann::json j = nlohmann::json::parse(read_text(json_path));
  const auto& ms = j.at("ms");
  EXPECT_LE(ms.at("min").get<double>(), ms.at("median").get<double>());
  EXPECT_LE(ms.at("median").get<double>(), ms.at("max").get<double>());
  EXPECT_GT(ms.at("min").get<double>(), 0.0);
  EXPECT_EQ(j.at("iters"), 4);
  EXPECT_EQ(j.at("layers").size(), 5u);  // unfused on the CPU
  for (const auto& l : j.at("layers")) EXPECT_GT(l.at("backward_ms").get<double>(), 0.0) << l.dump();
  EXPECT_EQ(j.at("result"), "PASSED");
}

TEST_F(Cli, BenchRejectsBadCounts) {
  const CliResult r = run("bench " + quote(kSmall) + " --device cpu --iters 0");
  EXPECT_EQ(r.status, 2) << describe(r);
  EXPECT_EQ(r.err, "anvil: error: --iters: must be a positive integer, got 0\n");
  EXPECT_PRED_FORMAT2(Contains, r.out, "FAILED");
}

// --batch and --precision time the network at another input batch and precision than its JSON's
// (kb74_small: batch 2, tf32 by default), and the header, the throughput line and the JSON say so.
TEST_F(Cli, BenchBatchAndPrecisionOverrideTheNetwork) {
  const std::string bench = "bench " + quote(kSmall) + " --device cpu --mode forward --iters 2 --warmup 0 ";
  const std::string plain_json = path("plain.json"), json_path = path("bench.json");
  const CliResult plain = run(bench + "--json " + quote(plain_json));
  ASSERT_EQ(plain.status, 0) << describe(plain);
  EXPECT_PRED_FORMAT2(Contains, plain.out, ", precision tf32, mode forward, ");
  EXPECT_PRED_FORMAT2(Contains, plain.out, " samples/s (batch 2)\n");

  const CliResult r = run(bench + "--batch 3 --precision fp32 --json " + quote(json_path));
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_PRED_FORMAT2(Contains, r.out, ", precision fp32, mode forward, ");
  EXPECT_PRED_FORMAT2(Contains, r.out, " samples/s (batch 3)\n");
  const nlohmann::json j = nlohmann::json::parse(read_text(json_path));
  const nlohmann::json p = nlohmann::json::parse(read_text(plain_json));
  EXPECT_EQ(j.at("batch"), 3);
  EXPECT_EQ(j.at("precision"), "fp32");
  EXPECT_EQ(p.at("batch"), 2);
  EXPECT_EQ(p.at("precision"), "tf32");
  // The engine itself was built at batch 3, not only the numbers printed: its activations are larger.
  EXPECT_GT(j.at("arena_bytes").get<size_t>(), p.at("arena_bytes").get<size_t>());

  // And the other way: tf32 over a network whose JSON says fp32, in a train step.
  nlohmann::json fp32_net = nlohmann::json::parse(read_text(kSmall));
  fp32_net["precision"] = "fp32";
  const std::string net = write_file("fp32.json", fp32_net.dump());
  const CliResult t = run("bench " + quote(net) + " --device cpu --iters 2 --warmup 0 --precision tf32 --batch 1");
  ASSERT_EQ(t.status, 0) << describe(t);
  EXPECT_PRED_FORMAT2(Contains, t.out, ", precision tf32, mode train, ");
  EXPECT_PRED_FORMAT2(Contains, t.out, " samples/s (batch 1)\n");
}

// Bad values are one line naming the flag, exit 2, before any timing (as train's --batch).
TEST_F(Cli, BenchRefusesABadBatchOrPrecisionInOneLine) {
  const std::string bench = "bench " + quote(kSmall) + " --device cpu --iters 2 --warmup 0 ";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--batch 0", "anvil: error: --batch: must be a positive integer, got 0\n"},
      {"--batch=-2", "anvil: error: --batch: must be a positive integer, got -2\n"},
      {"--batch 2x", "anvil: error: --batch: 2x is not a whole number\n"},
      {"--batch 2147483648", "anvil: error: --batch: 2147483648 is out of range (at most 2147483647)\n"},
      {"--precision fp16", "anvil: error: --precision: fp16 not in {fp32,tf32}\n"},
      {"--precision ''", "anvil: error: --precision:  not in {fp32,tf32}\n"},  // as --device ''
  };
  for (const auto& [args, err] : cases) {
    const CliResult r = run(bench + args);
    EXPECT_EQ(r.status, 2) << args << "\n" << describe(r);
    EXPECT_EQ(r.err, err) << args;
    EXPECT_EQ(r.out.find("PASSED"), std::string::npos) << args << "\n" << r.out;
    EXPECT_EQ(r.out.find("throughput"), std::string::npos) << args << "\n" << r.out;
  }
}

// --precision is a common flag: info prints the one in effect, and every command refuses a bad one.
TEST_F(Cli, EveryCommandTakesPrecision) {
  const CliResult info = run("info " + quote(kSmall) + " --device cpu --precision fp32");
  ASSERT_EQ(info.status, 0) << describe(info);
  EXPECT_PRED_FORMAT2(Contains, info.out, ", precision fp32, seed 1\n");
  const std::string data = path("data.safetensors");
  const std::vector<std::string> commands = {"info", "run", "train --steps 1", "eval --data " + quote(data), "bench"};
  for (const std::string& command : commands) {
    const std::string args = command + " " + quote(kSmall) + " --device cpu --precision bf16";
    const CliResult r = run(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << describe(r);
    EXPECT_EQ(r.err, "anvil: error: --precision: bf16 not in {fp32,tf32}\n") << args;
  }
  const CliResult ok = run("run " + quote(kSmall) + " --device cpu --precision tf32");
  EXPECT_EQ(ok.status, 0) << describe(ok);
}

// Outputs are checked before any work: nothing an output names may be reached
// by accident (a symlink, a FIFO, a device, an input, another output), and
// what no output can be (a directory, a socket) is refused even with --force.
TEST_F(Cli, OutputsThatCouldReachSomethingAreRefusedFirst) {
  const std::string dir = path("outs");
  fs::create_directories(dir + "/sub");
  const std::string link = dir + "/link.safetensors", fifo = dir + "/fifo", copy = dir + "/net.json";
  fs::create_symlink("target.safetensors", link);
  const std::string to_dir = dir + "/to_dir", sock = dir + "/sock";
  fs::create_symlink("sub", to_dir);
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  const int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(sock.size(), sizeof addr.sun_path);
  std::strcpy(addr.sun_path, sock.c_str());
  ASSERT_EQ(::bind(s, reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0);
  fs::copy_file(kSmall, copy);
  const std::string hard = dir + "/hard.json";  // another name of the same file
  fs::create_hard_link(copy, hard);
  const std::string run_small = "run " + quote(kSmall) + " --device cpu ";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {run_small + "--output " + quote(link),
       "anvil: error: --output " + link + ": will not write: it is a symlink (--force writes through it)\n"},
      {run_small + "--output " + quote(fifo),
       "anvil: error: --output " + fifo + ": will not write: it is not a regular file (--force writes through it)\n"},
      {run_small + "--force --output " + quote(to_dir),
       "anvil: error: --output " + to_dir + ": cannot write: it is a directory\n"},
      {run_small + "--force --output " + quote(sock),
       "anvil: error: --output " + sock + ": cannot write: it is a socket\n"},
      {"run " + quote(copy) + " --device cpu --output " + quote(dir + "/../outs/net.json"),
       "anvil: error: --output " + dir + "/../outs/net.json: would overwrite the network file " + copy + "\n"},
      {"train " + quote(copy) + " --device cpu --steps 1 --metrics " + quote(hard),
       "anvil: error: --metrics " + hard + ": would overwrite the network file " + copy + "\n"},
      {"train " + quote(kSmall) + " --device cpu --steps 1 --save " + quote(dir + "/s") + " --dump-grads " +
           quote(dir + "/./s"),
       "anvil: error: --dump-grads " + dir + "/./s: the same file as --save\n"},
  };
  for (const auto& [args, err] : cases) {
    const CliResult r = run(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << describe(r);
    EXPECT_EQ(r.err, err) << args;
    EXPECT_EQ(step_lines(r.out).size(), 0u) << args;
  }
  ::close(s);
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(fs::status(fifo).type(), fs::file_type::fifo);
  EXPECT_EQ(fs::symlink_status(sock).type(), fs::file_type::socket);
  EXPECT_TRUE(fs::is_empty(dir + "/sub"));
  // Two links to one file that does not exist yet are one output, as are a link and its target.
  const std::string a = dir + "/a", b = dir + "/b";
  fs::create_symlink("new.safetensors", a);
  fs::create_symlink("new.safetensors", b);
  const CliResult both = run("train " + quote(kSmall) + " --device cpu --steps 1 --force --save " + quote(a) +
                             " --dump-grads " + quote(b));
  EXPECT_EQ(both.status, 2) << describe(both);
  EXPECT_EQ(both.err, "anvil: error: --dump-grads " + b + ": the same file as --save\n");
  const CliResult to_target = run("train " + quote(kSmall) + " --device cpu --steps 1 --force --save " + quote(a) +
                                  " --dump-grads " + quote(dir + "/new.safetensors"));
  EXPECT_EQ(to_target.status, 2) << describe(to_target);
  EXPECT_FALSE(fs::exists(dir + "/new.safetensors"));
  // A loop of links is bad input naming the flag.
  fs::create_symlink("loop_b", dir + "/loop_a");
  fs::create_symlink("loop_a", dir + "/loop_b");
  const CliResult loop = run(run_small + "--force --output " + quote(dir + "/loop_a"));
  EXPECT_EQ(loop.status, 2) << describe(loop);
  EXPECT_EQ(loop.err, "anvil: error: --output " + dir + "/loop_a: cannot write: Too many levels of symbolic links\n");
  // --force writes through the symlink: the link stays, its target gets the tensors.
  const CliResult forced = run(run_small + "--force --output " + quote(link));
  EXPECT_EQ(forced.status, 0) << describe(forced);
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(dir + "/target.safetensors")));
  EXPECT_EQ(anvil::read_safetensors(link).tensors.count("output"), 1u);
}

// --force writes into a FIFO or character device as a shell redirection would:
// the bytes of a file, the FIFO or device left as it was; a device that takes
// no bytes is an error naming it.
TEST_F(Cli, ForceWritesIntoAFifoOrDevice) {
  const std::string file = path("out.safetensors"), fifo = path("fifo");
  const std::string run_small = "run " + quote(kSmall) + " --device cpu --force --output ";
  ASSERT_EQ(run(run_small + quote(file)).status, 0);
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  anvil::testing::FifoReader reader(fifo);
  ASSERT_TRUE(reader.opened());
  const CliResult r = run(run_small + quote(fifo));
  const std::string piped = reader.finish();
  EXPECT_EQ(r.status, 0) << describe(r);
  std::ifstream in(file, std::ios::binary);
  EXPECT_EQ(piped, std::string(std::istreambuf_iterator<char>(in), {}));
  EXPECT_EQ(fs::symlink_status(fifo).type(), fs::file_type::fifo);
  ASSERT_EQ(fs::symlink_status("/dev/null").type(), fs::file_type::character);
  ASSERT_EQ(fs::symlink_status("/dev/full").type(), fs::file_type::character);
  const CliResult null = run(run_small + "/dev/null");
  EXPECT_EQ(null.status, 0) << describe(null);
  const CliResult full = run(run_small + "/dev/full");
  EXPECT_EQ(full.status, 1) << describe(full);
  EXPECT_EQ(full.err, "anvil: error: /dev/full: cannot write: No space left on device\n");
  EXPECT_EQ(fs::symlink_status("/dev/null").type(), fs::file_type::character);
  EXPECT_EQ(fs::symlink_status("/dev/full").type(), fs::file_type::character);
}

TEST_F(Cli, StepsMustBePositive) {
  for (const char* steps : {"0", "-3", "abc", "1.5", "99999999999999999999"}) {
    const CliResult r = run("train " + quote(kSmall) + " --device cpu --steps " + steps);
    EXPECT_EQ(r.status, 2) << "--steps " << steps << "\n" << describe(r);
    EXPECT_EQ(step_lines(r.out).size(), 0u) << "--steps " << steps;
  }
}

// A flag given a value it cannot mean is refused, not read as "on"; the
// on/off pair --check-finite takes true and false.
TEST_F(Cli, AFlagGivenAValueIsRefused) {
  for (const char* flag : {"--input-grad=5", "--keep-last=1", "--no-graph=no", "--check-finite=maybe",
                           "--check-finite=2", "--no-check-finite=2", "--check-finite=-1"}) {
    const CliResult r = run("train " + quote(kSmall) + " --device cpu --steps 1 " + flag);
    EXPECT_EQ(r.status, 2) << flag << "\n" << describe(r);
    EXPECT_EQ(lines_of(r.err).size(), 1u) << flag << "\n" << describe(r);
    EXPECT_EQ(step_lines(r.out).size(), 0u) << flag;
  }
  for (const char* flag : {"--check-finite=false", "--check-finite=true", "--check-finite=0", "--no-check-finite",
                           "--no-check-finite=false", "--input-grad", "--check-finite --check-finite=yes",
                           "--no-check-finite --check-finite=off"}) {
    const CliResult r = run("train " + quote(kSmall) + " --device cpu --steps 1 " + flag);
    EXPECT_EQ(r.status, 0) << flag << "\n" << describe(r);
  }
  // The message names the flag: an empty value (which CLI11 reads as the flag given) and one a
  // flag without a value cannot take (which CLI11 says in its own words).
  const std::string both = "--check-finite/--no-check-finite: given both on and off (give it once)";
  const std::vector<std::pair<std::string, std::string>> named = {
      {"--no-shuffle=false", "--no-shuffle takes no value, got '--no-shuffle=false'"},
      {"--no-shuffle=", "--no-shuffle takes no value, got '--no-shuffle='"},
      {"--force=", "--force takes no value, got '--force='"},
      {"--keep-last=true", "--keep-last takes no value, got '--keep-last=true'"},
      {"--check-finite=", "--check-finite: an empty value (give true or false)"},
      {"--no-check-finite=", "--no-check-finite: an empty value (give true or false)"},
      {"--help=", "--help takes no value, got '--help='"},
      // Given both ways, which CLI11 alone settles by the last: named by both forms, as either may be typed.
      {"--check-finite --no-check-finite", both},
      {"--no-check-finite --check-finite=1", both},
      {"--check-finite=off --no-check-finite=off", both},
      {"--no-check-finite=off --no-check-finite", both},
  };
  for (const auto& [flag, message] : named) {
    const CliResult r = run("train " + quote(kSmall) + " --device cpu --steps 1 " + flag);
    EXPECT_EQ(r.status, 2) << flag << "\n" << describe(r);
    EXPECT_EQ(r.err, "anvil: error: " + message + "\n") << flag;
    EXPECT_EQ(step_lines(r.out).size(), 0u) << flag;
  }
}

// Numbers the conversion would clamp (CLI11 reads 2^64-ish as INT64_MAX, 1e999 as
// infinity) are refused in one line naming the flag, before any work.
TEST_F(Cli, NumbersOutOfRangeAreRefusedInOneLine) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"train " + quote(kSmall) + " --device cpu --steps 99999999999999999999",
       "anvil: error: --steps: 99999999999999999999 is out of range (at most 9007199254740992)\n"},
      {"train " + quote(kSmall) + " --device cpu --steps 2 --log-every 9223372036854775808",
       "anvil: error: --log-every: 9223372036854775808 is out of range (at most 9007199254740992)\n"},
      {"train " + quote(kSmall) + " --device cpu --steps 1 --data-budget 1e999",
       "anvil: error: --data-budget: 1e999 is out of range\n"},
      {"bench " + quote(kSmall) + " --device cpu --iters 4294967296",
       "anvil: error: --iters: 4294967296 is out of range (at most 10000000)\n"},
      // Each timed iteration's time is kept: 2^31 - 1 of them would outgrow the host's memory.
      {"bench " + quote(kSmall) + " --device cpu --iters 10000001",
       "anvil: error: --iters: 10000001 is out of range (at most 10000000)\n"},
      {"bench " + quote(kSmall) + " --device cpu --warmup 4294967296",
       "anvil: error: --warmup: 4294967296 is out of range (at most 2147483647)\n"},
      {"eval " + quote(kSmall) + " --device cpu --data x --batch 2x",
       "anvil: error: --batch: 2x is not a whole number\n"},
  };
  for (const auto& [args, err] : cases) {
    const CliResult r = run(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << describe(r);
    EXPECT_EQ(r.err, err) << args;
    EXPECT_EQ(step_lines(r.out).size(), 0u) << args;
  }
}

// Every numeric flag takes decimal text only, checked before CLI11 converts it:
// CLI11 alone reads "0x10" as 16, " 5" as 5 and "010" as octal 8.
TEST_F(Cli, NumbersAreDecimalInEveryFlag) {
  const std::string train = "train " + quote(kSmall) + " --device cpu ";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {train + "--steps 0x10", "--steps: 0x10 is not a whole number"},
      {train + "--steps ' 5'", "--steps:  5 is not a whole number"},
      {train + "--steps +5", "--steps: +5 is not a whole number"},
      {train + "--steps 1 --data-budget 0x10", "--data-budget: 0x10 is not a decimal number"},
      {train + "--steps 1 --data-budget 0x1p4", "--data-budget: 0x1p4 is not a decimal number"},
      {train + "--steps 1 --data-budget ' 5'", "--data-budget:  5 is not a decimal number"},
      {train + "--steps 1 --data-budget +5", "--data-budget: +5 is not a decimal number"},
      {train + "--steps 1 --data-budget inf", "--data-budget: inf is not a decimal number"},
      {train + "--steps 1 --data-budget nan", "--data-budget: nan is not a decimal number"},
      {train + "--steps 1 --ranks 0x2", "--ranks: 0x2 is not a whole number"},
      {"bench " + quote(kSmall) + " --device cpu --iters 0x10", "--iters: 0x10 is not a whole number"},
      {"bench " + quote(kSmall) + " --device cpu --data-budget 0x10", "--data-budget: 0x10 is not a decimal number"},
  };
  for (const auto& [args, message] : cases) {
    const CliResult r = run(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << describe(r);
    EXPECT_EQ(r.err, "anvil: error: " + message + "\n") << args;
    EXPECT_EQ(step_lines(r.out).size(), 0u) << args;
  }
  // Leading zeros are decimal: 010 steps are ten.
  const CliResult ten = run(train + "--steps 010 --log-every 1");
  ASSERT_EQ(ten.status, 0) << describe(ten);
  const auto steps = step_lines(ten.out);
  ASSERT_EQ(steps.size(), 10u) << ten.out;
  EXPECT_EQ(steps.back().total, 10);
  // A budget with a fraction and an exponent is a decimal number.
  const CliResult budget = run("train " + quote(kData + "/dataset_epochs.json") + " --device cpu --steps 1 --data " +
                               quote(kData + "/dataset_epochs_train.safetensors") + " --data-budget 2.5e-1");
  EXPECT_EQ(budget.status, 0) << describe(budget);
}

// The child sees no GPU (CUDA_VISIBLE_DEVICES empty), so this runs on the GPU machine too.
TEST_F(Cli, CudaWithoutAGpuIsBadInput) {
  const std::string no_gpu = "CUDA_VISIBLE_DEVICES=";
  for (const char* sub : {"info", "run"}) {
    const CliResult r = run(std::string(sub) + " " + quote(kSmall) + " --device cuda", no_gpu);
    EXPECT_EQ(r.status, 2) << describe(r);
    EXPECT_EQ(r.err, ANVIL_WITH_CUDA
                         ? "anvil: error: --device cuda: no CUDA device is available on this machine\n"
                         : "anvil: error: anvil was built without CUDA (ANVIL_WITH_CUDA=OFF); use --device cpu\n");
  }
  const CliResult t = run("train " + quote(kSmall) + " --device cuda --steps 1", no_gpu);
  EXPECT_EQ(t.status, 2) << describe(t);
  EXPECT_EQ(step_lines(t.out).size(), 0u);
}

TEST_F(Cli, DefaultDeviceIsAnnouncedOnStderr) {
  const CliResult r = run("run " + quote(kSmall));
  ASSERT_EQ(r.status, 0) << describe(r);
  const std::string want =
      anvil::cuda_available() ? "device: cuda (a GPU is present)\n" : "device: cpu (no GPU found)\n";
  EXPECT_EQ(r.err, want);
}

// The notice comes once the inputs are checked: an error before then is the only line.
TEST_F(Cli, AnErrorWithTheDeviceLeftOutIsOneLine) {
  const std::string no_gpu = "CUDA_VISIBLE_DEVICES=";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"train " + quote(kSmall) + " --steps 1 --gpus 1",
       "anvil: error: --gpus: no CUDA device is available on this machine (--ranks K runs ranks on the CPU)\n"},
      {"run " + quote(kSmall) + " --input " + quote(path("missing.safetensors")),
       "anvil: error: " + path("missing.safetensors") + ": cannot open: No such file or directory\n"},
      {"train " + quote(kSmall) + " --steps 1 --weights " + quote(path("missing.safetensors")),
       "anvil: error: " + path("missing.safetensors") + ": cannot open: No such file or directory\n"},
  };
  for (const auto& [args, err] : cases) {
    const CliResult r = run(args, no_gpu);
    EXPECT_NE(r.status, 0) << args << "\n" << describe(r);
    EXPECT_EQ(r.err, err) << args;
  }
}

}  // namespace
