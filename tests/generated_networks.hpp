// Random small networks: the shapes, chains, pools and joins of networks no
// one wrote by hand, for the tests that compare backends and formulations
// (GpuVsCpu in test_parity_gpu.cpp) and for the host-side checks that every
// one of them loads, plans and trains (test_generated_networks.cpp). Each is
// drawn from its own seed, so a failing network is reproducible by its label.
//
// A network is one to three blocks. A block is a conv or a transposed conv
// (2-D or 3-D; kernel 1 to 4, stride 1 to 3, padding, dilation 1 or 2,
// output_padding below the stride, with or without bias; 1 to 7 channels),
// then a chain of up to four activations and channel_scales, sometimes a
// residual join (a stride-1 "same" conv and chain on a branch, added to the
// block's output; half the joins take a third input, the branch conv's own
// output or the block's output again, so that a tensor read twice or by a
// fusable chain and another layer is covered), and a max pool, an average pool (kernel 1 to 3, stride 1
// to 3, padding) or none. Sizes stay small (at most 4096 elements a sample
// per tensor) so the CPU reference runs them in milliseconds.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "anvil/tensor.hpp"

namespace anvil::testing {

struct GeneratedNetwork {
  std::string label, json;
  Shape output;  // the output shape the layer formulas give, worked out here
};

namespace generated_detail {

class Draw {
 public:
  explicit Draw(uint32_t seed) : rng_(seed) {}
  int64_t in(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng_); }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
  template <class T>
  const T& pick(const std::vector<T>& options) {
    return options[size_t(in(0, int64_t(options.size()) - 1))];
  }

 private:
  std::mt19937 rng_;
};

inline int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// Per-dimension values, written as one integer where they agree (as users write them).
inline nlohmann::json per_dim(const std::vector<int64_t>& v) {
  for (int64_t x : v)
    if (x != v[0]) return v;
  return v[0];
}

class Builder {
 public:
  Builder(Draw& draw, int dims) : draw_(draw), dims_(dims) {}

  // A conv or transposed conv from `from` (shape `x`) whose output fits the size limit; appends it and returns
  // its output shape. same: stride 1, odd kernel and padding that keep the spatial size (a residual branch).
  Shape conv(const std::string& from, const Shape& x, bool same, int64_t out_channels) {
    for (;;) {
      const bool transposed = !same && draw_.chance(0.4);
      std::vector<int64_t> k(dims_), s(dims_), p(dims_), d(dims_), op(dims_);
      Shape y = {x[0], out_channels};
      bool fits = true;
      for (int i = 0; i < dims_; ++i) {
        const int64_t in = x[2 + i];
        d[i] = draw_.chance(0.2) ? 2 : 1;
        if (same) {
          k[i] = draw_.pick<int64_t>({1, 3});
          s[i] = 1;
          p[i] = d[i] * (k[i] - 1) / 2;
        } else {
          k[i] = draw_.in(1, 4);
          s[i] = draw_.in(1, 3);
          p[i] = draw_.in(0, k[i] - 1);
        }
        op[i] = transposed && s[i] > 1 ? draw_.in(0, s[i] - 1) : 0;
        const int64_t span = d[i] * (k[i] - 1) + 1;
        const int64_t out = transposed ? (in - 1) * s[i] - 2 * p[i] + span + op[i] : (in + 2 * p[i] - span) / s[i] + 1;
        if ((!transposed && in + 2 * p[i] < span) || out < 1) fits = false;
        y.push_back(out);
      }
      if (!fits || numel_of(y) / y[0] > kMaxSample) continue;
      nlohmann::json layer = {
          {"type", std::string(transposed ? "conv_transpose" : "conv") + std::to_string(dims_) + "d"},
          {"name", next_name(transposed ? "up" : "conv")},
          {"inputs", {from}},
          {"in_channels", x[1]},
          {"out_channels", out_channels},
          {"kernel_size", per_dim(k)},
          {"stride", per_dim(s)},
          {"padding", per_dim(p)},
          {"dilation", per_dim(d)}};
      if (transposed) layer["output_padding"] = per_dim(op);
      if (draw_.chance(0.25)) layer["bias"] = false;
      layers_.push_back(layer);
      return y;
    }
  }

