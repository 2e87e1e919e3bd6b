// CUDA per-channel bias (see bias.hpp), on the channel machinery of channel_reduce.cuh.
#include "kernels/cuda/bias.hpp"

#include <cstdint>

#include "kernels/cuda/channel_reduce.cuh"
#include "kernels/cuda/common.cuh"

namespace anvil::cuda {
namespace {

struct AddParamOp {
  __device__ float operator()(float x, float p) const { return x + p; }
};

}  // namespace

void bias_forward(float* y, const float* bias, int64_t n, int64_t c, int64_t spatial, cudaStream_t stream) {
  constexpr const char* op = "bias_forward";
  detail::require(y != nullptr && bias != nullptr, op, "null pointer");
  detail::channel_map(op, y, bias, y, n, c, spatial, AddParamOp{}, stream);
}

size_t bias_backward_scratch_bytes(int64_t n, int64_t c, int64_t spatial) {
  return detail::reduce_scratch_bytes("bias_backward_scratch_bytes", n, c, spatial);
}

void bias_backward(const float* dy, float* dbias, int64_t n, int64_t c, int64_t spatial, void* scratch,
                   cudaStream_t stream) {
  constexpr const char* op = "bias_backward";
  detail::require(dy != nullptr && dbias != nullptr, op, "null pointer");
  detail::channel_reduce<false>(op, dy, nullptr, nullptr, nullptr, false, dbias, n, c, spatial, scratch, stream);
}

}  // namespace anvil::cuda
