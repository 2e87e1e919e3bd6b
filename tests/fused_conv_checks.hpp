// What the tests of anvil's fused conv kernels (direct_conv, wgmma_conv) share:
// the chains they run, and the checks of a forward's outputs for each of them
// (check_fused_forward).
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "anvil/error.hpp"
#include "gpu_test_util.hpp"
#include "kernels/cuda/chain_pool.hpp"
#include "kernels/cuda/epilogue_chain.hpp"
#include "kernels/pointwise_ops.hpp"

namespace anvil::testing {

constexpr size_t kFusedSlack = 8;  // poisoned elements past each output, which must stay poisoned

struct ChainStep {
  bool scale;  // a channel_scale, else the activation below
  PointwiseOp op;
  float param;
};
struct TestChain {
  std::string label;
  std::vector<ChainStep> steps;
};

// Each kind of chain: one activation, the headline's, none, slopes negative
// and above 1 with two multipliers, the smooth activations, and leaky_relus
// alone, saved as codes: slopes negative, above 1 and 0 (3 bits; a negative
// input turns positive, so the bits differ), and 8 of them with a relu that
// blocks a negative input (the longest code).
inline std::vector<TestChain> fused_test_chains() {
  const ChainStep scale{true, PointwiseOp::LeakyRelu, 0.f};
  auto leaky = [](float slope) { return ChainStep{false, PointwiseOp::LeakyRelu, slope}; };
  return {
      {"relu", {leaky(0.f)}},
      {"leaky.2,scale,leaky.05", {leaky(0.2f), scale, leaky(0.05f)}},
      {"empty", {}},
      {"leaky-0.3,scale,leaky1.7,scale", {leaky(-0.3f), scale, leaky(1.7f), scale}},
      {"sigmoid,scale,tanh", {{false, PointwiseOp::Sigmoid, 0.f}, scale, {false, PointwiseOp::Tanh, 0.f}}},
      {"leaky-0.3,leaky1.7,relu", {leaky(-0.3f), leaky(1.7f), leaky(0.f)}},
      {"8 leaky,relu second",
       {leaky(0.5f), leaky(0.f), leaky(-0.3f), leaky(1.7f), leaky(2.f), leaky(-1.f), leaky(0.25f), leaky(0.9f)}},
  };
}

// A chain with its multipliers: fresh uniform [-1, 1] values per channel on the device.
struct BoundChain {
  cuda::EpilogueChain chain;
  std::vector<std::unique_ptr<DeviceBuffer<float>>> scales;
};
inline std::unique_ptr<BoundChain> bind_test_chain(const TestChain& c, int64_t channels, std::mt19937& rng) {
  auto bound = std::make_unique<BoundChain>();
  cuda::EpilogueChain& ec = bound->chain;
  ec.ops = int(c.steps.size());
  for (int i = 0; i < ec.ops; ++i) {
    ec.is_scale[i] = c.steps[i].scale;
    ec.activation[i] = c.steps[i].op;
    ec.param[i] = c.steps[i].param;
    if (ec.is_scale[i]) {
      bound->scales.push_back(std::make_unique<DeviceBuffer<float>>(size_t(channels)));
      bound->scales.back()->upload(random_floats(size_t(channels), rng));
      ec.scale[i] = bound->scales.back()->get();
    }
  }
  return bound;
}

// Everything past the first n elements of buf still holds the poison (all bits set).
template <class T>
void expect_poisoned_after(const DeviceBuffer<T>& buf, size_t n, const std::string& what) {
  const std::vector<T> tail = buf.download(n, buf.size() - n);
  std::vector<unsigned char> poison(sizeof(T), 0xFF);
  for (const T& v : tail)
    if (std::memcmp(&v, poison.data(), sizeof(T)) != 0) {
      ADD_FAILURE() << what << ": written past its end";
      return;
    }
}

template <class T>
void expect_bitwise(const std::vector<T>& got, const std::vector<T>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0 && ++bad <= 3)
      ADD_FAILURE() << what << " differs at " << i << ": " << double(got[i]) << " vs " << double(want[i]);
  EXPECT_EQ(bad, 0) << what;
}

