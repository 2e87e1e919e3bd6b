// From a layer's spec to its op (Caffe's REGISTER_LAYER_CLASS, tiny-cuda-nn's
// create_network): one creator per layer file, chosen by the spec's kind. It is
// explicit code, not static registration, so nothing is lost when the library
// is linked statically.
#pragma once

#include <memory>

#include "engine/src/spec/layer_spec.hpp"
#include "layers/layer.hpp"

namespace anvil {

std::unique_ptr<Layer> create_layer(const LayerSpec& spec);

// One creator per layer file.
std::unique_ptr<Layer> create_convolution(const LayerSpec& spec, const ConvSpec& conv);
std::unique_ptr<Layer> create_pooling(const LayerSpec& spec, const PoolSpec& pool);
std::unique_ptr<Layer> create_pointwise(const LayerSpec& spec, const PointwiseSpec& pointwise);
std::unique_ptr<Layer> create_channel_scale(const LayerSpec& spec, const ChannelScaleSpec&);
std::unique_ptr<Layer> create_add(const LayerSpec& spec, const AddSpec&);

}  // namespace anvil
