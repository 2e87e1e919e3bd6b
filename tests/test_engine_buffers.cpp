// The engine's buffer API: inputs and targets from a caller's host or device
// buffer, the forward pass into a caller's buffer, and what it refuses.
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "anvil/error.hpp"
#include "engine/src/run/host_memory.hpp"
#include "tests/require_gpu.hpp"
#include "tests/test_support.hpp"

#if ANVIL_WITH_CUDA
#include "tests/gpu_test_util.hpp"
#endif

namespace anvil::testing {
namespace {

Options on(Device device) {
  Options o;
  o.device = device;
  return o;
}

// The message of the E that f throws, or "no E".
template <class E = Error>
std::string message(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "no E";
}

TEST(EngineBuffers, HostBuffersGiveWhatHostTensorsGive) {
  const Network net = Network::load(data_path("odd_sizes.json"));
  const TensorFile ref = read_safetensors(data_path("odd_sizes.safetensors"));
  const HostTensor& x = ref.tensors.at("input");
  const HostTensor& t = ref.tensors.at("target");
  Engine a(net, on(Device::Cpu)), b(net, on(Device::Cpu));
  a.set_input(x);
  a.set_target(t);
  b.set_input(x.data.data(), x.shape);
  b.set_target(t.data.data(), t.shape);
  EXPECT_EQ(a.train_step(), b.train_step());
  std::vector<float> out(static_cast<size_t>(numel(net.output_shape())), NAN);
  b.forward_into(out.data(), out.size());
  EXPECT_TRUE(bitwise_equal(HostTensor(net.output_shape(), out), a.forward()));
}

TEST(EngineBuffers, RefusesWrongShapesSizesAndDeviceBuffersOnTheCpu) {
  const Network net = Network::load(data_path("odd_sizes.json"));
  Engine engine(net, on(Device::Cpu));
  std::vector<float> buffer(static_cast<size_t>(numel(net.input_shape())) + 1, 1.f);
  Shape wrong = net.input_shape();
  wrong[0] += 1;
  EXPECT_THROW(engine.set_input(buffer.data(), wrong), InputError);
  EXPECT_THROW(engine.set_input(nullptr, net.input_shape()), InputError);
  EXPECT_THROW(engine.set_input(buffer.data(), net.input_shape(), Memory::Device), InputError);
  EXPECT_THROW(engine.forward_into(buffer.data(), buffer.size()), InputError);  // not the output's size
}

// parameter_shapes() names what parameters() holds, without the copy.
TEST(EngineBuffers, ParameterShapesAreTheParametersNamesAndShapes) {
  const Engine engine(Network::load(data_path("odd_sizes.json")), on(Device::Cpu));
  std::map<std::string, Shape> want;
  for (const auto& [name, t] : engine.parameters()) want.emplace(name, t.shape);
  EXPECT_FALSE(want.empty());
  EXPECT_EQ(engine.parameter_shapes(), want);
}

// Enum values made by a cast are refused by name, not taken for another value.
TEST(EngineBuffers, EnumValuesOutsideTheirTypeAreRefused) {
  const Network net = Network::load(data_path("odd_sizes.json"));
  Options device = on(Device::Cpu);
  device.device = static_cast<Device>(5);
  EXPECT_EQ(message<InputError>([&] { Engine{net, device}; }), "Options::device: 5 is not a Device");
  // Named as what it is, not as a Device it is not.
  EXPECT_STREQ(anvil::to_string(device.device), "not a Device");
  EXPECT_STREQ(anvil::to_string(static_cast<anvil::Precision>(7)), "not a Precision");
  Options mode = on(Device::Cpu);
  mode.mode = static_cast<Mode>(9);
  EXPECT_EQ(message<InputError>([&] { Engine{net, mode}; }), "Options::mode: 9 is not a Mode");
  Engine engine(net, on(Device::Cpu));
  std::vector<float> x(static_cast<size_t>(numel(net.input_shape())), 0.5f);
  std::vector<float> y(static_cast<size_t>(numel(net.output_shape())), 0.5f);
  EXPECT_EQ(message<InputError>([&] { engine.set_input(x.data(), net.input_shape(), static_cast<Memory>(7)); }),
            "input: 7 is not a Memory");
  EXPECT_EQ(message<InputError>([&] { engine.set_target(y.data(), net.output_shape(), static_cast<Memory>(7)); }),
            "target: 7 is not a Memory");
  EXPECT_EQ(message<InputError>([&] { engine.forward_into(y.data(), y.size(), static_cast<Memory>(7)); }),
            "forward_into: 7 is not a Memory");
}

// A forward-only engine computes no gradient: asking it for the input's is refused when it is
// built (plan_only too, as `anvil info` builds it), by name, not ignored until input_gradient()
// says "needs Options::input_grad" of an engine given it. A network without parameters is no
// exception: its forward pass builds, its input's gradient does not. So is check_finite, which
// would plan nothing and leave keep_good_state() to fail.
TEST(EngineBuffers, TrainingOptionsAreRefusedByAForwardOnlyEngine) {
  const std::string refused =
      "Options::input_grad needs Mode::Train: a forward-only engine (Mode::Forward) "
      "computes no gradient, of the input or of anything else";
  const std::string refused_check =
      "Options::check_finite needs Mode::Train: a forward-only engine "
      "(Mode::Forward) takes no training step to check";
  const Network with_params = Network::load(data_path("odd_sizes.json"));
  const Network without_params =
      Network::parse(R"({"name": "t", "input": [2, 3, 4, 4], "layers": [{"type": "relu"}]})", "relu.json");
  for (const Network* net : {&with_params, &without_params}) {
    for (const bool plan_only : {false, true}) {
      SCOPED_TRACE(net->name() + (plan_only ? ", plan_only" : ""));
      Options o = on(Device::Cpu);
      o.mode = Mode::Forward;
      o.plan_only = plan_only;
      o.input_grad = true;
      EXPECT_EQ(message<InputError>([&] { Engine{*net, o}; }), refused);
      o.input_grad = false;
      o.check_finite = true;
      EXPECT_EQ(message<InputError>([&] { Engine{*net, o}; }), refused_check);
      o.check_finite = false;
      EXPECT_EQ(message<InputError>([&] { Engine{*net, o}; }), "no E");
    }
  }
  // The training engine takes them, as before.
  Options train = on(Device::Cpu);
  train.input_grad = true;
  train.check_finite = true;
  EXPECT_EQ(message<InputError>([&] { Engine{without_params, train}; }), "no E");
}

// Before the first step the loss and the input's gradient hold nothing: asking is an Error, not
// the arena's poison read back as NaN.
TEST(EngineBuffers, TheLossAndTheInputGradientBeforeAnyStepAreErrors) {
  const Network net = Network::load(data_path("odd_sizes.json"));
  Options o = on(Device::Cpu);
  o.input_grad = true;
  Engine engine(net, o);
  EXPECT_EQ(message([&] { engine.last_loss(); }), "last_loss: no train step has run yet");
  EXPECT_EQ(message([&] { engine.input_gradient(); }), "input_gradient: no train step has run yet");
  engine.enqueue_gradients();  // forward, loss and backward: both exist now
  EXPECT_TRUE(std::isfinite(engine.last_loss()));
  for (float v : engine.input_gradient().data) ASSERT_TRUE(std::isfinite(v));
}

// A HostTensor whose values do not fill its shape is refused, not read or written past its end.
TEST(EngineBuffers, HostTensorsWhoseValuesDoNotFillTheirShapeAreRefused) {
  const Network net = Network::load(data_path("odd_sizes.json"));
  Engine engine(net, on(Device::Cpu));
  HostTensor short_input(net.input_shape());
  short_input.data.pop_back();
  EXPECT_THROW(engine.set_input(short_input), InputError);
  HostTensor short_target(net.output_shape());
  short_target.data.resize(1);
  EXPECT_THROW(engine.set_target(short_target), InputError);
  std::map<std::string, HostTensor> params = engine.parameters();
  const std::map<std::string, HostTensor> before = params;
  params.begin()->second.data.resize(params.begin()->second.data.size() * 1024 + 1, 1.f);
  EXPECT_THROW(engine.load_parameters(params), InputError);
  for (const auto& [name, value] : engine.parameters()) EXPECT_TRUE(bitwise_equal(value, before.at(name))) << name;
}

TEST(HostTensor, HoldsShapeCountsWithoutOverflow) {
  EXPECT_TRUE(holds_shape(HostTensor({2, 3}, std::vector<float>(6))));
  EXPECT_FALSE(holds_shape(HostTensor({2, 3}, std::vector<float>(5))));
  EXPECT_FALSE(holds_shape(HostTensor({2, -3}, std::vector<float>(6))));
  EXPECT_TRUE(holds_shape(HostTensor({int64_t(1) << 40, int64_t(1) << 40, 0}, {})));  // empty, however large
  EXPECT_FALSE(holds_shape(HostTensor({int64_t(1) << 40, int64_t(1) << 40, 4}, std::vector<float>(4))));
  EXPECT_EQ(numel({int64_t(1) << 40, int64_t(1) << 40, 0}), 0);
  // A count beyond int64, or a negative dimension, is an error, not a wrapped number (nor a huge allocation).
  EXPECT_THROW(numel({int64_t(1) << 40, int64_t(1) << 40}), InputError);
  EXPECT_THROW(numel({2, -3}), InputError);
  EXPECT_THROW(HostTensor(Shape{-1}), InputError);
  EXPECT_EQ(numel({int64_t(1) << 31, int64_t(1) << 31}), int64_t(1) << 62);
}

// Zeros of a shape the host cannot hold are an anvil::Error naming it, before any allocation (not
// std::bad_alloc or std::length_error, nor pages left for the OOM killer to find).
TEST(HostTensor, AShapeBeyondHostMemoryIsRefusedByName) {
  const std::vector<std::pair<Shape, std::string>> refused = {
      {{int64_t(1) << 62}, "out of host memory: a tensor of shape (4611686018427387904) takes 2^64 bytes or more"},
      {{int64_t(1) << 20, int64_t(1) << 20},
       "out of host memory: a tensor of shape (1048576, 1048576) takes 4096.0 GiB, more than"}};
  for (const auto& [shape, start] : refused) {
    try {
      HostTensor t(shape);
      ADD_FAILURE() << "made " << to_string(shape);
    } catch (const InputError& e) {
      ADD_FAILURE() << "an input error: " << e.what();
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(start, 0), 0u) << e.what();
    }
  }
  const HostTensor small(Shape{3, 5});
  EXPECT_EQ(small.data, std::vector<float>(15, 0.f));
}

// A moved-from Network is empty: every use says so in one line, and nothing reads a null description.
TEST(EngineBuffers, AMovedFromNetworkRefusesEveryUse) {
  Network net =
      Network::parse(R"({"name": "t", "input": [2, 3, 4, 4], "layers": [{"type": "channel_scale"}]})", "scale.json");
  const Network kept = std::move(net);
  const std::string empty = "an empty anvil::Network (moved from): make one with Network::load or Network::parse";
  for (const auto& use : std::vector<std::function<void()>>{
           [&] { net.name(); }, [&] { net.input_shape(); }, [&] { net.output_shape(); }, [&] { net.layers(); },
           [&] { net.fusion_groups(); }, [&] { net.parameter_count(); }, [&] { net.with_batch(4); },
           [&] { Engine engine(net, on(Device::Cpu)); }}) {
    try {
      use();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), empty);
    }
  }
  EXPECT_EQ(kept.name(), "t");
}

