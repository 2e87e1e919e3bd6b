// Options::autotune: every fused op that has other formulations
// (GraphNode::alternatives) runs each of them alone, once, at build, over
// scratch memory of its own, forward and (when it trains) backward; the
// fastest stays, and GraphNode::choice records the times.
#pragma once

#include "engine/src/lower/graph.hpp"
#include "layers/layer.hpp"

namespace anvil {

class CudaContext;

// Gives every pooling layer that runs anvil's kernels cuDNN's pooling as its alternative.
void add_pool_alternatives(Graph& graph);

// training: false for a forward-only engine, whose ops run no backward.
void autotune_formulations(Graph& graph, CudaContext& ctx, const BuildSettings& settings, bool training);

}  // namespace anvil
