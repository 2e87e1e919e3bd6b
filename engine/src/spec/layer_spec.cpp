#include "engine/src/spec/layer_spec.hpp"

#include <functional>
#include <map>

#include "engine/src/spec/json_reader.hpp"

namespace anvil {

namespace {

ConvSpec parse_conv(JsonReader& cfg, int dims, bool transposed) {
  ConvSpec s;
  s.dims = dims;
  s.transposed = transposed;
  s.in_channels = cfg.integer_or("in_channels", -1, 1, kMaxDimension);
  if (s.in_channels < 0) cfg.fail("in_channels", "missing required field");
  s.out_channels = cfg.integer_or("out_channels", -1, 1, kMaxDimension);
  if (s.out_channels < 0) cfg.fail("out_channels", "missing required field");
  s.kernel = cfg.per_dim("kernel_size", dims, 1);
  s.stride = cfg.per_dim_or("stride", dims, 1, std::vector<int64_t>(dims, 1));
  s.padding = cfg.per_dim_or("padding", dims, 0, std::vector<int64_t>(dims, 0));
  s.dilation = cfg.per_dim_or("dilation", dims, 1, std::vector<int64_t>(dims, 1));
  s.output_padding = std::vector<int64_t>(dims, 0);
  if (transposed) {
    s.output_padding = cfg.per_dim_or("output_padding", dims, 0, s.output_padding);
    for (int i = 0; i < dims; ++i)
      if (s.output_padding[i] >= s.stride[i] && s.output_padding[i] >= s.dilation[i])
        cfg.fail("output_padding", "must be smaller than the stride or the dilation, got " +
                                       std::to_string(s.output_padding[i]) + " with stride " +
                                       std::to_string(s.stride[i]) + " and dilation " + std::to_string(s.dilation[i]));
  }
  s.bias = cfg.boolean_or("bias", true);
  return s;
}

PoolSpec parse_pool(JsonReader& cfg, int dims, bool max) {
  PoolSpec s;
  s.dims = dims;
  s.max = max;
  s.kernel = cfg.per_dim("kernel_size", dims, 1);
  s.stride = cfg.per_dim_or("stride", dims, 1, s.kernel);  // PyTorch: stride defaults to the kernel
  s.padding = cfg.per_dim_or("padding", dims, 0, std::vector<int64_t>(dims, 0));
  int64_t window = 1;  // each kernel < 2^31: the product is bounded before it could overflow
  for (int i = 0; i < dims; ++i) {
    if (2 * s.padding[i] > s.kernel[i])
      cfg.fail("padding", "must be at most half the kernel size, got " + std::to_string(s.padding[i]) +
                              " with kernel " + std::to_string(s.kernel[i]));
    if (s.kernel[i] > kMaxDimension / window) cfg.fail("kernel_size", "the window holds more than 2^31 - 1 elements");
    window *= s.kernel[i];
  }
  return s;
}

using Parser = std::function<LayerParams(JsonReader&)>;

// Every activation of kernels/pointwise_ops.hpp under its own name, and relu as leaky_relu with slope 0.
void add_pointwise_parsers(std::map<std::string, Parser>& table) {
  for (PointwiseOp op : kAllPointwiseOps)
    table[pointwise_op_name(op)] = [op](JsonReader& c) {
      const double slope = op == PointwiseOp::LeakyRelu ? c.number_or("negative_slope", 0.01) : 0.0;
      return PointwiseSpec{op, static_cast<float>(slope)};
    };
  table["relu"] = [](JsonReader&) { return PointwiseSpec{PointwiseOp::LeakyRelu, 0.f}; };
}

const std::map<std::string, Parser>& parsers() {
  static const std::map<std::string, Parser> table = [] {
    std::map<std::string, Parser> t = {
        {"conv2d", [](JsonReader& c) { return parse_conv(c, 2, false); }},
        {"conv3d", [](JsonReader& c) { return parse_conv(c, 3, false); }},
        {"conv_transpose2d", [](JsonReader& c) { return parse_conv(c, 2, true); }},
        {"conv_transpose3d", [](JsonReader& c) { return parse_conv(c, 3, true); }},
        {"max_pool2d", [](JsonReader& c) { return parse_pool(c, 2, true); }},
        {"max_pool3d", [](JsonReader& c) { return parse_pool(c, 3, true); }},
        {"avg_pool2d", [](JsonReader& c) { return parse_pool(c, 2, false); }},
        {"avg_pool3d", [](JsonReader& c) { return parse_pool(c, 3, false); }},
        {"channel_scale", [](JsonReader&) { return ChannelScaleSpec{}; }},
        {"add", [](JsonReader&) { return AddSpec{}; }},
    };
    add_pointwise_parsers(t);
    return t;
  }();
  return table;
}

}  // namespace

std::vector<std::string> layer_types() {
  std::vector<std::string> out;
  for (const auto& entry : parsers()) out.push_back(entry.first);
  return out;
}

LayerParams parse_layer_params(JsonReader& cfg, const std::string& type) {
  const auto it = parsers().find(type);
  if (it == parsers().end()) {
    std::string known;
    for (const auto& t : layer_types()) known += (known.empty() ? "" : ", ") + t;
    cfg.fail("type", "unknown layer type '" + type + "' (known: " + known + ")");
  }
  LayerParams params = it->second(cfg);
  cfg.finish();
  return params;
}

}  // namespace anvil
