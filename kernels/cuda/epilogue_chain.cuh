// The epilogue chain's device math, shared by every kernel that runs it:
//   v = y + bias -> the chain (epilogue_chain.hpp) -> a pool (or none),
// and back, with the per-channel sums of dbias and each multiplier's gradient.
#pragma once

#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/epilogue_chain.hpp"

namespace anvil::cuda {

__device__ __forceinline__ float activation_forward(PointwiseOp op, float x, float param) {
  switch (op) {
#define ANVIL_CHAIN_FORWARD(Name) \
  case PointwiseOp::Name: return pointwise::Name::forward(x, param);
    ANVIL_POINTWISE_OPS(ANVIL_CHAIN_FORWARD)
#undef ANVIL_CHAIN_FORWARD
  }
  return x;
}

// dx for y = forward(x): both are at hand in the chain.
__device__ __forceinline__ float activation_backward(PointwiseOp op, float x, float y, float dy, float param) {
  switch (op) {
#define ANVIL_CHAIN_BACKWARD(Name) \
  case PointwiseOp::Name: return pointwise::Name::backward(x, y, dy, param);
    ANVIL_POINTWISE_OPS(ANVIL_CHAIN_BACKWARD)
#undef ANVIL_CHAIN_BACKWARD
  }
  return dy;
}

// A channel's bias, or -0 where there is none: x + -0 is x for every x, -0
// included, so adding it keeps Y's bits (a +0 would turn a -0 into +0); only
// a NaN comes out as the GPU's canonical NaN, its payload dropped.
__device__ __forceinline__ float bias_at(const float* bias, int64_t ch) {
  return bias != nullptr ? __ldg(bias + ch) : -0.f;
}

// Strictly greater keeps the first of tied maxima; a NaN always takes over,
// as in PyTorch's max pooling and the CPU reference (so with several NaNs in a
// window the argmax is the last of them).
__device__ __forceinline__ bool epi_better(float z, float best) { return (z > best) | isnan(z); }  // | : no branch

// One thread's running sums of a block's share of the per-channel gradients,
// in double: dbias, and per multiplier op the sum of (gradient at its output)
// x (its input), each product exact in double.
struct ChainSums {
  double bias = 0.0;
  double scale[kMaxChainOps] = {};
};

// How a kernel runs a chain: a policy, the kernels' template argument. Each has
//   Channel                                the chain's per-channel values
//   Channel at(chain, ch)                  read once per block (or output channel)
//   float forward(chain, at, v)            the chain's output for v = y + bias
//   float backward(chain, at, v, dz, sums) dv for the output gradient dz; adds to sums
//   bool monotone(chain)                   every activation a leaky_relu of positive slope:
//                                          then, at a channel whose multipliers are all
//   bool monotone_at(chain, at)            finite and non-zero, the chain is strictly
//   float monotone_sign(chain, at)         monotone in v, rising (1) or falling (-1)
//   bool multiplier(chain, i)              whether op i is a multiplier (its sums are written)
// Both give the same bits for the same chain: the ops in order, in float.

// Any chain, read from the EpilogueChain at run time. The loops run to
// kMaxChainOps and leave at c.ops, so every index is a compile-time constant
// and the arrays stay in registers, while the ops past c.ops are never
// evaluated (a select in their place had every slot compute its op).
struct ProgramChain {
  struct Channel {
    float mul[kMaxChainOps];  // each op's multiplier (1 for activations)
  };

  __device__ static Channel at(const EpilogueChain& c, int64_t ch) {
    Channel m;
#pragma unroll
    for (int i = 0; i < kMaxChainOps; ++i) m.mul[i] = i < c.ops && c.is_scale[i] ? __ldg(c.scale[i] + ch) : 1.f;
    return m;
  }

  __device__ static float op(const EpilogueChain& c, const Channel& m, int i, float v) {
    return c.is_scale[i] ? v * m.mul[i] : activation_forward(c.activation[i], v, c.param[i]);
  }

  __device__ static float forward(const EpilogueChain& c, const Channel& m, float v) {
#pragma unroll
    for (int i = 0; i < kMaxChainOps; ++i) {
      if (i >= c.ops) break;
      v = op(c, m, i, v);
    }
    return v;
  }