// What a max pool's y_at_max must hold: Y + bias (-0 without one) at each
// pooled element's argmax. y: (n, channels, y dims); the pool's window k,
// stride s and padding pad; out: the pooled dims.
inline std::vector<float> expected_y_at_max(const std::vector<uint8_t>& argmax, const std::vector<float>& y,
                                            const std::vector<float>& bias, bool with_bias, int64_t channels,
                                            const std::array<int64_t, 3>& y_dims, const std::array<int64_t, 3>& out,
                                            const std::array<int64_t, 3>& k, const std::array<int64_t, 3>& s,
                                            const std::array<int64_t, 3>& pad) {
  const int64_t y_plane = y_dims[0] * y_dims[1] * y_dims[2], p_plane = out[0] * out[1] * out[2];
  std::vector<float> want(argmax.size());
  for (size_t o = 0; o < argmax.size(); ++o) {
    const int64_t plane = int64_t(o) / p_plane, e = int64_t(o) % p_plane, ch = plane % channels;
    const int64_t q[3] = {e / (out[1] * out[2]), e / out[2] % out[1], e % out[2]};
    const int64_t wi = argmax[o];
    const int64_t wk[3] = {wi / (k[1] * k[2]), wi / k[2] % k[1], wi % k[2]};
    int64_t at = 0;
    bool inside = wi < k[0] * k[1] * k[2];
    for (int a = 0; a < 3; ++a) {
      const int64_t yi = q[a] * s[a] - pad[a] + wk[a];
      inside = inside && yi >= 0 && yi < y_dims[a];
      at = at * y_dims[a] + yi;
    }
    // An argmax outside the window or Y: no value to expect (the argmax check reports it).
    want[o] = !inside ? std::nanf("") : y[size_t(plane * y_plane + at)] + (with_bias ? bias[size_t(ch)] : -0.f);
  }
  return want;
}

// The biases a fused forward runs with. One of -inf in every third channel
// (0, 3, ...), for the chains with a relu (slope 0), makes v = -inf there:
// relu maps it to zero, not 0 * -inf = NaN, so P holds no NaN.
struct BiasKind {
  const char* label;
  bool with_bias, minus_inf;
};
constexpr BiasKind kBiasKinds[] = {
    {"with bias", true, false}, {"with bias -inf in every third channel", true, true}, {"without bias", false, false}};

// What the codes of a chain of leaky_relus must be: bit i of element e's is
// whether op i's input was above 0, for v = y[e] + bias (-0 without one).
inline std::vector<uint8_t> expected_codes(const std::vector<float>& y, const std::vector<float>& bias, bool with_bias,
                                           const cuda::EpilogueChain& chain, const cuda::ChainPoolGeometry& g) {
  const int64_t plane = g.y[0] * g.y[1] * g.y[2];
  std::vector<uint8_t> codes(y.size());
  for (size_t e = 0; e < y.size(); ++e) {
    float v = y[e] + (with_bias ? bias[size_t(int64_t(e) / plane % g.c)] : -0.f);
    for (int i = 0; i < chain.ops; ++i) {
      codes[e] |= uint8_t(uint8_t(v > 0.f) << i);
      v = pointwise::LeakyRelu::forward(v, chain.param[i]);
    }
  }
  return codes;
}

// chain_pool's backward from the codes gives the bits it gives from Y (y, the
// bias b or null, argmax for a max pool), for a fresh dP: dY, accumulated into
// too, and dbias.
inline void expect_backward_from_codes_matches(const cuda::ChainPoolGeometry& g, const cuda::EpilogueChain& chain,
                                               const float* b, const float* y, const uint8_t* codes,
                                               const uint8_t* argmax, std::mt19937& rng) {
  const std::array<int64_t, 3> out = cuda::chain_pool_output(g);
  const size_t y_count = size_t(g.n * g.c * g.y[0] * g.y[1] * g.y[2]),
               p_count = size_t(g.n * g.c * out[0] * out[1] * out[2]);
  DeviceBuffer<float> dp(p_count), dy_y(y_count), dy_codes(y_count), dbias_y(size_t(g.c)), dbias_codes(size_t(g.c));
  dp.upload(random_floats(p_count, rng));
  for (DeviceBuffer<float>* buf : {&dy_y, &dy_codes, &dbias_y, &dbias_codes}) buf->poison();
  const size_t scratch_bytes = cuda::chain_pool_backward_scratch_bytes(g, chain);
  DeviceBuffer<unsigned char> scratch_y(scratch_bytes), scratch_codes(scratch_bytes);
  cuda::ChainGrads from_y, from_codes;
  from_y.dbias = dbias_y.get();
  from_codes.dbias = dbias_codes.get();
  cuda::chain_pool_backward(dp.get(), y, b, argmax, chain, dy_y.get(), false, from_y, scratch_y.get(), g, nullptr);
  cuda::chain_pool_backward_from_codes(dp.get(), codes, argmax, chain, dy_codes.get(), false, from_codes,
                                       scratch_codes.get(), g, nullptr);
  const std::vector<float> want = dy_y.download_all();
  expect_bitwise(dy_codes.download_all(), want, "dy from codes");
  expect_bitwise(dbias_codes.download_all(), dbias_y.download_all(), "dbias from codes");
  cuda::chain_pool_backward_from_codes(dp.get(), codes, argmax, chain, dy_codes.get(), true, {}, nullptr, g, nullptr);
  std::vector<float> twice = want;
  for (float& v : twice) v += v;
  expect_bitwise(dy_codes.download_all(), twice, "dy from codes, accumulated");
}

