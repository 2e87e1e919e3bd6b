// The loss: an interface with a registry (create_loss), like the layers. The
// engine plans its scratch at the loss step and calls it between forward and
// backward; its value stays where it was computed (a device scalar on CUDA),
// so a step needs no host synchronisation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "anvil/engine.hpp"

namespace anvil {

class CudaContext;
struct NetworkSpec;

class Loss {
 public:
  virtual ~Loss() = default;
  virtual std::string describe() const = 0;
  // Scratch one call needs on this device (planned at the loss step).
  virtual size_t scratch_bytes(Device device, int64_t count) const = 0;
  // *loss = the mean loss; dpred = d(loss)/d(pred), overwritten.
  // valid_elements (null: all count) points where the device reads it (device memory on CUDA):
  // only that many leading elements count, the rest get a zero gradient (a padded partial batch).
  virtual void forward_backward(Device device, CudaContext* ctx, const float* pred, const float* target, float* dpred,
                                float* loss, int64_t count, const int64_t* valid_elements, void* scratch) const = 0;
};

std::unique_ptr<Loss> create_loss(const NetworkSpec& spec);

}  // namespace anvil
