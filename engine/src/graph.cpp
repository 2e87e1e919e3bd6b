#include "engine/src/graph.hpp"

#include <map>
#include <set>

#include "anvil/error.hpp"
#include "engine/src/config.hpp"
#include "layers/convolution.hpp"
#include "layers/fused_conv_epilogue.hpp"
#include "layers/fused_phase_conv_epilogue.hpp"
#include "layers/leaky_relu.hpp"
#include "layers/pooling.hpp"
#include "layers/registry.hpp"

namespace anvil {

namespace {

struct ParsedLayer {
  std::unique_ptr<Layer> layer;
  std::vector<std::string> input_names;
  std::string path;
};

// Kahn's algorithm, stable in list order; a cycle is reported through one of its layers.
std::vector<int> topological_order(const std::vector<std::vector<int>>& deps, const std::vector<ParsedLayer>& parsed) {
  const int n = static_cast<int>(deps.size());
  std::vector<int> pending(n), order;
  std::vector<std::vector<int>> users(n);
  for (int i = 0; i < n; ++i) {
    pending[i] = static_cast<int>(deps[i].size());
    for (int d : deps[i]) users[d].push_back(i);
  }
  std::set<int> ready;
  for (int i = 0; i < n; ++i)
    if (pending[i] == 0) ready.insert(i);
  while (!ready.empty()) {
    const int i = *ready.begin();
    ready.erase(ready.begin());
    order.push_back(i);
    for (int u : users[i])
      if (--pending[u] == 0) ready.insert(u);
  }
  if (static_cast<int>(order.size()) == n) return order;
  // Walk back along unfinished dependencies until a layer repeats: that is the cycle.
  int at = 0;
  while (pending[at] == 0) ++at;
  std::vector<int> walk;
  std::map<int, size_t> seen;
  while (!seen.count(at)) {
    seen[at] = walk.size();
    walk.push_back(at);
    for (int d : deps[at])
      if (pending[d] != 0) {
        at = d;
        break;
      }
  }
  // walk follows inputs (each layer's input is the next), so it reads "a <- b <- ... <- a".
  std::string cycle;
  for (size_t k = seen[at]; k < walk.size(); ++k) cycle += parsed[walk[k]].layer->name() + " <- ";
  cycle += parsed[at].layer->name();
  throw InputError(parsed[at].path + ".inputs: the layers form a cycle: " + cycle);
}

}  // namespace

std::unique_ptr<Graph> Graph::build(const nlohmann::json& layers, const Shape& input_shape) {
  if (!layers.is_array() || layers.empty())
    throw InputError("layers: must be a non-empty list of layers, got " + describe_json_value(layers));

  // Parse each layer and its keys.
  std::vector<ParsedLayer> parsed;
  std::map<std::string, int> index_of;  // layer name -> list index
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string path = "layers[" + std::to_string(i) + "]";
    ConfigReader cfg(layers[i], path);
    LayerInfo info;
    info.path = path;
    info.type = cfg.string("type");
    info.name = cfg.string_or("name", info.type + "_" + std::to_string(i));
    if (info.name.empty() || info.name == "input")
      cfg.fail("name", "'" + info.name + "' is reserved; choose another name");
    // '.' separates a layer from its parameter ("conv.weight"), as in PyTorch's module names.
    if (info.name.find_first_of(".+ \t") != std::string::npos)
      cfg.fail("name", "must not contain '.', '+' or spaces, got '" + info.name + "'");
    if (index_of.count(info.name))
      cfg.fail("name", "duplicate name '" + info.name + "' (also layers[" + std::to_string(index_of[info.name]) + "])");
    std::vector<std::string> inputs;
    if (cfg.has("inputs")) {
      inputs = cfg.string_list("inputs");
      if (inputs.empty()) cfg.fail("inputs", "must name at least one tensor");
    } else {
      inputs = {i == 0 ? std::string("input") : parsed.back().layer->name()};
    }
    index_of[info.name] = static_cast<int>(i);
    parsed.push_back({create_layer(cfg, info), inputs, path});
  }

