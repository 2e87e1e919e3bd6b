// The optimizer: an interface with a registry (create_optimizer), like the
// layers. It declares its state (slabs laid out like the parameter slab) and
// updates the whole parameter slab in one call. The values that change every
// step (the step count, the scheduled learning rate, Adam's bias corrections)
// live in a StepState in the arena and are advanced by a kernel inside the
// step, so a captured CUDA graph replays valid steps for every optimizer and schedule.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "anvil/engine.hpp"
#include "kernels/optimizer_math.hpp"

namespace anvil {

class CudaContext;
struct NetworkSpec;

struct OptimizerArgs {
  float* params = nullptr;
  const float* grads = nullptr;
  std::vector<float*> state;  // one slab per state_names() entry
  int64_t count = 0;          // floats per slab
  StepState* step = nullptr;  // in the arena: device memory on CUDA
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual std::string describe() const = 0;
  // Names of the state slabs: none for plain SGD, {"momentum"}, or Adam's {"exp_avg", "exp_avg_sq"}.
  virtual std::vector<std::string> state_names() const = 0;
  // Advances the StepState, then updates the parameters.
  virtual void step(Device device, CudaContext* ctx, const OptimizerArgs& args) const = 0;
  // The StepState as `steps` steps left it (a resumed run's; the default state for 0).
  virtual StepState state_after(int64_t steps) const = 0;
};

std::unique_ptr<Optimizer> create_optimizer(const NetworkSpec& spec);

}  // namespace anvil
