// The op graph lowered from a NetworkSpec: named tensors, ops in topological
// order, shapes, and which tensors need gradients. The fusion rules
// (fusion_rules.hpp) then replace chains of ops by fused ones.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "anvil/tensor.hpp"
#include "engine/src/spec/network_spec.hpp"
#include "layers/layer.hpp"

namespace anvil {

// Where a tensor comes from.
enum class TensorSource {
  NetworkInput,
  Node,       // the output of graph node `producer`
  FusedAway,  // inside a fused op: never materialised
};

struct GraphTensor {
  std::string name;  // the producing layer's name; "input" for the network input
  Shape shape;
  TensorSource source = TensorSource::NetworkInput;
  int producer = -1;           // node index when source is Node
  std::vector<int> consumers;  // node indices, one entry per use
  bool requires_grad = false;
};

struct GraphNode {
  std::unique_ptr<Layer> layer;
  const LayerSpec* spec = nullptr;  // null for fused ops (see merged)
  std::vector<int> inputs;          // tensor indices
  int output = -1;
  std::vector<std::string> merged;  // original layer names, when fused
  // Other formulations of a fused op, kept for autotuning (run/autotune.cpp).
  std::vector<std::unique_ptr<Layer>> alternatives;
  std::string choice;  // how the op's formulation was chosen, when there was a choice
  // A conv fused alone (FusionSettings::lone_convs): the conv layer it replaced, put back by
  // lower/channels_last.cpp where its tensors stay packed.
  std::unique_ptr<Layer> unfused;
};

class Graph {
 public:
  // Resolves inputs, orders the layers, builds their ops and infers every
  // shape; InputError names the JSON path. The graph keeps the spec alive.
  static std::unique_ptr<Graph> build(std::shared_ptr<const NetworkSpec> spec);

  std::shared_ptr<const NetworkSpec> spec;
  std::vector<GraphTensor> tensors;  // tensor 0 is the network input
  std::vector<GraphNode> nodes;      // topological order
  int output = -1;

  // The single node consuming tensor t, or -1 if t has several uses or is the network output.
  int sole_consumer(int t) const;
  // Marks tensors that need a gradient (everything downstream of a parameter;
  // the network input only when asked).
  void mark_gradients(bool input_grad);
  // Once marked: whether node's backward runs, and whether it runs for an
  // input's gradient (any of its inputs'), as Layer::set_gradient_needs takes them.
  bool backward_runs(const GraphNode& node) const { return tensors[node.output].requires_grad; }
  bool input_grad_wanted(const GraphNode& node) const;
  std::vector<ParamSpec> params() const;
};

}  // namespace anvil
