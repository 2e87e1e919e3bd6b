// Tests of network loading and validation (anvil::Network::parse).
//
// Every malformed description must be refused before anything is allocated,
// with one InputError line "<file>: <json path>: <problem>". The expected
// messages below are the documented format (docs/network-format.md); shapes
// in the positive tests are worked out by hand from PyTorch's output-size
// formulas, not copied from anvil's output.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tests/contains.hpp"
#include "anvil/error.hpp"
#include "anvil/network.hpp"
#include "engine/src/lower/graph.hpp"
#if ANVIL_WITH_CUDA
#include "engine/src/lower/channels_last.hpp"
#include "engine/src/lower/fusion_rules.hpp"
#include "layers/fused_conv_epilogue.hpp"
#endif

namespace {

using anvil::testing::Contains;

using anvil::Network;
using anvil::Shape;
using Groups = std::vector<std::vector<std::string>>;

// The message of the InputError that parsing `text` throws, or a marker saying what happened instead.
std::string error_of(const std::string& text) {
  try {
    Network::parse(text, "bad.json");
  } catch (const anvil::InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not an InputError> ") + e.what();
  }
  return "<no error>";
}

// A network around a "layers" list (JSON text) with a fixed input shape.
std::string with_layers(const std::string& input, const std::string& layers, const std::string& extra = "") {
  return R"({"name": "t", "input": )" + input + R"(, "layers": )" + layers + extra + "}";
}
const char* const kInput5d = "[2, 4, 8, 8, 8]";
const char* const kInput4d = "[2, 4, 8, 8]";

Network load_example(const std::string& relative) {
  return Network::load(std::string(ANVIL_SOURCE_DIR) + "/" + relative);
}

std::map<std::string, Shape> param_shapes(const Network& net) {
  std::map<std::string, Shape> out;
  for (const auto& p : net.build_graph()->params()) out[p.name] = p.shape;
  return out;
}

// A one-layer network whose layer has the given JSON body, on a 5-d input.
std::string one_layer(const std::string& layer, const std::string& input = kInput5d) {
  return with_layers(input, "[" + layer + "]");
}

// ---------------------------------------------------------------- the document

// parse's source is a label for messages, never read as a path: any text is taken, and the
// message names it once.
TEST(NetworkParse, TheSourceIsALabelNotAPath) {
  const std::string text = with_layers(kInput4d, R"([{"type": "relu"}])");
  for (const std::string& label : {std::string("a\0b", 3), std::string(), std::string("/no/such/dir/net.json")})
    EXPECT_EQ(Network::parse(text, label).source(), label);
  try {
    Network::parse(R"({"name": 3})", "my label");
    ADD_FAILURE() << "no error";
  } catch (const anvil::InputError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("my label: name", 0), 0u) << e.what();
    EXPECT_EQ(std::string(e.what()).find("my label", 1), std::string::npos) << e.what();
  }
}

TEST(NetworkParse, InvalidJsonSyntaxGivesLineAndColumn) {
  const std::string text = "{\n  \"name\": \"t\",\n  \"input\": [1, 2, 3, 4],,\n  \"layers\": []\n}\n";
  const std::string msg = error_of(text);
  EXPECT_PRED_FORMAT2(Contains, msg, "bad.json: invalid JSON: ");
  EXPECT_PRED_FORMAT2(Contains, msg, "line 3, column");
  EXPECT_EQ(msg.find("[json.exception"), std::string::npos) << "library prefix leaks into: " << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "message must be one line: " << msg;
}

// A key twice in one object is refused with its path, at any depth; the
// last one winning silently would train with a value nobody can see.
TEST(NetworkParse, DuplicateKeysAreRefusedWithTheirPath) {
  EXPECT_EQ(error_of(R"({"name": "t", "name": "u", "input": [1, 1, 4, 4], "layers": [{"type": "relu"}]})"),
            "bad.json: name: duplicate key");
  EXPECT_EQ(error_of(R"({"name": "t", "input": [1, 1, 4, 4], "layers": [{"type": "relu"}],
                         "optimizer": {"type": "sgd", "lr": 0.1, "lr": 1000}})"),
            "bad.json: optimizer.lr: duplicate key");
  EXPECT_EQ(error_of(with_layers(kInput5d, R"([{"type": "relu"}, {"type": "max_pool3d", "kernel_size": 2,
                                               "kernel_size": 3}])")),
            "bad.json: layers[1].kernel_size: duplicate key");
  // The same key in two different objects is fine.
  EXPECT_EQ(error_of(with_layers(kInput5d, R"([{"type": "relu", "name": "a"}, {"type": "relu", "name": "b"}])")),
            "<no error>");
}

// A number beyond double's range is named by its path, not by the JSON library.
TEST(NetworkParse, NumbersOutOfRangeNameTheirPath) {
  EXPECT_EQ(error_of(R"({"name": "t", "input": [1, 1, 4, 4], "layers": [{"type": "relu"}],
                         "optimizer": {"type": "sgd", "lr": 1e400}})"),
            "bad.json: optimizer.lr: number out of range");
  EXPECT_EQ(error_of(R"({"name": "t", "input": [1, 1, 4, -1e999], "layers": [{"type": "relu"}]})"),
            "bad.json: input[3]: number out of range");
  EXPECT_EQ(error_of(with_layers(kInput5d, R"([{"type": "relu"}, {"type": "leaky_relu",
                                               "negative_slope": 1e309}])")),
            "bad.json: layers[1].negative_slope: number out of range");
  // Below double's range: it would read as 0, which the file does not say (0 itself, in any spelling, is fine).
  EXPECT_EQ(error_of(R"({"name": "t", "input": [1, 1, 4, 4], "layers": [{"type": "relu"}],
                         "optimizer": {"type": "sgd", "lr": 1e-400}})"),
            "bad.json: optimizer.lr: number out of range (1e-400 reads as 0)");
  EXPECT_EQ(error_of(with_layers(kInput5d, R"([{"type": "leaky_relu", "negative_slope": -2.5E-999}])")),
            "bad.json: layers[0].negative_slope: number out of range (-2.5E-999 reads as 0)");
  EXPECT_EQ(error_of(with_layers(kInput5d, R"([{"type": "leaky_relu", "negative_slope": -0.0e-999}])")), "<no error>");
  // Integers beyond int64 are refused where they are read.
  EXPECT_EQ(error_of(R"({"name": "t", "input": [1, 1, 4, 99999999999999999999], "layers": [{"type": "relu"}]})"),
            "bad.json: input[3]: must be a positive integer, got 1e+20");
}

// Keys echoed in messages are escaped: a message is always one line.
TEST(NetworkParse, ControlBytesInKeysAreEscaped) {
  EXPECT_EQ(error_of(R"({"name": "t", "input": [1, 1, 4, 4], "layers": [{"type": "relu"}], "x\ny": 1})"),
            "bad.json: x\\ny: unknown key");
}

// Sizes are checked once, at validation, so no size computed later can
// overflow: dimensions and layer sizes at most 2^31 - 1, tensors at most 2^40
// elements, each named by its path.
TEST(NetworkParse, SizesBeyondTheLimitsAreRefusedWithTheirPath) {
  const std::string relu = R"([{"type": "relu"}])";
  EXPECT_EQ(error_of(with_layers("[9223372036854775807, 1, 4, 4]", relu)),
            "bad.json: input[0]: must be at most 2147483647, got 9223372036854775807");
  EXPECT_EQ(error_of(with_layers("[4294967296, 16, 4294967296, 8, 8]", relu)),
            "bad.json: input[0]: must be at most 2147483647, got 4294967296");
  EXPECT_EQ(error_of(with_layers("[2048, 1024, 1024, 1024]", relu)),
            "bad.json: input: (2048, 1024, 1024, 1024) has more than 2^40 elements, the limit per tensor");
  const std::string input = "[2, 1, 4, 4]";
  EXPECT_EQ(error_of(with_layers(input, R"([{"type": "conv2d", "in_channels": 1, "out_channels": 4611686018427387904,
                                            "kernel_size": 1}])")),
            "bad.json: layers[0].out_channels: must be at most 2147483647, got 4611686018427387904");
  EXPECT_EQ(error_of(with_layers(input, R"([{"type": "conv2d", "in_channels": 1, "out_channels": 1,
                                            "kernel_size": [1, 3000000000]}])")),
            "bad.json: layers[0].kernel_size[1]: must be at most 2147483647, got 3000000000");
  // Within every per-value limit, the output still may not exceed 2^40 elements.
  EXPECT_EQ(error_of(with_layers(input, R"([{"type": "conv_transpose2d", "in_channels": 1, "out_channels": 1,
                                            "kernel_size": 3, "stride": 2147483647}])")),
            "bad.json: layers[0]: the output (2, 1, 6442450944, 6442450944) has more than 2^40 elements, the "
            "limit per tensor");
  // A transposed conv whose stride times its input passes 64 bits: refused before the product.
  EXPECT_EQ(error_of(with_layers("[1, 1, 1, 1]", R"([
      {"type": "conv_transpose2d", "name": "a", "in_channels": 1, "out_channels": 1, "kernel_size": [1, 131073],
       "dilation": [1, 131072]},
      {"type": "conv_transpose2d", "name": "b", "in_channels": 1, "out_channels": 1, "kernel_size": 1,
       "stride": [1, 1073741824]}])")),
            "bad.json: layers[1].stride: gives an output longer than 2^40 along spatial dim 1 (input 17179869185, "
            "stride 1073741824)");
  // And no parameter: a 1x1 conv of 2^31 - 1 channels to 2^31 - 1 has 2^62 weights.
  EXPECT_EQ(error_of(with_layers("[1, 2147483647, 1, 1]", R"([{"type": "conv2d", "name": "c",
                                   "in_channels": 2147483647, "out_channels": 2147483647, "kernel_size": 1}])")),
            "bad.json: layers[0]: the parameter 'c.weight' (2147483647, 2147483647, 1, 1) has more than 2^40 "
            "elements, the limit per tensor");
  // Nor the parameters together: two 1x1 convs of 2^20 channels have 2^40 weights each.
  EXPECT_EQ(error_of(with_layers("[1, 1048576, 1, 1]", R"([
      {"type": "conv2d", "name": "a", "in_channels": 1048576, "out_channels": 1048576, "kernel_size": 1,
       "bias": false},
      {"type": "conv2d", "name": "b", "in_channels": 1048576, "out_channels": 1048576, "kernel_size": 1,
       "bias": false}])")),
            "bad.json: layers[1]: the parameter 'b.weight' takes the parameters together past 2^40 elements, their "
            "limit");
}

TEST(NetworkParse, EmptyTextIsInvalidJson) { EXPECT_PRED_FORMAT2(Contains, error_of(""), "bad.json: invalid JSON: "); }

TEST(NetworkParse, TopLevelMustBeAnObject) {
  EXPECT_EQ(error_of("[1, 2]"), "bad.json: the network must be a JSON object, got a list");
  EXPECT_EQ(error_of("42"), "bad.json: the network must be a JSON object, got 42");
}