TEST(EngineBuffers, ANetworkWithoutParametersIsRefusedForTrainingWithOneLine) {
  const Network net =
      Network::parse(R"({"name": "t", "input": [2, 3, 4, 4], "layers": [{"type": "relu"}]})", "relu.json");
  try {
    Engine engine(net, on(Device::Cpu));
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()),
              "relu.json: the network has no parameters, so there is nothing to train "
              "(with the input's gradient, --input-grad, there is)");
  }
  Options forward = on(Device::Cpu);
  forward.mode = Mode::Forward;
  EXPECT_NO_THROW(Engine(net, forward).forward());
}

#if ANVIL_WITH_CUDA
// A device buffer is copied on the engine's stream: the same step as from the host.
TEST(EngineBuffersGpu, DeviceBuffersGiveWhatHostBuffersGive) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const Network net = Network::load(data_path("odd_sizes.json"));
  const TensorFile ref = read_safetensors(data_path("odd_sizes.safetensors"));
  const HostTensor& x = ref.tensors.at("input");
  const HostTensor& t = ref.tensors.at("target");
  Engine a(net, on(Device::Cuda)), b(net, on(Device::Cuda));
  a.set_input(x);
  a.set_target(t);
  DeviceBuffer<float> dx(x.data.size()), dt(t.data.size()), out(static_cast<size_t>(numel(net.output_shape())));
  dx.upload(x.data);
  dt.upload(t.data);
  b.set_input(dx.get(), x.shape, Memory::Device);
  b.set_target(dt.get(), t.shape, Memory::Device);
  EXPECT_EQ(a.train_step(), b.train_step());
  out.poison();
  b.forward_into(out.get(), out.size(), Memory::Device);
  b.synchronize();
  EXPECT_TRUE(bitwise_equal(HostTensor(net.output_shape(), out.download_all()), a.forward()));
}
#endif

}  // namespace
}  // namespace anvil::testing

