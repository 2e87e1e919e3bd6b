// Channels-last activations between layers, for inference under tf32 on
// CUDA. cuDNN's tensor-core convs work channels-last, (N, spatial..., C): a
// packed input costs them a transpose pass, and a packed output one more. So
// a tensor that a fused conv can write channels-last (cuDNN's formulation,
// no pool: the bias and the chain computed in the conv's kernel) stays so
// where every op that reads it can read it so: another such conv, or the
// fused add with both addends channels-last. The network's input and output
// stay packed, as the API has them; training keeps every tensor packed.
#pragma once

#include "engine/src/lower/graph.hpp"

namespace anvil {

#if ANVIL_WITH_CUDA
// Chooses the channels-last tensors and tells every op its layouts
// (Layer::set_channels_last); returns the names of those tensors.
std::vector<std::string> choose_channels_last(Graph& graph);
#endif

}  // namespace anvil