  __device__ static float backward(const EpilogueChain& c, const Channel& m, float v, float dz, ChainSums& sums) {
    float z[kMaxChainOps + 1];  // z[i]: op i's input (read for i <= c.ops only)
    z[0] = v;
#pragma unroll
    for (int i = 0; i < kMaxChainOps; ++i) {
      if (i >= c.ops) break;
      z[i + 1] = op(c, m, i, z[i]);
    }
#pragma unroll
    for (int i = kMaxChainOps - 1; i >= 0; --i) {
      if (i >= c.ops) continue;
      if (c.is_scale[i]) {
        sums.scale[i] = fma(double(dz), double(z[i]), sums.scale[i]);
        dz *= m.mul[i];
      } else {
        dz = activation_backward(c.activation[i], z[i], z[i + 1], dz, c.param[i]);
      }
    }
    sums.bias += double(dz);
    return dz;
  }

  __device__ static bool multiplier(const EpilogueChain& c, int i) { return i < c.ops && c.is_scale[i]; }

  __device__ static bool monotone(const EpilogueChain& c) {
    bool ok = true;
#pragma unroll
    for (int i = 0; i < kMaxChainOps; ++i)
      if (i < c.ops && !c.is_scale[i]) ok &= c.activation[i] == PointwiseOp::LeakyRelu && c.param[i] > 0.f;
    return ok;
  }

  __device__ static bool monotone_at(const EpilogueChain& c, const Channel& m) {
    bool ok = true;
#pragma unroll
    for (int i = 0; i < kMaxChainOps; ++i)
      if (i < c.ops && c.is_scale[i]) ok &= (m.mul[i] != 0.f) & bool(isfinite(m.mul[i]));
    return ok;
  }

  __device__ static float monotone_sign(const EpilogueChain& c, const Channel& m) {
    float sign = 1.f;
#pragma unroll
    for (int i = 0; i < kMaxChainOps; ++i)
      if (i < c.ops && c.is_scale[i]) sign = m.mul[i] > 0.f ? sign : -sign;
    return sign;
  }
};

// leaky_relu(param[0]) -> * scale[1] -> leaky_relu(param[2]) (relu is slope
// 0): the headline's chain, inline. The hot kernels are issue-bound, and
// the program's guards and dispatch cost them a third of their speed.
struct LeakyScaleLeakyChain {
  struct Channel {
    float m;
  };

  __device__ static Channel at(const EpilogueChain& c, int64_t ch) { return {__ldg(c.scale[1] + ch)}; }

  __device__ static float forward(const EpilogueChain& c, const Channel& m, float v) {
    const float z1 = pointwise::LeakyRelu::forward(v, c.param[0]);
    return pointwise::LeakyRelu::forward(z1 * m.m, c.param[2]);
  }

  __device__ static float backward(const EpilogueChain& c, const Channel& m, float v, float dz, ChainSums& sums) {
    const float z1 = pointwise::LeakyRelu::forward(v, c.param[0]);
    const float z2 = z1 * m.m;
    const float dz2 = pointwise::LeakyRelu::backward(z2, 0.f, dz, c.param[2]);
    sums.scale[1] = fma(double(dz2), double(z1), sums.scale[1]);
    const float dv = pointwise::LeakyRelu::backward(v, 0.f, dz2 * m.m, c.param[0]);
    sums.bias += double(dv);
    return dv;
  }

  __device__ static bool multiplier(const EpilogueChain&, int i) { return i == 1; }
  __device__ static bool monotone(const EpilogueChain& c) { return c.param[0] > 0.f && c.param[2] > 0.f; }
  __device__ static bool monotone_at(const EpilogueChain&, const Channel& m) {
    return (m.m != 0.f) & bool(isfinite(m.m));
  }
  __device__ static float monotone_sign(const EpilogueChain&, const Channel& m) { return m.m > 0.f ? 1.f : -1.f; }
};

// One leaky_relu (relu is slope 0): conv -> relu, the commonest chain, inline.
struct LeakyChain {
  struct Channel {};

  __device__ static Channel at(const EpilogueChain&, int64_t) { return {}; }

