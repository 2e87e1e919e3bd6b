// Hyper-parameters of torch.optim.SGD, shared by the CPU and CUDA updates.
#pragma once

namespace anvil {

struct SgdParams {
  float lr = 0.01f;
  float momentum = 0.f;
  float dampening = 0.f;
  float weight_decay = 0.f;
  bool nesterov = false;
};

}  // namespace anvil
