// One convolution op (forward, backward data or backward filter) through
// cuDNN's graph (backend) API, the API PyTorch runs its convolutions through,
// for --autotune and the rules of convolution.cpp. Its engines include
// runtime-compiled ones that the legacy cudnnFind*Algorithm API never offers.
// Where the graph API has no eligible engine, Convolution falls back to the
// legacy API for that op.
//
// The op is over three float tensors by role: A (the conv's input side), B
// (its output side) and W, as the legacy descriptors in convolution.cpp;
// packed, except that A, B or W may be channels-last. Engines are filtered as
// the precision and determinism ask: strict fp32 refuses tensor-core engines
// (TF32), deterministic mode refuses non-deterministic ones, and none may
// down-convert its inputs. Candidates are the eligible engine configs (an
// engine with its knob settings) whose plan builds and whose workspace fits,
// in the order the heuristics list them. Choice::Fastest keeps every one of
// mode A and the fallback list for choose_fastest to time (--autotune); a
// rule's choice keeps one without timing and builds no plan past it.
//
// A forward op may carry an epilogue: a bias and pointwise ops after the
// conv, in one graph that cuDNN's runtime-fusion engines compile into the
// conv's kernel, so B is written once, after them (channels-last: those
// engines write no other layout).
#pragma once

#include <cudnn.h>

#include <memory>
#include <string>
#include <vector>

#include "kernels/pointwise_ops.hpp"
#include "layers/layer.hpp"

namespace anvil {

class CudaContext;

struct ConvGraphGeometry {
  std::vector<int64_t> a, b, w;  // dims of A, B and W
  std::vector<int64_t> padding, stride, dilation;
  bool a_channels_last = false, b_channels_last = false;  // stored (N, spatial..., C) instead of packed
  bool w_channels_last = false;                           // stored (W's first axis, spatial..., its second)
};

// What a forward op computes after the conv, in order: + a per-channel bias
// (if any), then each op, an activation (leaky_relu's slope as param) or a
// per-channel multiplier. Their (C) vectors are run()'s operands, the bias first.
struct ConvGraphEpilogue {
  struct Op {
    bool scale = false;
    PointwiseOp activation = PointwiseOp::LeakyRelu;
    float param = 0;
  };
  bool bias = false;
  std::vector<Op> ops;
  bool empty() const { return !bias && ops.empty(); }
  size_t operands() const;
};

class CudnnGraphConv {
 public:
  enum class Kind { Forward, BackwardData, BackwardFilter };
  // Which candidates to keep: all, to time (Fastest); or the first that runs
  // on the tensor cores (mode A, then the fallback list); or the first
  // eligible one of mode A, or of mode B. The last two leave the fallback
  // list out: its engines measured slower on every layer tried (engine 0 up
  // to 8.3 ms where the heuristics' first configs took 0.3 ms or less), and
  // the legacy API is the better fallback.
  enum class Choice { Fastest, FirstTensorCore, FirstOfModeA, FirstOfModeB };

  // Builds the op and the execution plans of the eligible engine configs the
  // choice keeps, whose workspace fits settings.workspace_limit; throws Error
  // when there is none. beta 1 accumulates into the output.
  CudnnGraphConv(CudaContext& ctx, Kind kind, const ConvGraphGeometry& geometry, float beta,
                 const BuildSettings& settings, Choice choice, const ConvGraphEpilogue& epilogue = {});
  ~CudnnGraphConv();
  CudnnGraphConv(const CudnnGraphConv&) = delete;
  CudnnGraphConv& operator=(const CudnnGraphConv&) = delete;

  // The workspace to plan: the most any candidate needs.
  size_t workspace() const;
  // Runs every candidate on these buffers and keeps the fastest (once).
  void choose_fastest(CudaContext& ctx, void* a, void* b, void* w, void* workspace,
                      const std::vector<const float*>& operands = {});
  // Runs the chosen plan on the context's stream; operands: the epilogue's, in its order.
  void run(CudaContext& ctx, const void* a, const void* b, const void* w, void* workspace,
           const std::vector<const float*>& operands = {}) const;
  std::string describe() const;  // the chosen engine and its notes

 private:
  struct Plans;
  std::unique_ptr<Plans> plans_;
  size_t operand_count_ = 0;
};

}  // namespace anvil
