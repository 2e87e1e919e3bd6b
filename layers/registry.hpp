// The registry from the JSON "type" string to a layer creator
// (Caffe's REGISTER_LAYER_CLASS, tiny-cuda-nn's create_network). It is an
// explicit table, not static registration, so nothing is lost when the
// library is linked statically.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "layers/layer.hpp"

namespace anvil {

class ConfigReader;

struct LayerInfo {
  std::string type, name, path;
};

// Reads the layer's keys from cfg (InputError naming the JSON path on any problem).
std::unique_ptr<Layer> create_layer(ConfigReader& cfg, const LayerInfo& info);
std::vector<std::string> layer_types();

// One creator per layer file.
std::unique_ptr<Layer> create_conv(ConfigReader& cfg, const LayerInfo& info, int dims);
std::unique_ptr<Layer> create_conv_transpose(ConfigReader& cfg, const LayerInfo& info, int dims);
std::unique_ptr<Layer> create_max_pool(ConfigReader& cfg, const LayerInfo& info, int dims);
std::unique_ptr<Layer> create_avg_pool(ConfigReader& cfg, const LayerInfo& info, int dims);
std::unique_ptr<Layer> create_leaky_relu(ConfigReader& cfg, const LayerInfo& info, bool plain_relu);
std::unique_ptr<Layer> create_channel_scale(ConfigReader& cfg, const LayerInfo& info);
std::unique_ptr<Layer> create_add(ConfigReader& cfg, const LayerInfo& info);

}  // namespace anvil