  // Resolve input names; tensor 0 is the network input, tensor i+1 is layer i's output.
  std::vector<std::vector<int>> deps(parsed.size());
  std::vector<std::vector<int>> input_tensors(parsed.size());
  for (size_t i = 0; i < parsed.size(); ++i)
    for (size_t j = 0; j < parsed[i].input_names.size(); ++j) {
      const std::string& name = parsed[i].input_names[j];
      if (name == "input") {
        input_tensors[i].push_back(0);
        continue;
      }
      const auto it = index_of.find(name);
      if (it == index_of.end())
        throw InputError(parsed[i].path + ".inputs[" + std::to_string(j) + "]: no layer or input named '" + name + "'");
      deps[i].push_back(it->second);
      input_tensors[i].push_back(it->second + 1);
    }
  const std::vector<int> order = topological_order(deps, parsed);

  auto graph = std::make_unique<Graph>();
  graph->tensors.resize(parsed.size() + 1);
  graph->tensors[0].name = "input";
  graph->tensors[0].shape = input_shape;
  for (size_t i = 0; i < parsed.size(); ++i) graph->tensors[i + 1].name = parsed[i].layer->name();
  std::map<int, int> node_of_layer;
  for (int i : order) {
    GraphNode node;
    node.inputs = input_tensors[i];
    node.output = i + 1;
    std::vector<Shape> shapes;
    for (int t : node.inputs) shapes.push_back(graph->tensors[t].shape);
    graph->tensors[i + 1].shape = parsed[i].layer->setup(shapes);
    graph->tensors[i + 1].producer = static_cast<int>(graph->nodes.size());
    for (int t : node.inputs) graph->tensors[t].consumers.push_back(static_cast<int>(graph->nodes.size()));
    node.layer = std::move(parsed[i].layer);
    graph->nodes.push_back(std::move(node));
  }
  graph->output = static_cast<int>(parsed.size());  // the last listed layer feeds the loss
  for (size_t t = 0; t < graph->tensors.size(); ++t)
    if (graph->tensors[t].consumers.empty() && static_cast<int>(t) != graph->output)
      throw InputError((t == 0 ? std::string("layers") : parsed[t - 1].path) + ": the output of '" +
                       graph->tensors[t].name + "' is never used (only the last layer's output feeds the loss)");
  return graph;
}

std::vector<std::vector<int>> Graph::fusion_groups() const {
  std::vector<std::vector<int>> groups;
  // The single node consuming tensor t, if t feeds exactly one use and is not the output.
  auto sole_consumer = [&](int t) {
    const auto& c = tensors[t].consumers;
    return (c.size() == 1 && t != output) ? c[0] : -1;
  };
  for (size_t i = 0; i < nodes.size(); ++i) {
    const auto* conv = dynamic_cast<const Convolution*>(nodes[i].layer.get());
    if (!conv) continue;
    // conv -> leaky_relu (or relu) -> channel_scale -> leaky_relu -> max_pool, each the sole user of the last.
    auto is_leaky = [](const Layer& l) { return dynamic_cast<const LeakyRelu*>(&l) != nullptr; };
    auto is_scale = [](const Layer& l) { return l.type() == "channel_scale"; };
    auto is_pool = [](const Layer& l) { return dynamic_cast<const Pooling*>(&l) != nullptr; };
    const std::vector<bool (*)(const Layer&)> pattern = {is_leaky, is_scale, is_leaky, is_pool};
    std::vector<int> chain = {static_cast<int>(i)};
    for (auto matches : pattern) {
      const int next = sole_consumer(nodes[chain.back()].output);
      if (next < 0 || !matches(*nodes[next].layer)) break;
      chain.push_back(next);
    }
    if (chain.size() != 5) continue;
    const auto* pool = dynamic_cast<const Pooling*>(nodes[chain[4]].layer.get());
    // Non-overlapping windows that tile Y exactly, each at most 256 elements (a byte of argmax).
    const Shape& y = conv->output_shape();
    bool tiles = pool && pool->is_max() && pool->stride() == pool->kernel();
    int64_t window = 1;
    for (size_t d = 0; tiles && d < pool->kernel().size(); ++d) {
      tiles = pool->padding()[d] == 0 && y[2 + d] % pool->kernel()[d] == 0;
      window *= pool->kernel()[d];
    }
    if (tiles && window <= 256) groups.push_back(chain);
  }
  return groups;
}

