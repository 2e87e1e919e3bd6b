// CUDA element-wise sum and gradient fan-out (see add.hpp).
#include "kernels/cuda/add.hpp"

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.cuh"

namespace anvil::cuda {
namespace {

struct IdentityOp {
  __device__ float operator()(float a) const { return a; }
};
struct AddOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

}  // namespace

void add_forward(const float* a, const float* b, float* y, int64_t count, cudaStream_t stream) {
  constexpr const char* op = "add_forward";
  detail::require(a != nullptr && b != nullptr && y != nullptr, op, "null pointer");
  detail::require(count > 0, op, "count must be positive");
  detail::launch_map<false>(y, count, stream, AddOp{}, a, b);
}

void copy_or_accumulate(const float* src, float* dst, int64_t count, bool accumulate, cudaStream_t stream) {
  constexpr const char* op = "copy_or_accumulate";
  detail::require(src != nullptr && dst != nullptr, op, "null pointer");
  detail::require(count > 0, op, "count must be positive");
  if (accumulate) {
    detail::launch_map<true>(dst, count, stream, IdentityOp{}, src);
  } else {
    detail::launch_map<false>(dst, count, stream, IdentityOp{}, src);
  }
}

}  // namespace anvil::cuda
