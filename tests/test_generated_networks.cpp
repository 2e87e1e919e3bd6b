// Random small networks (generated_networks.hpp) on the host: each loads with
// the output shape the layer formulas give, plans through the fusion rules
// (where built with CUDA), and trains on the CPU reference with a finite loss
// and finite gradients; and their checkpoints resume exactly, on the CPU and
// on the GPU. test_parity_gpu.cpp runs the same networks on the GPU against
// the CPU.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "anvil/engine.hpp"
#include "anvil/network.hpp"
#include "tests/generated_networks.hpp"
#include "tests/require_gpu.hpp"
#include "tests/test_support.hpp"

namespace anvil::testing {
namespace {

bool all_finite(const HostTensor& t) {
  for (float v : t.data)
    if (!std::isfinite(v)) return false;
  return true;
}

TEST(GeneratedNetworks, LoadWithTheirShapesPlanAndTrainOnTheCpu) {
  int fused_convs = 0, fused_adds = 0, pools = 0, joins = 0, three_way_joins = 0;
  for (const GeneratedNetwork& g : generated_networks(1, 64)) {
    SCOPED_TRACE(g.label + ": " + g.json);
    const Network net = Network::parse(g.json, g.label);
    EXPECT_EQ(net.output_shape(), g.output);
    for (const auto& group : net.fusion_groups()) (group.front().rfind("sum", 0) == 0 ? fused_adds : fused_convs)++;
    pools += g.json.find("pool") != std::string::npos;
    joins += g.json.find("\"add\"") != std::string::npos;
    const nlohmann::json doc = nlohmann::json::parse(g.json);
    for (const auto& layer : doc["layers"]) three_way_joins += layer["type"] == "add" && layer["inputs"].size() == 3;
    Options cpu;
    cpu.device = Device::Cpu;
    cpu.input_grad = true;
    Engine engine(net, cpu);
    for (int step = 0; step < 2; ++step) EXPECT_TRUE(std::isfinite(engine.train_step())) << "step " << step;
    for (const auto& [name, grad] : engine.gradients()) EXPECT_TRUE(all_finite(grad)) << name;
    EXPECT_TRUE(all_finite(engine.input_gradient()));
  }
  // The set covers what it is for: pools, joins (some reading a tensor twice, or one a chain also
  // reads), and (with the rules) both kinds of fused op.
  EXPECT_GE(pools, 16);
  EXPECT_GE(joins, 8);
  EXPECT_GE(three_way_joins, 4);
  if (ANVIL_WITH_CUDA) {
    EXPECT_GE(fused_convs, 16);
    EXPECT_GE(fused_adds, 4);
  }
}

// 3 steps, a checkpoint, a fresh engine resumed from it and 3 more steps give
// the bits of 6 straight steps, with SGD (momentum, then Nesterov), Adam and
// AdamW (a cosine schedule) in turn.
void resume_generated(Device device) {
  const std::vector<nlohmann::json> optimizers = {
      {{"type", "sgd"}, {"lr", 0.05}, {"momentum", 0.9}, {"weight_decay", 0.01}},
      {{"type", "adam"}, {"lr", 0.01}},
      {{"type", "sgd"}, {"lr", 0.02}, {"momentum", 0.5}, {"nesterov", true}},
      {{"type", "adamw"},
       {"lr", 0.01},
       {"lr_schedule", {{"type", "cosine"}, {"warmup_steps", 2}, {"total_steps", 6}}}}};
  constexpr int kHalf = 3;
  size_t next = 0;
  for (const GeneratedNetwork& g : generated_networks(1, 16)) {
    nlohmann::json doc = nlohmann::json::parse(g.json);
    doc["optimizer"] = optimizers[next++ % optimizers.size()];
    SCOPED_TRACE(g.label + ": " + doc.dump());
    const Network net = Network::parse(doc.dump(), g.label);
    Options options;
    options.device = device;
    Engine straight(net, options), first(net, options);
    for (int i = 0; i < 2 * kHalf; ++i) straight.train_step();
    for (int i = 0; i < kHalf; ++i) first.train_step();
    const std::string path =
        ::testing::TempDir() + "/anvil_generated_" + std::to_string(::getpid()) + "_" + g.label + ".safetensors";
    first.save_checkpoint(path, {kHalf, 0, kHalf});
    Engine resumed(net, options);
    resumed.load_checkpoint(path);
    std::remove(path.c_str());
    for (int i = 0; i < kHalf; ++i) resumed.train_step();
    const auto want = straight.parameters(), got = resumed.parameters();
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [name, value] : want) EXPECT_TRUE(bitwise_equal(got.at(name), value)) << name;
  }
}

TEST(GeneratedNetworks, CheckpointsResumeBitwiseOnTheCpu) { resume_generated(Device::Cpu); }

TEST(GeneratedNetworks, CheckpointsResumeBitwiseOnTheGpu) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  resume_generated(Device::Cuda);
}

}  // namespace
}  // namespace anvil::testing
