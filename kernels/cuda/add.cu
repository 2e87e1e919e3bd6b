// CUDA element-wise sum and gradient fan-out (see add.hpp).
#include "kernels/cuda/add.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.cuh"

namespace anvil::cuda {
namespace {

struct IdentityOp {
  __device__ float operator()(float a) const { return a; }
};
// Left to right: ((a + b) + c) + d, the CPU reference's order.
struct SumOp {
  template <class... T>
  __device__ float operator()(T... v) const {
    return (... + v);
  }
};

}  // namespace

void add_forward(const std::vector<const float*>& inputs, float* y, int64_t count, cudaStream_t stream) {
  constexpr const char* op = "add_forward";
  constexpr size_t kTermsPerPass = 4;
  detail::require(inputs.size() >= 2, op, "at least two inputs");
  detail::require(y != nullptr && std::find(inputs.begin(), inputs.end(), nullptr) == inputs.end(), op, "null pointer");
  detail::require(count > 0, op, "count must be positive");
  detail::require(std::find(inputs.begin() + 2, inputs.end(), y) == inputs.end(), op,
                  "y may alias only the first two inputs");
  std::vector<const float*> terms;
  for (size_t next = 0; next < inputs.size();) {
    terms.clear();
    if (next > 0) terms.push_back(y);  // the sum so far, then the next inputs
    while (terms.size() < kTermsPerPass && next < inputs.size()) terms.push_back(inputs[next++]);
    switch (terms.size()) {
      case 2: detail::launch_map<false>(y, count, stream, SumOp{}, terms[0], terms[1]); break;
      case 3: detail::launch_map<false>(y, count, stream, SumOp{}, terms[0], terms[1], terms[2]); break;
      default: detail::launch_map<false>(y, count, stream, SumOp{}, terms[0], terms[1], terms[2], terms[3]); break;
    }
  }
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