namespace anvil::testing {
namespace {

// An arena larger than the memory there is refused before anything is allocated, with both figures
// (on the host an allocation may succeed and the first write get the process killed). Forty 1x1x1
// convs over 2^30-element tensors keep about 160 GiB of activations for backward.
TEST(EngineMemory, AnArenaBeyondTheFreeMemoryIsRefusedWithBothFigures) {
  nlohmann::json doc = {{"name", "huge"},
                        {"input", {1, 1, 1024, 1024, 1024}},
                        {"loss", "mse"},
                        {"optimizer", {{"type", "sgd"}, {"lr", 0.1}}}};
  for (int i = 0; i < 40; ++i)
    doc["layers"].push_back({{"type", "conv3d"}, {"in_channels", 1}, {"out_channels", 1}, {"kernel_size", 1}});
  const Network net = Network::parse(doc.dump(), "huge.json");
  for (const Device device : {Device::Cpu, Device::Cuda}) {
    if (device == Device::Cuda && !cuda_available()) continue;  // the CPU case runs everywhere
    Options o;
    o.device = device;
    const std::string where = device == Device::Cuda ? "device" : "host";
    try {
      Engine engine(net, o);
      ADD_FAILURE() << "a " << gib(engine.device_bytes()) << " arena was allocated on the " << where;
    } catch (const Error& e) {
      std::cmatch m;
      ASSERT_TRUE(std::regex_match(e.what(), m,
                                   std::regex("out of " + where + " memory: the arena needs ([0-9.]+) GiB, the " +
                                              where + " has ([0-9.]+) GiB free")))
          << e.what();
      EXPECT_GT(std::stod(m[1]), 150.0) << e.what();
      EXPECT_GT(std::stod(m[1]), std::stod(m[2])) << e.what();
    }
  }
}

// Inside a container the memory cgroup's limit binds, less what the cgroup uses beyond its
// reclaimable page cache (what docker stats and the kubelet count), in both cgroup layouts.
TEST(EngineMemory, ACgroupLimitBindsLessItsUseBeyondThePageCache) {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(::testing::TempDir()) / ("anvil_cgroup_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "memory");
  auto write = [&](const fs::path& file, const std::string& text) { std::ofstream(root / file) << text; };
  const std::string none = (root / "no_self_cgroup").string();            // the root cgroup alone
  EXPECT_EQ(cgroup_available_memory(root.string(), none), std::nullopt);  // no files: no cgroup limit
  write("memory/memory.limit_in_bytes", "9223372036854771712\n");         // v1 without a limit: a huge number
  write("memory/memory.usage_in_bytes", "3000\n");
  EXPECT_EQ(cgroup_available_memory(root.string(), none), size_t(9223372036854771712ull - 3000));
  write("memory/memory.limit_in_bytes", "10000\n");
  write("memory/memory.stat", "cache 5\ntotal_inactive_file 1000\n");
  EXPECT_EQ(cgroup_available_memory(root.string(), none), size_t(10000 - (3000 - 1000)));
  write("memory.max", "max\n");  // v2: no limit there
  write("memory.current", "500\n");
  EXPECT_EQ(cgroup_available_memory(root.string(), none), size_t(8000));  // so v1's binds
  write("memory.max", "4000\n");
  write("memory.stat", "anon 400\ninactive_file 200\n");
  EXPECT_EQ(cgroup_available_memory(root.string(), none), size_t(4000 - 300));  // the least of the two
  write("memory.current", "9000\n");                                            // beyond the limit: nothing left
  EXPECT_EQ(cgroup_available_memory(root.string(), none), size_t(0));
  fs::remove_all(root);
}

// A process in a nested cgroup (systemd-run, a batch job, a container without a cgroup namespace)
// is bound by its own cgroup's limit and by each ancestor's, whichever leaves least; cgroups that
// /proc/self/cgroup names but the files do not show are skipped.
TEST(EngineMemory, EveryAncestorOfTheProcesssCgroupBinds) {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(::testing::TempDir()) / ("anvil_cgroup_nested_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "jobs/job7/step0");
  fs::create_directories(root / "memory/slurm/uid_0");
  auto write = [&](const fs::path& file, const std::string& text) { std::ofstream(root / file) << text; };
  const std::string self = (root / "self_cgroup").string();
  write("self_cgroup", "12:cpu,cpuacct:/elsewhere\n4:memory:/slurm/uid_0/job_3\n0::/jobs/job7/step0\n");
  write("memory.max", "max\n");  // v2: the root has no limit,
  write("memory.current", "100000\n");
  write("jobs/job7/memory.max", "6000\n");  // the job's binds,
  write("jobs/job7/memory.current", "2500\n");
  write("jobs/job7/step0/memory.max", "max\n");  // its step has none of its own
  write("jobs/job7/step0/memory.current", "2000\n");
  EXPECT_EQ(cgroup_available_memory(root.string(), self), size_t(6000 - 2500));
  write("jobs/job7/step0/memory.max", "3000\n");  // now the step binds
  EXPECT_EQ(cgroup_available_memory(root.string(), self), size_t(3000 - 2000));
  write("memory/slurm/uid_0/memory.limit_in_bytes", "1500\n");  // v1's memory controller: job_3 is not
  write("memory/slurm/uid_0/memory.usage_in_bytes", "900\n");   // there, its parent binds
  EXPECT_EQ(cgroup_available_memory(root.string(), self), size_t(1500 - 900));
  EXPECT_EQ(cgroup_available_memory(root.string(), (root / "no_self_cgroup").string()), std::nullopt);
  // A cgroup outside this cgroup namespace's root shows as a path with "..": nothing below the root
  // describes it, so the root's own files count (here none), not what the path reaches beside it.
  const fs::path beside = root.string() + "_beside";
  fs::create_directories(beside);
  std::ofstream(beside / "memory.max") << "1000\n";
  std::ofstream(beside / "memory.current") << "0\n";
  write("outside_cgroup", "0::/../" + beside.filename().string() + "\n");
  EXPECT_EQ(cgroup_available_memory(root.string(), (root / "outside_cgroup").string()), std::nullopt);
  fs::remove_all(beside);
  fs::remove_all(root);
}

}  // namespace
}  // namespace anvil::testing