void Graph::fuse(bool phase_split) {
  for (const auto& chain : fusion_groups()) {
    GraphNode& first = nodes[chain[0]];
    GraphNode& last = nodes[chain[4]];
    std::unique_ptr<Convolution> conv(static_cast<Convolution*>(first.layer.release()));
    const float slope1 = static_cast<const LeakyRelu&>(*nodes[chain[1]].layer).slope();
    const float slope2 = static_cast<const LeakyRelu&>(*nodes[chain[3]].layer).slope();
    const std::string scale_name = nodes[chain[2]].layer->name();
    const auto kernel = static_cast<const Pooling&>(*last.layer).kernel();
    std::vector<std::string> merged;
    for (int n : chain) merged.push_back(n == chain[0] ? conv->name() : nodes[n].layer->name());
    std::string name;
    for (const auto& m : merged) name += (name.empty() ? "" : "+") + m;
    cuda::PhaseSplitGeometry phase;
    std::unique_ptr<Layer> fused;
    if (phase_split && FusedPhaseConvEpilogue::derive(*conv, kernel, phase))
      fused = std::make_unique<FusedPhaseConvEpilogue>(std::move(conv), slope1, scale_name, slope2, phase, name);
    else
      fused = std::make_unique<FusedConvEpilogue>(std::move(conv), slope1, scale_name, slope2, kernel, name);
    fused->setup({tensors[first.inputs[0]].shape});
    // The fused node takes the first node's place and produces the pool's output tensor.
    for (size_t k = 1; k < chain.size(); ++k) {
      const int t = nodes[chain[k - 1]].output;
      tensors[t].consumers.clear();
      tensors[t].producer = -2;  // no longer materialised
    }
    const int out = last.output;
    tensors[out].producer = chain[0];
    first.layer = std::move(fused);
    first.output = out;
    first.merged = merged;
    for (size_t k = 1; k < chain.size(); ++k) nodes[chain[k]].layer.reset();
  }
  // Drop the emptied nodes and renumber producers and consumers.
  std::vector<int> new_index(nodes.size(), -1);
  std::vector<GraphNode> kept;
  for (size_t i = 0; i < nodes.size(); ++i)
    if (nodes[i].layer) {
      new_index[i] = static_cast<int>(kept.size());
      kept.push_back(std::move(nodes[i]));
    }
  nodes = std::move(kept);
  for (auto& t : tensors) {
    if (t.producer >= 0) t.producer = new_index[t.producer];
    for (int& c : t.consumers) c = new_index[c];
  }
}

void Graph::mark_gradients(bool input_grad) {
  for (auto& t : tensors) t.requires_grad = false;
  tensors[0].requires_grad = input_grad;
  for (const auto& node : nodes) {
    bool needs = !node.layer->param_specs().empty();
    for (int t : node.inputs) needs = needs || tensors[t].requires_grad;
    tensors[node.output].requires_grad = needs;
  }
  for (const auto& node : nodes) {
    bool backward = tensors[node.output].requires_grad;
    node.layer->set_gradient_needs(backward, backward && tensors[node.inputs[0]].requires_grad);
  }
}

std::vector<ParamSpec> Graph::params() const {
  std::vector<ParamSpec> all;
  for (const auto& node : nodes)
    for (auto& spec : node.layer->param_specs()) all.push_back(spec);
  return all;
}

}  // namespace anvil
