#include "anvil/network.hpp"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "anvil/error.hpp"
#include "engine/src/config.hpp"
#include "engine/src/graph.hpp"

namespace anvil {

const char* to_string(Precision p) { return p == Precision::FP32 ? "fp32" : "tf32"; }

namespace {

nlohmann::json parse_json(const std::string& text) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // nlohmann's message is "[json.exception.parse_error.101] parse error at line 3, column 5: ..."
    std::string what = e.what();
    const size_t cut = what.find("] ");
    throw InputError("invalid JSON: " + (cut == std::string::npos ? what : what.substr(cut + 2)));
  }
}

SgdParams parse_optimizer(ConfigReader& top) {
  SgdParams sgd;
  if (!top.has("optimizer")) return sgd;
  ConfigReader opt(top.raw("optimizer"), "optimizer");
  const std::string type = opt.string_or("type", "sgd");
  if (type != "sgd") opt.fail("type", "unknown optimizer '" + type + "' (known: sgd)");
  auto non_negative = [&](const std::string& key, double fallback) {
    const double v = opt.number_or(key, fallback);
    if (v < 0) opt.fail(key, "must be >= 0, got " + describe_json_value(opt.raw(key)));
    return static_cast<float>(v);
  };
  sgd.lr = non_negative("lr", 0.01);
  sgd.momentum = non_negative("momentum", 0);
  sgd.dampening = static_cast<float>(opt.number_or("dampening", 0));
  sgd.weight_decay = non_negative("weight_decay", 0);
  sgd.nesterov = opt.boolean_or("nesterov", false);
  if (sgd.nesterov && (sgd.momentum <= 0 || sgd.dampening != 0))
    opt.fail("nesterov", "requires momentum > 0 and dampening 0, as in torch.optim.SGD");
  opt.finish();
  return sgd;
}

}  // namespace

Network Network::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot open the network file");
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) throw InputError(path + ": cannot read the network file");
  return parse(text.str(), path);
}

Network Network::parse(const std::string& json_text, const std::string& source) {
  Network net;
  net.source_ = source;
  net.text_ = json_text;
  try {
    const nlohmann::json doc = parse_json(json_text);
    if (!doc.is_object()) throw InputError("the network must be a JSON object, got " + describe_json_value(doc));
    ConfigReader top(doc, "");
    net.name_ = top.string("name");
    const Shape input = top.shape("input");
    if (input.size() != 4 && input.size() != 5)
      top.fail("input", "must be (N, C, H, W) or (N, C, D, H, W), got " + to_string(input));
    const std::string loss = top.string_or("loss", "mse");
    if (loss != "mse") top.fail("loss", "unknown loss '" + loss + "' (known: mse)");
    net.sgd_ = parse_optimizer(top);
    const std::string precision = top.string_or("precision", "tf32");
    if (precision != "tf32" && precision != "fp32")
      top.fail("precision", "must be \"tf32\" or \"fp32\", got \"" + precision + "\"");
    net.precision_ = precision == "fp32" ? Precision::FP32 : Precision::TF32;
    net.seed_ = static_cast<uint64_t>(top.integer_or("seed", 0, 0));
    net.fuse_ = top.boolean_or("fuse", true);
    net.graph_ = Graph::build(top.raw("layers"), input);
    top.finish();
  } catch (const InputError& e) {
    throw InputError(source + ": " + e.what());
  }
  return net;
}

std::unique_ptr<Graph> Network::build_graph() const {
  const nlohmann::json doc = nlohmann::json::parse(text_);
  return Graph::build(doc.at("layers"), graph_->tensors[0].shape);
}

const Shape& Network::input_shape() const { return graph_->tensors[0].shape; }
const Shape& Network::output_shape() const { return graph_->tensors[graph_->output].shape; }

std::vector<LayerSummary> Network::layers() const {
  std::vector<LayerSummary> out;
  for (const auto& node : graph_->nodes) {
    LayerSummary s;
    s.name = node.layer->name();
    s.type = node.layer->type();
    for (int t : node.inputs) s.inputs.push_back(graph_->tensors[t].name);
    s.output_shape = node.layer->output_shape();
    for (const auto& p : node.layer->param_specs()) s.param_count += numel(p.shape);
    out.push_back(s);
  }
  return out;
}

std::vector<std::vector<std::string>> Network::fusion_groups() const {
  std::vector<std::vector<std::string>> out;
  for (const auto& chain : graph_->fusion_groups()) {
    std::vector<std::string> names;
    for (int n : chain) names.push_back(graph_->nodes[n].layer->name());
    out.push_back(names);
  }
  return out;
}

int64_t Network::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : graph_->params()) n += numel(p.shape);
  return n;
}

}  // namespace anvil
