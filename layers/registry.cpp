#include "layers/registry.hpp"

#include <functional>
#include <map>

#include "engine/src/config.hpp"

namespace anvil {

namespace {
using Creator = std::function<std::unique_ptr<Layer>(ConfigReader&, const LayerInfo&)>;

const std::map<std::string, Creator>& registry() {
  static const std::map<std::string, Creator> table = {
      {"conv2d", [](ConfigReader& c, const LayerInfo& i) { return create_conv(c, i, 2); }},
      {"conv3d", [](ConfigReader& c, const LayerInfo& i) { return create_conv(c, i, 3); }},
      {"conv_transpose2d", [](ConfigReader& c, const LayerInfo& i) { return create_conv_transpose(c, i, 2); }},
      {"conv_transpose3d", [](ConfigReader& c, const LayerInfo& i) { return create_conv_transpose(c, i, 3); }},
      {"max_pool2d", [](ConfigReader& c, const LayerInfo& i) { return create_max_pool(c, i, 2); }},
      {"max_pool3d", [](ConfigReader& c, const LayerInfo& i) { return create_max_pool(c, i, 3); }},
      {"avg_pool2d", [](ConfigReader& c, const LayerInfo& i) { return create_avg_pool(c, i, 2); }},
      {"avg_pool3d", [](ConfigReader& c, const LayerInfo& i) { return create_avg_pool(c, i, 3); }},
      {"leaky_relu", [](ConfigReader& c, const LayerInfo& i) { return create_leaky_relu(c, i, false); }},
      {"relu", [](ConfigReader& c, const LayerInfo& i) { return create_leaky_relu(c, i, true); }},
      {"channel_scale", create_channel_scale},
      {"add", create_add},
  };
  return table;
}
}  // namespace

std::unique_ptr<Layer> create_layer(ConfigReader& cfg, const LayerInfo& info) {
  const auto it = registry().find(info.type);
  if (it == registry().end()) {
    std::string known;
    for (const auto& t : layer_types()) known += (known.empty() ? "" : ", ") + t;
    cfg.fail("type", "unknown layer type '" + info.type + "' (known: " + known + ")");
  }
  auto layer = it->second(cfg, info);
  cfg.finish();
  return layer;
}

std::vector<std::string> layer_types() {
  std::vector<std::string> out;
  for (const auto& entry : registry()) out.push_back(entry.first);
  return out;
}

}  // namespace anvil