// The fused forward under test: (bias or null, chain, p, argmax, y_at_max, y,
// codes), each output but p null when not wanted.
using FusedForward =
    std::function<void(const float*, const cuda::EpilogueChain&, float*, uint8_t*, float*, float*, uint8_t*)>;

// Runs forward for every test chain with each of kBiasKinds (a fresh bias) into
// poisoned outputs, and checks: nothing written past an output's end; Y (the
// bias-free conv output) by check_y; P, and for a max pool the argmax and y
// there, against chain_pool's kernel run on that Y, bitwise; P and the argmax
// again from a forward that saves the argmax alone (a max pool that does not
// tile Y, in training); for a chain of leaky_relus, P, the argmax and the
// codes from a forward that saves codes in Y's place, and the backward from
// them against the backward from Y; and P from a forward that saves nothing (inference). g: the conv output
// and the pool, whose window, stride and padding are g.k, g.stride, g.pad.
inline void check_fused_forward(const cuda::ChainPoolGeometry& g, const FusedForward& forward,
                                const std::function<void(const std::vector<float>&)>& check_y, std::mt19937& rng) {
  const std::array<int64_t, 3> out = cuda::chain_pool_output(g);
  const size_t y_count = size_t(g.n * g.c * g.y[0] * g.y[1] * g.y[2]),
               p_count = size_t(g.n * g.c * out[0] * out[1] * out[2]);
  const bool max = g.pool == cuda::ChainPool::Max;
  DeviceBuffer<float> bias(size_t(g.c));
  for (const TestChain& chain : fused_test_chains()) {
    bool has_relu = false;
    for (const ChainStep& step : chain.steps)
      has_relu |= !step.scale && step.op == PointwiseOp::LeakyRelu && step.param == 0.f;
    for (const BiasKind& kind : kBiasKinds) {
      if (kind.minus_inf && !has_relu) continue;
      const bool with_bias = kind.with_bias;
      SCOPED_TRACE(chain.label + " " + kind.label);
      std::vector<float> bias_values = random_floats(size_t(g.c), rng);
      if (kind.minus_inf)
        for (size_t ch = 0; ch < bias_values.size(); ch += 3) bias_values[ch] = -std::numeric_limits<float>::infinity();
      bias.upload(bias_values);
      const std::unique_ptr<BoundChain> bound = bind_test_chain(chain, g.c, rng);
      const cuda::EpilogueChain& ec = bound->chain;
      const float* b = with_bias ? bias.get() : nullptr;

      // Training: P, the argmax and y there, and Y whole.
      DeviceBuffer<float> p(p_count + kFusedSlack), y_at_max(p_count + kFusedSlack), y(y_count + kFusedSlack);
      DeviceBuffer<uint8_t> argmax(p_count + kFusedSlack);
      for (DeviceBuffer<float>* out_buf : {&p, &y_at_max, &y}) out_buf->poison();
      argmax.poison();
      forward(b, ec, p.get(), max ? argmax.get() : nullptr, max ? y_at_max.get() : nullptr, y.get(), nullptr);
      const std::vector<float> y_got = y.download(0, y_count), p_got = p.download(0, p_count);
      expect_poisoned_after(y, y_count, "y");
      expect_poisoned_after(p, p_count, "p");
      check_y(y_got);
      if (kind.minus_inf)
        for (size_t i = 0; i < p_got.size(); ++i)
          if (std::isnan(p_got[i])) {
            ADD_FAILURE() << "p[" << i << "] is NaN from a bias of -inf";
            break;
          }

      // chain_pool's kernel on that Y gives the same bits.
      DeviceBuffer<float> p_ref(p_count);
      DeviceBuffer<uint8_t> argmax_ref(p_count);
      cuda::chain_pool_forward(y.get(), b, ec, p_ref.get(), max ? argmax_ref.get() : nullptr, g, nullptr);
      expect_bitwise(p_got, p_ref.download_all(), "p");
      if (max) {
        const std::vector<uint8_t> a_got = argmax.download(0, p_count);
        expect_bitwise(a_got, argmax_ref.download_all(), "argmax");
        expect_poisoned_after(argmax, p_count, "argmax");
        expect_bitwise(
            y_at_max.download(0, p_count),
            expected_y_at_max(a_got, y_got, bias.download_all(), with_bias, g.c, g.y, out, g.k, g.stride, g.pad),
            "y_at_max");
      }

      // A max pool that does not tile Y saves the argmax and Y, not y at the max: the same P and argmax.
      if (max) {
        DeviceBuffer<float> p_argmax_only(p_count);
        DeviceBuffer<uint8_t> argmax_only(p_count + kFusedSlack);
        p_argmax_only.poison();
        argmax_only.poison();
        forward(b, ec, p_argmax_only.get(), argmax_only.get(), nullptr, nullptr, nullptr);
        expect_bitwise(p_argmax_only.download_all(), p_got, "p, argmax alone");
        expect_bitwise(argmax_only.download(0, p_count), argmax.download(0, p_count), "argmax alone");
        expect_poisoned_after(argmax_only, p_count, "argmax alone");
      }

      // A chain of leaky_relus saves its codes in Y's place: the same P and argmax.
      if (cuda::chain_codes_supported(ec)) {
        DeviceBuffer<float> p_codes(p_count);
        DeviceBuffer<uint8_t> codes(y_count + kFusedSlack), argmax_codes(p_count + kFusedSlack);
        p_codes.poison();
        codes.poison();
        argmax_codes.poison();
        forward(b, ec, p_codes.get(), max ? argmax_codes.get() : nullptr, nullptr, nullptr, codes.get());
        expect_bitwise(p_codes.download_all(), p_got, "p, saving codes");
        if (max) {
          expect_bitwise(argmax_codes.download(0, p_count), argmax.download(0, p_count), "argmax, saving codes");
          expect_poisoned_after(argmax_codes, p_count, "argmax, saving codes");
        }
        expect_poisoned_after(codes, y_count, "codes");
        expect_bitwise(codes.download(0, y_count), expected_codes(y_got, bias_values, with_bias, ec, g), "codes");
        expect_backward_from_codes_matches(g, ec, b, y.get(), codes.get(), max ? argmax.get() : nullptr, rng);
      }

      // Inference: nothing saved, the same P.
      DeviceBuffer<float> p_inference(p_count);
      p_inference.poison();
      forward(b, ec, p_inference.get(), nullptr, nullptr, nullptr, nullptr);
      expect_bitwise(p_inference.download_all(), p_got, "inference p");
    }
  }
}