  __device__ static float forward(const EpilogueChain& c, const Channel&, float v) {
    return pointwise::LeakyRelu::forward(v, c.param[0]);
  }

  __device__ static float backward(const EpilogueChain& c, const Channel&, float v, float dz, ChainSums& sums) {
    const float dv = pointwise::LeakyRelu::backward(v, 0.f, dz, c.param[0]);
    sums.bias += double(dv);
    return dv;
  }

  __device__ static bool multiplier(const EpilogueChain&, int) { return false; }
  __device__ static bool monotone(const EpilogueChain& c) { return c.param[0] > 0.f; }
  __device__ static bool monotone_at(const EpilogueChain&, const Channel&) { return true; }
  __device__ static float monotone_sign(const EpilogueChain&, const Channel&) { return 1.f; }
};

// One multiplier: conv -> channel_scale, inline. Through the program, the
// channels-last epilogue read all 8 slots' pointers per element and ran at
// half the copy bandwidth (bench/RESULTS.md, v37).
struct ScaleChain {
  struct Channel {
    float m;
  };

  __device__ static Channel at(const EpilogueChain& c, int64_t ch) { return {__ldg(c.scale[0] + ch)}; }
  // __fmul_rn: never contracted into a caller's add, as the reference rounds the product.
  __device__ static float forward(const EpilogueChain&, const Channel& m, float v) { return __fmul_rn(v, m.m); }

  __device__ static float backward(const EpilogueChain&, const Channel& m, float v, float dz, ChainSums& sums) {
    sums.scale[0] = fma(double(dz), double(v), sums.scale[0]);
    const float dv = __fmul_rn(dz, m.m);
    sums.bias += double(dv);
    return dv;
  }

  __device__ static bool multiplier(const EpilogueChain&, int i) { return i == 0; }
  __device__ static bool monotone(const EpilogueChain&) { return true; }
  __device__ static bool monotone_at(const EpilogueChain&, const Channel& m) {
    return (m.m != 0.f) & bool(isfinite(m.m));
  }
  __device__ static float monotone_sign(const EpilogueChain&, const Channel& m) { return m.m > 0.f ? 1.f : -1.f; }
};

// No op: a bias alone, or a plain pool (the pooling layer's kernels). Through
// the program, the tiled pool backward took 122 registers; with this, 47.
struct EmptyChain {
  struct Channel {};

  __device__ static Channel at(const EpilogueChain&, int64_t) { return {}; }
  __device__ static float forward(const EpilogueChain&, const Channel&, float v) { return v; }

  __device__ static float backward(const EpilogueChain&, const Channel&, float, float dz, ChainSums& sums) {
    sums.bias += double(dz);
    return dz;
  }

  __device__ static bool multiplier(const EpilogueChain&, int) { return false; }
  __device__ static bool monotone(const EpilogueChain&) { return true; }
  __device__ static bool monotone_at(const EpilogueChain&, const Channel&) { return true; }
  __device__ static float monotone_sign(const EpilogueChain&, const Channel&) { return 1.f; }
};

// Runs op(std::integral_constant<int, i>{}) for i = ops - 1 down to 0, a
// chain's backward order: a jump into straight-line code, so each i is a
// compile-time constant (arrays indexed by it stay in registers) and no slot
// past ops is issued. A loop to kMaxChainOps issued all eight slots,
// predicated off: the pool's backward from codes was bound by issuing them.
// (ProgramChain keeps its loop: this switch made its pool backwards spill.)
template <class Op>
__device__ __forceinline__ void for_ops_backward(int ops, Op&& op) {
  static_assert(kMaxChainOps == 8, "one case an op");
  using std::integral_constant;
  switch (ops) {
    case 8: op(integral_constant<int, 7>{}); [[fallthrough]];
    case 7: op(integral_constant<int, 6>{}); [[fallthrough]];
    case 6: op(integral_constant<int, 5>{}); [[fallthrough]];
    case 5: op(integral_constant<int, 4>{}); [[fallthrough]];
    case 4: op(integral_constant<int, 3>{}); [[fallthrough]];
    case 3: op(integral_constant<int, 2>{}); [[fallthrough]];
    case 2: op(integral_constant<int, 1>{}); [[fallthrough]];
    case 1: op(integral_constant<int, 0>{});
  }
}

// A chain of leaky_relus run backward from its codes (chain_codes_supported),
// which the conv forwards write in training in place of Y: a byte an element,
// not 4. The code arrives as the float that backward's v is elsewhere (a byte
// is exact in a float); op i's backward gets bit i as its input, so each op
// computes x > 0 ? dz : slope * dz on the same predicate as from Y: the same bits.
struct CodeChain {
  struct Channel {};

