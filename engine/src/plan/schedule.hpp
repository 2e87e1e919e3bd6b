// The schedule of one engine and every buffer it needs, with lifetimes in
// schedule steps: step 0 loads the inputs, then one step per op forward; when
// training, the loss, one step per op backward (reverse order) and the
// optimizer. Ops, the loss and the optimizer declare what they need; this
// file turns the declarations into requests for the memory planner and keeps
// a handle (the request's index) for each, so binding never looks a name up.
#pragma once

#include <string>
#include <vector>

#include "anvil/engine.hpp"
#include "anvil/plan.hpp"
#include "engine/src/lower/graph.hpp"

namespace anvil {

class Loss;
class Optimizer;

constexpr int kNoBuffer = -1;

struct ParamSlot {
  ParamSpec spec;
  size_t offset = 0;  // bytes from the slab start; the same in every slab
};

struct NodeSchedule {
  int forward_step = 0;
  int backward_step = kNoBuffer;     // none when no gradient flows through the op
  std::vector<int> buffers;          // per declared buffer: a request, or kNoBuffer
  std::vector<size_t> buffer_bytes;  // as declared
};

struct Schedule {
  std::vector<std::string> steps;
  std::vector<TensorLifetime> requests;  // what the planner places, in this order
  std::vector<int> activation;           // per graph tensor: its request, or kNoBuffer (fused away)
  std::vector<int> gradient;             // per graph tensor: its request, or kNoBuffer
  std::vector<NodeSchedule> nodes;       // per graph node
  std::vector<int> backward_order;       // node indices, in the order backward runs

  std::vector<ParamSlot> params;
  size_t slab_bytes = 0;
  int param_slab = kNoBuffer, grad_slab = kNoBuffer;
  std::vector<int> optimizer_state;  // one slab each
  int step_state = kNoBuffer;        // the optimizer's StepState
  int target = kNoBuffer, loss = kNoBuffer, loss_scratch = kNoBuffer;
  int valid_elements = kNoBuffer;  // the real target elements of a batch fed from a dataset (int64)
  int flag = kNoBuffer;            // one word: the finite checks' flag, the ranks' agreement
  // Options::check_finite: the copy of the training state that keep_good_state makes (the
  // parameter slab, then each optimizer-state slab; the StepState).
  std::vector<int> good_slabs;
  int good_step_state = kNoBuffer;
};

// loss and optimizer are null for a forward-only engine.
Schedule make_schedule(const Graph& graph, Device device, const Loss* loss, const Optimizer* optimizer,
                       bool check_finite);

}  // namespace anvil
