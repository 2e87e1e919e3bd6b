#include "engine/src/train/loss.hpp"

#include "engine/src/cuda/context.hpp"
#include "engine/src/spec/network_spec.hpp"
#include "kernels/cpu/reference.hpp"
#include "kernels/cuda/training.hpp"

namespace anvil {

namespace {

class MseLoss : public Loss {
 public:
  std::string describe() const override { return "mse"; }
  size_t scratch_bytes(Device device, int64_t count) const override {
    return device == Device::Cuda ? cuda::mse_scratch_bytes(count) : 0;
  }
  void forward_backward(Device device, CudaContext* ctx, const float* pred, const float* target, float* dpred,
                        float* loss, int64_t count, void* scratch) const override {
    if (device == Device::Cuda)
      cuda::mse_forward_backward(pred, target, dpred, loss, count, scratch, ctx->stream());
    else
      *loss = cpu::mse_forward_backward(pred, target, dpred, count);
  }
};

}  // namespace

std::unique_ptr<Loss> create_loss(const NetworkSpec&) { return std::make_unique<MseLoss>(); }

}  // namespace anvil