  __device__ static Channel at(const EpilogueChain&, int64_t) { return {}; }

  // The code of v = y + bias, as a forward kernel running policy Forward
  // writes it: one compare for the one leaky_relu of LeakyChain (the general
  // loop cost the direct conv a fifth of its speed), the chain's ops else.
  template <class Forward>
  __device__ static uint8_t code(const EpilogueChain& c, float v) {
    if constexpr (std::is_same_v<Forward, LeakyChain>) return uint8_t(v > 0.f);
    uint32_t bits = 0;
#pragma unroll
    for (int i = 0; i < kMaxChainOps; ++i) {
      if (i >= c.ops) break;
      bits |= uint32_t(v > 0.f) << i;
      v = pointwise::LeakyRelu::forward(v, c.param[i]);
    }
    return uint8_t(bits);
  }

  __device__ static float backward(const EpilogueChain& c, const Channel&, float code, float dz, ChainSums& sums) {
    const uint32_t bits = uint32_t(code);
    for_ops_backward(c.ops, [&](auto op) {
      constexpr int i = decltype(op)::value;
      dz = pointwise::LeakyRelu::backward(float(bits >> i & 1u), 0.f, dz, c.param[i]);
    });
    sums.bias += double(dz);
    return dz;
  }

  __device__ static bool multiplier(const EpilogueChain&, int) { return false; }
};

// Stores what backward reads of one conv output y (v = y + bias) at `at` of
// `saved`: its code where codes is set (a forward running a chain of
// leaky_relus, LeakyChain or ProgramChain), else y. One pointer for both: a
// second cost the direct conv spills. The other policies never save codes,
// and compile no code path.
template <class Chain>
__device__ __forceinline__ void save_for_backward(void* saved, bool codes, int64_t at, float y, float v,
                                                  const EpilogueChain& c) {
  if constexpr (std::is_same_v<Chain, LeakyChain> || std::is_same_v<Chain, ProgramChain>) {
    if (codes) {
      static_cast<uint8_t*>(saved)[at] = CodeChain::code<Chain>(c, v);
      return;
    }
  }
  static_cast<float*>(saved)[at] = y;
}

// Runs launch(policy) with the policy that fits the chain.
template <class Launch>
void with_chain_policy(const EpilogueChain& c, Launch&& launch) {
  if (is_leaky_scale_leaky(c))
    launch(LeakyScaleLeakyChain{});
  else if (is_leaky(c))
    launch(LeakyChain{});
  else if (is_scale_alone(c))
    launch(ScaleChain{});
  else if (c.ops == 0)
    launch(EmptyChain{});
  else
    launch(ProgramChain{});
}

// Writes the block's sums as the partials of slot j of channel ch: array 0
// holds dbias, array 1 + i op i's multiplier, each (channels, per). Every
// thread of the block must call it; partials may be null (nothing reduced).
template <class Chain>
__device__ __forceinline__ void write_chain_partials(const ChainSums& sums, const EpilogueChain& c,
                                                     double* __restrict__ partials, int64_t channels, int64_t per,
                                                     int64_t ch, int64_t j) {
  const double tb = detail::block_sum(sums.bias);
  if (threadIdx.x == 0 && partials != nullptr) partials[ch * per + j] = tb;
#pragma unroll
  for (int i = 0; i < kMaxChainOps; ++i) {
    if (!Chain::multiplier(c, i)) continue;  // uniform over the block
    const double t = detail::block_sum(sums.scale[i]);
    if (threadIdx.x == 0 && partials != nullptr) partials[((1 + i) * channels + ch) * per + j] = t;
  }
}

}  // namespace anvil::cuda