TEST(NetworkParse, MissingRequiredTopLevelKeys) {
  const std::string layers = R"([{"type": "relu"}])";
  EXPECT_EQ(error_of(R"({"input": [1, 1, 4, 4], "layers": )" + layers + "}"), "bad.json: name: missing required field");
  EXPECT_EQ(error_of(R"({"name": "t", "layers": )" + layers + "}"), "bad.json: input: missing required field");
  EXPECT_EQ(error_of(R"({"name": "t", "input": [1, 1, 4, 4]})"), "bad.json: layers: missing required field");
}

TEST(NetworkParse, NameMustBeAString) {
  EXPECT_EQ(error_of(R"({"name": 5, "input": [1, 1, 4, 4], "layers": [{"type": "relu"}]})"),
            "bad.json: name: must be a string, got 5");
  EXPECT_EQ(
      error_of(R"({"name": ")" + std::string(1025, 'n') + R"(", "input": [1, 1, 4, 4], "layers": [{"type": "relu"}]})"),
      "bad.json: name: must be at most 1024 bytes, got 1025");
}

TEST(NetworkParse, InputMustBeFourOrFiveDimensional) {
  EXPECT_EQ(error_of(with_layers("[2, 4, 8]", R"([{"type": "relu"}])")),
            "bad.json: input: must be (N, C, H, W) or (N, C, D, H, W), got (2, 4, 8)");
  EXPECT_EQ(error_of(with_layers("[1, 2, 3, 4, 5, 6]", R"([{"type": "relu"}])")),
            "bad.json: input: must be (N, C, H, W) or (N, C, D, H, W), got (1, 2, 3, 4, 5, 6)");
}

TEST(NetworkParse, InputMustHoldPositiveIntegers) {
  EXPECT_EQ(error_of(with_layers("[2, 0, 8, 8]", R"([{"type": "relu"}])")),
            "bad.json: input[1]: must be a positive integer, got 0");
  EXPECT_EQ(error_of(with_layers("[2, 4, 8.5, 8]", R"([{"type": "relu"}])")),
            "bad.json: input[2]: must be a positive integer, got 8.5");
  EXPECT_EQ(error_of(with_layers("[]", R"([{"type": "relu"}])")),
            "bad.json: input: must be a non-empty list of positive integers, got a list");
  EXPECT_EQ(error_of(with_layers("\"2x4x8x8\"", R"([{"type": "relu"}])")),
            "bad.json: input: must be a non-empty list of positive integers, got \"2x4x8x8\"");
}

TEST(NetworkParse, UnknownTopLevelKey) {
  EXPECT_EQ(error_of(with_layers(kInput4d, R"([{"type": "relu"}])", R"(, "epochs": 3)")),
            "bad.json: epochs: unknown key");
}

// The inputs the layers list are bounded in all (twice the most layers), counted before copied:
// one add may list them all, and the next name past the bound is refused by its path.
TEST(NetworkParse, TheLayersInputsAreBoundedInAll) {
  std::string names = "[";
  for (int i = 0; i < 200'000; ++i) names += std::string(i ? "," : "") + R"("c")";
  const std::string conv = R"({"type": "conv2d", "name": "c", "in_channels": 4, "out_channels": 4, "kernel_size": 1})";
  const std::string add = R"(, {"type": "add", "inputs": )";
  const Network all = Network::parse(with_layers(kInput4d, "[" + conv + add + names + "]}]"), "bad.json");
  EXPECT_EQ(all.layers().back().inputs.size(), 200'000u);
  EXPECT_EQ(error_of(with_layers(kInput4d, "[" + conv + add + names + R"(, "c"]}])")),
            "bad.json: layers[1].inputs: the layers may name at most 200000 inputs in all, these 200001 make 200001");
  EXPECT_EQ(error_of(with_layers(kInput4d, "[" + conv + add + names + R"(]}, {"type": "relu", "inputs": ["c"]}])")),
            "bad.json: layers[2].inputs: the layers may name at most 200000 inputs in all, these 1 make 200001");
}

TEST(NetworkParse, LayersMustBeANonEmptyListOfObjects) {
  EXPECT_EQ(error_of(with_layers(kInput4d, "[]")), "bad.json: layers: must be a non-empty list of layers, got a list");
  std::string many = "[";
  for (int i = 0; i <= 100'000; ++i) many += std::string(i ? "," : "") + R"({"type": "relu"})";
  EXPECT_EQ(error_of(with_layers(kInput4d, many + "]")), "bad.json: layers: at most 100000 layers, got 100001");
  EXPECT_EQ(error_of(with_layers(kInput4d, R"({"type": "relu"})")),
            "bad.json: layers: must be a non-empty list of layers, got an object");
  EXPECT_EQ(error_of(with_layers(kInput4d, R"([{"type": "relu"}, 3])")),
            "bad.json: layers[1]: must be an object, got 3");
  EXPECT_EQ(error_of(with_layers(kInput4d, R"([{"name": "a"}])")), "bad.json: layers[0].type: missing required field");
}

TEST(NetworkParse, UnknownLayerTypeListsTheKnownTypes) {
  const std::string msg = error_of(one_layer(R"({"type": "conv4d"})"));
  EXPECT_EQ(msg.rfind("bad.json: layers[0].type: unknown layer type 'conv4d' (known: add, avg_pool2d, avg_pool3d, "
                      "channel_scale, conv2d, conv3d, conv_transpose2d, conv_transpose3d, leaky_relu, ",
                      0),
            0u)
      << msg;
  // Sorted, and every activation of the pointwise family is a layer type of its own, plus relu.
  for (const char* type : {"max_pool2d", "max_pool3d", "relu", "sigmoid", "tanh"})
    EXPECT_PRED_FORMAT2(Contains, msg, std::string(type));
  for (anvil::PointwiseOp op : anvil::kAllPointwiseOps)
    EXPECT_PRED_FORMAT2(Contains, msg, std::string(" ") + anvil::pointwise_op_name(op));
}

TEST(NetworkParse, UnknownLayerKey) {
  EXPECT_EQ(error_of(one_layer(R"({"type": "leaky_relu", "slope": 0.2})")), "bad.json: layers[0].slope: unknown key");
  // relu has no slope to set; output_padding belongs to the transposed convolutions only.
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "negative_slope": 0.1})")),
            "bad.json: layers[0].negative_slope: unknown key");
  EXPECT_EQ(error_of(one_layer(
                R"({"type": "conv3d", "in_channels": 4, "out_channels": 4, "kernel_size": 3, "output_padding": 1})")),
            "bad.json: layers[0].output_padding: unknown key");
  EXPECT_EQ(error_of(one_layer(R"({"type": "max_pool3d", "kernel_size": 2, "ceil_mode": true})")),
            "bad.json: layers[0].ceil_mode: unknown key");
}

TEST(NetworkParse, ErrorsNameTheLayerIndex) {
  const std::string layers = R"([{"type": "relu"}, {"type": "relu"}, {"type": "max_pool3d", "kernel_size": 2,
                                 "stride": -1}])";
  EXPECT_EQ(error_of(with_layers(kInput5d, layers)), "bad.json: layers[2].stride: must be a positive integer, got -1");
}

// ---------------------------------------------------------------- value types

TEST(NetworkParse, StringWhereAnIntegerIsExpected) {
  EXPECT_EQ(error_of(one_layer(R"({"type": "max_pool3d", "kernel_size": 2, "stride": "2"})")),
            "bad.json: layers[0].stride: must be a positive integer, got \"2\"");
  EXPECT_EQ(error_of(one_layer(R"({"type": "conv3d", "in_channels": "4", "out_channels": 4, "kernel_size": 3})")),
            "bad.json: layers[0].in_channels: must be a positive integer, got \"4\"");
}

TEST(NetworkParse, FloatWhereAnIntegerIsExpected) {
  EXPECT_EQ(error_of(one_layer(R"({"type": "max_pool3d", "kernel_size": 2.0})")),
            "bad.json: layers[0].kernel_size: must be a positive integer, got 2.0");
  EXPECT_EQ(error_of(one_layer(R"({"type": "max_pool3d", "kernel_size": [2, 2.5, 2]})")),
            "bad.json: layers[0].kernel_size[1]: must be a positive integer, got 2.5");
  EXPECT_EQ(error_of(with_layers(kInput4d, R"([{"type": "relu"}])", R"(, "seed": 1.5)")),
            "bad.json: seed: must be a non-negative integer, got 1.5");
}

TEST(NetworkParse, PerDimListOfTheWrongLength) {
  EXPECT_EQ(error_of(one_layer(R"({"type": "max_pool3d", "kernel_size": [2, 2]})")),
            "bad.json: layers[0].kernel_size: must be an integer or a list of 3 integers, got a list of 2");
  EXPECT_EQ(error_of(one_layer(R"({"type": "max_pool2d", "kernel_size": [2, 2, 2]})", kInput4d)),
            "bad.json: layers[0].kernel_size: must be an integer or a list of 2 integers, got a list of 3");
  EXPECT_EQ(error_of(one_layer(
                R"({"type": "conv3d", "in_channels": 4, "out_channels": 4, "kernel_size": 3, "padding": []})")),
            "bad.json: layers[0].padding: must be an integer or a list of 3 integers, got a list of 0");
}

TEST(NetworkParse, BoolWhereANumberIsExpectedAndViceVersa) {
  EXPECT_EQ(error_of(one_layer(R"({"type": "leaky_relu", "negative_slope": true})")),
            "bad.json: layers[0].negative_slope: must be a number, got true");
  EXPECT_EQ(error_of(one_layer(R"({"type": "max_pool3d", "kernel_size": 2, "stride": true})")),
            "bad.json: layers[0].stride: must be a positive integer, got true");
  EXPECT_EQ(error_of(one_layer(R"({"type": "conv3d", "in_channels": 4, "out_channels": 4, "kernel_size": 3,
                                   "bias": 1})")),
            "bad.json: layers[0].bias: must be true or false, got 1");
  EXPECT_EQ(error_of(with_layers(kInput4d, R"([{"type": "relu"}])", R"(, "fuse": "yes")")),
            "bad.json: fuse: must be true or false, got \"yes\"");
  EXPECT_EQ(error_of(with_layers(kInput4d, R"([{"type": "relu"}])", R"(, "optimizer": {"lr": "0.1"})")),
            "bad.json: optimizer.lr: must be a number, got \"0.1\"");
}

TEST(NetworkParse, NullAndObjectValuesAreDescribed) {
  EXPECT_EQ(error_of(one_layer(R"({"type": "max_pool3d", "kernel_size": null})")),
            "bad.json: layers[0].kernel_size: must be a positive integer, got null");
  EXPECT_EQ(error_of(one_layer(R"({"type": "max_pool3d", "kernel_size": {"d": 2}})")),
            "bad.json: layers[0].kernel_size: must be a positive integer, got an object");
}

