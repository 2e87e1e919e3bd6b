#include "engine/src/spec/network_spec.hpp"

#include <map>

#include "anvil/error.hpp"
#include "engine/src/spec/json_reader.hpp"

namespace anvil {

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

SgdParams parse_optimizer(JsonReader& top) {
  SgdParams sgd;
  if (!top.has("optimizer")) return sgd;
  JsonReader opt(top.raw("optimizer"), "optimizer");
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

// Names, inputs and type-specific keys of every layer; inputs are resolved later (lower/graph.cpp).
std::vector<LayerSpec> parse_layers(const nlohmann::json& layers) {
  if (!layers.is_array() || layers.empty())
    throw InputError("layers: must be a non-empty list of layers, got " + describe_json_value(layers));
  std::vector<LayerSpec> specs;
  std::map<std::string, size_t> index_of;  // layer name -> list index
  for (size_t i = 0; i < layers.size(); ++i) {
    LayerSpec spec;
    spec.path = "layers[" + std::to_string(i) + "]";
    JsonReader cfg(layers[i], spec.path);
    spec.type = cfg.string("type");
    spec.name = cfg.string_or("name", spec.type + "_" + std::to_string(i));
    if (spec.name.empty() || spec.name == "input")
      cfg.fail("name", "'" + spec.name + "' is reserved; choose another name");
    // '.' separates a layer from its parameter ("conv.weight"), as in PyTorch's module names.
    if (spec.name.find_first_of(".+ \t") != std::string::npos)
      cfg.fail("name", "must not contain '.', '+' or spaces, got '" + spec.name + "'");
    if (index_of.count(spec.name))
      cfg.fail("name", "duplicate name '" + spec.name + "' (also layers[" + std::to_string(index_of[spec.name]) + "])");
    if (cfg.has("inputs")) {
      spec.inputs = cfg.string_list("inputs");
      if (spec.inputs.empty()) cfg.fail("inputs", "must name at least one tensor");
    } else {
      spec.inputs = {i == 0 ? std::string("input") : specs.back().name};
    }
    index_of[spec.name] = i;
    spec.params = parse_layer_params(cfg, spec.type);
    specs.push_back(std::move(spec));
  }
  return specs;
}

}  // namespace

NetworkSpec parse_network_spec(const std::string& json_text, const std::string& source) {
  NetworkSpec spec;
  spec.source = source;
  const nlohmann::json doc = parse_json(json_text);
  if (!doc.is_object()) throw InputError("the network must be a JSON object, got " + describe_json_value(doc));
  JsonReader top(doc, "");
  spec.name = top.string("name");
  spec.input = top.shape("input");
  if (spec.input.size() != 4 && spec.input.size() != 5)
    top.fail("input", "must be (N, C, H, W) or (N, C, D, H, W), got " + to_string(spec.input));
  spec.loss = top.string_or("loss", "mse");
  if (spec.loss != "mse") top.fail("loss", "unknown loss '" + spec.loss + "' (known: mse)");
  spec.sgd = parse_optimizer(top);
  const std::string precision = top.string_or("precision", "tf32");
  if (precision != "tf32" && precision != "fp32")
    top.fail("precision", "must be \"tf32\" or \"fp32\", got \"" + precision + "\"");
  spec.precision = precision == "fp32" ? Precision::FP32 : Precision::TF32;
  spec.seed = static_cast<uint64_t>(top.integer_or("seed", 0, 0));
  spec.fuse = top.boolean_or("fuse", true);
  spec.layers = parse_layers(top.raw("layers"));
  top.finish();
  return spec;
}

}  // namespace anvil
