// Fusion rules: each is a pattern over op kinds (a head op, a chain of ops of
// allowed kinds, an optional pool), a predicate that asks the fused op whether
// it can compute the matched chain, and a factory that builds it from the
// specs it replaces. The first rule that matches a chain wins.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/src/lower/graph.hpp"

namespace anvil {

struct FusionSettings {
  bool phase_split = true;                // let a transposed conv run as one stride-1 conv over its output phases
  bool alternatives = false;              // keep the other formulations too (GraphNode::alternatives), for autotuning
  Precision precision = Precision::TF32;  // the network's: the formulation rule depends on it
  bool direct_conv = true;  // let a conv with few taps per output run anvil's direct kernel (conv, chain and pool)
  bool wgmma_conv = true;   // let a stride-1 conv under tf32 run anvil's wgmma kernel (conv, chain and pool; sm_90)
  // A conv (not transposed) with no chain or pool is fused too, on cuDNN's formulation with the
  // bias alone as its epilogue (GraphNode::unfused keeps the conv): set where activations may pass
  // channels-last (lower/channels_last.cpp), which a fused conv can write.
  bool lone_convs = false;
};

// What a fusion rule hands a fused op: the specs of the layers it replaces, in chain order.
struct FusedChainSpecs {
  const LayerSpec* head = nullptr;          // the conv, or the add, that the chain follows
  std::vector<const LayerSpec*> pointwise;  // pointwise and channel_scale layers after the head
  const LayerSpec* pool = nullptr;          // may be null
  Shape input;                              // the head's (first) input shape
  std::string name;                         // the merged names, joined by '+'
};

// A fused op's formulations, the default first, and why the formulation rule picked it.
struct FusionCandidates {
  std::vector<std::unique_ptr<Layer>> layers;
  std::string why;
};

struct FusionMatch {
  std::string rule;
  std::vector<int> nodes;  // graph node indices in chain order: the head first
};

// The chains the rules would fuse, in graph order; no node is in two. lone_convs: FusionSettings'.
std::vector<FusionMatch> find_fusions(const Graph& graph, bool lone_convs = false);
// Replaces every matched chain by its fused op (CUDA engines only: the CPU backend runs unfused).
void apply_fusions(Graph& graph, const FusionSettings& settings);

}  // namespace anvil
