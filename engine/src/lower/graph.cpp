#include "engine/src/lower/graph.hpp"

#include <algorithm>
#include <map>
#include <set>

#include "anvil/error.hpp"
#include "layers/registry.hpp"

namespace anvil {

namespace {

// Kahn's algorithm, stable in list order; a cycle is reported through one of its layers.
std::vector<int> topological_order(const std::vector<std::vector<int>>& deps, const std::vector<LayerSpec>& layers) {
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
  for (size_t k = seen[at]; k < walk.size(); ++k) cycle += layers[walk[k]].name + " <- ";
  cycle += layers[at].name;
  throw InputError(layers[at].path + ".inputs: the layers form a cycle: " + cycle);
}

// Parameter names are the keys of weight files (PyTorch's state_dict names) and share one namespace
// with the layers' output tensors, so each name belongs to one layer: a layer named "conv.weight" next
// to a conv layer "conv" is refused. channel_scale's parameter takes its own layer's name, which is fine.
void check_names_have_one_owner(const std::vector<LayerSpec>& layers, const std::vector<GraphNode>& nodes) {
  std::vector<const Layer*> layer_at(layers.size());  // by list index; node.output is list index + 1
  for (const GraphNode& node : nodes) layer_at[node.output - 1] = node.layer.get();
  struct Owner {
    size_t layer;
    bool parameter;
  };
  std::map<std::string, Owner> owner_of;
  auto claim = [&](const std::string& name, size_t i, bool parameter) {
    const auto [it, fresh] = owner_of.emplace(name, Owner{i, parameter});
    if (fresh || it->second.layer == i) return;
    const Owner& other = it->second;
    const LayerSpec& owner = layers[other.layer];
    throw InputError(
        layers[i].path + (parameter ? ": parameter '" : ".name: '") + name + "' is also " +
        (other.parameter ? "a parameter of " + owner.path + " ('" + owner.name + "')" : "the name of " + owner.path));
  };
  for (size_t i = 0; i < layers.size(); ++i) {
    claim(layers[i].name, i, false);
    for (const ParamSpec& p : layer_at[i]->param_specs()) claim(p.name, i, true);
  }
}

}  // namespace

std::unique_ptr<Graph> Graph::build(std::shared_ptr<const NetworkSpec> spec) {
  const std::vector<LayerSpec>& layers = spec->layers;
  std::map<std::string, int> index_of;  // layer name -> list index
  for (size_t i = 0; i < layers.size(); ++i) index_of[layers[i].name] = static_cast<int>(i);

  // Resolve input names; tensor 0 is the network input, tensor i+1 is layer i's output.
  std::vector<std::vector<int>> deps(layers.size());
  std::vector<std::vector<int>> input_tensors(layers.size());
  for (size_t i = 0; i < layers.size(); ++i)
    for (size_t j = 0; j < layers[i].inputs.size(); ++j) {
      const std::string& name = layers[i].inputs[j];
      if (name == "input") {
        input_tensors[i].push_back(0);
        continue;
      }
      const auto it = index_of.find(name);
      if (it == index_of.end())
        throw InputError(layers[i].path + ".inputs[" + std::to_string(j) + "]: no layer or input named '" + name + "'");
      deps[i].push_back(it->second);
      input_tensors[i].push_back(it->second + 1);
    }
  const std::vector<int> order = topological_order(deps, layers);

  // Here rather than in the parser, so that a batch set later (Network::with_batch) meets it too.
  if (!within_element_limit(spec->input))
    throw InputError("input: " + to_string(spec->input) + " has more than 2^40 elements, the limit per tensor");
  auto graph = std::make_unique<Graph>();
  graph->tensors.resize(layers.size() + 1);
  graph->tensors[0].name = "input";
  graph->tensors[0].shape = spec->input;
  for (size_t i = 0; i < layers.size(); ++i) graph->tensors[i + 1].name = layers[i].name;
  int64_t parameters = 0;  // stops past 2^40, adding at most 2^40: never near int64's end
  for (int i : order) {
    GraphNode node;
    node.layer = create_layer(layers[i]);
    node.spec = &layers[i];
    node.inputs = input_tensors[i];
    node.output = i + 1;
    std::vector<Shape> shapes;
    for (int t : node.inputs) shapes.push_back(graph->tensors[t].shape);
    const int index = static_cast<int>(graph->nodes.size());
    GraphTensor& out = graph->tensors[i + 1];
    out.shape = node.layer->setup(shapes);
    // Checked before the next layer computes from it, so no size overflows.
    if (!within_element_limit(out.shape))
      throw InputError(layers[i].path + ": the output " + to_string(out.shape) +
                       " has more than 2^40 elements, the limit per tensor");
    for (const ParamSpec& p : node.layer->param_specs()) {
      if (!within_element_limit(p.shape))
        throw InputError(layers[i].path + ": the parameter '" + p.name + "' " + to_string(p.shape) +
                         " has more than 2^40 elements, the limit per tensor");
      parameters += numel(p.shape);
      if (parameters > kMaxTensorElements)
        throw InputError(layers[i].path + ": the parameter '" + p.name + "' takes the parameters together past " +
                         "2^40 elements, their limit");
    }
    out.source = TensorSource::Node;
    out.producer = index;
    for (int t : node.inputs) graph->tensors[t].consumers.push_back(index);
    graph->nodes.push_back(std::move(node));
  }
  check_names_have_one_owner(layers, graph->nodes);
  graph->output = static_cast<int>(layers.size());  // the last listed layer feeds the loss
  for (size_t t = 0; t < graph->tensors.size(); ++t)
    if (graph->tensors[t].consumers.empty() && static_cast<int>(t) != graph->output)
      throw InputError((t == 0 ? std::string("layers") : layers[t - 1].path) + ": the output of '" +
                       graph->tensors[t].name + "' is never used (only the last layer's output feeds the loss)");
  graph->spec = std::move(spec);
  return graph;
}

int Graph::sole_consumer(int t) const {
  const auto& c = tensors[t].consumers;
  return (c.size() == 1 && t != output) ? c[0] : -1;
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
    const bool backward = backward_runs(node), input_grad = input_grad_wanted(node);
    node.layer->set_gradient_needs(backward, input_grad);
    for (const auto& alternative : node.alternatives) alternative->set_gradient_needs(backward, input_grad);
  }
}

bool Graph::input_grad_wanted(const GraphNode& node) const {
  return backward_runs(node) &&
         std::any_of(node.inputs.begin(), node.inputs.end(), [&](int t) { return tensors[t].requires_grad; });
}

std::vector<ParamSpec> Graph::params() const {
  std::vector<ParamSpec> all;
  for (const auto& node : nodes)
    for (auto& spec : node.layer->param_specs()) all.push_back(spec);
  return all;
}

}  // namespace anvil
