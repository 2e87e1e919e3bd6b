#include "engine/src/run/autotune.hpp"

#if ANVIL_WITH_CUDA

#include <algorithm>
#include <cstdio>
#include <random>

#include "anvil/error.hpp"
#include "engine/src/cuda/check.hpp"
#include "engine/src/cuda/context.hpp"
#include "layers/pooling.hpp"

namespace anvil {

namespace {

constexpr int kTimedRuns = 3;

// The scratch memory one op runs over: its inputs, output, parameters, their
// gradients and its buffers, in one allocation, freed on scope exit.
class OpScratch {
 public:
  OpScratch(CudaContext& ctx, const Layer& op, bool backward, bool input_grad) : ctx_(ctx) {
    const std::vector<Shape>& inputs = op.input_shapes();
    const Shape& y = op.output_shape();
    const std::vector<ParamSpec> params = op.param_specs();
    std::vector<size_t> sizes;  // bytes of each piece; 0: none
    auto piece = [&](size_t bytes) {
      sizes.push_back(bytes);
      return sizes.size() - 1;
    };
    std::vector<size_t> in, din, param, dparam, buffers;
    for (const Shape& x : inputs) in.push_back(piece(bytes_of(x)));
    const size_t out = piece(bytes_of(y)), dout = piece(backward ? bytes_of(y) : 0);
    for (const Shape& x : inputs) din.push_back(piece(input_grad ? bytes_of(x) : 0));
    for (const ParamSpec& p : params) param.push_back(piece(bytes_of(p.shape)));
    for (const ParamSpec& p : params) dparam.push_back(piece(backward ? bytes_of(p.shape) : 0));
    for (const BufferRequest& b : op.buffers(Device::Cuda)) buffers.push_back(piece(b.bytes));
    std::vector<size_t> offsets;
    size_t total = 0;
    for (size_t s : sizes) {
      offsets.push_back(total);
      total += (s + 255) / 256 * 256;
    }
    base_ = static_cast<char*>(ctx.allocate(std::max<size_t>(total, 256)));
    // Zeros where nothing below writes: a search or a timed run may read a buffer first (a filter
    // gradient timed over the dY buffer), and must read defined values.
    ANVIL_CUDA_CHECK(cudaMemset(base_, 0, std::max<size_t>(total, 256)));
    auto at = [&](size_t k) -> float* { return sizes[k] ? reinterpret_cast<float*>(base_ + offsets[k]) : nullptr; };
    // Random inputs, parameters and output gradient: maxima and signs as in training.
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> uniform(-1.f, 1.f);
    auto fill = [&](size_t k) {
      std::vector<float> host(sizes[k] / sizeof(float));
      for (float& v : host) v = uniform(rng);
      ANVIL_CUDA_CHECK(cudaMemcpy(at(k), host.data(), sizes[k], cudaMemcpyHostToDevice));
    };
    for (size_t k : in) fill(k);
    if (backward) fill(dout);
    for (size_t k : param) fill(k);
    for (size_t i = 0; i < inputs.size(); ++i) forward.in.push_back({at(in[i]), inputs[i]});
    forward.out = {at(out), y};
    for (size_t k : param) forward.params.push_back(at(k));
    for (size_t k : buffers) forward.buffers.push_back(at(k));
    this->backward = forward;
    this->backward.dout = {at(dout), y};
    for (size_t i = 0; i < inputs.size(); ++i) this->backward.din.push_back({at(din[i]), inputs[i]});
    this->backward.din_accumulate.assign(inputs.size(), false);
    if (backward)
      for (size_t k : dparam) this->backward.dparams.push_back(at(k));
  }
  ~OpScratch() { ctx_.release(base_); }
  OpScratch(const OpScratch&) = delete;
  OpScratch& operator=(const OpScratch&) = delete;

  LayerArgs forward, backward;

 private:
  static size_t bytes_of(const Shape& s) { return static_cast<size_t>(numel(s)) * sizeof(float); }
  CudaContext& ctx_;
  char* base_ = nullptr;
};

// Milliseconds per forward (+ backward) of the op alone, after one untimed run.
double time_alone(Layer& op, CudaContext& ctx, const BuildSettings& settings, bool backward, bool input_grad) {
  op.build_cuda(ctx, settings);
  OpScratch scratch(ctx, op, backward, input_grad);
  op.choose_algorithms(ctx, scratch.forward, scratch.backward);
  auto run = [&] {
    op.forward(Device::Cuda, &ctx, scratch.forward);
    if (backward) op.backward(Device::Cuda, &ctx, scratch.backward);
  };
  run();
  return ctx.time_ms([&] {
    for (int i = 0; i < kTimedRuns; ++i) run();
  }) / kTimedRuns;
}

std::string format_ms(double ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f ms", ms);
  return buf;
}

}  // namespace

void add_pool_alternatives(Graph& graph) {
  for (GraphNode& node : graph.nodes) {
    const auto* pool = dynamic_cast<const Pooling*>(node.layer.get());
    if (pool == nullptr || pool->cuda_kernel() != Pooling::Kernel::Anvil) continue;
    auto cudnn = std::make_unique<Pooling>(*node.spec, pool->spec(), Pooling::Kernel::Cudnn);
    cudnn->setup(pool->input_shapes());
    node.alternatives.push_back(std::move(cudnn));
  }
}

void autotune_formulations(Graph& graph, CudaContext& ctx, const BuildSettings& settings, bool training) {
  for (GraphNode& node : graph.nodes) {
    if (node.alternatives.empty()) continue;
    // The gradient needs, as Graph::mark_gradients set them (none without training).
    const bool backward = training && graph.backward_runs(node);
    const bool input_grad = backward && graph.input_grad_wanted(node);
    std::vector<std::unique_ptr<Layer>> candidates;
    candidates.push_back(std::move(node.layer));
    for (auto& alternative : node.alternatives) candidates.push_back(std::move(alternative));
    node.alternatives.clear();
    size_t best = 0;
    double best_ms = 0;
    std::string times;
    // Formulations of one type (a pool's kernels) are told apart by what they run.
    const bool one_type = std::all_of(candidates.begin(), candidates.end(),
                                      [&](const auto& c) { return c->type() == candidates[0]->type(); });
    for (size_t k = 0; k < candidates.size(); ++k) {
      const double ms = time_alone(*candidates[k], ctx, settings, backward, input_grad);
      times +=
          (k ? ", " : "") + (one_type ? candidates[k]->describe_cuda() : candidates[k]->type()) + " " + format_ms(ms);
      if (k == 0 || ms < best_ms) {
        best = k;
        best_ms = ms;
      }
    }
    node.layer = std::move(candidates[best]);
    node.choice = "autotuned (the rule's pick was the first), " +
                  std::string(backward ? "forward + backward" : "forward") + ": " + times;
  }
}

}  // namespace anvil

#endif  // ANVIL_WITH_CUDA
