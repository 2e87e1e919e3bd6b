// The last pass of every chain backward: the per-channel partial sums into
// dbias and the multipliers' gradients (see epilogue_chain.cuh).
#include "kernels/cuda/epilogue_chain.hpp"

#include "kernels/cuda/common.cuh"

namespace anvil::cuda {
namespace {

// Array blockIdx.y: 0 is dbias, 1 + i op i's multiplier; a null output is skipped.
__global__ void __launch_bounds__(detail::kThreads)
    chain_finalize(const double* __restrict__ partials, int64_t per, int64_t channels, ChainGrads grads) {
  const int array = blockIdx.y;
  float* out = array == 0 ? grads.dbias : grads.dscale[array - 1];
  if (out == nullptr) return;
  detail::finalize_channels(partials + int64_t(array) * channels * per, per, channels, out);
}

}  // namespace

void require_chain(const char* op, const EpilogueChain& c) {
  detail::require(c.ops >= 0 && c.ops <= kMaxChainOps, op, "a chain has 0 to 8 ops");
  for (int i = 0; i < c.ops; ++i) detail::require(!c.is_scale[i] || c.scale[i] != nullptr, op, "null multiplier");
}

bool chain_grads_wanted(const EpilogueChain& c, const ChainGrads& grads) {
  bool any = grads.dbias != nullptr;
  for (int i = 0; i < c.ops; ++i) any |= c.is_scale[i] && grads.dscale[i] != nullptr;
  return any;
}

bool chain_codes_supported(const EpilogueChain& c) {
  if (c.ops < 1 || c.ops > kMaxChainOps) return false;
  for (int i = 0; i < c.ops; ++i)
    if (c.is_scale[i] || c.activation[i] != PointwiseOp::LeakyRelu) return false;
  return true;
}

void require_codes_or_y(const char* op, const EpilogueChain& c, const float* y, const uint8_t* codes) {
  detail::require(y == nullptr || codes == nullptr, op, "Y or the codes, not both");
  detail::require(codes == nullptr || chain_codes_supported(c), op, "codes only for a chain of 1 to 8 leaky_relus");
}

size_t chain_partials_bytes(const EpilogueChain& c, int64_t channels, int64_t per) {
  return size_t(1 + c.ops) * size_t(channels) * size_t(per) * sizeof(double);
}

void finalize_chain_grads(const double* partials, const EpilogueChain& c, int64_t channels, int64_t per,
                          const ChainGrads& grads, cudaStream_t stream) {
  if (!chain_grads_wanted(c, grads)) return;
  ChainGrads used = grads;  // only multipliers' slots are ever written
  for (int i = 0; i < kMaxChainOps; ++i)
    if (i >= c.ops || !c.is_scale[i]) used.dscale[i] = nullptr;
  chain_finalize<<<dim3(detail::finalize_blocks(channels), 1 + c.ops), detail::kThreads, 0, stream>>>(partials, per,
                                                                                                      channels, used);
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