// The argument checks of a fused forward whose geometry has an average pool:
// forward(x, chain, argmax, good) with good false for a geometry it cannot
// run must throw anvil::Error for a null x, an argmax without a max pool,
// that geometry, a multiplier without its pointer, codes of a chain that
// has a multiplier, and both Y and the codes (forward(x, chain, argmax, good,
// y, codes)). Buffers are small: every call is refused before anything runs.
using FusedCall = std::function<void(const float* x, const cuda::EpilogueChain&, uint8_t* argmax, bool good, float* y,
                                     uint8_t* codes)>;
inline void expect_fused_forward_refuses_bad_arguments(const FusedCall& forward) {
  DeviceBuffer<float> buf(4096);
  DeviceBuffer<uint8_t> bytes(4096);
  cuda::EpilogueChain chain;
  EXPECT_THROW(forward(nullptr, chain, nullptr, true, nullptr, nullptr), anvil::Error);
  // an argmax without a max pool
  EXPECT_THROW(forward(buf.get(), chain, bytes.get(), true, nullptr, nullptr), anvil::Error);
  EXPECT_THROW(forward(buf.get(), chain, nullptr, false, nullptr, nullptr), anvil::Error);
  EXPECT_THROW(forward(buf.get(), chain, nullptr, true, nullptr, bytes.get()), anvil::Error);    // no op: no codes
  chain.ops = 1;                                                                                 // a relu
  EXPECT_THROW(forward(buf.get(), chain, nullptr, true, buf.get(), bytes.get()), anvil::Error);  // Y and codes
  chain.is_scale[0] = true;  // a multiplier without its pointer
  EXPECT_THROW(forward(buf.get(), chain, nullptr, true, nullptr, nullptr), anvil::Error);
  chain.scale[0] = buf.get();  // with it: no codes
  EXPECT_THROW(forward(buf.get(), chain, nullptr, true, nullptr, bytes.get()), anvil::Error);
}

}  // namespace anvil::testing
