// Typed, immutable layer descriptions: what one entry of "layers" says, read
// once from the JSON (layer_spec.cpp). Ops are built from these, never from
// JSON text.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "kernels/pointwise_ops.hpp"

namespace anvil {

// conv2d/3d and conv_transpose2d/3d. Per-dimension values hold one entry per spatial dim.
struct ConvSpec {
  int dims = 2;
  bool transposed = false;
  int64_t in_channels = 1, out_channels = 1;
  std::vector<int64_t> kernel, stride, padding, output_padding, dilation;
  bool bias = true;
};

// max_pool2d/3d and avg_pool2d/3d.
struct PoolSpec {
  int dims = 2;
  bool max = true;
  std::vector<int64_t> kernel, stride, padding;
};

// An activation from kernels/pointwise_ops.hpp: leaky_relu (relu is slope 0), sigmoid, tanh, ...
struct PointwiseSpec {
  PointwiseOp op = PointwiseOp::LeakyRelu;
  float param = 0;  // leaky_relu's negative_slope; unused by the others
};

struct ChannelScaleSpec {};
struct AddSpec {};

using LayerParams = std::variant<ConvSpec, PoolSpec, PointwiseSpec, ChannelScaleSpec, AddSpec>;

struct LayerSpec {
  std::string type;                 // the JSON "type"
  std::string name;                 // unique; parameters are named "<name>.weight" etc.
  std::string path;                 // JSON path, e.g. "layers[2]", for error messages
  std::vector<std::string> inputs;  // tensor names: "input" or layer names
  LayerParams params;
};

class JsonReader;

// Every JSON layer type, sorted.
std::vector<std::string> layer_types();
// Reads the type-specific keys of one layer (InputError naming the JSON path).
LayerParams parse_layer_params(JsonReader& cfg, const std::string& type);

}  // namespace anvil