TEST(NetworkParse, NegativeAndZeroValues) {
  const std::string conv = R"({"type": "conv3d", "in_channels": 4, "out_channels": 4, "kernel_size": 3)";
  EXPECT_EQ(error_of(one_layer(conv + R"(, "stride": -1})")),
            "bad.json: layers[0].stride: must be a positive integer, got -1");
  EXPECT_EQ(error_of(one_layer(conv + R"(, "stride": 0})")),
            "bad.json: layers[0].stride: must be a positive integer, got 0");
  EXPECT_EQ(error_of(one_layer(conv + R"(, "dilation": 0})")),
            "bad.json: layers[0].dilation: must be a positive integer, got 0");
  EXPECT_EQ(error_of(one_layer(conv + R"(, "padding": -1})")),
            "bad.json: layers[0].padding: must be a non-negative integer, got -1");
  EXPECT_EQ(error_of(one_layer(conv + R"(, "padding": [1, -1, 0]})")),
            "bad.json: layers[0].padding[1]: must be a non-negative integer, got -1");
  EXPECT_EQ(error_of(one_layer(R"({"type": "conv3d", "in_channels": 4, "out_channels": 0, "kernel_size": 3})")),
            "bad.json: layers[0].out_channels: must be a positive integer, got 0");
  EXPECT_EQ(error_of(one_layer(R"({"type": "max_pool3d", "kernel_size": 0})")),
            "bad.json: layers[0].kernel_size: must be a positive integer, got 0");
  EXPECT_EQ(error_of(with_layers(kInput4d, R"([{"type": "relu"}])", R"(, "seed": -1)")),
            "bad.json: seed: must be a non-negative integer, got -1");
}

TEST(NetworkParse, ConvolutionRequiresChannelsAndKernel) {
  EXPECT_EQ(error_of(one_layer(R"({"type": "conv3d", "out_channels": 4, "kernel_size": 3})")),
            "bad.json: layers[0].in_channels: missing required field");
  EXPECT_EQ(error_of(one_layer(R"({"type": "conv3d", "in_channels": 4, "kernel_size": 3})")),
            "bad.json: layers[0].out_channels: missing required field");
  EXPECT_EQ(error_of(one_layer(R"({"type": "conv3d", "in_channels": 4, "out_channels": 4})")),
            "bad.json: layers[0].kernel_size: missing required field");
  EXPECT_EQ(error_of(one_layer(R"({"type": "avg_pool3d"})")),
            "bad.json: layers[0].kernel_size: missing required field");
}

// ---------------------------------------------------------------- geometry

TEST(NetworkParse, OutputPaddingMustBeBelowStrideOrDilation) {
  const std::string deconv = R"({"type": "conv_transpose3d", "in_channels": 4, "out_channels": 4, "kernel_size": 3)";
  EXPECT_EQ(error_of(one_layer(deconv + R"(, "stride": 2, "output_padding": 2})")),
            "bad.json: layers[0].output_padding: must be smaller than the stride or the dilation, got 2 with "
            "stride 2 and dilation 1");
  EXPECT_EQ(error_of(one_layer(deconv + R"(, "output_padding": 1})")),
            "bad.json: layers[0].output_padding: must be smaller than the stride or the dilation, got 1 with "
            "stride 1 and dilation 1");
  EXPECT_EQ(error_of(one_layer(deconv + R"(, "stride": [2, 1, 2], "output_padding": [1, 1, 1]})")),
            "bad.json: layers[0].output_padding: must be smaller than the stride or the dilation, got 1 with "
            "stride 1 and dilation 1");
  // PyTorch accepts output_padding < max(stride, dilation): below the dilation is enough.
  EXPECT_EQ(error_of(one_layer(deconv + R"(, "dilation": 2, "output_padding": 1})")), "<no error>");
  EXPECT_EQ(error_of(one_layer(deconv + R"(, "stride": 2, "output_padding": 1})")), "<no error>");
}

TEST(NetworkParse, ConvKernelLargerThanThePaddedInput) {
  // D = 2, H = W = 8: a 3-wide kernel without padding does not fit along D (spatial dim 0).
  EXPECT_EQ(error_of(one_layer(R"({"type": "conv3d", "in_channels": 4, "out_channels": 4, "kernel_size": 3})",
                               "[2, 4, 2, 8, 8]")),
            "bad.json: layers[0].kernel_size: kernel (effective size 3) is larger than the padded input (2) along "
            "spatial dim 0");
  // Padding 1 makes it fit: 2 + 2*1 = 4 >= 3.
  EXPECT_EQ(error_of(one_layer(R"({"type": "conv3d", "in_channels": 4, "out_channels": 4, "kernel_size": 3,
                                   "padding": 1})",
                               "[2, 4, 2, 8, 8]")),
            "<no error>");
  // Dilation 4 stretches a 3-tap kernel to 9 > 8 along W.
  EXPECT_EQ(error_of(one_layer(R"({"type": "conv2d", "in_channels": 4, "out_channels": 4, "kernel_size": [1, 3],
                                   "dilation": [1, 4]})",
                               kInput4d)),
            "bad.json: layers[0].kernel_size: kernel (effective size 9) is larger than the padded input (8) along "
            "spatial dim 1");
}

TEST(NetworkParse, PoolKernelLargerThanThePaddedInput) {
  EXPECT_EQ(error_of(one_layer(R"({"type": "max_pool3d", "kernel_size": [2, 2, 4]})", "[2, 4, 8, 8, 3]")),
            "bad.json: layers[0].kernel_size: kernel (4) is larger than the padded input (3) along spatial dim 2");
  EXPECT_EQ(error_of(one_layer(R"({"type": "avg_pool2d", "kernel_size": 9})", kInput4d)),
            "bad.json: layers[0].kernel_size: kernel (9) is larger than the padded input (8) along spatial dim 0");
}

TEST(NetworkParse, PoolPaddingAtMostHalfTheKernel) {
  EXPECT_EQ(error_of(one_layer(R"({"type": "max_pool3d", "kernel_size": 3, "padding": 2})")),
            "bad.json: layers[0].padding: must be at most half the kernel size, got 2 with kernel 3");
  EXPECT_EQ(error_of(one_layer(R"({"type": "avg_pool3d", "kernel_size": [2, 4, 2], "padding": [1, 2, 2]})")),
            "bad.json: layers[0].padding: must be at most half the kernel size, got 2 with kernel 2");
  // Exactly half is allowed, as in PyTorch.
  EXPECT_EQ(error_of(one_layer(R"({"type": "max_pool3d", "kernel_size": 2, "padding": 1})")), "<no error>");
}

TEST(NetworkParse, ConvTransposePaddingThatLeavesNoOutput) {
  // (1 - 1) * 1 - 2 * 1 + 1 + 0 = -1 along every spatial dim.
  EXPECT_EQ(error_of(one_layer(
                R"({"type": "conv_transpose3d", "in_channels": 4, "out_channels": 4, "kernel_size": 1, "padding": 1})",
                "[2, 4, 1, 1, 1]")),
            "bad.json: layers[0].padding: leaves no output along spatial dim 0 (size -1)");
}

TEST(NetworkParse, InChannelsMustMatchTheIncomingTensor) {
  EXPECT_EQ(error_of(one_layer(R"({"type": "conv3d", "in_channels": 3, "out_channels": 4, "kernel_size": 1})")),
            "bad.json: layers[0].in_channels: 3 does not match the input's 4 channels (2, 4, 8, 8, 8)");
  // The second conv sees the first one's 6 output channels, not the network input's 4.
  const std::string layers = R"([
    {"type": "conv3d", "in_channels": 4, "out_channels": 6, "kernel_size": 1},
    {"type": "conv_transpose3d", "in_channels": 4, "out_channels": 2, "kernel_size": 1}])";
  EXPECT_EQ(error_of(with_layers(kInput5d, layers)),
            "bad.json: layers[1].in_channels: 4 does not match the input's 6 channels (2, 6, 8, 8, 8)");
}

TEST(NetworkParse, LayerRankMustMatchTheInputRank) {
  EXPECT_EQ(
      error_of(one_layer(R"({"type": "conv3d", "in_channels": 4, "out_channels": 4, "kernel_size": 1})", kInput4d)),
      "bad.json: layers[0]: 'conv3d' needs a 5-d input (N, C, D, H, W), got (2, 4, 8, 8)");
  EXPECT_EQ(error_of(one_layer(R"({"type": "conv_transpose2d", "in_channels": 4, "out_channels": 4,
                                   "kernel_size": 1})")),
            "bad.json: layers[0]: 'conv_transpose2d' needs a 4-d input (N, C, H, W), got (2, 4, 8, 8, 8)");
  EXPECT_EQ(error_of(one_layer(R"({"type": "max_pool2d", "kernel_size": 2})")),
            "bad.json: layers[0]: 'max_pool2d' needs a 4-d input (N, C, H, W), got (2, 4, 8, 8, 8)");
}

// ---------------------------------------------------------------- the DAG

TEST(NetworkParse, AddNeedsTwoInputsOfOneShape) {
  EXPECT_EQ(error_of(one_layer(R"({"type": "add"})")),
            "bad.json: layers[0].inputs: 'add' takes two or more inputs, got 1");
  EXPECT_EQ(error_of(one_layer(R"({"type": "add", "inputs": ["input"]})")),
            "bad.json: layers[0].inputs: 'add' takes two or more inputs, got 1");
  const std::string layers = R"([
    {"type": "conv3d", "name": "c", "in_channels": 4, "out_channels": 3, "kernel_size": 1},
    {"type": "add", "inputs": ["input", "c"]}])";
  EXPECT_EQ(error_of(with_layers(kInput5d, layers)),
            "bad.json: layers[1].inputs: all inputs must have one shape, got (2, 4, 8, 8, 8) and (2, 3, 8, 8, 8)");
  // The same tensor twice is a valid add (x + x).
  EXPECT_EQ(error_of(one_layer(R"({"type": "add", "inputs": ["input", "input"]})")), "<no error>");
}

TEST(NetworkParse, SingleInputLayersRefuseSeveralInputs) {
  EXPECT_EQ(error_of(one_layer(R"({"type": "leaky_relu", "inputs": ["input", "input"]})")),
            "bad.json: layers[0].inputs: 'leaky_relu' takes 1 input(s), got 2");
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "inputs": []})")),
            "bad.json: layers[0].inputs: must name at least one tensor");
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "inputs": "input"})")),
            "bad.json: layers[0].inputs: must be a list of names, got \"input\"");
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "inputs": [0]})")),
            "bad.json: layers[0].inputs[0]: must be a name, got 0");
}

TEST(NetworkParse, DuplicateLayerNames) {
  const std::string layers = R"([{"type": "relu", "name": "a"}, {"type": "relu", "name": "a"}])";
  EXPECT_EQ(error_of(with_layers(kInput5d, layers)), "bad.json: layers[1].name: duplicate name 'a' (also layers[0])");
  // A default name ("<type>_<index>") collides with an explicit one just the same.
  const std::string clash = R"([{"type": "relu", "name": "leaky_relu_1"}, {"type": "leaky_relu"}])";
  EXPECT_EQ(error_of(with_layers(kInput5d, clash)),
            "bad.json: layers[1].name: duplicate name 'leaky_relu_1' (also layers[0])");
}

