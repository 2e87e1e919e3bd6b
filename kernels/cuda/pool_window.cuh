// One pool window's running result, shared by the kernels that pool the
// chain's output as they compute it (chain_pool, channels_last_pool, direct_conv).
#pragma once

#include <cmath>

#include "kernels/cuda/chain_pool.hpp"
#include "kernels/cuda/epilogue_chain.cuh"

namespace anvil::cuda {

// Takes the chain's outputs in the window's row-major order (the CPU
// reference's), skipping the padding: the max with its window index and the v
// it came from (the first of tied maxima; a NaN takes over, epi_better), the
// sum in double for an average, or the one element where there is no pool.
// The fields a pool does not read cost nothing once the kernel is compiled.
template <ChainPool kPool>
struct PoolWindow {
  float best, best_v;
  int best_i;  // stays kMaxPoolWindow for a window of padding only
  double sum;

  // A constructor, not default member initializers: nvcc 13.0 applies those
  // to the first row of a two-dimensional array only (PTX checked) and zeroes
  // the rest, so a window whose values are all negative returned 0.
  __device__ __forceinline__ PoolWindow() : best(-INFINITY), best_v(0.f), best_i(kMaxPoolWindow), sum(0.0) {}

  // z: the chain's output for v = y + bias, at window offset w.
  __device__ __forceinline__ void take(float z, float v, int w) {
    if constexpr (kPool == ChainPool::Max) {
      if (best_i == kMaxPoolWindow || epi_better(z, best)) {
        best = z;
        best_v = v;
        best_i = w;
      }
    } else if constexpr (kPool == ChainPool::Avg) {
      sum += double(z);
    } else {
      best = z;
    }
  }

  // P: the max, the element, or the sum over the window's volume.
  __device__ __forceinline__ float result(double divisor) const {
    return kPool == ChainPool::Avg ? float(sum / divisor) : best;
  }
};

}  // namespace anvil::cuda
