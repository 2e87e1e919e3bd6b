#include "engine/src/plan/schedule.hpp"

#include <algorithm>

#include "engine/src/train/loss.hpp"
#include "engine/src/train/optimizer.hpp"
#include "kernels/optimizer_math.hpp"

namespace anvil {

namespace {

int add(Schedule& s, std::string name, size_t bytes, int first, int last, bool pinned) {
  s.requests.push_back({std::move(name), bytes, first, last, pinned});
  return static_cast<int>(s.requests.size()) - 1;
}

void schedule_steps(const Graph& g, bool training, Schedule& s) {
  const int count = static_cast<int>(g.nodes.size());
  s.steps = {"load"};
  s.nodes.resize(count);
  for (int i = 0; i < count; ++i) {
    s.nodes[i].forward_step = static_cast<int>(s.steps.size());
    s.steps.push_back("forward " + g.nodes[i].layer->name());
  }
  if (!training) return;
  s.steps.push_back("loss");
  for (int i = count - 1; i >= 0; --i)
    if (g.tensors[g.nodes[i].output].requires_grad) {
      s.nodes[i].backward_step = static_cast<int>(s.steps.size());
      s.steps.push_back("backward " + g.nodes[i].layer->name());
      s.backward_order.push_back(i);
    }
  s.steps.push_back("optimizer");
}

// An activation lives from its producer's forward to its last reader: a
// consumer's forward, a consumer's backward that reads its inputs, or its
// producer's backward that reads its output. A gradient lives from its first
// writer (the loss, or the earliest consumer backward) to its producer's backward.
void schedule_tensors(const Graph& g, bool training, Schedule& s) {
  const int loss_step = static_cast<int>(g.nodes.size()) + 1;  // after load and every forward
  s.activation.assign(g.tensors.size(), kNoBuffer);
  s.gradient.assign(g.tensors.size(), kNoBuffer);
  for (size_t t = 0; t < g.tensors.size(); ++t) {
    const GraphTensor& tensor = g.tensors[t];
    if (tensor.source == TensorSource::FusedAway) continue;
    const bool produced = tensor.source == TensorSource::Node;
    const size_t bytes = numel(tensor.shape) * sizeof(float);
    const bool pinned = t == 0 || static_cast<int>(t) == g.output;
    const int first = produced ? s.nodes[tensor.producer].forward_step : 0;
    int last = first;
    for (int c : tensor.consumers) {
      last = std::max(last, s.nodes[c].forward_step);
      if (s.nodes[c].backward_step >= 0 && g.nodes[c].layer->backward_needs_inputs())
        last = std::max(last, s.nodes[c].backward_step);
    }
    if (produced && s.nodes[tensor.producer].backward_step >= 0 &&
        g.nodes[tensor.producer].layer->backward_needs_output())
      last = std::max(last, s.nodes[tensor.producer].backward_step);
    s.activation[t] = add(s, "act." + tensor.name, bytes, first, last, pinned);
    if (!training || !tensor.requires_grad) continue;
    int g_first = static_cast<int>(s.steps.size());
    if (static_cast<int>(t) == g.output) g_first = loss_step;
    for (int c : tensor.consumers)
      if (s.nodes[c].backward_step >= 0) g_first = std::min(g_first, s.nodes[c].backward_step);
    const int g_last = produced ? s.nodes[tensor.producer].backward_step : g_first;
    s.gradient[t] = add(s, "grad." + tensor.name, bytes, g_first, g_last, t == 0);
  }
}

// Each op's declared buffers: Forward at its forward step, Backward at its
// backward step, Saved from one to the other (or the forward step alone when
// no backward runs). A Backward buffer of an op without backward is not placed.
void schedule_op_buffers(const Graph& g, Device device, Schedule& s) {
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    NodeSchedule& n = s.nodes[i];
    const Layer& layer = *g.nodes[i].layer;
    for (const BufferRequest& b : layer.buffers(device)) {
      n.buffer_bytes.push_back(b.bytes);
      int first = n.forward_step, last = n.forward_step;
      if (b.life == BufferLife::Backward) first = last = n.backward_step;
      if (b.life == BufferLife::Saved && n.backward_step >= 0) last = n.backward_step;
      const bool placed = b.bytes > 0 && first >= 0;
      n.buffers.push_back(placed ? add(s, layer.name() + "." + b.name, b.bytes, first, last, false) : kNoBuffer);
    }
  }
}

// Parameters, gradients and optimizer state are slabs of one layout, so
// zeroing the gradients is one memset and an update is one flat kernel.
void schedule_slabs(const Graph& g, const Optimizer* optimizer, Schedule& s) {
  for (const auto& spec : g.params()) {
    s.params.push_back({spec, s.slab_bytes});
    s.slab_bytes += align_up(numel(spec.shape) * sizeof(float));
  }
  s.param_slab = add(s, "params", s.slab_bytes, 0, 0, true);
  if (!optimizer) return;
  s.grad_slab = add(s, "grads", s.slab_bytes, 0, 0, true);
  for (const std::string& name : optimizer->state_names())
    s.optimizer_state.push_back(add(s, "optimizer." + name, s.slab_bytes, 0, 0, true));
  s.step_state = add(s, "optimizer.step", sizeof(StepState), 0, 0, true);
}

// The copy keep_good_state makes of everything an optimizer step changes.
void schedule_good_state(Schedule& s) {
  s.good_slabs.push_back(add(s, "good.params", s.slab_bytes, 0, 0, true));
  for (size_t k = 0; k < s.optimizer_state.size(); ++k)
    s.good_slabs.push_back(add(s, "good." + s.requests[s.optimizer_state[k]].name, s.slab_bytes, 0, 0, true));
  s.good_step_state = add(s, "good.optimizer.step", sizeof(StepState), 0, 0, true);
}

}  // namespace

Schedule make_schedule(const Graph& g, Device device, const Loss* loss, const Optimizer* optimizer, bool check_finite) {
  Schedule s;
  const bool training = optimizer != nullptr;
  schedule_steps(g, training, s);
  schedule_tensors(g, training, s);
  schedule_op_buffers(g, device, s);
  schedule_slabs(g, optimizer, s);
  if (training) {
    const int64_t count = numel(g.tensors[g.output].shape);
    const int loss_step = static_cast<int>(g.nodes.size()) + 1;
    s.target = add(s, "target", count * sizeof(float), 0, 0, true);
    s.loss = add(s, "loss", sizeof(float), 0, 0, true);
    s.valid_elements = add(s, "loss.valid_elements", sizeof(int64_t), 0, 0, true);
    if (const size_t bytes = loss->scratch_bytes(device, count))
      s.loss_scratch = add(s, "loss.scratch", bytes, loss_step, loss_step, false);
    s.flag = add(s, "flag", sizeof(float), 0, 0, true);
    if (check_finite) schedule_good_state(s);
  }
  return s;
}

}  // namespace anvil