TEST(NetworkParse, ReservedAndMalformedLayerNames) {
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "name": "input"})")),
            "bad.json: layers[0].name: 'input' is reserved; choose another name");
  // A channel_scale "grad.input" had its gradient replaced by the input's in a --dump-grads file.
  EXPECT_EQ(error_of(one_layer(R"({"type": "channel_scale", "name": "grad.input"})")),
            "bad.json: layers[0].name: 'grad.input' is reserved (--dump-grads names the input's gradient so); "
            "choose another name");
  EXPECT_EQ(error_of(one_layer(R"({"type": "channel_scale", "name": "grad.input.x"})")), "<no error>");
  // Its parameter would be "__metadata__", which no safetensors file can hold: refused before any training.
  EXPECT_EQ(error_of(one_layer(R"({"type": "channel_scale", "name": "__metadata__"})")),
            "bad.json: layers[0].name: '__metadata__' is reserved (tensor files keep it for their metadata); "
            "choose another name");
  EXPECT_EQ(error_of(one_layer(R"({"type": "channel_scale", "name": "__metadata__.x"})")), "<no error>");
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "name": ""})")), "bad.json: layers[0].name: must not be empty");
  // Names go into the headers of checkpoints and weights files: a layer's at most 256 characters, the network's
  // at most 1024 bytes.
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "name": ")" + std::string(257, 'a') + "\"}")),
            "bad.json: layers[0].name: must be at most 256 characters, got 257");
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "name": ")" + std::string(256, 'a') + "\"}")), "<no error>");
  const std::string charset = "bad.json: layers[0].name: must use only letters, digits, '_', '-' and '.', got ";
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "name": "a b"})")), charset + "'a b'");
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "name": "a+b"})")), charset + "'a+b'");
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "name": "a/b"})")), charset + "'a/b'");
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "name": "caf\u00e9"})")), charset + "'caf\xc3\xa9'");
  // Control bytes are escaped: every message is one line.
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "name": "a\tb"})")), charset + "'a\\tb'");
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "name": "conv\nX"})")), charset + "'conv\\nX'");
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "name": "a\u0001b"})")), charset + "'a\\x01b'");
  EXPECT_EQ(error_of(one_layer(R"({"type": "conv2d", "name": "optimizer.momentum.fc", "in_channels": 3, )"
                               R"("out_channels": 3, "kernel_size": 1})")),
            "bad.json: layers[0].name: must not start with 'optimizer.' (a checkpoint's optimizer state is named so), "
            "got 'optimizer.momentum.fc'");
  EXPECT_EQ(error_of(one_layer(R"({"type": "relu", "name": "optimizer"})")), "<no error>");
  for (const char* name : {".a", "a.", "a..b", "."})
    EXPECT_EQ(
        error_of(one_layer(R"({"type": "relu", "name": ")" + std::string(name) + "\"}")),
        "bad.json: layers[0].name: must not start or end with '.' or contain '..', got '" + std::string(name) + "'");
}

// PyTorch names a nested module's parameters by its path: "block.conv" has "block.conv.weight".
TEST(NetworkParse, DottedLayerNamesNameTheirParametersAsPyTorchDoes) {
  const std::string layers = R"([
    {"type": "conv2d", "name": "block.conv", "in_channels": 4, "out_channels": 3, "kernel_size": 1},
    {"type": "channel_scale", "name": "block.gain"},
    {"type": "relu", "name": "head.act"}])";
  const Network net = Network::parse(with_layers(kInput4d, layers), "dots.json");
  EXPECT_EQ(param_shapes(net),
            (std::map<std::string, Shape>{
                {"block.conv.weight", {3, 4, 1, 1}}, {"block.conv.bias", {3}}, {"block.gain", {3, 1, 1}}}));
  EXPECT_EQ(net.layers().back().name, "head.act");
}

TEST(NetworkParse, DanglingInputName) {
  const std::string layers = R"([{"type": "relu", "name": "a"}, {"type": "relu", "inputs": ["nope"]}])";
  EXPECT_EQ(error_of(with_layers(kInput5d, layers)), "bad.json: layers[1].inputs[0]: no layer or input named 'nope'");
}

TEST(NetworkParse, CycleIsReportedWithItsLayers) {
  const std::string layers = R"([{"type": "relu", "name": "a", "inputs": ["b"]},
                                 {"type": "relu", "name": "b", "inputs": ["a"]}])";
  const std::string msg = error_of(with_layers(kInput5d, layers));
  EXPECT_PRED_FORMAT2(Contains, msg, "bad.json: layers[0].inputs: the layers form a cycle: ");
  EXPECT_PRED_FORMAT2(Contains, msg, "a");
  EXPECT_PRED_FORMAT2(Contains, msg, "b");
  // A layer feeding itself.
  EXPECT_EQ(error_of(with_layers(kInput5d, R"([{"type": "relu", "name": "self", "inputs": ["self"]}])")),
            "bad.json: layers[0].inputs: the layers form a cycle: self <- self");
}

// "x <- y" reads "x takes its input from y": the cycle should read a <- b <- a,
// each member once and the first repeated at the end.
TEST(NetworkParse, CycleMessageFollowsTheInputs) {
  const std::string two = R"([{"type": "relu", "name": "a", "inputs": ["b"]},
                              {"type": "relu", "name": "b", "inputs": ["a"]}])";
  EXPECT_EQ(error_of(with_layers(kInput5d, two)), "bad.json: layers[0].inputs: the layers form a cycle: a <- b <- a");
  // a takes c, c takes b, b takes a.
  const std::string three = R"([{"type": "relu", "name": "a", "inputs": ["c"]},
                                {"type": "relu", "name": "b", "inputs": ["a"]},
                                {"type": "relu", "name": "c", "inputs": ["b"]}])";
  EXPECT_EQ(error_of(with_layers(kInput5d, three)),
            "bad.json: layers[0].inputs: the layers form a cycle: a <- c <- b <- a");
}

TEST(NetworkParse, LayerWhoseOutputIsNeverUsed) {
  const std::string layers = R"([{"type": "relu", "name": "a"}, {"type": "leaky_relu", "inputs": ["input"]}])";
  EXPECT_EQ(error_of(with_layers(kInput5d, layers)),
            "bad.json: layers[0]: the output of 'a' is never used (only the last layer's output feeds the loss)");
}

// Parameter names are "<layer>.weight", "<layer>.bias" and channel_scale's bare "<layer>": a layer named
// "c.bias" would give a second parameter named "c.bias", and state_dict-style files could no longer tell
// the two apart. Such a network must be refused.
TEST(NetworkParse, ParameterNamesMustBeUnique) {
  const std::string layers = R"([
    {"type": "conv3d", "name": "c", "in_channels": 4, "out_channels": 4, "kernel_size": 1},
    {"type": "channel_scale", "name": "c.bias"}])";
  EXPECT_EQ(error_of(with_layers(kInput5d, layers)),
            "bad.json: layers[1].name: 'c.bias' is also a parameter of layers[0] ('c')");
}

// A layer's output tensor and a parameter share one namespace too, whichever is listed first.
TEST(NetworkParse, LayerNamesMustNotBeParameterNames) {
  const std::string conv =
      R"({"type": "conv3d", "name": "conv", "in_channels": 4, "out_channels": 4, "kernel_size": 1})";
  const std::string relu = R"({"type": "relu", "name": "conv.weight"})";
  EXPECT_EQ(error_of(with_layers(kInput5d, "[" + conv + ", " + relu + "]")),
            "bad.json: layers[1].name: 'conv.weight' is also a parameter of layers[0] ('conv')");
  const std::string relu_first = R"({"type": "relu", "name": "conv.weight", "inputs": ["input"]})";
  const std::string conv_after = R"({"type": "conv3d", "name": "conv", "in_channels": 4, "out_channels": 4,
                                    "kernel_size": 1, "inputs": ["conv.weight"]})";
  EXPECT_EQ(error_of(with_layers(kInput5d, "[" + relu_first + ", " + conv_after + "]")),
            "bad.json: layers[1]: parameter 'conv.weight' is also the name of layers[0]");
}

// ---------------------------------------------------------------- top-level settings

TEST(NetworkParse, BadOptimizer) {
  auto opt = [](const std::string& o) {
    return error_of(with_layers(kInput4d, R"([{"type": "relu"}])", ", \"optimizer\": " + o));
  };
  EXPECT_EQ(opt(R"({"type": "rmsprop"})"),
            "bad.json: optimizer.type: unknown optimizer 'rmsprop' (known: adam, adamw, sgd)");
  EXPECT_EQ(opt(R"({"lr": -0.1})"), "bad.json: optimizer.lr: must be >= 0, got -0.1");
  EXPECT_EQ(opt(R"({"momentum": -0.5})"), "bad.json: optimizer.momentum: must be >= 0, got -0.5");
  EXPECT_EQ(opt(R"({"weight_decay": -1})"), "bad.json: optimizer.weight_decay: must be >= 0, got -1");
  // Finite in double, but inf as the float it is computed with.
  EXPECT_EQ(opt(R"({"lr": 1e300})"),
            "bad.json: optimizer.lr: must be within float's range (magnitude at most 3.4e38), got 1e+300");
  EXPECT_EQ(opt(R"({"dampening": -3.5e38})"),
            "bad.json: optimizer.dampening: must be within float's range (magnitude at most 3.4e38), got -3.5e+38");
  EXPECT_EQ(opt(R"({"momentum": 3.4e38})"), "<no error>");
  EXPECT_EQ(opt(R"({"nesterov": true})"),
            "bad.json: optimizer.nesterov: requires momentum > 0 and dampening 0, as in torch.optim.SGD");
  EXPECT_EQ(opt(R"({"nesterov": true, "momentum": 0.9, "dampening": 0.1})"),
            "bad.json: optimizer.nesterov: requires momentum > 0 and dampening 0, as in torch.optim.SGD");
  EXPECT_EQ(opt(R"({"betas": [0.9, 0.99]})"), "bad.json: optimizer.betas: unknown key");  // SGD has no betas
  EXPECT_EQ(opt(R"("sgd")"), "bad.json: optimizer: must be an object, got \"sgd\"");
  EXPECT_EQ(opt(R"({"nesterov": true, "momentum": 0.9})"), "<no error>");
  // Adam and AdamW.
  EXPECT_EQ(opt(R"({"type": "adam", "betas": [0.9]})"),
            "bad.json: optimizer.betas: must be a list of two numbers, got a list");
  EXPECT_EQ(opt(R"({"type": "adamw", "betas": [0.9, 1.0]})"),
            "bad.json: optimizer.betas[1]: must be in [0, 1) as a float, got 1.0");
  EXPECT_EQ(opt(R"({"type": "adam", "betas": [0.99999999999, 0.9]})"),  // below 1, but 1.0f
            "bad.json: optimizer.betas[0]: must be in [0, 1) as a float, got 0.99999999999");
  EXPECT_EQ(opt(R"({"type": "adam", "betas": [0.9, 1e300]})"),
            "bad.json: optimizer.betas[1]: must be in [0, 1) as a float, got 1e+300");
  EXPECT_EQ(opt(R"({"type": "adam", "betas": ["x", 0.9]})"),  // the element is named, not the list
            "bad.json: optimizer.betas[0]: must be in [0, 1) as a float, got \"x\"");
  // Positive values that the optimizer's float would make 0.
  EXPECT_EQ(opt(R"({"lr": 1e-320})"), "bad.json: optimizer.lr: is below float's range and would be 0, got 1e-320");
  EXPECT_EQ(opt(R"({"type": "adam", "eps": 1e-46})"),
            "bad.json: optimizer.eps: is below float's range and would be 0, got 1e-46");
  EXPECT_EQ(opt(R"({"lr": 1e-45, "weight_decay": 0.0})"), "<no error>");  // float's smallest subnormal
  EXPECT_EQ(opt(R"({"type": "adam", "eps": -1e-8})"), "bad.json: optimizer.eps: must be >= 0, got -1e-08");
  EXPECT_EQ(opt(R"({"type": "adam", "amsgrad": true})"),
            "bad.json: optimizer.amsgrad: is not supported (only amsgrad: false)");
  EXPECT_EQ(opt(R"({"type": "adam", "momentum": 0.9})"), "bad.json: optimizer.momentum: unknown key");
  // Schedules.
  EXPECT_EQ(opt(R"({"lr_schedule": {"type": "exponential"}})"),
            "bad.json: optimizer.lr_schedule.type: unknown lr_schedule 'exponential' (known: cosine, step)");
  EXPECT_EQ(opt(R"({"lr_schedule": {"type": "step"}})"),
            "bad.json: optimizer.lr_schedule.step_size: missing required field");
  EXPECT_EQ(opt(R"({"lr_schedule": {"type": "step", "step_size": 2, "gamma": 0}})"),
            "bad.json: optimizer.lr_schedule.gamma: must be > 0, got 0");
  EXPECT_EQ(opt(R"({"lr_schedule": {"type": "cosine", "warmup_steps": 5, "total_steps": 5}})"),
            "bad.json: optimizer.lr_schedule.total_steps: must be larger than warmup_steps (5), got 5");
  EXPECT_EQ(opt(R"({"lr_schedule": {"type": "cosine", "total_steps": 5, "min": 0}})"),
            "bad.json: optimizer.lr_schedule.min: unknown key");
}

