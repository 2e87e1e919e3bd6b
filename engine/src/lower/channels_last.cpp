#include "engine/src/lower/channels_last.hpp"

#include <algorithm>
#include <functional>

#include "anvil/error.hpp"

namespace anvil {

#if ANVIL_WITH_CUDA
std::vector<std::string> choose_channels_last(Graph& graph) {
  std::vector<bool> channels_last(graph.tensors.size(), false);
  for (size_t t = 0; t < graph.tensors.size(); ++t) {
    const GraphTensor& tensor = graph.tensors[t];
    channels_last[t] =
        tensor.source == TensorSource::Node && static_cast<int>(t) != graph.output && !tensor.consumers.empty();
  }
  auto layouts = [&](const GraphNode& node) {
    std::vector<bool> inputs;
    for (int t : node.inputs) inputs.push_back(channels_last[t]);
    return inputs;
  };
  auto all_packed = [&](const GraphNode& node) {
    const std::vector<bool> inputs = layouts(node);
    return std::none_of(inputs.begin(), inputs.end(), [](bool last) { return last; }) && !channels_last[node.output];
  };
  // Every tensor starts channels-last. An op that cannot run with its layouts
  // sends its output back to packed, or, where that is not enough, its inputs
  // too; repeated until every op runs. It ends: each round unmarks a tensor or
  // stops, and every op runs all packed.
  for (bool changed = true; changed;) {
    changed = false;
    for (const GraphNode& node : graph.nodes) {
      const std::vector<bool> inputs = layouts(node);
      if (node.layer->takes_layouts(inputs, channels_last[node.output])) continue;
      if (all_packed(node))
        throw Error("internal error: " + node.layer->name() + " does not run with every tensor packed");
      if (!channels_last[node.output] || !node.layer->takes_layouts(inputs, false))
        for (int t : node.inputs) channels_last[t] = false;
      channels_last[node.output] = false;
      changed = true;
    }
  }
  // Tensors passed channels-last between the same ops form a group; a group
  // that no op computing channels-last (Layer::computes_channels_last) writes
  // or reads would only add copies, so it goes back to packed, whole.
  std::vector<int> group(graph.tensors.size());
  for (size_t t = 0; t < group.size(); ++t) group[t] = static_cast<int>(t);
  std::function<int(int)> root = [&](int t) { return group[t] == t ? t : group[t] = root(group[t]); };
  for (const GraphNode& node : graph.nodes) {  // an op's channels-last tensors join one group
    int first = channels_last[node.output] ? node.output : -1;
    for (int t : node.inputs) {
      if (!channels_last[t]) continue;
      if (first < 0)
        first = t;
      else
        group[root(t)] = root(first);
    }
  }
  std::vector<bool> useful(graph.tensors.size(), false);
  for (const GraphNode& node : graph.nodes) {
    if (!node.layer->computes_channels_last()) continue;
    for (int t : node.inputs)
      if (channels_last[t]) useful[root(t)] = true;
    if (channels_last[node.output]) useful[root(node.output)] = true;
  }
  for (size_t t = 0; t < group.size(); ++t) channels_last[t] = channels_last[t] && useful[root(static_cast<int>(t))];

  std::vector<std::string> names;
  for (GraphNode& node : graph.nodes) {
    if (node.unfused && all_packed(node)) {  // a lone conv fused for a layout it does not pass: the conv again
      node.layer = std::move(node.unfused);
      node.merged.clear();
      node.choice.clear();
      node.alternatives.clear();
    }
    node.unfused.reset();
    node.layer->set_channels_last(layouts(node), channels_last[node.output]);
    if (channels_last[node.output]) names.push_back(graph.tensors[node.output].name);
  }
  return names;
}
#endif

}  // namespace anvil
