// The CPU reference backend against PyTorch float64 references (tests/data).
#include "anvil/random.hpp"
#include "tests/parity.hpp"

namespace anvil::testing {
namespace {

class CpuParity : public ::testing::TestWithParam<std::string> {};

TEST_P(CpuParity, MatchesPyTorchForwardGradientsAndOptimizerSteps) {
  Options options;
  options.device = Device::Cpu;
  options.input_grad = true;
  check_reference_case(GetParam(), options, nlohmann::json::object(), 1e-5, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(ReferenceCases, CpuParity, ::testing::ValuesIn(reference_cases()),
                         [](const auto& info) { return info.param; });

// The C++ generator and its Python twin in tools/make_reference.py agree bit for bit.
TEST(Generator, InputsAndTargetsMatchThePythonTwin) {
  for (const auto& name : reference_cases()) {
    const Network net = Network::load(data_path(name + ".json"));
    const TensorFile ref = read_safetensors(data_path(name + ".safetensors"));
    HostTensor x(net.input_shape()), t(net.output_shape());
    fill_uniform(x.data.data(), x.size(), random_stream(net.seed(), "input"), 0.0, 1.0);
    fill_uniform(t.data.data(), t.size(), random_stream(net.seed(), "target"), 0.0, 1.0);
    EXPECT_TRUE(bitwise_equal(x, ref.tensors.at("input"))) << name;
    EXPECT_TRUE(bitwise_equal(t, ref.tensors.at("target"))) << name;
  }
}

// A CPU rerun is bitwise identical (OpenMP splits work, never reductions).
TEST(CpuDeterminism, RerunIsBitwiseIdentical) {
  const Network net = Network::load(data_path("residual_dag.json"));
  Options options;
  options.device = Device::Cpu;
  Engine a(net, options), b(net, options);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(a.train_step(), b.train_step());
  for (const auto& [name, value] : a.parameters()) EXPECT_TRUE(bitwise_equal(value, b.parameters().at(name))) << name;
}

// Training reduces the loss on the reduced headline network over a few steps.
TEST(CpuTraining, LossDecreases) {
  const Network net = Network::load(data_path("kb74_small.json"));
  Options options;
  options.device = Device::Cpu;
  Engine engine(net, options);
  const float first = engine.train_step();
  float last = first;
  for (int i = 0; i < 5; ++i) last = engine.train_step();
  EXPECT_LT(last, first);
}

}  // namespace
}  // namespace anvil::testing