TEST(NetworkParse, AdamDefaultsAreTorchs) {
  auto spec_of = [](const std::string& o) {
    return Network::parse(with_layers(kInput4d, R"([{"type": "conv2d", "in_channels": 4, "out_channels": 2,
                                                    "kernel_size": 1}])",
                                      ", \"optimizer\": " + o),
                          "t.json")
        .spec()
        .optimizer;
  };
  const auto adam = spec_of(R"({"type": "adam"})");
  EXPECT_DOUBLE_EQ(adam.schedule.base_lr, 0.001);
  EXPECT_FLOAT_EQ(adam.adam.beta1, 0.9f);
  EXPECT_FLOAT_EQ(adam.adam.beta2, 0.999f);
  EXPECT_FLOAT_EQ(adam.adam.eps, 1e-8f);
  EXPECT_FLOAT_EQ(adam.adam.weight_decay, 0.f);
  EXPECT_FALSE(adam.adam.decoupled_weight_decay);
  const auto adamw = spec_of(R"({"type": "adamw", "lr": 0.01, "betas": [0.8, 0.9],
                                 "lr_schedule": {"type": "cosine", "warmup_steps": 2, "total_steps": 10, "min_lr": 1e-4}})");
  EXPECT_FLOAT_EQ(adamw.adam.weight_decay, 0.01f);
  EXPECT_TRUE(adamw.adam.decoupled_weight_decay);
  EXPECT_FLOAT_EQ(adamw.adam.beta1, 0.8f);
  EXPECT_EQ(adamw.schedule.kind, anvil::LrSchedule::Kind::Cosine);
  EXPECT_EQ(adamw.schedule.warmup_steps, 2);
  EXPECT_EQ(adamw.schedule.total_steps, 10);
  EXPECT_DOUBLE_EQ(adamw.schedule.min_lr, 1e-4);
  EXPECT_DOUBLE_EQ(adamw.schedule.base_lr, 0.01);
}

TEST(NetworkParse, BadPrecisionAndLoss) {
  EXPECT_EQ(error_of(with_layers(kInput4d, R"([{"type": "relu"}])", R"(, "precision": "fp16")")),
            "bad.json: precision: must be \"tf32\" or \"fp32\", got \"fp16\"");
  auto loss = [](const std::string& l) {
    return error_of(with_layers(kInput4d, R"([{"type": "relu"}])", ", \"loss\": " + l));
  };
  EXPECT_EQ(loss(R"("huber")"), "bad.json: loss: unknown loss 'huber' (known: l1, mse, smooth_l1)");
  EXPECT_EQ(loss(R"({"type": "huber"})"), "bad.json: loss.type: unknown loss 'huber' (known: l1, mse, smooth_l1)");
  EXPECT_EQ(loss("1"), "bad.json: loss: must be a loss name or an object with \"type\", got 1");
  EXPECT_EQ(loss(R"({"type": "smooth_l1", "beta": -1})"), "bad.json: loss.beta: must be >= 0, got -1");
  EXPECT_EQ(loss(R"({"type": "l1", "beta": 1})"), "bad.json: loss.beta: unknown key");
  EXPECT_EQ(loss(R"({"beta": 1})"), "bad.json: loss.type: missing required field");
  for (const char* ok : {R"("mse")", R"("l1")", R"("smooth_l1")", R"({"type": "smooth_l1", "beta": 0.5})"})
    EXPECT_EQ(loss(ok), "<no error>") << ok;
}

TEST(NetworkParse, LoadNamesTheFileWhenItCannotBeOpened) {
  const std::string path = std::string(ANVIL_SOURCE_DIR) + "/no/such/network.json";
  try {
    Network::load(path);
    FAIL() << "loaded a missing file";
  } catch (const anvil::InputError& e) {
    EXPECT_EQ(std::string(e.what()), path + ": cannot open the network file: No such file or directory");
  }
}

// What is not a regular file is refused before it is opened: a FIFO would wait for a writer, and
// /dev/zero would be read until memory runs out.
TEST(NetworkParse, LoadRefusesWhatIsNotARegularFile) {
  const std::string dir = ::testing::TempDir() + "anvil_network_test_dir";
  const std::string fifo = ::testing::TempDir() + "anvil_network_test_fifo";
  std::filesystem::create_directories(dir);
  std::remove(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {dir, dir + ": cannot read the network file: it is a directory"},
      {fifo, fifo + ": cannot read the network file: not a regular file"},
      {"/dev/zero", "/dev/zero: cannot read the network file: not a regular file"},
  };
  for (const auto& [path, want] : cases) {
    try {
      Network::load(path);
      ADD_FAILURE() << "loaded " << path;
    } catch (const anvil::InputError& e) {
      EXPECT_EQ(std::string(e.what()), want);
    }
  }
  std::remove(fifo.c_str());
}

// A batch set after parsing (the CLI's --batch, data-parallel slicing) meets the input's limit too.
TEST(NetworkParse, ABatchThatTakesTheInputPastTheLimitIsRefused) {
  const Network net = Network::parse(with_layers("[1, 1, 1048576, 1048576]", R"([{"type": "relu"}])"), "big.json");
  try {
    net.with_batch(16777216);
    ADD_FAILURE() << "a batch of 2^24 inputs of 2^40 elements was accepted";
  } catch (const anvil::InputError& e) {
    EXPECT_EQ(std::string(e.what()),
              "big.json: at batch 16777216: input: (16777216, 1, 1048576, 1048576) has more "
              "than 2^40 elements, the limit per tensor");
  }
}

// A batch beyond a dimension's limit (2^31 - 1, as the JSON's input) is refused by value.
TEST(NetworkParse, ABatchOutsideADimensionsRangeIsRefused) {
  const Network net = Network::parse(with_layers("[1, 2, 3, 4]", R"([{"type": "relu"}])"), "small.json");
  for (int64_t batch : {int64_t(0), int64_t(-3), anvil::kMaxDimension + 1, int64_t(1) << 32}) {
    try {
      net.with_batch(batch);
      ADD_FAILURE() << "batch " << batch << " was accepted";
    } catch (const anvil::InputError& e) {
      EXPECT_EQ(std::string(e.what()),
                "batch size must be an integer from 1 to 2147483647, got " + std::to_string(batch));
    }
  }
  EXPECT_EQ(net.with_batch(anvil::kMaxDimension).input_shape()[0], anvil::kMaxDimension);
}

// The CLI's --precision: only the precision changes, and a later batch (--batch, data-parallel
// slicing) keeps it. The hash, a checkpoint's identity of the network, stays the file's.
TEST(NetworkParse, WithPrecisionChangesOnlyThePrecision) {
  const Network tf32 = Network::parse(with_layers("[2, 3, 4, 4]", R"([{"type": "relu"}])"), "p.json");
  ASSERT_EQ(tf32.precision(), anvil::Precision::TF32);
  const Network fp32 = tf32.with_precision(anvil::Precision::FP32);
  EXPECT_EQ(fp32.precision(), anvil::Precision::FP32);
  EXPECT_EQ(fp32.input_shape(), tf32.input_shape());
  EXPECT_EQ(fp32.spec().hash, tf32.spec().hash);
  EXPECT_EQ(fp32.with_batch(5).precision(), anvil::Precision::FP32);
  EXPECT_EQ(fp32.with_precision(anvil::Precision::TF32).precision(), anvil::Precision::TF32);
  EXPECT_EQ(tf32.precision(), anvil::Precision::TF32);  // the original is untouched
}

// A Precision made by a cast is refused by name, as Options' enums are, not read as tf32 by some
// layers and fp32 by others.
TEST(NetworkParse, WithPrecisionRefusesAValueThatIsNotAPrecision) {
  const Network net = Network::parse(with_layers("[2, 3, 4, 4]", R"([{"type": "relu"}])"), "p.json");
  try {
    net.with_precision(static_cast<anvil::Precision>(7));
    FAIL() << "a Precision of 7 was taken";
  } catch (const anvil::InputError& e) {
    EXPECT_EQ(std::string(e.what()), "with_precision: 7 is not a Precision");
  }
}

TEST(NetworkParse, LoadPrefixesErrorsWithThePath) {
  const std::string path = ::testing::TempDir() + "anvil_network_test_bad.json";
  {
    std::ofstream out(path);
    out << R"({"name": "t", "input": [2, 4, 8, 8], "layers": [{"type": "max_pool2d", "kernel_size": 2, "stride": -1}]})";
  }
  try {
    Network::load(path);
    ADD_FAILURE() << "loaded a bad network";
  } catch (const anvil::InputError& e) {
    EXPECT_EQ(std::string(e.what()), path + ": layers[0].stride: must be a positive integer, got -1");
  }
  std::remove(path.c_str());
}

// ---------------------------------------------------------------- valid networks

