// The memory plan: every buffer of the whole schedule (activations,
// gradients, the parameter, gradient and optimizer-state slabs, and each op's
// declared saved tensors and workspaces) gets an offset in ONE arena. Tensors whose lifetimes overlap never share
// bytes; the rest reuse memory (best fit, largest first), as ggml-alloc does.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace anvil {

constexpr size_t kArenaAlignment = 256;

struct TensorLifetime {
  std::string name;
  size_t bytes = 0;
  int first = 0, last = 0;  // schedule steps, inclusive
  bool pinned = false;      // inputs, outputs, anything read back: never aliased
};

struct PlannedTensor : TensorLifetime {
  size_t offset = 0;  // from the start of the dynamic region
};

struct MemoryPlan {
  std::vector<std::string> steps;  // schedule step names, in order
  std::vector<PlannedTensor> tensors;
  size_t slab_bytes = 0;       // the parameter slab; the gradient and each optimizer-state slab match it
  size_t dynamic_bytes = 0;    // high-water of the planned region: the arena
  size_t live_peak_bytes = 0;  // most bytes live at one step (a lower bound for dynamic_bytes)
  size_t naive_bytes = 0;      // sum of all planned tensors, one buffer each
  size_t arena_bytes() const { return dynamic_bytes; }
  const PlannedTensor& find(const std::string& name) const;  // throws Error if absent
};

size_t align_up(size_t bytes, size_t alignment = kArenaAlignment);
std::string gib(size_t bytes);  // "37.2 GiB", for messages about memory
// Pinned tensors are live over the whole schedule of step_count steps.
MemoryPlan plan_memory(std::vector<TensorLifetime> tensors, int step_count);

}  // namespace anvil
