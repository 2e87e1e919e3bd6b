// CUDA per-channel scale (see channel_scale.hpp), on the channel machinery of channel_reduce.cuh.
#include "kernels/cuda/channel_scale.hpp"

#include <cstdint>

#include "kernels/cuda/channel_reduce.cuh"
#include "kernels/cuda/common.cuh"

namespace anvil::cuda {
namespace {

struct MulParamOp {
  __device__ float operator()(float x, float p) const { return x * p; }
};

}  // namespace

void channel_scale_forward(const float* x, const float* m, float* y, int64_t n, int64_t c, int64_t spatial,
                           cudaStream_t stream) {
  constexpr const char* op = "channel_scale_forward";
  detail::require(x != nullptr && m != nullptr && y != nullptr, op, "null pointer");
  detail::channel_map(op, x, m, y, n, c, spatial, MulParamOp{}, stream);
}

size_t channel_scale_backward_scratch_bytes(int64_t n, int64_t c, int64_t spatial) {
  return detail::reduce_scratch_bytes("channel_scale_backward_scratch_bytes", n, c, spatial);
}

void channel_scale_backward(const float* x, const float* m, const float* dy, float* dx, float* dm, int64_t n, int64_t c,
                            int64_t spatial, bool accumulate, void* scratch, cudaStream_t stream) {
  constexpr const char* op = "channel_scale_backward";
  detail::require(x != nullptr && m != nullptr && dy != nullptr && dm != nullptr, op, "null pointer");
  detail::channel_reduce<true>(op, dy, x, m, dx, accumulate, dm, n, c, spatial, scratch, stream);
}

}  // namespace anvil::cuda
