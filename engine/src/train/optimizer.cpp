#include "engine/src/train/optimizer.hpp"

#include "engine/src/cuda/context.hpp"
#include "engine/src/spec/network_spec.hpp"
#include "kernels/cpu/reference.hpp"
#include "kernels/cuda/training.hpp"

namespace anvil {

namespace {

class Sgd : public Optimizer {
 public:
  explicit Sgd(const SgdParams& p) : p_(p) {}
  std::string describe() const override { return "sgd"; }
  std::vector<std::string> state_names() const override {
    return p_.momentum != 0 ? std::vector<std::string>{"momentum"} : std::vector<std::string>{};
  }
  void step(Device device, CudaContext* ctx, const OptimizerArgs& a) const override {
    float* momentum = a.state.empty() ? nullptr : a.state[0];
    if (device == Device::Cuda)
      cuda::sgd_step(a.params, a.grads, momentum, a.count, p_, a.first_step, ctx->stream());
    else
      cpu::sgd_step(a.params, a.grads, momentum, a.count, p_, a.first_step);
  }

 private:
  SgdParams p_;
};

}  // namespace

std::unique_ptr<Optimizer> create_optimizer(const NetworkSpec& spec) { return std::make_unique<Sgd>(spec.sgd); }

}  // namespace anvil
