#include "engine/src/lower/fusion_rules.hpp"

#include <algorithm>
#include <functional>

#include "anvil/error.hpp"
#include "layers/convolution.hpp"

#if ANVIL_WITH_CUDA
#include "layers/fused_add_epilogue.hpp"
#include "layers/fused_conv_epilogue.hpp"
#include "layers/fused_phase_conv_epilogue.hpp"
#endif

namespace anvil {

namespace {

enum class PoolTail { None, Optional, Required };

struct FusionPattern {
  OpKind head;
  std::vector<OpKind> chain_kinds;  // the kinds the chain after the head may hold, in any order
  PoolTail pool;
};

struct FusionRule {
  std::string name;
  FusionPattern pattern;
  std::function<bool(const FusedChainSpecs&, const Shape& head_output)> applies;
  std::function<FusionCandidates(const FusedChainSpecs&, const FusionSettings&)> create;
};

// The table. The first rule: a convolution, its bias, any chain of activations and
// channel_scales, and optionally a pool, as one conv plus one epilogue kernel.
// The formulation rule: a transposed conv whose stride is the kernel of a max
// pool that tiles its output runs phase-split (its tensor-core kernel never
// writes Y), except under tf32 where that kernel cannot take the chain: there
// cuDNN's tensor-op transposed conv measured 1.9x to 2.7x faster (layer forward
// + backward, docs/performance.md). A conv with at most kDirectRuleMaxTaps
// input channels x taps per output runs anvil's direct kernel (conv, chain and
// pool in one). Under tf32, a stride-1 conv (or transposed conv) that the
// phase split and the direct conv leave runs anvil's wgmma kernel where it
// applies (sm_90; conv, chain and pool in one, Y never written for inference)
// and its rule holds: more than 32 out_channels and two input tiles a block
// (measured faster there, slower at 32 channels with one; docs/performance.md).
// A strided conv, which it supports too, is left to --autotune (slower than
// the direct conv on an RGB k4 s2 stem).
// Every other chain runs cuDNN's conv and the epilogue kernel.
// The second rule: a two-input add (a residual join), any such chain and
// optionally a pool, as one kernel that reads both addends: the sum is never
// written, and the next op never reads it back.
// The fused ops are CUDA-only, so a build without CUDA has no rules.
#if ANVIL_WITH_CUDA
// Up to it, the direct conv's FMAs cost less than cuDNN's thin GEMM with its
// layout conversions and Y's round trip: measured faster at 9 (a gray k3 s3
// stem) and 48 (an RGB k4 s2 stem), slower at 147 (an RGB k7 s2 stem whose
// overlapping 3x3 pool computes each conv output 2.25 times; docs/performance.md).
constexpr int64_t kDirectRuleMaxTaps = 64;
#endif

const std::vector<FusionRule>& rules() {
  static const std::vector<FusionRule> table = {
#if ANVIL_WITH_CUDA
    {"conv_chain_pool",
     {OpKind::Conv, {OpKind::Pointwise, OpKind::ChannelScale}, PoolTail::Optional},
     [](const FusedChainSpecs& s, const Shape& conv_output) {
       return fused_chain(s.pointwise).has_value() &&
              (!s.pool || fusable_pool(std::get<PoolSpec>(s.pool->params), conv_output));
     },
     [](const FusedChainSpecs& s, const FusionSettings& settings) {
       FusionCandidates c;
       if (s.pointwise.empty() && !s.pool) {  // a lone conv (FusionSettings::lone_convs)
         c.why =
             "rule: cuDNN's conv, fused alone (nothing follows it to fuse) so that it can write its output "
             "channels-last";
         c.layers.push_back(std::make_unique<FusedConvEpilogue>(s, FusedConvEpilogue::Forward::Cudnn));
         return c;
       }
       std::string why_not = "turned off";
       std::unique_ptr<FusedPhaseConvEpilogue> phase_split;
       if (settings.phase_split) phase_split = FusedPhaseConvEpilogue::create(s, why_not);
       auto cudnn = std::make_unique<FusedConvEpilogue>(s, FusedConvEpilogue::Forward::Cudnn);
       // anvil's wgmma conv computes in TF32: a candidate under tf32 only.
       const bool tf32 = settings.precision == Precision::TF32;
       std::string why_not_wgmma = "turned off";
       std::unique_ptr<FusedConvEpilogue> wgmma;
       if (tf32 && settings.wgmma_conv && cudnn->wgmma_applies(why_not_wgmma))
         wgmma = std::make_unique<FusedConvEpilogue>(s, FusedConvEpilogue::Forward::Wgmma);
       const std::string wgmma_why =
           "anvil's wgmma conv, as under tf32 its tensor-core kernel computes the conv, "
           "the chain and the pool in one, where cuDNN's conv writes Y for the epilogue";
       // It applies but the rule leaves it to --autotune: a stride, too few channels or one input tile a
       // block; or a conv (not transposed) without a pool where activations pass channels-last, which
       // cuDNN's runtime-fusion kernel computes with its chain in one kernel too, writing only the output.
       const bool transposed = std::get<ConvSpec>(s.head->params).transposed;
       const bool cudnn_fuses_chain = settings.lone_convs && !s.pool && !transposed;
       const bool wgmma_rule = wgmma && wgmma->wgmma_preferred() && !cudnn_fuses_chain;
       const std::string wgmma_not_rule =
           cudnn_fuses_chain ? "the wgmma conv applies, but without a pool in an inference engine under tf32 "
                               "cuDNN's conv takes the chain into its kernel too"
                             : "the wgmma conv applies, but its rule wants a stride of 1, more than 32 "
                               "out_channels and room for two input tiles a block";
       if (!phase_split) {
         std::string why_not_direct = "turned off";
         std::unique_ptr<FusedConvEpilogue> direct;
         if (settings.direct_conv && cudnn->direct_applies(why_not_direct))
           direct = std::make_unique<FusedConvEpilogue>(s, FusedConvEpilogue::Forward::Direct);
         const std::string taps = std::to_string(cudnn->taps_per_output());
         const std::string not_direct =
             direct ? taps + " input channels x taps per output exceed the direct conv's rule of " +
                          std::to_string(kDirectRuleMaxTaps)
                    : "the direct conv does not (" + why_not_direct + ")";
         if (direct && cudnn->taps_per_output() <= kDirectRuleMaxTaps) {
           c.why = "rule: anvil's direct conv, as " + taps + " input channels x taps per output (at most " +
                   std::to_string(kDirectRuleMaxTaps) + ") make too thin a GEMM for cuDNN";
           c.layers.push_back(std::move(direct));
           c.layers.push_back(std::move(cudnn));
           if (wgmma) c.layers.push_back(std::move(wgmma));
         } else if (wgmma_rule) {
           c.why = "rule: " + wgmma_why + " (the phase split does not apply: " + why_not + "; " + not_direct + ")";
           c.layers.push_back(std::move(wgmma));
           c.layers.push_back(std::move(cudnn));
           if (direct) c.layers.push_back(std::move(direct));
         } else {
           c.why = "rule: cuDNN's conv, as the phase split does not apply (" + why_not + "), and " + not_direct +
                   (!tf32   ? ""
                    : wgmma ? "; " + wgmma_not_rule
                            : ", nor the wgmma conv (" + why_not_wgmma + ")");
           c.layers.push_back(std::move(cudnn));
           if (direct) c.layers.push_back(std::move(direct));
           if (wgmma) c.layers.push_back(std::move(wgmma));
         }
       } else if (tf32 && !phase_split->tensor_core_forward_fits()) {
         const std::string phase_why =
             "under tf32 the phase split pays only where anvil's tensor-core "
             "forward takes the whole chain, and this one's channels or taps do not fit it";
         if (wgmma_rule) {
           c.why = "rule: " + wgmma_why + " (" + phase_why + ")";
           c.layers.push_back(std::move(wgmma));
         } else {
           c.why = "rule: cuDNN's conv, as " + phase_why + ", and " +
                   (wgmma ? wgmma_not_rule : "the wgmma conv does not apply (" + why_not_wgmma + ")");
         }
         c.layers.push_back(std::move(cudnn));
         c.layers.push_back(std::move(phase_split));
         if (wgmma) c.layers.push_back(std::move(wgmma));
       } else {
         c.why = "rule: the phase split, which applies";
         c.layers.push_back(std::move(phase_split));
         c.layers.push_back(std::move(cudnn));
         if (wgmma) c.layers.push_back(std::move(wgmma));
       }
       return c;
     }},
    {"add_chain_pool",
     {OpKind::Add, {OpKind::Pointwise, OpKind::ChannelScale}, PoolTail::Optional},
     [](const FusedChainSpecs& s, const Shape& sum) { return FusedAddEpilogue::applies(s, sum); },
     [](const FusedChainSpecs& s, const FusionSettings&) {
       FusionCandidates c;
       c.why = "rule: the one formulation, anvil's pool kernel over both addends (the sum is never written)";
       c.layers.push_back(std::make_unique<FusedAddEpilogue>(s));
       return c;
     }},
#endif
  };
  return table;
}

// The chain that rule's pattern matches from node `head`, or empty.
std::vector<int> match_pattern(const Graph& g, const FusionPattern& p, int head) {
  if (g.nodes[head].layer->kind() != p.head) return {};
  std::vector<int> chain = {head};
  auto allowed = [&](OpKind k) {
    return std::find(p.chain_kinds.begin(), p.chain_kinds.end(), k) != p.chain_kinds.end();
  };
  int next = g.sole_consumer(g.nodes[head].output);
  while (next >= 0 && allowed(g.nodes[next].layer->kind())) {
    chain.push_back(next);
    next = g.sole_consumer(g.nodes[next].output);
  }
  const bool pool = next >= 0 && g.nodes[next].layer->kind() == OpKind::Pool;
  if (pool && p.pool != PoolTail::None) chain.push_back(next);
  if (!pool && p.pool == PoolTail::Required) return {};
  return chain;
}

FusedChainSpecs chain_specs(const Graph& g, const std::vector<int>& nodes) {
  FusedChainSpecs s;
  s.head = g.nodes[nodes[0]].spec;
  for (size_t k = 1; k < nodes.size(); ++k) {
    const GraphNode& node = g.nodes[nodes[k]];
    if (node.layer->kind() == OpKind::Pool)
      s.pool = node.spec;
    else
      s.pointwise.push_back(node.spec);
  }
  s.input = g.tensors[g.nodes[nodes[0]].inputs[0]].shape;
  for (int n : nodes) s.name += (s.name.empty() ? "" : "+") + g.nodes[n].layer->name();
  return s;
}

// A conv, not transposed, that no chain or pool follows.
bool lone_conv(const Graph& g, const std::vector<int>& nodes) {
  if (nodes.size() != 1) return false;
  const Layer& head = *g.nodes[nodes[0]].layer;
  return head.kind() == OpKind::Conv && !static_cast<const Convolution&>(head).transposed();
}

}  // namespace

std::vector<FusionMatch> find_fusions(const Graph& g, bool lone_convs) {
  std::vector<FusionMatch> matches;
  std::vector<bool> taken(g.nodes.size(), false);
  for (size_t head = 0; head < g.nodes.size(); ++head) {
    if (taken[head] || !g.nodes[head].spec) continue;
    for (const FusionRule& rule : rules()) {
      std::vector<int> nodes = match_pattern(g, rule.pattern, static_cast<int>(head));
      const Shape& head_output = g.tensors[g.nodes[head].output].shape;
      // An optional pool the rule cannot take stays a layer of its own.
      if (rule.pattern.pool == PoolTail::Optional && nodes.size() > 1 &&
          g.nodes[nodes.back()].layer->kind() == OpKind::Pool && !rule.applies(chain_specs(g, nodes), head_output))
        nodes.pop_back();
      if (nodes.size() < 2 && !(lone_convs && lone_conv(g, nodes))) continue;
      if (std::any_of(nodes.begin(), nodes.end(), [&](int n) { return taken[n]; })) continue;
      if (!rule.applies(chain_specs(g, nodes), head_output)) continue;
      for (int n : nodes) taken[n] = true;
      matches.push_back({rule.name, nodes});
      break;
    }
  }
  return matches;
}

void apply_fusions(Graph& g, const FusionSettings& settings) {
  for (const FusionMatch& match : find_fusions(g, settings.lone_convs)) {
    const FusionRule& rule =
        *std::find_if(rules().begin(), rules().end(), [&](const FusionRule& r) { return r.name == match.rule; });
    const FusedChainSpecs specs = chain_specs(g, match.nodes);
    FusionCandidates made = rule.create(specs, settings);
    std::vector<std::unique_ptr<Layer>>& candidates = made.layers;
    GraphNode& first = g.nodes[match.nodes.front()];
    const GraphNode& last = g.nodes[match.nodes.back()];
    std::vector<Shape> inputs;
    for (int t : first.inputs) inputs.push_back(g.tensors[t].shape);
    for (auto& candidate : candidates) {
      candidate->setup(inputs);
      if (candidate->output_shape() != g.tensors[last.output].shape)
        throw Error("internal error: fused op '" + candidate->name() + "' changes the chain's output shape");
    }
    std::unique_ptr<Layer> fused = std::move(candidates.front());
    if (settings.alternatives)
      for (size_t k = 1; k < candidates.size(); ++k) first.alternatives.push_back(std::move(candidates[k]));
    first.choice = made.why;
    // The fused node takes the head's place and produces the chain's last tensor.
    for (size_t k = 0; k + 1 < match.nodes.size(); ++k) {
      GraphTensor& inner = g.tensors[g.nodes[match.nodes[k]].output];
      inner.consumers.clear();
      inner.source = TensorSource::FusedAway;
    }
    std::vector<std::string> merged;
    for (int n : match.nodes) merged.push_back(g.nodes[n].layer->name());
    const int out = last.output;
    g.tensors[out].producer = match.nodes.front();
    if (match.nodes.size() == 1) first.unfused = std::move(first.layer);
    first.layer = std::move(fused);
    first.spec = nullptr;
    first.output = out;
    first.merged = merged;
    for (size_t k = 1; k < match.nodes.size(); ++k) g.nodes[match.nodes[k]].layer.reset();
  }
  // Drop the emptied nodes and renumber producers and consumers.
  std::vector<int> new_index(g.nodes.size(), -1);
  std::vector<GraphNode> kept;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (g.nodes[i].layer) {
      new_index[i] = static_cast<int>(kept.size());
      kept.push_back(std::move(g.nodes[i]));
    }
  g.nodes = std::move(kept);
  for (auto& t : g.tensors) {
    if (t.source == TensorSource::Node) t.producer = new_index[t.producer];
    for (int& c : t.consumers) c = new_index[c];
  }
}

}  // namespace anvil
