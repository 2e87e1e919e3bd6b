// CUDA check for non-finite values (see finite.hpp).
#include "kernels/cuda/finite.hpp"

#include "kernels/cuda/common.cuh"

namespace anvil::cuda {
namespace {

// Exponent bits all set: NaN or infinity. On the bits, so no compiler flag can fold it away.
__device__ __forceinline__ bool non_finite(float v) { return (__float_as_uint(v) & 0x7f800000u) == 0x7f800000u; }

__global__ void flag_non_finite_kernel(const float* __restrict__ x, int64_t count, unsigned* flag) {
  bool found = false;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    found |= non_finite(x[i]);
  if (__syncthreads_or(found) && threadIdx.x == 0) *flag = 1u;  // one plain store per block: all write the same value
}

}  // namespace

void flag_non_finite(const float* x, int64_t count, unsigned* flag, cudaStream_t stream) {
  constexpr const char* op = "flag_non_finite";
  detail::require(x != nullptr && flag != nullptr, op, "null pointer");
  detail::require(count > 0, op, "count must be positive");
  flag_non_finite_kernel<<<detail::grid_stride_blocks(count), detail::kThreads, 0, stream>>>(x, count, flag);
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