TEST(NetworkValid, HeadlineExampleShapesParametersAndFusion) {
  const Network net = load_example("examples/kernelbench74.json");
  EXPECT_EQ(net.name(), "kernelbench74");
  EXPECT_EQ(net.input_shape(), (Shape{16, 16, 16, 32, 32}));
  // ConvTranspose3d(16, 32, 3, stride 2, padding 1, output_padding 1): (n-1)*2 - 2 + 3 + 1 = 2n.
  // MaxPool3d(2) halves it again.
  EXPECT_EQ(net.output_shape(), (Shape{16, 32, 16, 32, 32}));
  EXPECT_EQ(net.precision(), anvil::Precision::TF32);
  EXPECT_EQ(net.seed(), 0u);
  EXPECT_TRUE(net.fuse());
  EXPECT_DOUBLE_EQ(net.spec().optimizer.schedule.base_lr, 0.01);
  EXPECT_FLOAT_EQ(net.spec().optimizer.sgd.momentum, 0.9f);
  EXPECT_FLOAT_EQ(net.spec().optimizer.sgd.dampening, 0.f);
  EXPECT_FLOAT_EQ(net.spec().optimizer.sgd.weight_decay, 0.f);
  EXPECT_FALSE(net.spec().optimizer.sgd.nesterov);

  const auto layers = net.layers();
  ASSERT_EQ(layers.size(), 5u);
  const std::vector<std::string> names = {"conv_transpose", "leaky_relu_1", "multiplier", "leaky_relu_3",
                                          "max_pool3d_4"};
  const std::vector<std::string> types = {"conv_transpose3d", "leaky_relu", "channel_scale", "leaky_relu",
                                          "max_pool3d"};
  const Shape full = {16, 32, 32, 64, 64};
  const std::vector<Shape> shapes = {full, full, full, full, {16, 32, 16, 32, 32}};
  const std::vector<int64_t> counts = {16 * 32 * 27 + 32, 0, 32, 0, 0};
  for (size_t i = 0; i < layers.size(); ++i) {
    EXPECT_EQ(layers[i].name, names[i]);
    EXPECT_EQ(layers[i].type, types[i]);
    EXPECT_EQ(layers[i].output_shape, shapes[i]) << names[i];
    EXPECT_EQ(layers[i].param_count, counts[i]) << names[i];
    ASSERT_EQ(layers[i].inputs.size(), 1u);
    EXPECT_EQ(layers[i].inputs[0], i == 0 ? "input" : names[i - 1]);
  }
  EXPECT_EQ(net.parameter_count(), 16 * 32 * 27 + 32 + 32);

  const auto params = param_shapes(net);
  const std::map<std::string, Shape> expected = {
      {"conv_transpose.weight", {16, 32, 3, 3, 3}}, {"conv_transpose.bias", {32}}, {"multiplier", {32, 1, 1, 1}}};
  EXPECT_EQ(params, expected);

  EXPECT_EQ(net.fusion_groups(), ANVIL_WITH_CUDA ? Groups{names} : Groups{});  // the fusion rules are CUDA-only
}

TEST(NetworkValid, InitialisationFollowsPyTorchDefaults) {
  const Network net = load_example("examples/kernelbench74.json");
  const auto params = net.build_graph()->params();
  ASSERT_EQ(params.size(), 3u);
  // ConvTranspose3d weight (in, out, k, k, k): fan_in = weight.size(1) * k^3 = 32 * 27.
  const double bound = 1.0 / std::sqrt(32.0 * 27.0);
  EXPECT_EQ(params[0].name, "conv_transpose.weight");
  EXPECT_EQ(params[0].init, anvil::ParamSpec::Init::Uniform);
  EXPECT_DOUBLE_EQ(params[0].bound, bound);
  EXPECT_EQ(params[1].name, "conv_transpose.bias");
  EXPECT_EQ(params[1].init, anvil::ParamSpec::Init::Uniform);
  EXPECT_DOUBLE_EQ(params[1].bound, bound);
  EXPECT_EQ(params[2].name, "multiplier");
  EXPECT_EQ(params[2].init, anvil::ParamSpec::Init::Normal);

  // Conv3d weight (out, in, k...): fan_in = in * prod(k).
  const Network conv = Network::parse(
      one_layer(R"({"type": "conv3d", "name": "c", "in_channels": 4, "out_channels": 6, "kernel_size": [1, 2, 3]})"),
      "conv.json");
  const auto cp = conv.build_graph()->params();
  ASSERT_EQ(cp.size(), 2u);
  EXPECT_EQ(cp[0].shape, (Shape{6, 4, 1, 2, 3}));
  EXPECT_DOUBLE_EQ(cp[0].bound, 1.0 / std::sqrt(4.0 * 6.0));
  EXPECT_EQ(cp[1].shape, (Shape{6}));
}

TEST(NetworkValid, DefaultsOfAMinimalNetwork) {
  const Network net = Network::parse(with_layers(kInput4d, R"([{"type": "leaky_relu"}])"), "min.json");
  EXPECT_EQ(net.source(), "min.json");
  EXPECT_EQ(net.precision(), anvil::Precision::TF32);
  EXPECT_EQ(net.seed(), 0u);
  EXPECT_TRUE(net.fuse());
  EXPECT_DOUBLE_EQ(net.spec().optimizer.schedule.base_lr, 0.01);  // anvil's default lr
  EXPECT_FLOAT_EQ(net.spec().optimizer.sgd.momentum, 0.f);
  EXPECT_FALSE(net.spec().optimizer.sgd.nesterov);
  EXPECT_EQ(net.output_shape(), (Shape{2, 4, 8, 8}));
  EXPECT_EQ(net.parameter_count(), 0);
  ASSERT_EQ(net.layers().size(), 1u);
  EXPECT_EQ(net.layers()[0].name, "leaky_relu_0");
  EXPECT_TRUE(net.fusion_groups().empty());
}

TEST(NetworkValid, TopLevelSettingsAreRead) {
  const Network net = Network::parse(with_layers(kInput4d, R"([{"type": "relu"}])",
                                                 R"(, "precision": "fp32", "seed": 42, "fuse": false, "loss": "mse",
                                                    "optimizer": {"type": "sgd", "lr": 0.5, "momentum": 0.8,
                                                    "dampening": 0.1, "weight_decay": 0.001})"),
                                     "s.json");
  EXPECT_EQ(net.precision(), anvil::Precision::FP32);
  EXPECT_EQ(net.seed(), 42u);
  EXPECT_FALSE(net.fuse());
  EXPECT_DOUBLE_EQ(net.spec().optimizer.schedule.base_lr, 0.5);
  EXPECT_FLOAT_EQ(net.spec().optimizer.sgd.momentum, 0.8f);
  EXPECT_FLOAT_EQ(net.spec().optimizer.sgd.dampening, 0.1f);
  EXPECT_FLOAT_EQ(net.spec().optimizer.sgd.weight_decay, 0.001f);
}

TEST(NetworkValid, FuseFalseStillParses) {
  const std::string text = R"({"name": "nofuse", "input": [2, 4, 4, 8, 8], "fuse": false, "layers": [
    {"type": "conv_transpose3d", "name": "up", "in_channels": 4, "out_channels": 8, "kernel_size": 3, "stride": 2,
     "padding": 1, "output_padding": 1},
    {"type": "leaky_relu", "negative_slope": 0.2},
    {"type": "channel_scale", "name": "m"},
    {"type": "leaky_relu", "negative_slope": 0.2},
    {"type": "max_pool3d", "kernel_size": 2}]})";
  const Network net = Network::parse(text, "nofuse.json");
  EXPECT_FALSE(net.fuse());
  EXPECT_EQ(net.output_shape(), (Shape{2, 8, 4, 8, 8}));
  EXPECT_EQ(net.layers().size(), 5u);
}

TEST(NetworkValid, ResidualDagAddTakesTwoInputs) {
  const Network net = Network::load(std::string(ANVIL_TEST_DATA_DIR) + "/residual_dag.json");
  const auto layers = net.layers();
  ASSERT_EQ(layers.size(), 7u);
  const anvil::LayerSummary* sum = nullptr;
  for (const auto& l : layers)
    if (l.name == "sum") sum = &l;
  ASSERT_NE(sum, nullptr);
  EXPECT_EQ(sum->type, "add");
  EXPECT_EQ(sum->inputs, (std::vector<std::string>{"act", "gain"}));
  EXPECT_EQ(sum->output_shape, (Shape{2, 4, 6, 6, 5}));
  // "act" feeds both the branch conv and the add; everything else follows the list order.
  for (const auto& l : layers) {
    if (l.name == "branch") {
      EXPECT_EQ(l.inputs, (std::vector<std::string>{"act"}));
    }
  }
  // up: ConvTranspose3d(k 2, s 2) doubles (6, 6, 5) to (12, 12, 10); MaxPool3d(3, 2, 1): (n + 2 - 3) / 2 + 1.
  EXPECT_EQ(net.output_shape(), (Shape{2, 2, 6, 6, 5}));
  EXPECT_EQ(layers.back().name, "max_pool3d_6");
  // "act" has two readers, so the stem's chain ends there; the transposed
  // conv takes the overlapping, padded max pool.
  const Groups fused = {{"stem", "act"}, {"branch", "gain"}, {"up", "max_pool3d_6"}};
  EXPECT_EQ(net.fusion_groups(), ANVIL_WITH_CUDA ? fused : Groups{});  // the fusion rules are CUDA-only
  const auto params = param_shapes(net);
  const std::map<std::string, Shape> expected = {{"stem.weight", {4, 3, 3, 3, 3}},
                                                 {"stem.bias", {4}},
                                                 {"branch.weight", {4, 4, 3, 3, 3}},
                                                 {"branch.bias", {4}},
                                                 {"gain", {4, 1, 1, 1}},
                                                 {"up.weight", {4, 2, 2, 2, 2}},
                                                 {"up.bias", {2}}};
  EXPECT_EQ(params, expected);
}

TEST(NetworkValid, LayersMayBeListedOutOfOrder) {
  // b is listed first but reads a; the last listed layer (b's consumer c) still feeds the loss.
  const std::string layers = R"([{"type": "leaky_relu", "name": "b", "inputs": ["a"]},
                                 {"type": "relu", "name": "a", "inputs": ["input"]},
                                 {"type": "max_pool3d", "name": "c", "kernel_size": 2, "inputs": ["b"]}])";
  const Network net = Network::parse(with_layers(kInput5d, layers), "order.json");
  const auto l = net.layers();
  ASSERT_EQ(l.size(), 3u);
  EXPECT_EQ(l[0].name, "a");  // topological order
  EXPECT_EQ(l[1].name, "b");
  EXPECT_EQ(l[2].name, "c");
  EXPECT_EQ(net.output_shape(), (Shape{2, 4, 4, 4, 4}));
}

TEST(NetworkValid, Variant2dShapes) {
  const Network net = Network::load(std::string(ANVIL_TEST_DATA_DIR) + "/variant_2d.json");
  EXPECT_EQ(net.input_shape(), (Shape{2, 4, 9, 7}));
  const auto layers = net.layers();
  ASSERT_EQ(layers.size(), 7u);
  // ConvTranspose2d(4, 6, 3, s 2, p 1, op 1): (9-1)*2 - 2 + 3 + 1 = 18, (7-1)*2 - 2 + 3 + 1 = 14.
  EXPECT_EQ(layers[0].output_shape, (Shape{2, 6, 18, 14}));
  EXPECT_EQ(layers[4].output_shape, (Shape{2, 6, 9, 7}));
  // Conv2d(6, 3, (3, 2), s (2, 1), p (1, 0), d (1, 2)): H (9 + 2 - 3) / 2 + 1 = 5, W (7 - 3) / 1 + 1 = 5.
  EXPECT_EQ(layers[5].output_shape, (Shape{2, 3, 5, 5}));
  // MaxPool2d(3, 2, 1): (5 + 2 - 3) / 2 + 1 = 3.
  EXPECT_EQ(net.output_shape(), (Shape{2, 3, 3, 3}));
  const auto params = param_shapes(net);
  const std::map<std::string, Shape> expected = {{"conv_transpose.weight", {4, 6, 3, 3}},
                                                 {"conv_transpose.bias", {6}},
                                                 {"multiplier", {6, 1, 1}},
                                                 {"head.weight", {3, 6, 3, 2}},
                                                 {"head.bias", {3}}};
  EXPECT_EQ(params, expected);
  const Groups fused = {{"conv_transpose", "leaky_relu_1", "multiplier", "leaky_relu_3", "max_pool2d_4"},
                        {"head", "max_pool2d_6"}};
  EXPECT_EQ(net.fusion_groups(), ANVIL_WITH_CUDA ? fused : Groups{});  // the fusion rules are CUDA-only
}