  // Up to `most` activations and channel_scales after `from`; returns the last layer's name.
  std::string chain(std::string from, int most) {
    const int ops = int(draw_.in(0, most));
    for (int i = 0; i < ops; ++i) {
      const std::string type = draw_.pick<std::string>({"relu", "leaky_relu", "sigmoid", "tanh", "channel_scale"});
      nlohmann::json layer = {{"type", type}, {"name", next_name(type)}, {"inputs", {from}}};
      if (type == "leaky_relu") layer["negative_slope"] = draw_.pick<double>({0.2, 0.01, -0.5, 1.5});
      layers_.push_back(layer);
      from = layer["name"];
    }
    return from;
  }

  // A pool after `from` (shape `x`) where one fits, else nothing; returns the output's name and shape.
  std::string pool(const std::string& from, Shape& x) {
    for (int attempt = 0; attempt < 8; ++attempt) {
      const bool max = draw_.chance(0.5);
      std::vector<int64_t> k(dims_), s(dims_), p(dims_);
      Shape y = {x[0], x[1]};
      bool fits = true;
      for (int i = 0; i < dims_; ++i) {
        k[i] = draw_.in(1, 3);
        s[i] = draw_.chance(0.5) ? k[i] : draw_.in(1, 3);
        p[i] = draw_.in(0, k[i] / 2);
        if (x[2 + i] + 2 * p[i] < k[i]) fits = false;
        y.push_back((x[2 + i] + 2 * p[i] - k[i]) / s[i] + 1);
      }
      if (!fits) continue;
      const std::string type = std::string(max ? "max_pool" : "avg_pool") + std::to_string(dims_) + "d";
      layers_.push_back({{"type", type},
                         {"name", next_name(max ? "maxpool" : "avgpool")},
                         {"inputs", {from}},
                         {"kernel_size", per_dim(k)},
                         {"stride", per_dim(s)},
                         {"padding", per_dim(p)}});
      x = y;
      return layers_.back()["name"];
    }
    return from;
  }

  std::string add(const std::vector<std::string>& inputs) {
    layers_.push_back({{"type", "add"}, {"name", next_name("sum")}, {"inputs", inputs}});
    return layers_.back()["name"];
  }

  nlohmann::json layers() const { return layers_; }
  static constexpr int64_t kMaxSample = 4096;

 private:
  std::string next_name(const std::string& kind) { return kind + std::to_string(layers_.size()); }

  Draw& draw_;
  int dims_;
  nlohmann::json layers_ = nlohmann::json::array();
};

inline GeneratedNetwork generate(uint32_t seed) {
  Draw draw(seed);
  const int dims = draw.chance(0.5) ? 2 : 3;
  Shape x = {draw.in(1, 3), draw.in(1, 5)};
  for (int i = 0; i < dims; ++i) x.push_back(dims == 2 ? draw.in(3, 12) : draw.in(2, 7));
  const Shape input = x;
  Builder b(draw, dims);
  std::string at = "input";
  const int blocks = int(draw.in(1, 3));
  for (int block = 0; block < blocks; ++block) {
    x = b.conv(at, x, false, draw.in(1, 7));
    at = b.chain(b.layers().back()["name"], 4);
    if (draw.chance(0.3)) {  // a residual join: a "same" branch added to the block's output
      b.conv(at, x, true, x[1]);
      const std::string branch_conv = b.layers().back()["name"];
      std::vector<std::string> joined = {at, b.chain(branch_conv, 2)};
      if (draw.chance(0.5)) joined.push_back(draw.chance(0.5) ? branch_conv : at);
      at = b.add(joined);
      at = b.chain(at, 2);
    }
    if (draw.chance(0.7)) at = b.pool(at, x);
  }
  nlohmann::json net = {{"name", "generated_" + std::to_string(seed)},
                        {"input", input},
                        {"layers", b.layers()},
                        {"precision", "fp32"},
                        {"seed", seed},
                        {"optimizer", {{"type", "sgd"}, {"lr", 0.05}, {"momentum", 0.9}, {"weight_decay", 0.01}}}};
  return {"generated_" + std::to_string(seed), net.dump(), x};
}

}  // namespace generated_detail

// `count` networks, from seeds first, first + 1, ...
inline std::vector<GeneratedNetwork> generated_networks(uint32_t first, int count) {
  std::vector<GeneratedNetwork> nets;
  for (int i = 0; i < count; ++i) nets.push_back(generated_detail::generate(first + uint32_t(i)));
  return nets;
}

}  // namespace anvil::testing
