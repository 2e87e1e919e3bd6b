#include "engine/src/train/optimizer.hpp"

#include <functional>
#include <map>

#include "engine/src/spec/network_spec.hpp"
#include "kernels/cpu/optimizer.hpp"

#if ANVIL_WITH_CUDA
#include "engine/src/cuda/context.hpp"
#include "kernels/cuda/optimizer.hpp"
#endif

namespace anvil {

namespace {

// Without CUDA every engine is a CPU engine (Engine refuses Device::Cuda).
void begin([[maybe_unused]] Device device, [[maybe_unused]] CudaContext* ctx, StepState* state,
           const LrSchedule& schedule, float beta1, float beta2) {
#if ANVIL_WITH_CUDA
  if (device == Device::Cuda) return cuda::begin_step(state, schedule, beta1, beta2, ctx->stream());
#endif
  begin_step(*state, schedule, beta1, beta2);
}

StepState state_after(int64_t steps, const LrSchedule& schedule, float beta1, float beta2) {
  StepState state;
  if (steps == 0) return state;
  state.step = steps - 1;
  begin_step(state, schedule, beta1, beta2);
  return state;
}

std::string schedule_name(const LrSchedule& s) {
  switch (s.kind) {
    case LrSchedule::Kind::Step: return ", step schedule";
    case LrSchedule::Kind::Cosine: return ", cosine schedule";
    default: return "";
  }
}

// torch.optim.SGD.
class Sgd : public Optimizer {
 public:
  explicit Sgd(const OptimizerSpec& spec) : schedule_(spec.schedule), h_(spec.sgd) {}
  std::string describe() const override { return "sgd" + schedule_name(schedule_); }
  std::vector<std::string> state_names() const override {
    return h_.momentum != 0 ? std::vector<std::string>{"momentum"} : std::vector<std::string>{};
  }
  void step(Device device, CudaContext* ctx, const OptimizerArgs& a) const override {
    begin(device, ctx, a.step, schedule_, 0.f, 0.f);
    float* momentum = a.state.empty() ? nullptr : a.state[0];
#if ANVIL_WITH_CUDA
    if (device == Device::Cuda)
      return cuda::sgd_update(a.params, a.grads, momentum, a.count, h_, a.step, ctx->stream());
#endif
    cpu::sgd_update(a.params, a.grads, momentum, a.count, h_, *a.step);
  }
  StepState state_after(int64_t steps) const override { return anvil::state_after(steps, schedule_, 0.f, 0.f); }

 private:
  LrSchedule schedule_;
  SgdHyper h_;
};

// torch.optim.Adam, and AdamW (decoupled weight decay).
class Adam : public Optimizer {
 public:
  explicit Adam(const OptimizerSpec& spec) : type_(spec.type), schedule_(spec.schedule), h_(spec.adam) {}
  std::string describe() const override { return type_ + schedule_name(schedule_); }
  std::vector<std::string> state_names() const override { return {"exp_avg", "exp_avg_sq"}; }
  void step(Device device, CudaContext* ctx, const OptimizerArgs& a) const override {
    begin(device, ctx, a.step, schedule_, h_.beta1, h_.beta2);
#if ANVIL_WITH_CUDA
    if (device == Device::Cuda)
      return cuda::adam_update(a.params, a.grads, a.state[0], a.state[1], a.count, h_, a.step, ctx->stream());
#endif
    cpu::adam_update(a.params, a.grads, a.state[0], a.state[1], a.count, h_, *a.step);
  }
  StepState state_after(int64_t steps) const override {
    return anvil::state_after(steps, schedule_, h_.beta1, h_.beta2);
  }

 private:
  std::string type_;
  LrSchedule schedule_;
  AdamHyper h_;
};

using Creator = std::function<std::unique_ptr<Optimizer>(const OptimizerSpec&)>;

const std::map<std::string, Creator>& registry() {
  static const std::map<std::string, Creator> table = {
      {"sgd", [](const OptimizerSpec& s) { return std::make_unique<Sgd>(s); }},
      {"adam", [](const OptimizerSpec& s) { return std::make_unique<Adam>(s); }},
      {"adamw", [](const OptimizerSpec& s) { return std::make_unique<Adam>(s); }},
  };
  return table;
}

}  // namespace

std::unique_ptr<Optimizer> create_optimizer(const NetworkSpec& spec) {
  return registry().at(spec.optimizer.type)(spec.optimizer);
}

}  // namespace anvil
