#include "engine/src/train/loss.hpp"

#include <sstream>

#include "engine/src/spec/network_spec.hpp"
#include "kernels/cpu/loss.hpp"

#if ANVIL_WITH_CUDA
#include "engine/src/cuda/context.hpp"
#include "kernels/cuda/loss.hpp"
#endif

namespace anvil {

namespace {

// mse, l1 and smooth_l1: the mean over the elements of one per-element loss
// (kernels/loss_math.hpp), reduced deterministically.
class ElementwiseLoss : public Loss {
 public:
  explicit ElementwiseLoss(const LossSpec& spec) : spec_(spec) {}
  std::string describe() const override {
    if (spec_.params.kind != LossKind::SmoothL1) return spec_.type;
    std::ostringstream s;
    s << spec_.type << " (beta " << spec_.params.beta << ")";
    return s.str();
  }
  // Without CUDA every engine is a CPU engine, which needs no scratch.
  size_t scratch_bytes([[maybe_unused]] Device device, [[maybe_unused]] int64_t count) const override {
#if ANVIL_WITH_CUDA
    if (device == Device::Cuda) return cuda::loss_scratch_bytes(count);
#endif
    return 0;
  }
  void forward_backward([[maybe_unused]] Device device, [[maybe_unused]] CudaContext* ctx, const float* pred,
                        const float* target, float* dpred, float* loss, int64_t count, const int64_t* valid_elements,
                        [[maybe_unused]] void* scratch) const override {
#if ANVIL_WITH_CUDA
    if (device == Device::Cuda)
      return cuda::loss_forward_backward(spec_.params, pred, target, dpred, loss, count, scratch, ctx->stream(),
                                         valid_elements);
#endif
    *loss = cpu::loss_forward_backward(spec_.params, pred, target, dpred, count, valid_elements ? *valid_elements : -1);
  }

 private:
  LossSpec spec_;
};

}  // namespace

std::unique_ptr<Loss> create_loss(const NetworkSpec& spec) { return std::make_unique<ElementwiseLoss>(spec.loss); }

}  // namespace anvil
