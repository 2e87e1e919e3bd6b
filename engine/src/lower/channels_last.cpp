#include "engine/src/lower/channels_last.hpp"

namespace anvil {

#if ANVIL_WITH_CUDA
std::vector<std::string> choose_channels_last(Graph& graph) {
  std::vector<bool> channels_last(graph.tensors.size(), false);
  for (size_t t = 0; t < graph.tensors.size(); ++t) {
    const GraphTensor& tensor = graph.tensors[t];
    channels_last[t] = tensor.source == TensorSource::Node && static_cast<int>(t) != graph.output &&
                       !tensor.consumers.empty() && graph.nodes[tensor.producer].layer->writes_channels_last();
  }
  auto layouts = [&](const GraphNode& node) {
    std::vector<bool> inputs;
    for (int t : node.inputs) inputs.push_back(channels_last[t]);
    return inputs;
  };
  // An op that cannot read its inputs as marked sends them all back to packed; repeated until every
  // op can, which ends: each round unmarks a tensor or stops.
  for (bool changed = true; changed;) {
    changed = false;
    for (const GraphNode& node : graph.nodes) {
      if (node.layer->reads_channels_last(layouts(node))) continue;
      for (int t : node.inputs) changed = changed || channels_last[t];
      for (int t : node.inputs) channels_last[t] = false;
    }
  }
  std::vector<std::string> names;
  for (GraphNode& node : graph.nodes) {
    node.layer->set_channels_last(layouts(node), channels_last[node.output]);
    if (channels_last[node.output]) names.push_back(graph.tensors[node.output].name);
  }
  return names;
}
#endif

}  // namespace anvil