TEST(NetworkValid, BiasFalseDropsTheBiasParameter) {
  const Network net = Network::load(std::string(ANVIL_TEST_DATA_DIR) + "/stride1_nopad.json");
  const auto params = param_shapes(net);
  EXPECT_EQ(params.count("conv.weight"), 1u);
  EXPECT_EQ(params.count("conv.bias"), 0u);
  EXPECT_EQ(params.count("deconv.bias"), 1u);
  // ConvTranspose3d(3, 4, 2): n + 1; Conv3d(k 3, p 1) keeps it; AvgPool3d(2, stride 1): n - 1.
  EXPECT_EQ(net.output_shape(), (Shape{2, 5, 4, 5, 6}));
  EXPECT_TRUE(net.spec().optimizer.sgd.nesterov);
}

// ---------------------------------------------------------------- fusion pattern

// The headline chain on a small input, with the pool (and optionally more) replaced.
std::string chain(const std::string& first_act, const std::string& pool, const std::string& extra_layers = "",
                  const std::string& input = "[2, 4, 4, 8, 8]") {
  return R"({"name": "f", "input": )" + input + R"(, "layers": [
    {"type": "conv_transpose3d", "name": "up", "in_channels": 4, "out_channels": 8, "kernel_size": 3, "stride": 2,
     "padding": 1, "output_padding": 1},
    )" + first_act +
         R"(,
    {"type": "channel_scale", "name": "m"},
    {"type": "leaky_relu", "name": "a2", "negative_slope": 0.2},
    )" + pool +
         extra_layers + "]}";
}
const char* const kLeaky = R"({"type": "leaky_relu", "name": "a1", "negative_slope": 0.2})";
const Groups kFused = {{"up", "a1", "m", "a2", "p"}};

Groups groups_of(const std::string& text) { return Network::parse(text, "fusion.json").fusion_groups(); }

// The fusion rules are CUDA-only: a build without them has nothing to match.
class NetworkFusion : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ANVIL_WITH_CUDA) GTEST_SKIP() << "built without CUDA: no fusion rules";
  }
};

TEST_F(NetworkFusion, TheHeadlinePatternOnASmallInputIsOneGroup) {
  EXPECT_EQ(groups_of(chain(kLeaky, R"({"type": "max_pool3d", "name": "p", "kernel_size": 2})")), kFused);
  // Explicit stride == kernel and per-dim kernels that tile (8, 16, 16) also fuse.
  EXPECT_EQ(groups_of(chain(kLeaky, R"({"type": "max_pool3d", "name": "p", "kernel_size": [2, 4, 1],
                                        "stride": [2, 4, 1]})")),
            kFused);
  // relu is a leaky_relu with slope 0.
  EXPECT_EQ(groups_of(chain(R"({"type": "relu", "name": "a1"})", R"({"type": "max_pool3d", "name": "p",
                                                                      "kernel_size": 2})")),
            kFused);
}

// One general rule: any pool the kernels can run joins the chain.
TEST_F(NetworkFusion, AnyPoolJoinsTheChain) {
  for (const char* pool : {R"({"type": "max_pool3d", "name": "p", "kernel_size": 2, "stride": 1})",
                           R"({"type": "max_pool3d", "name": "p", "kernel_size": 2, "padding": 1})",
                           R"({"type": "avg_pool3d", "name": "p", "kernel_size": 2})",
                           R"({"type": "avg_pool3d", "name": "p", "kernel_size": 3, "stride": 2, "padding": 1})",
                           R"({"type": "max_pool3d", "name": "p", "kernel_size": 3})"})  // 3 does not tile (8, 16, 16)
    EXPECT_EQ(groups_of(chain(kLeaky, pool)), kFused) << pool;
}

TEST_F(NetworkFusion, NoPoolFusesTheChainAlone) {
  const std::string text = R"({"name": "f", "input": [2, 4, 4, 8, 8], "layers": [
    {"type": "conv3d", "name": "c", "in_channels": 4, "out_channels": 8, "kernel_size": 2, "stride": 2},
    {"type": "sigmoid", "name": "s"}]})";
  EXPECT_EQ(groups_of(text), (Groups{{"c", "s"}}));
  // A pool straight after the conv is a chain of no pointwise op.
  const std::string pool_only = R"({"name": "f", "input": [2, 4, 4, 8, 8], "layers": [
    {"type": "conv3d", "name": "c", "in_channels": 4, "out_channels": 8, "kernel_size": 1},
    {"type": "avg_pool3d", "name": "p", "kernel_size": 2}]})";
  EXPECT_EQ(groups_of(pool_only), (Groups{{"c", "p"}}));
}

TEST_F(NetworkFusion, PoolTheKernelsCannotRunStaysApart) {
  // Input (2, 4, 8, 8, 8) -> conv output (16, 16, 16): an 8^3 max window (512
  // elements, more than the byte-wide argmax holds) is left out of the group.
  EXPECT_EQ(groups_of(chain(kLeaky, R"({"type": "max_pool3d", "name": "p", "kernel_size": 8})", "", "[2, 4, 8, 8, 8]")),
            (Groups{{"up", "a1", "m", "a2"}}));
  EXPECT_EQ(groups_of(chain(kLeaky, R"({"type": "max_pool3d", "name": "p", "kernel_size": 4})", "", "[2, 4, 8, 8, 8]")),
            kFused);
}

TEST_F(NetworkFusion, ChainsLongerThanEightOpsAreNotFused) {
  std::string layers = R"({"type": "conv2d", "name": "c", "in_channels": 4, "out_channels": 4, "kernel_size": 1})";
  for (int i = 0; i < 9; ++i) layers += R"(, {"type": "relu", "name": "r)" + std::to_string(i) + R"("})";
  EXPECT_TRUE(groups_of(R"({"name": "f", "input": [2, 4, 8, 8], "layers": [)" + layers + "]}").empty());
}

TEST_F(NetworkFusion, IntermediateTensorUsedTwiceEndsTheChain) {
  // a1's output feeds both m and sum(a1, m): a1 no longer has a sole consumer, so the group ends at a1.
  // The add starts a group of its own (the add rule).
  const std::string text = R"({"name": "f", "input": [2, 4, 4, 8, 8], "layers": [
    {"type": "conv_transpose3d", "name": "up", "in_channels": 4, "out_channels": 8, "kernel_size": 3, "stride": 2,
     "padding": 1, "output_padding": 1},
    {"type": "leaky_relu", "name": "a1", "negative_slope": 0.2},
    {"type": "channel_scale", "name": "m"},
    {"type": "add", "name": "sum", "inputs": ["a1", "m"]},
    {"type": "leaky_relu", "name": "a2", "negative_slope": 0.2},
    {"type": "max_pool3d", "name": "p", "kernel_size": 2}]})";
  EXPECT_EQ(groups_of(text), (Groups{{"up", "a1"}, {"sum", "a2", "p"}}));
  // The conv output read twice (by a1 and by a later add): no conv group; the add takes the pool.
  const std::string twice = R"({"name": "f", "input": [2, 4, 4, 8, 8], "layers": [
    {"type": "conv_transpose3d", "name": "up", "in_channels": 4, "out_channels": 8, "kernel_size": 3, "stride": 2,
     "padding": 1, "output_padding": 1},
    {"type": "leaky_relu", "name": "a1", "negative_slope": 0.2},
    {"type": "channel_scale", "name": "m"},
    {"type": "leaky_relu", "name": "a2", "negative_slope": 0.2},
    {"type": "add", "name": "sum", "inputs": ["a2", "up"]},
    {"type": "max_pool3d", "name": "p", "kernel_size": 2}]})";
  EXPECT_EQ(groups_of(twice), (Groups{{"sum", "p"}}));
}

// The fusion bench/suite/README.md states for the suite's joins: residual_add_2d
// is all fused (the add rule takes its join and pool); pyramid_join_2d is the
// suite's chain that no rule covers (its input's pool, a conv without a chain,
// the three-input add and the pool after it run as layers).
TEST_F(NetworkFusion, TheSuiteHoldsAChainNoRuleCovers) {
  auto suite_groups = [](const std::string& file) {
    return Network::load(std::string(ANVIL_SOURCE_DIR) + "/bench/suite/" + file).fusion_groups();
  };
  EXPECT_EQ(suite_groups("residual_add_2d.json"), (Groups{{"stem", "act"}, {"branch", "gain"}, {"sum", "pool"}}));
  EXPECT_EQ(suite_groups("pyramid_join_2d.json"), (Groups{{"conv1", "act1"}}));
}

// The add rule: a two-input add, then a chain and a pool the kernels take
// (one of them at least). An add of three, an add that nothing fusable
// follows, and a pool the kernels cannot run stay apart.
TEST_F(NetworkFusion, TwoInputAddTakesTheChainAfterIt) {
  auto net = [](const std::string& add_inputs, const std::string& after) {
    return R"({"name": "f", "input": [2, 4, 8, 8, 8], "layers": [
      {"type": "conv3d", "name": "c", "in_channels": 4, "out_channels": 4, "kernel_size": 3, "padding": 1},
      {"type": "tanh", "name": "t", "inputs": ["input"]},
      {"type": "add", "name": "sum", "inputs": )" +
           add_inputs + "}, " + after + "]}";
  };
  const std::string relu_pool = R"({"type": "relu", "name": "r"}, {"type": "channel_scale", "name": "m"},
                                   {"type": "avg_pool3d", "name": "p", "kernel_size": 3, "stride": 2, "padding": 1})";
  EXPECT_EQ(groups_of(net(R"(["c", "t"])", relu_pool)), (Groups{{"sum", "r", "m", "p"}}));
  EXPECT_EQ(groups_of(net(R"(["c", "t"])", R"({"type": "max_pool3d", "name": "p", "kernel_size": 2})")),
            (Groups{{"sum", "p"}}));
  EXPECT_TRUE(groups_of(net(R"(["c", "t", "c"])", relu_pool)).empty());
  EXPECT_TRUE(groups_of(net(R"(["c", "t"])", R"({"type": "conv3d", "name": "d", "in_channels": 4,
                                                  "out_channels": 2, "kernel_size": 1})"))
                  .empty());
  // An 8^3 max window: more than the byte-wide argmax holds; the relu still joins the add.
  EXPECT_EQ(groups_of(net(R"(["c", "t"])", R"({"type": "relu", "name": "r"},
                                               {"type": "max_pool3d", "name": "p", "kernel_size": 8})")),
            (Groups{{"sum", "r"}}));
}

