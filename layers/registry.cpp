#include "layers/registry.hpp"

namespace anvil {

std::unique_ptr<Layer> create_layer(const LayerSpec& spec) {
  return std::visit(
      [&](const auto& params) -> std::unique_ptr<Layer> {
        using P = std::decay_t<decltype(params)>;
        if constexpr (std::is_same_v<P, ConvSpec>) return create_convolution(spec, params);
        if constexpr (std::is_same_v<P, PoolSpec>) return create_pooling(spec, params);
        if constexpr (std::is_same_v<P, PointwiseSpec>) return create_pointwise(spec, params);
        if constexpr (std::is_same_v<P, ChannelScaleSpec>) return create_channel_scale(spec, params);
        if constexpr (std::is_same_v<P, AddSpec>) return create_add(spec, params);
      },
      spec.params);
}

}  // namespace anvil
