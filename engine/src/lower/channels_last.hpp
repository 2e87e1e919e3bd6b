// Channels-last activations between layers, for inference under tf32 on
// CUDA. cuDNN's tensor-core convs work channels-last, (N, spatial..., C): a
// packed input costs them a transpose pass, and a packed output one more. So
// a tensor stays channels-last where its producer and every reader can run
// so (Layer::takes_layouts): a fused conv on cuDNN's formulation (without a
// pool it writes channels-last, the bias and the chain in the conv's kernel;
// with one, its epilogue kernel reads Y and writes P so), the fused add
// reading both addends so, an add or activation with every tensor in one
// layout, and a pool (it reads channels-last, and writes so; through a copy
// from a packed input). The network's input and output stay packed, as the API
// has them; training keeps every tensor packed.
#pragma once

#include "engine/src/lower/graph.hpp"

namespace anvil {

#if ANVIL_WITH_CUDA
// Chooses the channels-last tensors and tells every op its layouts
// (Layer::set_channels_last); returns the names of those tensors.
std::vector<std::string> choose_channels_last(Graph& graph);
#endif

}  // namespace anvil
