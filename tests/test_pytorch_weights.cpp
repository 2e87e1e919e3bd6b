// A PyTorch state_dict, saved by safetensors.torch.save_file in float16, loads into a network whose
// layer names are the module paths (tests/data/README.md says how the file was made).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "anvil/engine.hpp"
#include "anvil/error.hpp"
#include "anvil/network.hpp"
#include "anvil/safetensors.hpp"
#include "tests/test_support.hpp"

namespace anvil::testing {
namespace {

// Net.block.conv = nn.Conv2d(2, 3, 3, padding=1), as the layer "block.conv"; Net.bn is not part of it.
const char* const kBlockConvNetwork = R"({
  "name": "block_conv", "input": [1, 2, 4, 4],
  "layers": [{"type": "conv2d", "name": "block.conv", "in_channels": 2, "out_channels": 3, "kernel_size": 3,
              "padding": 1}]
})";

TEST(PyTorchWeights, Float16StateDictLoadsIntoDottedLayer) {
  const std::string path = data_path("pytorch_block_conv_f16.safetensors");
  const TensorFile file = read_safetensors(path);
  EXPECT_EQ(file.skipped, (std::map<std::string, std::string>{{"bn.num_batches_tracked", "I64"}}));

  Options options;
  options.device = Device::Cpu;
  options.mode = Mode::Forward;
  Engine engine(Network::parse(kBlockConvNetwork, "block_conv.json"), options);
  std::map<std::string, Shape> shapes;
  for (const auto& [name, value] : engine.parameters()) shapes[name] = value.shape;
  const ParameterSelection selection = select_parameters(file, path, shapes, false);
  EXPECT_EQ(selection.unused, (std::vector<std::string>{"bn.bias", "bn.num_batches_tracked", "bn.running_mean",
                                                        "bn.running_var", "bn.weight"}));
  engine.load_parameters(selection.parameters);

  // The values the generating script wrote, all exact in float16.
  std::vector<float> weight(54);
  for (size_t i = 0; i < weight.size(); ++i) weight[i] = (static_cast<float>(i) - 27) / 16;
  const std::map<std::string, HostTensor> loaded = engine.parameters();
  EXPECT_EQ(loaded.at("block.conv.weight").shape, (Shape{3, 2, 3, 3}));
  EXPECT_EQ(loaded.at("block.conv.weight").data, weight);
  EXPECT_EQ(loaded.at("block.conv.bias").data, (std::vector<float>{0.5f, -0.25f, std::ldexp(1.0f, -20)}));
  EXPECT_EQ(file.tensors.at("bn.running_mean").data, (std::vector<float>{0.125f, -1.0f, 3.0f}));

  EXPECT_THROW(select_parameters(file, path, shapes, true), InputError);  // --strict: the bn tensors
}

}  // namespace
}  // namespace anvil::testing