TEST_F(NetworkFusion, ChainOpsInAnyOrder) {
  // conv -> scale -> leaky -> leaky -> pool: the chain is any sequence of activations and scales.
  const std::string text = R"({"name": "f", "input": [2, 4, 4, 8, 8], "layers": [
    {"type": "conv_transpose3d", "name": "up", "in_channels": 4, "out_channels": 8, "kernel_size": 3, "stride": 2,
     "padding": 1, "output_padding": 1},
    {"type": "channel_scale", "name": "m"},
    {"type": "leaky_relu", "name": "a1", "negative_slope": 0.2},
    {"type": "leaky_relu", "name": "a2", "negative_slope": 0.2},
    {"type": "max_pool3d", "name": "p", "kernel_size": 2}]})";
  EXPECT_EQ(groups_of(text), (Groups{{"up", "m", "a1", "a2", "p"}}));
}

TEST_F(NetworkFusion, AnyConvolutionStartsTheChain) {
  // A plain conv3d (not transposed) followed by the same epilogue is a group too.
  const std::string text = R"({"name": "f", "input": [2, 4, 4, 8, 8], "layers": [
    {"type": "conv3d", "name": "up", "in_channels": 4, "out_channels": 8, "kernel_size": 3, "padding": 1},
    {"type": "leaky_relu", "name": "a1"},
    {"type": "channel_scale", "name": "m"},
    {"type": "leaky_relu", "name": "a2"},
    {"type": "max_pool3d", "name": "p", "kernel_size": 2}]})";
  EXPECT_EQ(groups_of(text), kFused);
}

#if ANVIL_WITH_CUDA
// Why the wgmma conv does not take a stride-1 transposed conv with
// output_padding (one side padded more): said before any device check, so
// this runs without a GPU.
TEST_F(NetworkFusion, WgmmaConvNamesOutputPaddingAsTheReason) {
  anvil::ConvSpec spec;
  spec.transposed = true;
  spec.in_channels = 4;
  spec.out_channels = 64;
  spec.kernel = {3, 3};
  spec.stride = {1, 1};
  spec.padding = {1, 1};
  spec.output_padding = {0, 1};  // allowed: below the dilation
  spec.dilation = {2, 2};
  const anvil::LayerSpec conv{"conv_transpose2d", "up", "layers[0]", {}, spec};
  anvil::FusedChainSpecs chain;
  chain.head = &conv;
  chain.input = {2, 4, 9, 11};
  chain.name = "up";
  const anvil::FusedConvEpilogue fused(chain, anvil::FusedConvEpilogue::Forward::Cudnn);
  std::string why;
  EXPECT_FALSE(fused.wgmma_applies(why));
  EXPECT_EQ(why, "a transposed conv with output_padding");
}
#endif

#if ANVIL_WITH_CUDA
// The channels-last tensors the layout pass picks (lower/channels_last.cpp),
// on the fused graph as a CUDA engine builds it, before anything runs (so
// without a GPU): those every writer and reader can take so, in groups that a
// conv on cuDNN's formulation writes or reads, in inference only.
// types: each op's type after the pass, in graph order.
std::vector<std::string> channels_last_tensors(const std::string& layers, bool inference = true,
                                               std::vector<std::string>* types = nullptr) {
  const anvil::Network net = anvil::Network::parse(R"({"name": "l", "input": [2, 12, 9, 11], "precision": "tf32",
    "layers": [)" + layers + "]}",
                                                   "layout.json");
  std::unique_ptr<anvil::Graph> graph = net.build_graph();
  anvil::FusionSettings cudnn_only;  // the other formulations ask the device whether they apply
  cudnn_only.phase_split = cudnn_only.direct_conv = cudnn_only.wgmma_conv = false;
  cudnn_only.lone_convs = inference;  // as the engine sets it where the pass runs
  anvil::apply_fusions(*graph, cudnn_only);
  graph->mark_gradients(false);
  for (auto& node : graph->nodes)
    if (inference) {
      node.layer->set_gradient_needs(false, false);
      if (node.unfused) node.unfused->set_gradient_needs(false, false);
    }
  std::vector<std::string> names = anvil::choose_channels_last(*graph);
  if (types)
    for (const auto& node : graph->nodes) types->push_back(node.layer->type());
  return names;
}

const char* const kStem = R"({"type": "conv2d", "name": "stem", "in_channels": 12, "out_channels": 12,
  "kernel_size": 3, "padding": 1}, {"type": "relu", "name": "act"})";
const char* const kBranch = R"(, {"type": "conv2d", "name": "branch", "in_channels": 12, "out_channels": 12,
  "kernel_size": 3, "padding": 1}, {"type": "channel_scale", "name": "gain"})";

TEST_F(NetworkFusion, InferenceKeepsActivationsBetweenFusedConvsChannelsLast) {
  using Names = std::vector<std::string>;
  const std::string pool = R"(, {"type": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1})";
  // A residual block: act feeds the branch conv and the add, gain the add; the pooled sum is the output.
  const std::string residual =
      std::string(kStem) + kBranch + R"(, {"type": "add", "name": "sum", "inputs": ["act", "gain"]})" + pool;
  EXPECT_EQ(channels_last_tensors(residual), (Names{"act", "gain"}));
  EXPECT_EQ(channels_last_tensors(residual, false), Names{}) << "training keeps every tensor packed";
  // An add of gain and the network's (packed) input takes neither channels-last; act still feeds a conv.
  EXPECT_EQ(channels_last_tensors(std::string(kStem) + kBranch +
                                  R"(, {"type": "add", "name": "sum", "inputs": ["input", "gain"]})" + pool),
            Names{"act"});
  // The network's output stays packed, and so does a conv's output that a pool follows (the pool is fused).
  EXPECT_EQ(channels_last_tensors(std::string(kStem) + kBranch), Names{"act"});
  EXPECT_EQ(channels_last_tensors(std::string(kStem) + pool + R"(, {"type": "sigmoid", "name": "s"})"), Names{});
  const std::string head = R"(, {"type": "conv2d", "name": "head", "in_channels": 12, "out_channels": 4,
    "kernel_size": 1})";
  // A fused transposed conv writes channels-last through its epilogue kernel, which reads Y so (cuDNN's
  // graph fuses an epilogue into a forward conv only).
  EXPECT_EQ(channels_last_tensors(std::string(kStem) + R"(, {"type": "conv_transpose2d", "name": "up",
    "in_channels": 12, "out_channels": 12, "kernel_size": 2, "stride": 2}, {"type": "relu", "name": "r"})" +
                                  head),
            (Names{"act", "r"}));
  // So does a conv fused with its pool, where a conv reads the pooled output (conv, relu, pool, conv),
  // where cuDNN would write its Y channels-last: from a channels-last x, or a packed one with at least
  // 128 products per output (not the stem's 12 x 9); and the pooled residual join that a conv reads.
  const std::string pooled = R"(, {"type": "conv2d", "name": "c", "in_channels": 12, "out_channels": 12,
    "kernel_size": 3, "padding": 1}, {"type": "relu"}, {"type": "max_pool2d", "name": "p", "kernel_size": 2})";
  EXPECT_EQ(channels_last_tensors(std::string(kStem) + pooled + head), (Names{"act", "p"}));
  EXPECT_EQ(channels_last_tensors(pooled.substr(1) + head), Names{});
  EXPECT_EQ(channels_last_tensors(residual + head), (Names{"act", "gain", "max_pool2d_5"}));
  // A transposed conv that no chain follows stays a conv of its own, which reads its input packed.
  EXPECT_EQ(channels_last_tensors(std::string(kStem) + R"(, {"type": "conv_transpose2d", "name": "up",
    "in_channels": 12, "out_channels": 4, "kernel_size": 2, "stride": 2})"),
            Names{});
}

// A pyramid join: a pool of the input (written channels-last through a copy), a
// conv and its chain, a conv with nothing after it (fused alone, in
// inference), the three-input add element-wise in either layout, and a pool
// reading the sum channels-last.
TEST_F(NetworkFusion, InferencePassesPoolsAddsAndLoneConvsChannelsLast) {
  using Names = std::vector<std::string>;
  const std::string pyramid = R"({"type": "avg_pool2d", "name": "down", "kernel_size": 2},
    {"type": "conv2d", "name": "conv1", "in_channels": 12, "out_channels": 12, "kernel_size": 3, "padding": 1},
    {"type": "leaky_relu", "name": "act1", "negative_slope": 0.1},
    {"type": "conv2d", "name": "conv2", "in_channels": 12, "out_channels": 12, "kernel_size": 3, "padding": 1},
    {"type": "add", "name": "join", "inputs": ["down", "act1", "conv2"]})";
  const std::string pool = R"(, {"type": "max_pool2d", "name": "pool", "kernel_size": 2})";
  EXPECT_EQ(channels_last_tensors(pyramid + pool), (Names{"down", "act1", "conv2", "join"}));
  EXPECT_EQ(channels_last_tensors(pyramid + pool, false), Names{});
  // A pool between channels-last tensors reads and writes them so.
  EXPECT_EQ(channels_last_tensors(pyramid + pool + R"(, {"type": "conv2d", "name": "head", "in_channels": 12,
    "out_channels": 4, "kernel_size": 1})"),
            (Names{"down", "act1", "conv2", "join", "pool"}));
  // An activation after the add passes the layout on.
  EXPECT_EQ(channels_last_tensors(pyramid + R"(, {"type": "relu", "name": "r"})" + pool),
            (Names{"down", "act1", "conv2", "join", "r"}));
  // A conv fused alone stays so where it reads or writes a tensor channels-last, and is the plain
  // conv again where it does neither.
  Names types;
  EXPECT_EQ(channels_last_tensors(std::string(kStem) + R"(, {"type": "conv2d", "name": "head", "in_channels": 12,
    "out_channels": 4, "kernel_size": 1})",
                                  true, &types),
            Names{"act"});
  EXPECT_EQ(types, (Names{"fused_conv_epilogue", "fused_conv_epilogue"}));
  types.clear();
  EXPECT_EQ(channels_last_tensors(R"({"type": "conv2d", "name": "alone", "in_channels": 12, "out_channels": 4,
    "kernel_size": 1}, {"type": "add", "name": "sum", "inputs": ["alone", "alone"]})",
                                  true, &types),
            Names{});
  EXPECT_EQ(types, (Names{"conv2d", "add"}));
  // Without a conv on cuDNN's formulation in the group, pools would only add copies: all packed.
  EXPECT_EQ(channels_last_tensors(R"({"type": "avg_pool2d", "name": "a", "kernel_size": 2},
    {"type": "relu", "name": "r"}, {"type": "max_pool2d", "name": "m", "kernel_size": 2})"),
            Names{});
}
#endif

TEST_F(NetworkFusion, ChainInsideALargerNetworkIsFoundOnce) {
  const std::string head = R"(, {"type": "conv3d", "name": "head", "in_channels": 8, "out_channels": 2,
                                "kernel_size": 1})";
  EXPECT_EQ(groups_of(chain(kLeaky, R"({"type": "max_pool3d", "name": "p", "kernel_size": 2})", head)), kFused);
}

}  // namespace
