// Random small networks (generated_networks.hpp) on the host: each loads with
// the output shape the layer formulas give, plans through the fusion rules
// (where built with CUDA), and trains on the CPU reference with a finite loss
// and finite gradients. test_parity_gpu.cpp runs the same networks on the GPU
// against the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "anvil/engine.hpp"
#include "anvil/network.hpp"
#include "tests/generated_networks.hpp"

namespace anvil::testing {
namespace {

bool all_finite(const HostTensor& t) {
  for (float v : t.data)
    if (!std::isfinite(v)) return false;
  return true;
}

TEST(GeneratedNetworks, LoadWithTheirShapesPlanAndTrainOnTheCpu) {
  int fused_convs = 0, fused_adds = 0, pools = 0, joins = 0;
  for (const GeneratedNetwork& g : generated_networks(1, 64)) {
    SCOPED_TRACE(g.label + ": " + g.json);
    const Network net = Network::parse(g.json, g.label);
    EXPECT_EQ(net.output_shape(), g.output);
    for (const auto& group : net.fusion_groups()) (group.front().rfind("sum", 0) == 0 ? fused_adds : fused_convs)++;
    pools += g.json.find("pool") != std::string::npos;
    joins += g.json.find("\"add\"") != std::string::npos;
    Options cpu;
    cpu.device = Device::Cpu;
    cpu.input_grad = true;
    Engine engine(net, cpu);
    for (int step = 0; step < 2; ++step) EXPECT_TRUE(std::isfinite(engine.train_step())) << "step " << step;
    for (const auto& [name, grad] : engine.gradients()) EXPECT_TRUE(all_finite(grad)) << name;
    EXPECT_TRUE(all_finite(engine.input_gradient()));
  }
  // The set covers what it is for: pools, joins, and (with the rules) both kinds of fused op.
  EXPECT_GE(pools, 16);
  EXPECT_GE(joins, 8);
  if (ANVIL_WITH_CUDA) {
    EXPECT_GE(fused_convs, 16);
    EXPECT_GE(fused_adds, 4);
  }
}

}  // namespace
}  // namespace anvil::testing
