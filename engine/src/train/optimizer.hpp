// The optimizer: an interface with a registry (create_optimizer), like the
// layers. It declares its state (slabs laid out like the parameter slab) and
// updates the whole parameter slab in one call.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "anvil/engine.hpp"

namespace anvil {

class CudaContext;
struct NetworkSpec;

struct OptimizerArgs {
  float* params = nullptr;
  const float* grads = nullptr;
  std::vector<float*> state;  // one slab per state_names() entry
  int64_t count = 0;          // floats per slab
  bool first_step = false;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual std::string describe() const = 0;
  // Names of the state slabs, e.g. {"momentum"}; none for plain SGD.
  virtual std::vector<std::string> state_names() const = 0;
  virtual void step(Device device, CudaContext* ctx, const OptimizerArgs& args) const = 0;
};

std::unique_ptr<Optimizer> create_optimizer(const NetworkSpec& spec);

}  // namespace anvil
