// The layer graph: named tensors, layers in topological order, shapes, which
// tensors need gradients, and the fusion pass.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "anvil/tensor.hpp"
#include "layers/layer.hpp"

namespace anvil {

struct GraphTensor {
  std::string name;  // the producing layer's name; "input" for the network input
  Shape shape;
  int producer = -1;           // node index; -1 for the network input
  std::vector<int> consumers;  // node indices, one entry per use
  bool requires_grad = false;
};

struct GraphNode {
  std::unique_ptr<Layer> layer;
  std::vector<int> inputs;  // tensor indices
  int output = -1;
  std::vector<std::string> merged;  // original layer names, when fused
};

class Graph {
 public:
  // Validates the "layers" list against the input shape; InputError names the JSON path.
  static std::unique_ptr<Graph> build(const nlohmann::json& layers, const Shape& input_shape);

  std::vector<GraphTensor> tensors;  // tensor 0 is the network input
  std::vector<GraphNode> nodes;      // topological order
  int output = -1;

  // Chains of node indices that the fusion pass merges.
  std::vector<std::vector<int>> fusion_groups() const;
  // Merges every group; a conv_transpose whose stride equals the pool kernel is phase-split if allowed.
  void fuse(bool phase_split);
  // Marks tensors that need a gradient (everything downstream of a parameter;
  // the network input only when asked).
  void mark_gradients(bool input_grad);
  std::vector<ParamSpec> params() const;
};

}  // namespace anvil
