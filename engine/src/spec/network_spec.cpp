#include "engine/src/spec/network_spec.hpp"

#include <map>

#include "anvil/error.hpp"
#include "anvil/random.hpp"
#include "engine/src/spec/json_reader.hpp"

namespace anvil {

namespace {

const char* const kNameCharacters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.";
// Names go into the headers of the files anvil writes, which readers cap at 100 MB.
constexpr size_t kMaxNetworkName = 1024, kMaxLayerName = 256;

// "loss": a name, or an object with "type" (and smooth_l1's "beta", as F.smooth_l1_loss).
LossSpec parse_loss(JsonReader& top) {
  LossSpec loss;
  if (!top.has("loss")) return loss;
  const nlohmann::json& value = top.raw("loss");
  const bool object = value.is_object();
  if (!object && !value.is_string())
    top.fail("loss", "must be a loss name or an object with \"type\", got " + describe_json_value(value));
  const nlohmann::json no_keys = nlohmann::json::object();  // a bare name has no further keys
  JsonReader cfg(object ? value : no_keys, "loss");
  loss.type = object ? cfg.string("type") : value.get<std::string>();
  const std::string key = object ? "type" : "";
  if (loss.type == "mse") {
    loss.params.kind = LossKind::Mse;
  } else if (loss.type == "l1") {
    loss.params.kind = LossKind::L1;
  } else if (loss.type == "smooth_l1") {
    loss.params.kind = LossKind::SmoothL1;
    const double beta = cfg.number_or("beta", 1.0);
    if (!(beta >= 0)) cfg.fail("beta", "must be >= 0, got " + describe_json_value(cfg.raw("beta")));
    loss.params.beta = static_cast<float>(beta);
  } else {
    cfg.fail(key, "unknown loss '" + loss.type + "' (known: l1, mse, smooth_l1)");
  }
  cfg.finish();
  return loss;
}

// "lr_schedule": step (torch's StepLR) or cosine (a linear warmup, then CosineAnnealingLR).
LrSchedule parse_schedule(JsonReader& opt, double lr) {
  LrSchedule s;
  s.base_lr = lr;
  if (!opt.has("lr_schedule")) return s;
  JsonReader cfg(opt.raw("lr_schedule"), "optimizer.lr_schedule");
  const std::string type = cfg.string("type");
  if (type == "step") {
    s.kind = LrSchedule::Kind::Step;
    s.step_size = cfg.integer_or("step_size", -1, 1);
    if (s.step_size < 0) cfg.fail("step_size", "missing required field");
    s.gamma = cfg.number_or("gamma", 0.1);
    if (!(s.gamma > 0)) cfg.fail("gamma", "must be > 0, got " + describe_json_value(cfg.raw("gamma")));
  } else if (type == "cosine") {
    s.kind = LrSchedule::Kind::Cosine;
    s.warmup_steps = cfg.integer_or("warmup_steps", 0, 0);
    s.total_steps = cfg.integer_or("total_steps", -1, 1);
    if (s.total_steps < 0) cfg.fail("total_steps", "missing required field");
    if (s.total_steps <= s.warmup_steps)
      cfg.fail("total_steps", "must be larger than warmup_steps (" + std::to_string(s.warmup_steps) + "), got " +
                                  std::to_string(s.total_steps));
    s.min_lr = cfg.number_or("min_lr", 0.0);
    if (!(s.min_lr >= 0)) cfg.fail("min_lr", "must be >= 0, got " + describe_json_value(cfg.raw("min_lr")));
  } else {
    cfg.fail("type", "unknown lr_schedule '" + type + "' (known: cosine, step)");
  }
  cfg.finish();
  return s;
}

OptimizerSpec parse_optimizer(JsonReader& top) {
  OptimizerSpec spec;
  spec.schedule.base_lr = 0.01;
  if (!top.has("optimizer")) return spec;
  JsonReader opt(top.raw("optimizer"), "optimizer");
  spec.type = opt.string_or("type", "sgd");
  auto non_negative = [&](const std::string& key, double fallback) {
    const double v = opt.number_or(key, fallback);
    if (!(v >= 0)) opt.fail(key, "must be >= 0, got " + describe_json_value(opt.raw(key)));
    return v;
  };
  if (spec.type == "sgd") {
    spec.schedule = parse_schedule(opt, non_negative("lr", 0.01));
    SgdHyper& h = spec.sgd;
    h.momentum = static_cast<float>(non_negative("momentum", 0));
    h.dampening = static_cast<float>(opt.number_or("dampening", 0));
    h.weight_decay = static_cast<float>(non_negative("weight_decay", 0));
    h.nesterov = opt.boolean_or("nesterov", false);
    if (h.nesterov && (h.momentum <= 0 || h.dampening != 0))
      opt.fail("nesterov", "requires momentum > 0 and dampening 0, as in torch.optim.SGD");
  } else if (spec.type == "adam" || spec.type == "adamw") {
    // torch.optim.Adam / AdamW defaults; AdamW's weight decay is decoupled (and defaults to 0.01).
    AdamHyper& h = spec.adam;
    h.decoupled_weight_decay = spec.type == "adamw";
    spec.schedule = parse_schedule(opt, non_negative("lr", 0.001));
    if (opt.has("betas")) {
      const nlohmann::json& betas = opt.raw("betas");
      if (!betas.is_array() || betas.size() != 2)
        opt.fail("betas", "must be a list of two numbers, got " + describe_json_value(betas));
      for (int i = 0; i < 2; ++i) {
        // As the update uses it, a float: 0.99999999999 would be 1.0, and NaN at step 1.
        const double b = betas[i].is_number() ? betas[i].get<double>() : -1;
        if (!(b >= 0 && b < 1 && static_cast<float>(b) < 1))
          throw InputError(opt.key_path("betas") + "[" + std::to_string(i) + "]: must be in [0, 1) as a float, got " +
                           describe_json_value(betas[i]));
      }
      h.beta1 = betas[0].get<float>();
      h.beta2 = betas[1].get<float>();
    }
    h.eps = static_cast<float>(non_negative("eps", 1e-8));
    h.weight_decay = static_cast<float>(non_negative("weight_decay", h.decoupled_weight_decay ? 0.01 : 0.0));
    if (opt.boolean_or("amsgrad", false)) opt.fail("amsgrad", "is not supported (only amsgrad: false)");
  } else {
    opt.fail("type", "unknown optimizer '" + spec.type + "' (known: adam, adamw, sgd)");
  }
  opt.finish();
  return spec;
}

// Names, inputs and type-specific keys of every layer; inputs are resolved later (lower/graph.cpp).
std::vector<LayerSpec> parse_layers(const nlohmann::json& layers) {
  if (!layers.is_array() || layers.empty())
    throw InputError("layers: must be a non-empty list of layers, got " + describe_json_value(layers));
  // Far beyond any network; the 100 MB file limit alone would admit millions of layers and
  // gigabytes of plan. (Planning a training run grows with layers x tensors alive at once.)
  constexpr size_t kMaxLayers = 100'000;
  if (layers.size() > kMaxLayers)
    throw InputError("layers: at most " + std::to_string(kMaxLayers) + " layers, got " + std::to_string(layers.size()));
  // Likewise the named inputs: the file limit would admit 20 million names in one add's list, and
  // the graph and plan built from them take some 90 times the file (gigabytes).
  constexpr size_t kMaxInputs = 2 * kMaxLayers;
  size_t inputs_so_far = 0;
  std::vector<LayerSpec> specs;
  std::map<std::string, size_t> index_of;  // layer name -> list index
  for (size_t i = 0; i < layers.size(); ++i) {
    LayerSpec spec;
    spec.path = "layers[" + std::to_string(i) + "]";
    JsonReader cfg(layers[i], spec.path);
    spec.type = cfg.string("type");
    spec.name = cfg.string_or("name", spec.type + "_" + std::to_string(i));
    if (spec.name.empty()) cfg.fail("name", "must not be empty");
    if (spec.name == "input") cfg.fail("name", "'input' is reserved; choose another name");
    // --dump-grads writes the input's gradient as "grad.input": a channel_scale so named would lose its own.
    if (spec.name == "grad.input")
      cfg.fail("name", "'grad.input' is reserved (--dump-grads names the input's gradient so); choose another name");
    // A channel_scale's parameter takes its layer's name, and safetensors keeps "__metadata__" for the header's
    // metadata: such a network would train, then fail to write its weights or checkpoint.
    if (spec.name == "__metadata__")
      cfg.fail("name", "'__metadata__' is reserved (tensor files keep it for their metadata); choose another name");
    if (cfg.has("name") && spec.name.size() > kMaxLayerName)  // (a default name's type is checked later)
      cfg.fail("name", "must be at most " + std::to_string(kMaxLayerName) + " characters, got " +
                           std::to_string(spec.name.size()));
    // Names become tensor names in files and words in messages: letters, digits,
    // '_', '-' and '.' only ('+' joins the names of fused layers).
    if (spec.name.find_first_not_of(kNameCharacters) != std::string::npos)
      cfg.fail("name", "must use only letters, digits, '_', '-' and '.', got '" + spec.name + "'");
    // Dots nest names as PyTorch's module paths do ("block.conv"), so each part between them is non-empty.
    if (spec.name.front() == '.' || spec.name.back() == '.' || spec.name.find("..") != std::string::npos)
      cfg.fail("name", "must not start or end with '.' or contain '..', got '" + spec.name + "'");
    // A checkpoint names the optimizer's state "optimizer.<state>.<parameter>": a parameter must not look like one.
    if (spec.name.rfind("optimizer.", 0) == 0)
      cfg.fail("name", "must not start with 'optimizer.' (a checkpoint's optimizer state is named so), got '" +
                           spec.name + "'");
    if (index_of.count(spec.name))
      cfg.fail("name", "duplicate name '" + spec.name + "' (also layers[" + std::to_string(index_of[spec.name]) + "])");
    if (cfg.has("inputs")) {
      const nlohmann::json& listed = layers[i].at("inputs");  // counted before any is copied
      if (listed.is_array() && listed.size() > kMaxInputs - inputs_so_far)
        cfg.fail("inputs", "the layers may name at most " + std::to_string(kMaxInputs) + " inputs in all, these " +
                               std::to_string(listed.size()) + " make " +
                               std::to_string(inputs_so_far + listed.size()));
      spec.inputs = cfg.string_list("inputs");
      if (spec.inputs.empty()) cfg.fail("inputs", "must name at least one tensor");
      inputs_so_far += spec.inputs.size();
    } else {  // one implicit input a layer: bounded by the layers
      spec.inputs = {i == 0 ? std::string("input") : specs.back().name};
    }
    index_of[spec.name] = i;
    spec.params = parse_layer_params(cfg, spec.type);
    specs.push_back(std::move(spec));
  }
  return specs;
}

}  // namespace

NetworkSpec parse_network_spec(const std::string& json_text, const std::string& source, size_t memory_budget) {
  NetworkSpec spec;
  spec.source = source;
  // nlohmann's lexer reads a NUL byte as the end of the input, so what follows would go
  // unread (a tensor header has its own check: only whitespace may follow its object).
  if (const size_t nul = json_text.find('\0'); nul != std::string::npos)
    throw InputError("invalid JSON: a NUL byte at offset " + std::to_string(nul));
  const nlohmann::json doc = parse_json_document(json_text, memory_budget);
  if (!doc.is_object()) throw InputError("the network must be a JSON object, got " + describe_json_value(doc));
  JsonReader top(doc, "");
  spec.name = top.string("name");
  if (spec.name.empty()) top.fail("name", "must not be empty");
  if (spec.name.size() > kMaxNetworkName)  // a label, written into every file's metadata
    top.fail("name",
             "must be at most " + std::to_string(kMaxNetworkName) + " bytes, got " + std::to_string(spec.name.size()));
  spec.input = top.shape("input");
  if (spec.input.size() != 4 && spec.input.size() != 5)
    top.fail("input", "must be (N, C, H, W) or (N, C, D, H, W), got " + to_string(spec.input));
  spec.loss = parse_loss(top);
  spec.optimizer = parse_optimizer(top);
  const std::string precision = top.string_or("precision", "tf32");
  if (precision != "tf32" && precision != "fp32")
    top.fail("precision", "must be \"tf32\" or \"fp32\", got \"" + precision + "\"");
  spec.precision = precision == "fp32" ? Precision::FP32 : Precision::TF32;
  spec.seed = static_cast<uint64_t>(top.integer_or("seed", 0, 0));
  spec.fuse = top.boolean_or("fuse", true);
  spec.layers = parse_layers(top.raw("layers"));
  top.finish();
  // nlohmann keeps object keys sorted, so the dump is canonical. The batch is
  // left out: a run may change it (--batch), and checkpoints record it apart.
  nlohmann::json identity = doc;
  identity["input"][0] = 0;
  spec.hash = fnv1a64(identity.dump());
  return spec;
}

}  // namespace anvil
