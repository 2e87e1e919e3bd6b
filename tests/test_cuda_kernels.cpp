// The CUDA kernels (kernels/cuda) against the CPU reference (kernels/cpu).
//
// Inputs are fresh uniform [-1, 1] floats (never 0), sizes are odd and small
// as well as large, and pointers are offset by whole floats to run the scalar
// heads and tails and the non-vector paths. Outputs are poisoned with 0xFF
// bytes (NaN) first, so an element left unwritten shows up; the poison around
// each output range must survive (no stray writes). Pointwise results must be
// within 1 ulp of the reference (they are expected to be exact), except the
// activations' forward, where expf / tanhf differ between the libraries; reductions
// are compared with the reference run in double (relative error <= 1e-5) and
// must be bitwise identical between runs and between aligned and offset
// buffers.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "anvil/error.hpp"
#include "fused_conv_checks.hpp"
#include "gpu_test_util.hpp"
#include "kernels/cpu/add.hpp"
#include "kernels/cpu/finite.hpp"
#include "kernels/cpu/channel.hpp"
#include "kernels/cpu/pointwise.hpp"
#include "kernels/cpu/pool.hpp"
#include "kernels/cuda/add.hpp"
#include "kernels/cuda/bias.hpp"
#include "kernels/cuda/chain_pool.hpp"
#include "kernels/cuda/channel_scale.hpp"
#include "kernels/cuda/channels_last_pool.hpp"
#include "kernels/cuda/epilogue.hpp"
#include "kernels/cuda/finite.hpp"
#include "kernels/cuda/phase_split.hpp"
#include "kernels/cuda/pointwise.hpp"
#include "tests/conv_transpose_fixture.hpp"

namespace {

namespace cpu = anvil::cpu;
namespace gpu = anvil::cuda;
using anvil::PointwiseOp;
using gpu::EpilogueGeometry;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

using anvil::testing::device_sync;
using anvil::testing::DeviceBuffer;
using anvil::testing::random_floats;

// Slack allocated around every range, so that offsets and stray writes fit.
constexpr size_t kSlack = 8;

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// Distance in representable floats; 0 for equal values (+0 == -0), huge for NaN.
int64_t ulp_distance(float a, float b) {
  if (a == b) return 0;
  if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<int64_t>::max();
  auto key = [](float f) {
    int32_t i;
    std::memcpy(&i, &f, sizeof i);
    return i < 0 ? int64_t(std::numeric_limits<int32_t>::min()) - i : int64_t(i);
  };
  return std::llabs(key(a) - key(b));
}

// got[i] within max_ulp of want[i] (or within abs_tol); reports the first few misses.
void expect_ulp(const std::vector<float>& got, const std::vector<float>& want, int64_t max_ulp, const std::string& what,
                float abs_tol = 0.f) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (ulp_distance(got[i], want[i]) <= max_ulp) continue;
    if (std::fabs(got[i] - want[i]) <= abs_tol) continue;  // false for NaN
    if (++bad <= 5) ADD_FAILURE() << what << ": [" << i << "] got " << got[i] << " want " << want[i];
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements off";
}

// got[i] == want[i] exactly, the sign of a zero included.
void expect_exact(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  expect_ulp(got, want, 0, what);
  size_t bad = 0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i)
    if (got[i] == 0.f && want[i] == 0.f && std::signbit(got[i]) != std::signbit(want[i]) && ++bad <= 5)
      ADD_FAILURE() << what << ": [" << i << "] got " << (std::signbit(got[i]) ? "-0" : "+0") << " want "
                    << (std::signbit(want[i]) ? "-0" : "+0");
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " zeros of the wrong sign";
}

// |got - want| <= rel * |want| (+ a tiny absolute floor for exact zeros).
void expect_rel(const std::vector<float>& got, const std::vector<double>& want, double rel, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - want[i]);
    EXPECT_TRUE(err <= rel * std::fabs(want[i]) + 1e-12) << what << ": [" << i << "] got " << got[i] << " want "
                                                         << want[i] << " (rel err " << err / std::fabs(want[i]) << ")";
  }
}

template <class T>
void expect_bitwise(const std::vector<T>& a, const std::vector<T>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_TRUE(a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0)
      << what << ": results differ bitwise";
}

// The poison (all bits set) outside [offset, offset + n) of a poisoned buffer is intact.
template <class T>
void expect_untouched(const DeviceBuffer<T>& buf, size_t offset, size_t n, const std::string& what) {
  const std::vector<T> all = buf.download_all();
  std::vector<unsigned char> poison(sizeof(T), 0xFF);
  for (size_t i = 0; i < all.size(); ++i) {
    if (i >= offset && i < offset + n) continue;
    if (std::memcmp(&all[i], poison.data(), sizeof(T)) != 0) {
      ADD_FAILURE() << what << ": element " << i << " outside [" << offset << ", " << offset + n << ") was written";
      return;
    }
  }
}

std::string describe(std::initializer_list<std::pair<const char*, double>> fields) {
  std::ostringstream s;
  for (const auto& [k, v] : fields) s << k << "=" << v << " ";
  return s.str();
}

// (input offset, output offset) in floats: aligned, equally misaligned (the
// head/vector/tail split) and differently misaligned (all scalar).
const std::vector<std::pair<size_t, size_t>> kOffsetPairs = {{0, 0}, {1, 1}, {3, 3}, {0, 1}, {2, 0}};

const std::vector<int64_t> kCounts = {1, 2, 3, 4, 5, 7, 8, 33, 1001, 4099};

struct ChannelDims {
  int64_t n, c, spatial;
};
// spatial: small (one element per thread), odd, 5x9x11, 1x7x13, many planes per block, multiple of 4.
const std::vector<ChannelDims> kChannelDims = {{1, 1, 1},    {1, 5, 3},     {3, 7, 7},    {3, 5, 63},
                                               {1, 5, 495},  {3, 7, 91},    {3, 1, 64},   {1, 7, 1001},
                                               {3, 5, 4096}, {2, 3, 12288}, {7, 1, 4099}, {1, 1, 100003}};

// ---------------------------------------------------------------------------
// Pointwise
// ---------------------------------------------------------------------------

// Every op of ANVIL_POINTWISE_OPS. Backward takes y from the CPU forward, so
// it must match the CPU to 1 ulp (pointwise.cu rounds like the CPU); forward
// differs by the two libraries' expf / tanhf (each within 2 ulp).
class CudaPointwise : public ::testing::TestWithParam<PointwiseOp> {};

constexpr int64_t kPointwiseForwardUlp = 4;

// Inputs over [-8, 8]: the activations' saturated ranges too.
std::vector<float> pointwise_inputs(size_t n, std::mt19937& rng) {
  std::vector<float> x = random_floats(n, rng);
  for (float& v : x) v *= 8.f;
  return x;
}

TEST_P(CudaPointwise, Forward) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const PointwiseOp op = GetParam();
  std::mt19937 rng(101);
  for (int64_t count : kCounts) {
    for (auto [ox, oy] : kOffsetPairs) {
      for (float param : {0.01f, 0.f, 0.2f}) {
        const std::string what =
            describe({{"count", double(count)}, {"ox", double(ox)}, {"oy", double(oy)}, {"param", param}});
        const std::vector<float> x = pointwise_inputs(count, rng);
        std::vector<float> want(count);
        cpu::pointwise_forward<float>(op, param, x.data(), want.data(), count);
        DeviceBuffer<float> bx(count + kSlack), by(count + kSlack);
        bx.upload(x, ox);
        by.poison();
        gpu::pointwise_forward(op, param, bx.get() + ox, by.get() + oy, count, nullptr);
        expect_ulp(by.download(oy, count), want, kPointwiseForwardUlp, what);
        expect_untouched(by, oy, count, what);
      }
    }
  }
}

TEST_P(CudaPointwise, Backward) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const PointwiseOp op = GetParam();
  std::mt19937 rng(102);
  for (int64_t count : kCounts) {
    for (auto [oi, oo] : kOffsetPairs) {
      for (bool accumulate : {false, true}) {
        for (float param : {0.01f, 0.f}) {
          const std::string what = describe({{"count", double(count)},
                                             {"oin", double(oi)},
                                             {"oout", double(oo)},
                                             {"accumulate", accumulate},
                                             {"param", param}});
          const std::vector<float> x = pointwise_inputs(count, rng), dyv = random_floats(count, rng);
          const std::vector<float> dx0 = random_floats(count, rng);
          std::vector<float> y(count), want = dx0;
          cpu::pointwise_forward<float>(op, param, x.data(), y.data(), count);
          cpu::pointwise_backward<float>(op, param, x.data(), y.data(), dyv.data(), want.data(), count, accumulate);
          DeviceBuffer<float> bx(count + kSlack), by(count + kSlack), bdy(count + kSlack), bdx(count + kSlack);
          bx.upload(x, oi);
          by.upload(y, oi);
          bdy.upload(dyv, oi);
          bdx.poison();
          if (accumulate) bdx.upload(dx0, oo);
          gpu::pointwise_backward(op, param, bx.get() + oi, by.get() + oi, bdy.get() + oi, bdx.get() + oo, count,
                                  accumulate, nullptr);
          expect_ulp(bdx.download(oo, count), want, 1, what);
          expect_untouched(bdx, oo, count, what);
        }
      }
    }
  }
}

// y over x, dx over dy; and the tensor the op's backward does not read is null.
TEST_P(CudaPointwise, InPlace) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const PointwiseOp op = GetParam();
  const bool uses_y = anvil::pointwise_backward_uses_output(op);
  std::mt19937 rng(105);
  for (int64_t count : {int64_t(5), int64_t(1001), int64_t(65539)}) {
    for (size_t off : {0, 1}) {
      const std::string what = describe({{"count", double(count)}, {"off", double(off)}});
      const std::vector<float> x = pointwise_inputs(count, rng), dyv = random_floats(count, rng);
      std::vector<float> y(count), dx(count);
      cpu::pointwise_forward<float>(op, 0.1f, x.data(), y.data(), count);
      cpu::pointwise_backward<float>(op, 0.1f, x.data(), y.data(), dyv.data(), dx.data(), count, false);
      DeviceBuffer<float> bio(count + kSlack), bsaved(count + kSlack);
      bio.upload(x, off);
      gpu::pointwise_forward(op, 0.1f, bio.get() + off, bio.get() + off, count, nullptr);
      expect_ulp(bio.download(off, count), y, kPointwiseForwardUlp, what + "forward in place");

      bsaved.upload(uses_y ? y : x, off);
      bio.upload(dyv, off);
      float* saved = bsaved.get() + off;
      gpu::pointwise_backward(op, 0.1f, uses_y ? nullptr : saved, uses_y ? saved : nullptr, bio.get() + off,
                              bio.get() + off, count, false, nullptr);
      expect_ulp(bio.download(off, count), dx, 1, what + "backward in place");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllOps, CudaPointwise, ::testing::ValuesIn(anvil::kAllPointwiseOps),
                         [](const ::testing::TestParamInfo<PointwiseOp>& info) {
                           return std::string(anvil::pointwise_op_name(info.param));
                         });

// leaky_relu over -inf, +inf, NaN and zeros of both signs among random values,
// on the vector and scalar paths: forward and backward the CPU's bits (a NaN
// for a NaN). relu (slope 0, and -0) maps -inf to zero, never 0 * -inf = NaN;
// a non-zero slope keeps -inf.
TEST(CudaPointwiseLeakyRelu, InfinitiesAndNaNMatchTheCpu) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float specials[] = {-inf, inf, nan, 0.f, -0.f};
  std::mt19937 rng(107);
  for (int64_t count : kCounts) {
    for (auto [oi, oo] : kOffsetPairs) {
      for (float slope : {0.f, -0.f, 0.01f, 0.2f, -0.3f}) {
        const std::string what = describe({{"count", double(count)},
                                           {"oin", double(oi)},
                                           {"oout", double(oo)},
                                           {"slope", slope},
                                           {"-0 slope", std::signbit(slope)}});
        std::vector<float> x = pointwise_inputs(count, rng);
        for (size_t i = 0; i < x.size(); i += 2) x[i] = specials[(i / 2) % 5];
        const std::vector<float> dyv = random_floats(count, rng);
        std::vector<float> y(count), dx(count);
        cpu::pointwise_forward<float>(PointwiseOp::LeakyRelu, slope, x.data(), y.data(), count);
        cpu::pointwise_backward<float>(PointwiseOp::LeakyRelu, slope, x.data(), y.data(), dyv.data(), dx.data(), count,
                                       false);
        DeviceBuffer<float> bx(count + kSlack), by(count + kSlack), bdy(count + kSlack), bdx(count + kSlack);
        bx.upload(x, oi);
        bdy.upload(dyv, oi);
        by.poison();
        bdx.poison();
        gpu::pointwise_forward(PointwiseOp::LeakyRelu, slope, bx.get() + oi, by.get() + oo, count, nullptr);
        gpu::pointwise_backward(PointwiseOp::LeakyRelu, slope, bx.get() + oi, nullptr, bdy.get() + oi, bdx.get() + oo,
                                count, false, nullptr);
        const std::vector<float> got_y = by.download(oo, count), got_dx = bdx.download(oo, count);
        expect_untouched(by, oo, count, what + "forward");
        expect_untouched(bdx, oo, count, what + "backward");
        int64_t bad = 0;
        for (int64_t i = 0; i < count; ++i) {
          const bool y_ok = std::isnan(x[i]) ? std::isnan(got_y[i]) : bits(got_y[i]) == bits(y[i]);
          const bool relu_ok = !(slope == 0.f && x[i] == -inf) || got_y[i] == 0.f;
          if ((!y_ok || !relu_ok || bits(got_dx[i]) != bits(dx[i])) && ++bad <= 5)
            ADD_FAILURE() << what << "[" << i << "] x " << x[i] << ": y " << got_y[i] << " want " << y[i] << ", dx "
                          << got_dx[i] << " want " << dx[i];
        }
        EXPECT_EQ(bad, 0) << what;
      }
    }
  }
}

// Which chains the forwards may save as codes in Y's place (host code: runs
// without a GPU too): 1 to 8 leaky_relus, any slopes, nothing else; and
// a forward asked for both Y and codes, or codes of another chain, is refused.
TEST(EpilogueChainCodes, StandForChainsOfLeakyRelusAlone) {
  gpu::EpilogueChain chain;
  EXPECT_FALSE(gpu::chain_codes_supported(chain));  // no op: nothing to code
  chain.ops = 1;                                    // relu: leaky_relu of slope 0
  EXPECT_TRUE(gpu::chain_codes_supported(chain));
  chain.ops = gpu::kMaxChainOps;
  for (int i = 0; i < chain.ops; ++i) chain.param[i] = i % 2 == 0 ? -0.5f : 1.5f;
  EXPECT_TRUE(gpu::chain_codes_supported(chain));
  gpu::EpilogueChain smooth = chain;
  smooth.activation[3] = PointwiseOp::Tanh;
  EXPECT_FALSE(gpu::chain_codes_supported(smooth));
  gpu::EpilogueChain scaled = chain;
  float multiplier = 2.f;
  scaled.is_scale[5] = true;
  scaled.scale[5] = &multiplier;
  EXPECT_FALSE(gpu::chain_codes_supported(scaled));
  gpu::EpilogueChain too_long = chain;
  too_long.ops = gpu::kMaxChainOps + 1;
  EXPECT_FALSE(gpu::chain_codes_supported(too_long));

  float y = 0.f;
  uint8_t codes = 0;
  EXPECT_NO_THROW(gpu::require_codes_or_y("op", chain, &y, nullptr));
  EXPECT_NO_THROW(gpu::require_codes_or_y("op", chain, nullptr, &codes));
  EXPECT_THROW(gpu::require_codes_or_y("op", chain, &y, &codes), anvil::Error);
  EXPECT_THROW(gpu::require_codes_or_y("op", scaled, nullptr, &codes), anvil::Error);
  EXPECT_NO_THROW(gpu::require_codes_or_y("op", scaled, &y, nullptr));
}

TEST(CudaKernels, CopyOrAccumulate) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(103);
  for (int64_t count : kCounts) {
    for (auto [oi, oo] : kOffsetPairs) {
      for (bool accumulate : {false, true}) {
        const std::string what =
            describe({{"count", double(count)}, {"oin", double(oi)}, {"oout", double(oo)}, {"accumulate", accumulate}});
        const std::vector<float> src = random_floats(count, rng), dst0 = random_floats(count, rng);
        std::vector<float> want = dst0;
        cpu::copy_or_accumulate<float>(src.data(), want.data(), count, accumulate);
        DeviceBuffer<float> bs(count + kSlack), bd(count + kSlack);
        bs.upload(src, oi);
        bd.poison();
        if (accumulate) bd.upload(dst0, oo);
        gpu::copy_or_accumulate(bs.get() + oi, bd.get() + oo, count, accumulate, nullptr);
        expect_ulp(bd.download(oo, count), want, 1, what);
        expect_untouched(bd, oo, count, what);
      }
    }
  }
}

// phase_interleave_output: every element of y from its phase's plane of the
// combined output at its shift, exactly (a copy, or one float add), on
// geometries the derivation gives: shifted phases, outputs that are not a
// multiple of the stride, a strided conv's input gradient, a 2-D conv
// (lifted dims). Nothing outside y is written.
TEST(CudaKernels, PhaseInterleaveOutput) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  struct Case {
    bool transposed;
    std::vector<int64_t> k, s, p, op, in;
  };
  const std::vector<Case> cases = {{true, {4, 2, 4}, {2, 2, 2}, {1, 0, 0}, {1, 0, 0}, {3, 4, 5}},
                                   {true, {5, 3}, {3, 2}, {2, 1}, {2, 0}, {4, 7}},
                                   {false, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {0, 0, 0}, {5, 6, 7}},
                                   {false, {2, 4}, {3, 2}, {0, 1}, {0, 0}, {8, 9}}};
  std::mt19937 rng(107);
  for (const Case& c : cases) {
    auto conv = anvil::testing::make_convolution(c.transposed, c.k, c.s, c.p, c.op, c.in, 3, 5, 2);
    gpu::PhaseSplitGeometry g;
    ASSERT_EQ(conv->phase_split(g, true), std::nullopt);
    const int64_t phases = gpu::phase_count(g);
    std::array<int64_t, 3> z;
    for (int d = 0; d < 3; ++d) z[d] = g.in[d] + g.front[d] + g.end[d] - g.kp[d] + 1;
    const int64_t zvol = z[0] * z[1] * z[2], count = g.n * g.cout * g.out[0] * g.out[1] * g.out[2];
    const std::vector<float> yp = random_floats(size_t(g.n * phases * g.cout * zvol), rng);
    const std::vector<float> y0 = random_floats(size_t(count), rng);
    for (bool accumulate : {false, true}) {
      const std::string what = std::string(c.transposed ? "transposed" : "conv") + " k" + std::to_string(c.k[0]) +
                               (accumulate ? " accumulate" : " overwrite");
      std::vector<float> want(static_cast<size_t>(count));
      for (int64_t i = 0; i < count; ++i) {
        const int64_t o2 = i % g.out[2], o1 = i / g.out[2] % g.out[1], o0 = i / (g.out[2] * g.out[1]) % g.out[0];
        const int64_t plane = i / (g.out[2] * g.out[1] * g.out[0]), n = plane / g.cout, ch = plane % g.cout;
        const int64_t r0 = o0 % g.s[0], r1 = o1 % g.s[1], r2 = o2 % g.s[2], r = (r0 * g.s[1] + r1) * g.s[2] + r2;
        const int64_t at = ((n * phases + r) * g.cout + ch) * zvol +
                           ((o0 / g.s[0] + g.shift[0][r0]) * z[1] + o1 / g.s[1] + g.shift[1][r1]) * z[2] + o2 / g.s[2] +
                           g.shift[2][r2];
        want[i] = accumulate ? y0[i] + yp[at] : yp[at];
      }
      DeviceBuffer<float> byp(yp.size()), by(size_t(count) + kSlack);
      byp.upload(yp, 0);
      by.poison();
      if (accumulate) by.upload(y0, 0);
      gpu::phase_interleave_output(byp.get(), by.get(), accumulate, g, nullptr);
      expect_exact(by.download(0, size_t(count)), want, what);
      expect_untouched(by, 0, size_t(count), what);
    }
  }
}

// flag_non_finite against the CPU's all_finite: no non-finite value, a NaN anywhere, an infinity
// at either end; the data misaligned, and NaN just outside it, which must not be read.
TEST(CudaKernels, FlagNonFiniteMatchesTheCpu) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(211);
  for (int64_t count : kCounts) {
    for (int which = 0; which < 4; ++which) {
      std::vector<float> x = random_floats(count, rng);
      if (which == 1) x[size_t(rng() % uint64_t(count))] = std::nanf("");
      if (which == 2) x.back() = std::numeric_limits<float>::infinity();
      if (which == 3) x.front() = -std::numeric_limits<float>::infinity();
      const std::string what = describe({{"count", double(count)}, {"case", double(which)}});
      DeviceBuffer<float> bx(count + kSlack);
      bx.poison();  // NaN around the data
      bx.upload(x, 1);
      DeviceBuffer<unsigned> flag(1);
      flag.upload(std::vector<unsigned>{0u});
      gpu::flag_non_finite(bx.get() + 1, count, flag.get(), nullptr);
      EXPECT_EQ(flag.download(0, 1)[0] == 0u, cpu::all_finite(x.data(), count)) << what;
      EXPECT_EQ(flag.download(0, 1)[0] == 0u, which == 0) << what;
    }
  }
}

TEST(CudaKernels, AddForward) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(104);
  const std::vector<std::array<size_t, 3>> offsets = {{0, 0, 0}, {1, 1, 1}, {2, 2, 2}, {0, 1, 0}, {0, 0, 3}};
  for (int64_t count : kCounts) {
    for (const auto& o : offsets) {
      const std::string what =
          describe({{"count", double(count)}, {"oa", double(o[0])}, {"ob", double(o[1])}, {"oy", double(o[2])}});
      const std::vector<float> a = random_floats(count, rng), b = random_floats(count, rng);
      std::vector<float> want(count);
      cpu::add_forward<float>(a.data(), b.data(), want.data(), count);
      DeviceBuffer<float> ba(count + kSlack), bb(count + kSlack), by(count + kSlack);
      ba.upload(a, o[0]);
      bb.upload(b, o[1]);
      by.poison();
      gpu::add_forward({ba.get() + o[0], bb.get() + o[1]}, by.get() + o[2], count, nullptr);
      expect_ulp(by.download(o[2], count), want, 1, what);
      expect_untouched(by, o[2], count, what);
    }
  }
}

TEST(CudaKernels, AddInPlace) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(105);
  for (int64_t count : {int64_t(5), int64_t(1001), int64_t(65539)}) {
    for (size_t off : {0, 1}) {
      const std::string what = describe({{"count", double(count)}, {"off", double(off)}});
      const std::vector<float> a = random_floats(count, rng), b = random_floats(count, rng);
      std::vector<float> want(count);
      cpu::add_forward<float>(a.data(), b.data(), want.data(), count);
      DeviceBuffer<float> ba(count + kSlack), bb(count + kSlack);
      ba.upload(a, off);
      bb.upload(b, off);
      gpu::add_forward({ba.get() + off, bb.get() + off}, ba.get() + off, count, nullptr);
      expect_ulp(ba.download(off, count), want, 1, what + "add in place");
    }
  }
}

// The add layer's sum of 2 to 9 inputs (one to three passes of up to four terms) against the CPU's
// left-to-right sum, bit for bit: all inputs aligned (float4 passes), or at their own offsets
// (scalar passes); y in place over the first input; y over a third input refused.
TEST(CudaKernels, AddManyInputsMatchesTheCpuBitForBit) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(106);
  for (size_t n = 2; n <= 9; ++n) {
    for (int64_t count : {int64_t(1), int64_t(7), int64_t(1001), int64_t(65539)}) {
      const std::vector<std::pair<bool, bool>> layouts = {{false, false}, {false, true}, {true, false}, {true, true}};
      for (const auto& [in_place, mixed] : layouts) {
        const std::string what = describe(
            {{"inputs", double(n)}, {"count", double(count)}, {"in_place", in_place}, {"mixed offsets", mixed}});
        std::vector<std::vector<float>> x;
        std::vector<std::unique_ptr<DeviceBuffer<float>>> bx;
        std::vector<const float*> inputs;
        for (size_t i = 0; i < n; ++i) {
          x.push_back(random_floats(count, rng));
          bx.push_back(std::make_unique<DeviceBuffer<float>>(count + kSlack));
          const size_t off = mixed ? i % 3 : 0;
          bx.back()->upload(x.back(), off);
          inputs.push_back(bx.back()->get() + off);
        }
        std::vector<float> want(count);
        cpu::add_forward<float>(x[0].data(), x[1].data(), want.data(), count);
        for (size_t i = 2; i < n; ++i) cpu::copy_or_accumulate<float>(x[i].data(), want.data(), count, true);
        DeviceBuffer<float> by(count + kSlack);
        by.poison();
        float* y = in_place ? bx[0]->get() : by.get() + (mixed ? 1 : 0);
        gpu::add_forward(inputs, y, count, nullptr);
        if (in_place) {
          expect_exact(bx[0]->download(0, count), want, what);
        } else {
          expect_exact(by.download(mixed ? 1 : 0, count), want, what);
          expect_untouched(by, mixed ? 1 : 0, count, what);
        }
      }
    }
  }
  DeviceBuffer<float> b(8);
  const std::vector<const float*> three = {b.get(), b.get(), b.get() + 4};
  EXPECT_THROW(gpu::add_forward(three, b.get() + 4, 4, nullptr), anvil::Error);
  EXPECT_THROW(gpu::add_forward({b.get()}, b.get() + 4, 4, nullptr), anvil::Error);
}

// ---------------------------------------------------------------------------
// Per-channel
// ---------------------------------------------------------------------------

TEST(CudaKernels, BiasForward) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(201);
  for (const ChannelDims& d : kChannelDims) {
    const int64_t count = d.n * d.c * d.spatial;
    for (size_t off : {0, 1, 2}) {
      const std::string what =
          describe({{"n", double(d.n)}, {"c", double(d.c)}, {"spatial", double(d.spatial)}, {"off", double(off)}});
      const std::vector<float> y = random_floats(count, rng), bias = random_floats(d.c, rng);
      std::vector<float> want = y;
      cpu::bias_forward<float>(want.data(), bias.data(), d.n, d.c, d.spatial);
      DeviceBuffer<float> by(count + kSlack), bb(d.c);
      by.poison();
      by.upload(y, off);
      bb.upload(bias);
      gpu::bias_forward(by.get() + off, bb.get(), d.n, d.c, d.spatial, nullptr);
      expect_ulp(by.download(off, count), want, 1, what);
      expect_untouched(by, off, count, what);
    }
  }
}

TEST(CudaKernels, ChannelScaleForward) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(202);
  for (const ChannelDims& d : kChannelDims) {
    const int64_t count = d.n * d.c * d.spatial;
    for (auto [ox, oy] : kOffsetPairs) {
      const std::string what = describe({{"n", double(d.n)},
                                         {"c", double(d.c)},
                                         {"spatial", double(d.spatial)},
                                         {"ox", double(ox)},
                                         {"oy", double(oy)}});
      const std::vector<float> x = random_floats(count, rng), m = random_floats(d.c, rng);
      std::vector<float> want(count);
      cpu::channel_scale_forward<float>(x.data(), m.data(), want.data(), d.n, d.c, d.spatial);
      DeviceBuffer<float> bx(count + kSlack), bm(d.c), by(count + kSlack);
      bx.upload(x, ox);
      bm.upload(m);
      by.poison();
      gpu::channel_scale_forward(bx.get() + ox, bm.get(), by.get() + oy, d.n, d.c, d.spatial, nullptr);
      expect_ulp(by.download(oy, count), want, 1, what);
      expect_untouched(by, oy, count, what);
    }
  }
}

// dbias for dy at offset off; the scratch and dbias are poisoned first.
std::vector<float> run_bias_backward(const std::vector<float>& dy, const ChannelDims& d, size_t off) {
  const int64_t count = d.n * d.c * d.spatial;
  DeviceBuffer<float> bdy(count + kSlack), bdb(d.c + kSlack);
  DeviceBuffer<unsigned char> scratch(gpu::bias_backward_scratch_bytes(d.n, d.c, d.spatial));
  bdy.upload(dy, off);
  bdb.poison();
  scratch.poison();
  gpu::bias_backward(bdy.get() + off, bdb.get() + 1, d.n, d.c, d.spatial, scratch.get(), nullptr);
  expect_untouched(bdb, 1, d.c, "dbias");
  return bdb.download(1, d.c);
}

TEST(CudaKernels, BiasBackward) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(203);
  for (const ChannelDims& d : kChannelDims) {
    const int64_t count = d.n * d.c * d.spatial;
    const std::string what = describe({{"n", double(d.n)}, {"c", double(d.c)}, {"spatial", double(d.spatial)}});
    const std::vector<float> dy = random_floats(count, rng);
    std::vector<double> want(d.c);
    cpu::bias_backward<double>(to_double(dy).data(), want.data(), d.n, d.c, d.spatial);
    const std::vector<float> first = run_bias_backward(dy, d, 0);
    expect_rel(first, want, 1e-5, what);
    expect_bitwise(first, run_bias_backward(dy, d, 0), what + "second run");
    expect_bitwise(first, run_bias_backward(dy, d, 1), what + "offset 1");
    expect_bitwise(first, run_bias_backward(dy, d, 3), what + "offset 3");
  }
}

struct ScaleBackwardResult {
  std::vector<float> dx, dm;
};

ScaleBackwardResult run_channel_scale_backward(const std::vector<float>& x, const std::vector<float>& m,
                                               const std::vector<float>& dy, const std::vector<float>& dx0,
                                               const ChannelDims& d, size_t off_in, size_t off_dx, bool with_dx,
                                               bool accumulate) {
  const int64_t count = d.n * d.c * d.spatial;
  DeviceBuffer<float> bx(count + kSlack), bm(d.c), bdy(count + kSlack), bdx(count + kSlack), bdm(d.c + kSlack);
  DeviceBuffer<unsigned char> scratch(gpu::channel_scale_backward_scratch_bytes(d.n, d.c, d.spatial));
  bx.upload(x, off_in);
  bm.upload(m);
  bdy.upload(dy, off_in);
  bdx.poison();
  if (accumulate) bdx.upload(dx0, off_dx);
  bdm.poison();
  scratch.poison();
  gpu::channel_scale_backward(bx.get() + off_in, bm.get(), bdy.get() + off_in, with_dx ? bdx.get() + off_dx : nullptr,
                              bdm.get() + 1, d.n, d.c, d.spatial, accumulate, scratch.get(), nullptr);
  ScaleBackwardResult r;
  r.dm = bdm.download(1, d.c);
  expect_untouched(bdm, 1, d.c, "dm");
  if (with_dx) {
    r.dx = bdx.download(off_dx, count);
    expect_untouched(bdx, off_dx, count, "dx");
  } else {
    expect_untouched(bdx, 0, 0, "dx (null: nothing written)");
  }
  return r;
}

TEST(CudaKernels, ChannelScaleBackward) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(204);
  for (const ChannelDims& d : kChannelDims) {
    const int64_t count = d.n * d.c * d.spatial;
    const std::vector<float> x = random_floats(count, rng), m = random_floats(d.c, rng);
    const std::vector<float> dy = random_floats(count, rng), dx0 = random_floats(count, rng);
    std::vector<double> want_dm(d.c);
    cpu::channel_scale_backward<double>(to_double(x).data(), to_double(m).data(), to_double(dy).data(), nullptr,
                                        want_dm.data(), d.n, d.c, d.spatial, false);
    std::vector<float> first_dm;
    for (bool with_dx : {false, true}) {
      for (bool accumulate : {false, true}) {
        if (!with_dx && accumulate) continue;
        for (auto [oi, odx] : kOffsetPairs) {
          const std::string what = describe({{"n", double(d.n)},
                                             {"c", double(d.c)},
                                             {"spatial", double(d.spatial)},
                                             {"dx", with_dx},
                                             {"accumulate", accumulate},
                                             {"oin", double(oi)},
                                             {"odx", double(odx)}});
          const ScaleBackwardResult r = run_channel_scale_backward(x, m, dy, dx0, d, oi, odx, with_dx, accumulate);
          expect_rel(r.dm, want_dm, 1e-5, what + "dm");
          // Bitwise the same dm whatever the offsets and whether dx is written.
          if (first_dm.empty()) {
            first_dm = r.dm;
            expect_bitwise(first_dm, run_channel_scale_backward(x, m, dy, dx0, d, oi, odx, with_dx, accumulate).dm,
                           what + "dm second run");
          } else {
            expect_bitwise(first_dm, r.dm, what + "dm vs first run");
          }
          if (with_dx) {
            std::vector<float> want_dx = dx0, dm_f(d.c);
            cpu::channel_scale_backward<float>(x.data(), m.data(), dy.data(), want_dx.data(), dm_f.data(), d.n, d.c,
                                               d.spatial, accumulate);
            expect_ulp(r.dx, want_dx, 1, what + "dx");
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// The fused epilogues: bias -> a chain -> a pool (epilogue.hpp, chain_pool.hpp)
// ---------------------------------------------------------------------------

// One op of a test chain: an activation with its param, or a multiplier.
struct ChainStep {
  bool scale = false;
  PointwiseOp op = PointwiseOp::LeakyRelu;
  float param = 0;
};
ChainStep leaky(float slope) { return {false, PointwiseOp::LeakyRelu, slope}; }
ChainStep activation(PointwiseOp op) { return {false, op, 0.f}; }
const ChainStep kScale{true};

struct ChainCase {
  std::string label;
  std::vector<ChainStep> steps;
  bool exact = true;  // piecewise linear: the GPU's float arithmetic is the reference's, bit for bit
};

// The headline's chain in three slope pairs, the other inline chains (one
// leaky_relu, one multiplier, empty), and the general chains: negative and > 1
// slopes with two multipliers, and the smooth activations.
const std::vector<ChainCase> kChains = {
    {"leaky.01,scale,leaky.01", {leaky(0.01f), kScale, leaky(0.01f)}},
    {"leaky.2,scale,leaky.05", {leaky(0.2f), kScale, leaky(0.05f)}},
    {"relu,scale,relu", {leaky(0.f), kScale, leaky(0.f)}},
    {"leaky.1", {leaky(0.1f)}},
    {"scale", {kScale}},
    {"empty", {}},
    {"leaky-0.3,scale,leaky1.7,scale", {leaky(-0.3f), kScale, leaky(1.7f), kScale}},
    {"sigmoid,scale,tanh", {activation(PointwiseOp::Sigmoid), kScale, activation(PointwiseOp::Tanh)}, false},
};

struct ChainInputs {
  std::vector<float> y, bias, dp;          // bias empty: no bias
  std::vector<std::vector<float>> scales;  // one per multiplier, in chain order
  std::vector<ChainStep> steps;
};

// The CPU reference: the chain op by op, the pool, and back.
struct ChainReference {
  std::vector<float> v, z, p, dy;  // v = y + bias; z: the chain's output
  std::vector<double> dbias;       // exact sums (double) of the float chain's terms
  std::vector<std::vector<double>> dscale;
};

// pool: null for none; else its geometry, max or average.
ChainReference chain_reference(const ChainInputs& in, int64_t n, int64_t c, int64_t s, const cpu::PoolGeometry* pool,
                               bool max) {
  const int64_t count = n * c * s;
  ChainReference r;
  r.v = in.y;
  if (!in.bias.empty()) cpu::bias_forward<float>(r.v.data(), in.bias.data(), n, c, s);
  std::vector<std::vector<float>> zs = {r.v};
  size_t scale = 0;
  for (const ChainStep& step : in.steps) {
    std::vector<float> next(count);
    if (step.scale)
      cpu::channel_scale_forward<float>(zs.back().data(), in.scales[scale++].data(), next.data(), n, c, s);
    else
      cpu::pointwise_forward<float>(step.op, step.param, zs.back().data(), next.data(), count);
    zs.push_back(std::move(next));
  }
  r.z = zs.back();
  std::vector<float> dz(count);
  if (pool == nullptr) {
    r.p = r.z;
    dz = in.dp;
  } else {
    r.p.resize(pool->planes * cpu::volume(pool->out));
    if (max) {
      cpu::max_pool_forward<float>(r.z.data(), r.p.data(), *pool);
      cpu::max_pool_backward<float>(r.z.data(), in.dp.data(), dz.data(), *pool, false);
    } else {
      cpu::avg_pool_forward<float>(r.z.data(), r.p.data(), *pool);
      cpu::avg_pool_backward<float>(in.dp.data(), dz.data(), *pool, false);
    }
  }
  r.dscale.resize(in.scales.size());
  for (size_t i = in.steps.size(); i-- > 0;) {
    const ChainStep& step = in.steps[i];
    std::vector<float> prev(count);
    if (step.scale) {
      const std::vector<float>& m = in.scales[--scale];
      std::vector<float> dm_f(c);
      r.dscale[scale].resize(c);
      cpu::channel_scale_backward<double>(to_double(zs[i]).data(), to_double(m).data(), to_double(dz).data(), nullptr,
                                          r.dscale[scale].data(), n, c, s, false);
      cpu::channel_scale_backward<float>(zs[i].data(), m.data(), dz.data(), prev.data(), dm_f.data(), n, c, s, false);
    } else {
      cpu::pointwise_backward<float>(step.op, step.param, zs[i].data(), zs[i + 1].data(), dz.data(), prev.data(), count,
                                     false);
    }
    dz = std::move(prev);
  }
  r.dy = dz;
  r.dbias.resize(c);
  cpu::bias_backward<double>(to_double(r.dy).data(), r.dbias.data(), n, c, s);
  return r;
}

ChainInputs chain_inputs(const std::vector<ChainStep>& steps, bool with_bias, int64_t n, int64_t c, int64_t s,
                         int64_t pooled, std::mt19937& rng) {
  ChainInputs in;
  in.steps = steps;
  in.y = random_floats(n * c * s, rng);
  // Zeros of both signs: without a bias, a -0 must stay -0 through the chain and a max pool.
  for (size_t i = 3; i < in.y.size(); i += 7) in.y[i] = i % 2 == 0 ? 0.f : -0.f;
  if (with_bias) in.bias = random_floats(c, rng);
  for (const ChainStep& step : steps)
    if (step.scale) in.scales.push_back(random_floats(c, rng));
  in.dp = random_floats(n * c * pooled, rng);
  return in;
}

struct ChainResult {
  std::vector<float> p, y_at_max, dy, dbias;
  std::vector<std::vector<float>> dscale;
  std::vector<uint8_t> argmax;
};

// The kernels' inputs and outputs on the device, every range offset by `off`
// floats (off > 0 forces the scalar paths) and every output poisoned first.
struct ChainBuffers {
  ChainBuffers(const ChainInputs& in, int64_t c, int64_t count, int64_t pooled, size_t scratch_bytes, size_t off)
      : off(off),
        c(c),
        count(count),
        pooled(pooled),
        y(count + kSlack),
        bias(c + kSlack),
        p(pooled + kSlack),
        y_at_max(pooled + kSlack),
        dp(pooled + kSlack),
        dy(count + kSlack),
        dbias(c + kSlack),
        argmax(pooled + kSlack),
        scratch(scratch_bytes) {
    y.upload(in.y, off);
    if (!in.bias.empty()) bias.upload(in.bias, off);
    dp.upload(in.dp, off);
    for (const auto& m : in.scales) {
      scales.push_back(std::make_unique<DeviceBuffer<float>>(c + kSlack));
      scales.back()->upload(m, off);
      dscales.push_back(std::make_unique<DeviceBuffer<float>>(c + kSlack));
      dscales.back()->poison();
    }
    for (auto* b : {&p, &y_at_max, &dy, &dbias}) b->poison();
    argmax.poison();
    scratch.poison();
    has_bias = !in.bias.empty();
    size_t j = 0;
    chain.ops = int(in.steps.size());
    for (size_t i = 0; i < in.steps.size(); ++i) {
      chain.is_scale[i] = in.steps[i].scale;
      chain.activation[i] = in.steps[i].op;
      chain.param[i] = in.steps[i].param;
      if (in.steps[i].scale) {
        chain.scale[i] = scales[j]->get() + off;
        grads.dscale[i] = dscales[j++]->get() + off;
      }
    }
    grads.dbias = has_bias ? dbias.get() + off : nullptr;
  }
  const float* bias_ptr() const { return has_bias ? bias.get() + off : nullptr; }

  ChainResult result(bool max, bool tiled) const {
    ChainResult r;
    r.p = p.download(off, pooled);
    r.dy = dy.download(off, count);
    expect_untouched(p, off, pooled, "p");
    expect_untouched(dy, off, count, "dy");
    if (max) {
      r.argmax = argmax.download(off, pooled);
      expect_untouched(argmax, off, pooled, "argmax");
    }
    if (tiled) {
      r.y_at_max = y_at_max.download(off, pooled);
      expect_untouched(y_at_max, off, pooled, "y_at_max");
    }
    if (has_bias) {
      r.dbias = dbias.download(off, c);
      expect_untouched(dbias, off, c, "dbias");
    }
    for (const auto& b : dscales) {
      r.dscale.push_back(b->download(off, c));
      expect_untouched(*b, off, c, "dscale");
    }
    return r;
  }

  size_t off;
  int64_t c, count, pooled;
  bool has_bias = false;
  DeviceBuffer<float> y, bias, p, y_at_max, dp, dy, dbias;
  DeviceBuffer<uint8_t> argmax;
  DeviceBuffer<unsigned char> scratch;
  std::vector<std::unique_ptr<DeviceBuffer<float>>> scales, dscales;
  gpu::EpilogueChain chain;
  gpu::ChainGrads grads;
};

// The output, dY and the sums against the reference; argmax (max pools) must
// point at the first maximum of the reference's window.
void check_chain(const ChainInputs& in, const ChainReference& ref, const ChainResult& r, bool exact,
                 const std::string& what) {
  if (exact) {
    expect_exact(r.p, ref.p, what + "p");
    expect_ulp(r.dy, ref.dy, 0, what + "dy");
  } else {
    expect_rel(r.p, to_double(ref.p), 1e-5, what + "p");
    expect_rel(r.dy, to_double(ref.dy), 1e-5, what + "dy");
  }
  for (size_t j = 0; j < ref.dscale.size(); ++j) expect_rel(r.dscale[j], ref.dscale[j], 1e-5, what + "dscale");
  if (!in.bias.empty()) expect_rel(r.dbias, ref.dbias, 1e-5, what + "dbias");
}

template <class T>
void expect_same(const std::vector<T>& a, const std::vector<T>& b, const std::string& what) {
  expect_bitwise(a, b, what);
}
void expect_same_chain(const ChainResult& a, const ChainResult& b, const std::string& what) {
  expect_same(a.p, b.p, what + "p");
  expect_same(a.argmax, b.argmax, what + "argmax");
  expect_same(a.y_at_max, b.y_at_max, what + "y_at_max");
  expect_same(a.dy, b.dy, what + "dy");
  expect_same(a.dbias, b.dbias, what + "dbias");
  for (size_t j = 0; j < a.dscale.size(); ++j) expect_same(a.dscale[j], b.dscale[j], what + "dscale");
}

// ---- the tiled max pool (epilogue.hpp) ----

int64_t spatial_of(const EpilogueGeometry& g) { return g.y[0] * g.y[1] * g.y[2]; }
int64_t window_of(const EpilogueGeometry& g) { return g.k[0] * g.k[1] * g.k[2]; }
int64_t pooled_of(const EpilogueGeometry& g) { return spatial_of(g) / window_of(g); }

cpu::PoolGeometry pool_geometry(const EpilogueGeometry& g) {
  cpu::PoolGeometry p;
  p.planes = g.n * g.c;
  p.in = g.y;
  p.k = g.k;
  p.stride = g.k;
  p.pad = {0, 0, 0};
  for (int i = 0; i < 3; ++i) p.out[i] = g.y[i] / g.k[i];
  return p;
}

// Flat index in y of window element w of pooled element e of plane.
int64_t window_index(const EpilogueGeometry& g, int64_t plane, int64_t e, int64_t w) {
  const int64_t ph_n = g.y[1] / g.k[1], pw_n = g.y[2] / g.k[2];
  const int64_t pw = e % pw_n, ph = (e / pw_n) % ph_n, pd = e / (pw_n * ph_n);
  const int64_t kw = w % g.k[2], kh = (w / g.k[2]) % g.k[1], kd = w / (g.k[2] * g.k[1]);
  return ((plane * g.y[0] + pd * g.k[0] + kd) * g.y[1] + ph * g.k[1] + kh) * g.y[2] + pw * g.k[2] + kw;
}

ChainResult run_tiled(const ChainInputs& in, const EpilogueGeometry& g, size_t off) {
  const int64_t count = g.n * g.c * spatial_of(g), pooled = g.n * g.c * pooled_of(g);
  gpu::EpilogueChain shape;
  shape.ops = int(in.steps.size());
  ChainBuffers b(in, g.c, count, pooled, gpu::fused_epilogue_backward_scratch_bytes(g, shape), off);
  gpu::fused_epilogue_forward(b.y.get() + off, b.bias_ptr(), b.chain, b.p.get() + off, b.argmax.get() + off,
                              b.y_at_max.get() + off, g, nullptr);
  gpu::fused_epilogue_backward(b.dp.get() + off, b.argmax.get() + off, b.y_at_max.get() + off, b.chain,
                               b.dy.get() + off, b.grads, b.scratch.get(), g, nullptr);
  return b.result(true, true);
}

// Tiled: argmax is the first maximum of the reference's window and y_at_max is v there.
void check_tiled_argmax(const ChainReference& ref, const EpilogueGeometry& g, const ChainResult& r,
                        const std::string& what) {
  const int64_t pooled_plane = pooled_of(g), window = window_of(g);
  int64_t bad = 0;
  for (int64_t plane = 0; plane < g.n * g.c; ++plane) {
    for (int64_t e = 0; e < pooled_plane; ++e) {
      const int64_t o = plane * pooled_plane + e;
      const int64_t a = r.argmax[o];
      bool ok = a < window;
      if (ok) {
        const int64_t at = window_index(g, plane, e, a);
        ok = ref.z[at] == r.p[o] && bits(ref.v[at]) == bits(r.y_at_max[o]);
        for (int64_t w = 0; ok && w < a; ++w) ok = ref.z[window_index(g, plane, e, w)] < r.p[o];
      }
      if (!ok && ++bad <= 5) {
        ADD_FAILURE() << what << "argmax/y_at_max wrong at pooled element " << o << " (argmax " << a << ")";
      }
    }
  }
  EXPECT_EQ(bad, 0) << what << "argmax";
}

EpilogueGeometry epi_geometry(int64_t n, int64_t c, std::array<int64_t, 3> y, std::array<int64_t, 3> k) {
  EpilogueGeometry g;
  g.n = n;
  g.c = c;
  g.y = y;
  g.k = k;
  return g;
}

std::string describe(const EpilogueGeometry& g) {
  std::ostringstream s;
  s << "n=" << g.n << " c=" << g.c << " y=" << g.y[0] << "x" << g.y[1] << "x" << g.y[2] << " k=" << g.k[0] << "x"
    << g.k[1] << "x" << g.k[2] << " ";
  return s.str();
}

const std::vector<EpilogueGeometry> kEpilogueGeometries = {
    epi_geometry(1, 1, {2, 4, 8}, {2, 2, 2}),     // fast path (2, 2, 2)
    epi_geometry(3, 5, {4, 6, 12}, {2, 2, 2}),    // fast path, odd pooled H
    epi_geometry(3, 7, {2, 10, 10}, {2, 2, 2}),   // W % 4 != 0: general path
    epi_geometry(1, 5, {1, 8, 16}, {1, 2, 2}),    // fast path (1, 2, 2), 2-D
    epi_geometry(3, 1, {1, 14, 6}, {1, 2, 2}),    // general (1, 2, 2)
    epi_geometry(1, 5, {4, 9, 12}, {2, 1, 3}),    //
    epi_geometry(3, 5, {3, 9, 9}, {3, 3, 3}),     // odd pooled count per plane
    epi_geometry(1, 7, {4, 8, 8}, {4, 4, 4}),     //
    epi_geometry(3, 5, {5, 9, 11}, {5, 1, 11}),   // 5x9x11
    epi_geometry(3, 5, {1, 7, 13}, {1, 7, 13}),   // 1x7x13, one pooled element per plane
    epi_geometry(1, 1, {1, 1, 1}, {1, 1, 1}),     //
    epi_geometry(3, 5, {4, 8, 11}, {2, 2, 1}),    // k2 = 1
    epi_geometry(1, 3, {2, 3, 80}, {1, 3, 40}),   // k2 > 32 (a warp row shorter than a window row)
    epi_geometry(1, 3, {4, 16, 16}, {4, 4, 16}),  // window of 256 (argmax up to 255)
    epi_geometry(1, 3, {1, 45, 91}, {1, 1, 1}),   // odd P over two chunks
    epi_geometry(2, 4, {16, 64, 64}, {2, 2, 2}),  // fast, several chunks per plane
    epi_geometry(1, 2, {8, 64, 58}, {2, 2, 2}),   // general, several chunks per plane
    epi_geometry(1, 2, {6, 96, 96}, {3, 3, 3}),   // general, smaller chunks for the larger window
};

// One geometry a test, so that the sanitizers' gtest shards (tools/gpu_check.sh)
// share the geometries out. Each seeds its own inputs.
class FusedEpilogueGeometries : public ::testing::TestWithParam<size_t> {};
INSTANTIATE_TEST_SUITE_P(CudaKernels, FusedEpilogueGeometries, ::testing::Range(size_t(0), kEpilogueGeometries.size()));

// Exact chains only: with the smooth activations (whose float results differ
// between the libraries by an ulp or two) a near tie could legitimately pick
// another argmax than the reference; the chain_pool test and the engine
// tests cover them.
TEST_P(FusedEpilogueGeometries, FusedEpilogue) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(301 + GetParam());
  const EpilogueGeometry& g = kEpilogueGeometries[GetParam()];
  for (bool with_bias : {true, false}) {
    for (const ChainCase& chain : kChains) {
      if (!chain.exact) continue;
      const ChainInputs in = chain_inputs(chain.steps, with_bias, g.n, g.c, spatial_of(g), pooled_of(g), rng);
      const std::string what = describe(g) + "bias " + std::to_string(with_bias) + " " + chain.label + ": ";
      const cpu::PoolGeometry pg = pool_geometry(g);
      const ChainReference ref = chain_reference(in, g.n, g.c, spatial_of(g), &pg, true);
      const ChainResult aligned = run_tiled(in, g, 0);
      check_chain(in, ref, aligned, true, what + "aligned: ");
      check_tiled_argmax(ref, g, aligned, what + "aligned: ");
      const ChainResult offset = run_tiled(in, g, 1);
      check_chain(in, ref, offset, true, what + "offset: ");
      // Deterministic, and the fast and general paths give the same bits.
      expect_same_chain(aligned, run_tiled(in, g, 0), what + "second run: ");
      expect_same_chain(aligned, offset, what + "aligned vs offset: ");
    }
  }
}

// ---- any pool, or none (chain_pool.hpp) ----

struct PoolCase {
  std::string label;
  gpu::ChainPoolGeometry g;
  // How a pool's backward finds an element's windows (chain_pool_backward_path):
  // directly where they do not overlap; else staged by tiles in shared
  // memory, or gathered from global memory.
  gpu::PoolBackwardPath backward = gpu::PoolBackwardPath::Tiled;
};

PoolCase pool_case(std::string label, int64_t n, int64_t c, std::array<int64_t, 3> y, gpu::ChainPool pool,
                   std::array<int64_t, 3> k = {1, 1, 1}, std::array<int64_t, 3> stride = {1, 1, 1},
                   std::array<int64_t, 3> pad = {0, 0, 0}) {
  PoolCase p{std::move(label), {}};
  if (k[0] <= stride[0] && k[1] <= stride[1] && k[2] <= stride[2]) p.backward = gpu::PoolBackwardPath::Disjoint;
  p.g.n = n;
  p.g.c = c;
  p.g.y = y;
  p.g.pool = pool;
  p.g.k = k;
  p.g.stride = stride;
  p.g.pad = pad;
  return p;
}

PoolCase gathered(PoolCase p) {
  p.backward = gpu::PoolBackwardPath::Gathered;
  return p;
}

const std::vector<PoolCase> kPoolCases = {
    pool_case("none 3-D batch 1, one channel, odd", 1, 1, {3, 5, 7}, gpu::ChainPool::None),
    pool_case("none 2-D, float4 planes", 3, 5, {1, 8, 12}, gpu::ChainPool::None),
    pool_case("none, several chunks", 2, 3, {1, 61, 97}, gpu::ChainPool::None),
    pool_case("avg 2x2x2", 2, 3, {4, 6, 8}, gpu::ChainPool::Avg, {2, 2, 2}, {2, 2, 2}),
    pool_case("avg 3 s2 p1, odd", 1, 1, {5, 7, 9}, gpu::ChainPool::Avg, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}),
    pool_case("avg 2-D k3 s1 (overlap)", 2, 3, {1, 9, 11}, gpu::ChainPool::Avg, {1, 3, 3}, {1, 1, 1}),
    pool_case("avg stride above kernel (gaps)", 3, 2, {1, 13, 10}, gpu::ChainPool::Avg, {1, 2, 3}, {1, 3, 4}),
    // Windows apart (the backward's one window an element, or none), padded or with elements past
    // the last window, over rows of a multiple of 4 (4 neighbours a thread) and not.
    pool_case("max k2 s3 p1, rows of 16 (gaps)", 2, 3, {4, 7, 16}, gpu::ChainPool::Max, {2, 2, 2}, {3, 3, 3},
              {1, 1, 1}),
    pool_case("max k2 s3, rows of 16 (gaps, past the last window)", 1, 2, {7, 8, 16}, gpu::ChainPool::Max, {2, 2, 2},
              {3, 3, 3}),
    pool_case("avg k2x1x2 s3x2x3 p1x0x1, rows of 12 (gaps)", 1, 2, {5, 6, 12}, gpu::ChainPool::Avg, {2, 1, 2},
              {3, 2, 3}, {1, 0, 1}),
    pool_case("avg k3x1x2 s3x2x3 p1x0x1, rows of 11 (volume 6)", 1, 2, {5, 6, 11}, gpu::ChainPool::Avg, {3, 1, 2},
              {3, 2, 3}, {1, 0, 1}),
    pool_case("max 3 s2 p1 (overlap, padding)", 2, 3, {5, 7, 9}, gpu::ChainPool::Max, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}),
    pool_case("max 2-D k3 s1 p1", 1, 1, {1, 9, 10}, gpu::ChainPool::Max, {1, 3, 3}, {1, 1, 1}, {0, 1, 1}),
    pool_case("max not tiling (odd y, k2)", 2, 3, {3, 7, 9}, gpu::ChainPool::Max, {2, 2, 2}, {2, 2, 2}),
    pool_case("max window 125", 1, 2, {9, 9, 9}, gpu::ChainPool::Max, {5, 5, 5}, {2, 2, 2}, {2, 2, 2}),
    pool_case("avg, several chunks", 1, 2, {1, 130, 98}, gpu::ChainPool::Avg, {1, 2, 2}, {1, 2, 2}),
    // Rows of a multiple of 4: aligned, the backward takes 4 neighbours a thread.
    pool_case("max 3 s2 p1, rows of 12", 2, 3, {3, 6, 12}, gpu::ChainPool::Max, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}),
    pool_case("avg 2-D k2x4 s1x2, rows of 16 (overlap)", 2, 3, {1, 9, 16}, gpu::ChainPool::Avg, {1, 2, 4}, {1, 1, 2}),
    pool_case("max rows of 64, several chunks", 1, 2, {1, 70, 64}, gpu::ChainPool::Max, {1, 2, 2}, {1, 2, 2}),
    // Windows 2 wide at stride 2 along rows of a multiple of 4: the forward takes two outputs
    // from one float4 a window row (aligned; offset 1 runs the scalar kernel), with padding
    // along height and depth, overlapping rows, and pairs over several chunks.
    pool_case("max 2 s2 p1x1x0, rows of 12", 2, 3, {5, 7, 12}, gpu::ChainPool::Max, {2, 2, 2}, {2, 2, 2}, {1, 1, 0}),
    pool_case("max 2-D k3x2 s1x2, rows of 8 (overlap)", 2, 3, {1, 9, 8}, gpu::ChainPool::Max, {1, 3, 2}, {1, 1, 2}),
    pool_case("avg 2-D k2, rows of 96, several chunks", 1, 2, {1, 130, 96}, gpu::ChainPool::Avg, {1, 2, 2}, {1, 2, 2}),
    pool_case("avg 2 s2 p1x1x0, rows of 4", 2, 2, {3, 5, 4}, gpu::ChainPool::Avg, {2, 2, 2}, {2, 2, 2}, {1, 1, 0}),
    pool_case("max 2-D k2, rows of 64, several chunks", 1, 2, {1, 300, 64}, gpu::ChainPool::Max, {1, 2, 2}, {1, 2, 2}),
    // Windows 3 wide at stride 2 with padding 1 along rows of an even length: the forward takes
    // a float2 a window row and the window's left column from the neighbouring lane (lane 0
    // loads it), with rows that start mid-warp (5 outputs a row), rows of 2 (1 output), and
    // several chunks (offset 1 runs the scalar kernel).
    pool_case("max 2-D 3 s2 p1, rows of 10", 2, 3, {1, 11, 10}, gpu::ChainPool::Max, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}),
    pool_case("avg 3 s2 p1, rows of 2", 2, 2, {5, 4, 2}, gpu::ChainPool::Avg, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}),
    pool_case("max 2-D 3 s2 p1, rows of 66, several chunks", 1, 2, {1, 130, 66}, gpu::ChainPool::Max, {1, 3, 3},
              {1, 2, 2}, {0, 1, 1}),
    // The backward's tiles: several along a row (rows over 256), along depth,
    // and windows too many for shared memory (gathered from global memory).
    pool_case("max 3 s2 p1, rows of 600", 1, 2, {1, 5, 600}, gpu::ChainPool::Max, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}),
    pool_case("avg k2x3 s1x2, rows of 517", 1, 2, {1, 4, 517}, gpu::ChainPool::Avg, {1, 2, 3}, {1, 1, 2}),
    pool_case("avg 3 s2 p1, tiles along depth", 1, 2, {19, 16, 16}, gpu::ChainPool::Avg, {3, 3, 3}, {2, 2, 2},
              {1, 1, 1}),
    gathered(pool_case("max 5 s1, backward gathers", 1, 2, {34, 34, 34}, gpu::ChainPool::Max, {5, 5, 5})),
    gathered(pool_case("max 5 s1, rows of 36, backward gathers", 1, 1, {20, 36, 36}, gpu::ChainPool::Max, {5, 5, 5})),
    gathered(pool_case("avg 12 s1, backward gathers", 1, 1, {30, 30, 30}, gpu::ChainPool::Avg, {12, 12, 12})),
    // Windows of 10240 elements (40 x 256) and 21^3, padded; overlapping padded windows along rows of 2100.
    pool_case("avg 40x256 s3 p1x2", 2, 1, {1, 44, 262}, gpu::ChainPool::Avg, {1, 40, 256}, {1, 3, 3}, {0, 1, 2}),
    pool_case("avg 21 s2 p10", 1, 2, {22, 23, 24}, gpu::ChainPool::Avg, {21, 21, 21}, {2, 2, 2}, {10, 10, 10}),
    pool_case("max 3 s2 p1, rows of 2100", 1, 2, {9, 10, 2100}, gpu::ChainPool::Max, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}),
};

cpu::PoolGeometry pool_geometry(const gpu::ChainPoolGeometry& g) {
  cpu::PoolGeometry p;
  p.planes = g.n * g.c;
  p.in = g.y;
  p.k = g.k;
  p.stride = g.stride;
  p.pad = g.pad;
  p.out = gpu::chain_pool_output(g);
  return p;
}

ChainResult run_chain_pool(const ChainInputs& in, const gpu::ChainPoolGeometry& g, size_t off) {
  const int64_t count = g.n * g.c * g.y[0] * g.y[1] * g.y[2];
  const auto out = gpu::chain_pool_output(g);
  const int64_t pooled = g.n * g.c * out[0] * out[1] * out[2];
  gpu::EpilogueChain shape;
  shape.ops = int(in.steps.size());
  ChainBuffers b(in, g.c, count, pooled, gpu::chain_pool_backward_scratch_bytes(g, shape), off);
  const bool max = g.pool == gpu::ChainPool::Max;
  uint8_t* argmax = max ? b.argmax.get() + off : nullptr;
  gpu::chain_pool_forward(b.y.get() + off, b.bias_ptr(), b.chain, b.p.get() + off, argmax, g, nullptr);
  gpu::chain_pool_backward(b.dp.get() + off, b.y.get() + off, b.bias_ptr(), argmax, b.chain, b.dy.get() + off, false,
                           b.grads, b.scratch.get(), g, nullptr);
  return b.result(max, false);
}

// Host-side: how each case's backward finds its windows (the kernels' bits
// must not depend on it; ChainPool checks every path against the reference).
TEST(CudaKernels, PoolBackwardPathByOverlap) {
  int disjoint = 0;
  for (const PoolCase& pc : kPoolCases) {
    if (pc.g.pool == gpu::ChainPool::None) continue;
    EXPECT_EQ(gpu::chain_pool_backward_path(pc.g), pc.backward) << pc.label;
    disjoint += pc.backward == gpu::PoolBackwardPath::Disjoint;
  }
  EXPECT_GE(disjoint, 8);  // max and avg, padded, with gaps, rows of 4 floats and not
  // residual_add_2d's pool (3x3 s2 p1 over 64 x 64) and pyramid_join_2d's (2x2 over 64 x 64).
  const PoolCase stem = pool_case("", 32, 64, {1, 64, 64}, gpu::ChainPool::Max, {1, 3, 3}, {1, 2, 2}, {0, 1, 1});
  EXPECT_EQ(gpu::chain_pool_backward_path(stem.g), gpu::PoolBackwardPath::Tiled);
  const PoolCase join = pool_case("", 32, 32, {1, 64, 64}, gpu::ChainPool::Max, {1, 2, 2}, {1, 2, 2});
  EXPECT_EQ(gpu::chain_pool_backward_path(join.g), gpu::PoolBackwardPath::Disjoint);
}

using MakeChainInputs = ChainInputs (*)(const std::vector<ChainStep>&, bool with_bias, int64_t n, int64_t c, int64_t s,
                                        int64_t pooled, std::mt19937&);

// Each geometry, with a bias and without, through each chain: body(pc, chain, with_bias, in, ref,
// what) with the chain's inputs from make_inputs and their CPU reference.
template <class Body>
void for_each_pool_chain(const std::vector<PoolCase>& cases, const std::vector<ChainCase>& chains,
                         MakeChainInputs make_inputs, std::mt19937& rng, Body&& body) {
  for (const PoolCase& pc : cases) {
    const gpu::ChainPoolGeometry& g = pc.g;
    const bool max = g.pool == gpu::ChainPool::Max;
    const auto out = gpu::chain_pool_output(g);
    const int64_t s = g.y[0] * g.y[1] * g.y[2], pooled = out[0] * out[1] * out[2];
    const cpu::PoolGeometry pg = pool_geometry(g);
    for (bool with_bias : {true, false}) {
      for (const ChainCase& chain : chains) {
        // See FusedEpilogue: the smooth chain's argmax may differ at near ties.
        if (max && !chain.exact) continue;
        const ChainInputs in = make_inputs(chain.steps, with_bias, g.n, g.c, s, pooled, rng);
        const std::string what = pc.label + " bias " + std::to_string(with_bias) + " " + chain.label + ": ";
        const ChainReference ref =
            chain_reference(in, g.n, g.c, s, g.pool == gpu::ChainPool::None ? nullptr : &pg, max);
        body(pc, chain, with_bias, in, ref, what);
      }
    }
  }
}

// One pool case a test, so that the sanitizers' gtest shards (tools/gpu_check.sh) share
// the cases out: one test over every case took up to 200 s under one tool. Each case
// seeds its own inputs.
class ChainPoolCases : public ::testing::TestWithParam<size_t> {};
INSTANTIATE_TEST_SUITE_P(CudaKernels, ChainPoolCases, ::testing::Range(size_t(0), kPoolCases.size()));

TEST_P(ChainPoolCases, ChainPool) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(311 + GetParam());
  for_each_pool_chain({kPoolCases[GetParam()]}, kChains, chain_inputs, rng,
                      [](const PoolCase& pc, const ChainCase& chain, bool, const ChainInputs& in,
                         const ChainReference& ref, const std::string& what) {
                        const ChainResult aligned = run_chain_pool(in, pc.g, 0);
                        check_chain(in, ref, aligned, chain.exact, what + "aligned: ");
                        const ChainResult offset = run_chain_pool(in, pc.g, 1);
                        check_chain(in, ref, offset, chain.exact, what + "offset: ");
                        expect_same_chain(aligned, run_chain_pool(in, pc.g, 0), what + "second run: ");
                        // Each element's gradient is summed in one order on every path (float4 rows, scalar),
                        // and each window taken in one order by every forward (pairs, rows of 3, scalar).
                        expect_same(aligned.dy, offset.dy, what + "aligned vs offset: dy");
                        expect_same(aligned.p, offset.p, what + "aligned vs offset: p");
                        expect_same(aligned.argmax, offset.argmax, what + "aligned vs offset: argmax");
                      });
}

// A pool case's sizes, and a chain's inputs with an addend that cancels y at every 11th element.
struct AddCase {
  int64_t s = 0, pooled = 0, count = 0;  // Y's plane, every pooled element, every Y element
  ChainInputs in;
  std::vector<float> addend;
};

AddCase add_case(const gpu::ChainPoolGeometry& g, const ChainCase& chain, std::mt19937& rng) {
  AddCase a;
  const auto out = gpu::chain_pool_output(g);
  a.s = g.y[0] * g.y[1] * g.y[2];
  a.pooled = g.n * g.c * out[0] * out[1] * out[2];
  a.count = g.n * g.c * a.s;
  a.in = chain_inputs(chain.steps, false, g.n, g.c, a.s, a.pooled / (g.n * g.c), rng);
  a.addend = random_floats(a.count, rng);
  for (int64_t i = 5; i < a.count; i += 11) a.addend[i] = -a.in.y[i];
  return a;
}

// The add forms (a residual join): P, argmax, dy and the multipliers'
// gradients from (y, addend) bitwise as chain_pool's from the sum y + addend,
// which ChainPool checks against the CPU reference. Offset 1 takes the
// scalar paths; some sums are exactly zero.
TEST(CudaKernels, AddChainPoolIsChainPoolOfTheSum) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(317);
  for (const PoolCase& pc : kPoolCases) {
    const gpu::ChainPoolGeometry& g = pc.g;
    const bool max = g.pool == gpu::ChainPool::Max;
    for (const ChainCase& chain : kChains) {
      const AddCase a = add_case(g, chain, rng);
      const int64_t count = a.count, pooled = a.pooled;
      const ChainInputs& in = a.in;
      const std::vector<float>& addend = a.addend;
      ChainInputs sum = in;
      for (int64_t i = 0; i < count; ++i) sum.y[i] = in.y[i] + addend[i];
      gpu::EpilogueChain shape;
      shape.ops = int(in.steps.size());
      const size_t scratch = gpu::chain_pool_backward_scratch_bytes(g, shape);
      for (size_t off : {size_t(0), size_t(1)}) {
        const std::string what = pc.label + " " + chain.label + " off " + std::to_string(off) + ": ";
        ChainBuffers want(sum, g.c, count, pooled, scratch, off);
        uint8_t* want_argmax = max ? want.argmax.get() + off : nullptr;
        gpu::chain_pool_forward(want.y.get() + off, nullptr, want.chain, want.p.get() + off, want_argmax, g, nullptr);
        gpu::chain_pool_backward(want.dp.get() + off, want.y.get() + off, nullptr, want_argmax, want.chain,
                                 want.dy.get() + off, false, want.grads, want.scratch.get(), g, nullptr);
        ChainBuffers got(in, g.c, count, pooled, scratch, off);
        DeviceBuffer<float> z(count + kSlack);
        z.upload(addend, off);
        uint8_t* got_argmax = max ? got.argmax.get() + off : nullptr;
        gpu::add_chain_pool_forward(got.y.get() + off, z.get() + off, got.chain, got.p.get() + off, got_argmax, g,
                                    nullptr);
        gpu::add_chain_pool_backward(got.dp.get() + off, got.y.get() + off, z.get() + off, got_argmax, got.chain,
                                     got.dy.get() + off, false, got.grads, got.scratch.get(), g, nullptr);
        expect_same_chain(want.result(max, false), got.result(max, false), what);
      }
    }
  }
}

// A plain pool (the pooling layer's kernels): empty chain, no bias, no y, and
// the gradient added into what dx holds (gradient fan-out).
TEST(CudaKernels, PlainPoolAccumulatesWithoutY) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(313);
  for (const PoolCase& pc : kPoolCases) {
    const gpu::ChainPoolGeometry& g = pc.g;
    if (g.pool == gpu::ChainPool::None) continue;
    const bool max = g.pool == gpu::ChainPool::Max;
    const auto out = gpu::chain_pool_output(g);
    const int64_t s = g.y[0] * g.y[1] * g.y[2], pooled = out[0] * out[1] * out[2], count = g.n * g.c * s;
    const cpu::PoolGeometry pg = pool_geometry(g);
    const ChainInputs in = chain_inputs({}, false, g.n, g.c, s, pooled, rng);
    const ChainReference ref = chain_reference(in, g.n, g.c, s, &pg, max);
    const std::vector<float> dx0 = random_floats(count, rng);
    for (size_t off : {size_t(0), size_t(1)}) {
      ChainBuffers b(in, g.c, count, g.n * g.c * pooled, 0, off);
      b.dy.upload(dx0, off);
      uint8_t* argmax = max ? b.argmax.get() + off : nullptr;
      gpu::chain_pool_forward(b.y.get() + off, nullptr, b.chain, b.p.get() + off, argmax, g, nullptr);
      gpu::chain_pool_backward(b.dp.get() + off, nullptr, nullptr, argmax, b.chain, b.dy.get() + off, true, {}, nullptr,
                               g, nullptr);
      const std::string what = pc.label + " off " + std::to_string(off) + ": ";
      expect_exact(b.p.download(off, b.pooled), ref.p, what + "p");
      // The gradient is summed in the reference's order, then added once: exact.
      std::vector<float> want(count);
      for (int64_t i = 0; i < count; ++i) want[i] = dx0[i] + ref.dy[i];
      expect_ulp(b.dy.download(off, count), want, 0, what + "dx accumulated");
      expect_untouched(b.dy, off, count, what + "dx");
    }
  }
}

// ---- the same forward over a channels-last Y (channels_last_pool.hpp) ----

// y (n, c, s) as (n, s, c).
std::vector<float> to_channels_last(const std::vector<float>& y, int64_t n, int64_t c, int64_t s) {
  std::vector<float> last(y.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t e = 0; e < s; ++e) last[(i * s + e) * c + ch] = y[(i * c + ch) * s + e];
  return last;
}

// Flat NCDHW index of window element w of pooled element e of plane, or -1 in the padding.
int64_t pool_window_index(const gpu::ChainPoolGeometry& g, int64_t plane, int64_t e, int64_t w) {
  const auto out = gpu::chain_pool_output(g);
  const int64_t o[3] = {e / (out[1] * out[2]), e / out[2] % out[1], e % out[2]};
  const int64_t k[3] = {w / (g.k[1] * g.k[2]), w / g.k[2] % g.k[1], w % g.k[2]};
  int64_t at = plane;
  for (int a = 0; a < 3; ++a) {
    const int64_t i = o[a] * g.stride[a] - g.pad[a] + k[a];
    if (i < 0 || i >= g.y[a]) return -1;
    at = at * g.y[a] + i;
  }
  return at;
}

// The general cases, the tiled max pools' (their windows of at most 255), and
// channel counts around the 32-channel tiles, by 4 (16-byte loads where the
// buffers are aligned) and not.
std::vector<PoolCase> channels_last_cases() {
  std::vector<PoolCase> cases = kPoolCases;
  for (const EpilogueGeometry& e : kEpilogueGeometries) {
    if (window_of(e) > gpu::kMaxPoolWindow) continue;
    cases.push_back(pool_case("tiled " + describe(e), e.n, e.c, e.y, gpu::ChainPool::Max, e.k, e.k));
  }
  cases.push_back(pool_case("37 channels, max 2x2", 2, 37, {1, 10, 14}, gpu::ChainPool::Max, {1, 2, 2}, {1, 2, 2}));
  cases.push_back(pool_case("72 channels, avg 2x2x2", 1, 72, {4, 6, 10}, gpu::ChainPool::Avg, {2, 2, 2}, {2, 2, 2}));
  cases.push_back(
      pool_case("12 channels, avg 3 s2 p1", 2, 12, {1, 9, 13}, gpu::ChainPool::Avg, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}));
  cases.push_back(pool_case("44 channels, no pool", 1, 44, {2, 3, 11}, gpu::ChainPool::None));
  cases.push_back(pool_case("33 channels, no pool", 3, 33, {1, 5, 7}, gpu::ChainPool::None));
  cases.push_back(
      pool_case("64 channels, max 3 s2 p1", 2, 64, {1, 11, 9}, gpu::ChainPool::Max, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}));
  return cases;
}

// channels_last_cases(), one a test (as ChainPoolCases).
class ChannelsLastPoolCases : public ::testing::TestWithParam<size_t> {};
INSTANTIATE_TEST_SUITE_P(CudaKernels, ChannelsLastPoolCases, ::testing::Range(size_t(0), channels_last_cases().size()));

// P and a max pool's argmax as chain_pool_forward gives them from the packed
// Y (bit for bit), P against the CPU reference, and y_at_max = v at the argmax.
TEST_P(ChannelsLastPoolCases, ChannelsLastPool) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(317 + GetParam());
  const PoolCase pc = channels_last_cases()[GetParam()];
  ASSERT_EQ(gpu::channels_last_pool_geometry_error(pc.g), nullptr) << pc.label;
  for_each_pool_chain(
      {pc}, kChains, chain_inputs, rng,
      [](const PoolCase& pc, const ChainCase& chain, bool, const ChainInputs& in, const ChainReference& ref,
         const std::string& chain_what) {
        const gpu::ChainPoolGeometry& g = pc.g;
        const bool max = g.pool == gpu::ChainPool::Max;
        const auto out = gpu::chain_pool_output(g);
        const int64_t s = g.y[0] * g.y[1] * g.y[2], pooled = out[0] * out[1] * out[2];
        const int64_t count = g.n * g.c * s, all_pooled = g.n * g.c * pooled;
        ChainInputs last = in;
        last.y = to_channels_last(in.y, g.n, g.c, s);
        for (size_t off : {size_t(0), size_t(1)}) {
          const std::string what = chain_what + "off " + std::to_string(off) + ": ";
          ChainBuffers packed(in, g.c, count, all_pooled, 0, off), b(last, g.c, count, all_pooled, 0, off);
          gpu::chain_pool_forward(packed.y.get() + off, packed.bias_ptr(), packed.chain, packed.p.get() + off,
                                  max ? packed.argmax.get() + off : nullptr, g, nullptr);
          gpu::channels_last_pool_forward(b.y.get() + off, b.bias_ptr(), b.chain, b.p.get() + off, gpu::PLayout::Packed,
                                          max ? b.argmax.get() + off : nullptr, max ? b.y_at_max.get() + off : nullptr,
                                          g, nullptr);
          const ChainResult want = packed.result(max, false), got = b.result(max, max);
          expect_same(got.p, want.p, what + "p");
          // P written channels-last: the same bits, transposed, and nothing past it touched.
          ChainBuffers b_last(last, g.c, count, all_pooled, 0, off);
          gpu::channels_last_pool_forward(b_last.y.get() + off, b_last.bias_ptr(), b_last.chain, b_last.p.get() + off,
                                          gpu::PLayout::ChannelsLast, nullptr, nullptr, g, nullptr);
          expect_same(b_last.p.download(off, all_pooled), to_channels_last(want.p, g.n, g.c, pooled),
                      what + "channels-last p");
          expect_untouched(b_last.p, off, all_pooled, what + "channels-last p");
          expect_same(got.argmax, want.argmax, what + "argmax");
          if (chain.exact)
            expect_exact(got.p, ref.p, what + "p vs reference");
          else
            expect_rel(got.p, to_double(ref.p), 1e-5, what + "p vs reference");
          if (!max) continue;
          int64_t bad = 0;
          for (int64_t o = 0; o < all_pooled; ++o) {
            const int64_t at = pool_window_index(g, o / pooled, o % pooled, got.argmax[o]);
            if ((at < 0 || bits(ref.v[at]) != bits(got.y_at_max[o])) && ++bad <= 3)
              ADD_FAILURE() << what << "y_at_max wrong at pooled element " << o;
          }
          EXPECT_EQ(bad, 0) << what;
        }
      });
}

// The add_ form over two channels-last addends: P and a max pool's argmax as
// add_chain_pool_forward gives them from the packed addends, bit for bit (a
// residual join between channels-last activations).
TEST_P(ChannelsLastPoolCases, AddChannelsLastPoolIsAddChainPool) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(331 + GetParam());
  const PoolCase pc = channels_last_cases()[GetParam()];
  const gpu::ChainPoolGeometry& g = pc.g;
  const bool max = g.pool == gpu::ChainPool::Max;
  for (const ChainCase& chain : kChains) {
    const AddCase a = add_case(g, chain, rng);
    const int64_t count = a.count, pooled = a.pooled;
    ChainInputs last = a.in;
    last.y = to_channels_last(a.in.y, g.n, g.c, a.s);
    const std::vector<float> addend_last = to_channels_last(a.addend, g.n, g.c, a.s);
    for (size_t off : {size_t(0), size_t(1)}) {
      const std::string what = pc.label + " " + chain.label + " off " + std::to_string(off) + ": ";
      ChainBuffers want(a.in, g.c, count, pooled, 0, off), got(last, g.c, count, pooled, 0, off);
      DeviceBuffer<float> z(count + kSlack), z_last(count + kSlack);
      z.upload(a.addend, off);
      z_last.upload(addend_last, off);
      gpu::add_chain_pool_forward(want.y.get() + off, z.get() + off, want.chain, want.p.get() + off,
                                  max ? want.argmax.get() + off : nullptr, g, nullptr);
      gpu::add_channels_last_pool_forward(got.y.get() + off, z_last.get() + off, got.chain, got.p.get() + off,
                                          gpu::PLayout::Packed, max ? got.argmax.get() + off : nullptr, g, nullptr);
      const ChainResult w = want.result(max, false), r = got.result(max, false);
      expect_same(r.p, w.p, what + "p");
      expect_same(r.argmax, w.argmax, what + "argmax");
      ChainBuffers got_last(last, g.c, count, pooled, 0, off);
      gpu::add_channels_last_pool_forward(got_last.y.get() + off, z_last.get() + off, got_last.chain,
                                          got_last.p.get() + off, gpu::PLayout::ChannelsLast, nullptr, g, nullptr);
      expect_same(got_last.p.download(off, pooled), to_channels_last(w.p, g.n, g.c, pooled / g.n / g.c),
                  what + "channels-last p");
      expect_untouched(got_last.p, off, pooled, what + "channels-last p");
    }
  }
}

// ---- -inf through the chains ----

// Chains over a Y with -inf in it (every 5th element): relu (slope 0) maps it
// to zero, never 0 * -inf = NaN, in each policy of epilogue_chain.cuh that
// runs a leaky_relu: alone (LeakyChain), the headline's (LeakyScaleLeakyChain)
// and the program (ProgramChain). All exact. With a bias the buffers are
// aligned (the vector paths), without one offset (the scalar paths): half the
// runs of the tests above, for the sanitizers' time (tools/gpu_check.sh).
const std::vector<ChainCase> kMinusInfChains = {
    {"relu", {leaky(0.f)}},
    {"relu,scale,relu", {leaky(0.f), kScale, leaky(0.f)}},
    {"relu,scale,leaky.1,scale", {leaky(0.f), kScale, leaky(0.1f), kScale}},
};

ChainInputs minus_inf_chain_inputs(const std::vector<ChainStep>& steps, bool with_bias, int64_t n, int64_t c, int64_t s,
                                   int64_t pooled, std::mt19937& rng) {
  ChainInputs in = chain_inputs(steps, with_bias, n, c, s, pooled, rng);
  for (size_t i = 1; i < in.y.size(); i += 5) in.y[i] = -std::numeric_limits<float>::infinity();
  return in;
}

void expect_no_nan(const std::vector<float>& v, const std::string& what) {
  const auto nans = std::count_if(v.begin(), v.end(), [](float f) { return std::isnan(f); });
  EXPECT_EQ(nans, 0) << what << ": NaN from a -inf";
}

TEST_P(FusedEpilogueGeometries, FusedEpilogueReluOfMinusInfIsZero) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(321 + GetParam());
  const EpilogueGeometry& g = kEpilogueGeometries[GetParam()];
  for (bool with_bias : {true, false}) {
    for (const ChainCase& chain : kMinusInfChains) {
      const ChainInputs in = minus_inf_chain_inputs(chain.steps, with_bias, g.n, g.c, spatial_of(g), pooled_of(g), rng);
      const std::string what = describe(g) + "bias " + std::to_string(with_bias) + " " + chain.label + ": ";
      const cpu::PoolGeometry pg = pool_geometry(g);
      const ChainReference ref = chain_reference(in, g.n, g.c, spatial_of(g), &pg, true);
      const ChainResult r = run_tiled(in, g, with_bias ? 0 : 1);
      expect_no_nan(r.p, what + "p");
      expect_no_nan(r.dy, what + "dy");
      check_chain(in, ref, r, true, what);
      check_tiled_argmax(ref, g, r, what);
    }
  }
}

// The backward from a chain's codes (chain_pool_backward_from_codes) runs the
// chain's ops by its length: every length from 1 to 8, on every pool case
// (each backward path, rows of 4 and not, no pool), gives the bits of the
// backward from Y.
TEST_P(ChainPoolCases, BackwardFromCodesMatchesYForEveryChainLength) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(331 + GetParam());
  constexpr float kSlopes[gpu::kMaxChainOps] = {0.5f, 0.f, -0.3f, 1.7f, 2.f, -1.f, 0.25f, 0.9f};
  const PoolCase& pc = kPoolCases[GetParam()];
  const gpu::ChainPoolGeometry& g = pc.g;
  const auto out = gpu::chain_pool_output(g);
  const size_t count = size_t(g.n * g.c * g.y[0] * g.y[1] * g.y[2]),
               pooled = size_t(g.n * g.c * out[0] * out[1] * out[2]);
  const std::vector<float> y = random_floats(count, rng), bias = random_floats(size_t(g.c), rng);
  DeviceBuffer<float> y_dev(count), bias_dev(size_t(g.c)), p(pooled);
  DeviceBuffer<uint8_t> codes(count), argmax(pooled);
  y_dev.upload(y);
  bias_dev.upload(bias);
  const bool max = g.pool == gpu::ChainPool::Max;
  for (int ops = 1; ops <= gpu::kMaxChainOps; ++ops) {
    gpu::EpilogueChain chain;
    chain.ops = ops;
    for (int i = 0; i < ops; ++i) {
      chain.activation[i] = PointwiseOp::LeakyRelu;
      chain.param[i] = kSlopes[i];
    }
    SCOPED_TRACE(pc.label + ", " + std::to_string(ops) + " ops");
    ASSERT_TRUE(gpu::chain_codes_supported(chain));
    codes.upload(anvil::testing::expected_codes(y, bias, true, chain, g));
    if (max) gpu::chain_pool_forward(y_dev.get(), bias_dev.get(), chain, p.get(), argmax.get(), g, nullptr);
    anvil::testing::expect_backward_from_codes_matches(g, chain, bias_dev.get(), y_dev.get(), codes.get(),
                                                       max ? argmax.get() : nullptr, rng);
  }
}

TEST_P(ChainPoolCases, ChainPoolReluOfMinusInfIsZero) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(323 + GetParam());
  for_each_pool_chain({kPoolCases[GetParam()]}, kMinusInfChains, minus_inf_chain_inputs, rng,
                      [](const PoolCase& pc, const ChainCase&, bool with_bias, const ChainInputs& in,
                         const ChainReference& ref, const std::string& what) {
                        const ChainResult r = run_chain_pool(in, pc.g, with_bias ? 0 : 1);
                        expect_no_nan(r.p, what + "p");
                        expect_no_nan(r.dy, what + "dy");
                        check_chain(in, ref, r, true, what);
                      });
}

TEST_P(ChannelsLastPoolCases, ChannelsLastPoolReluOfMinusInfIsZero) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(325 + GetParam());
  for_each_pool_chain({channels_last_cases()[GetParam()]}, kMinusInfChains, minus_inf_chain_inputs, rng,
                      [](const PoolCase& pc, const ChainCase&, bool with_bias, const ChainInputs& in,
                         const ChainReference& ref, const std::string& what) {
                        const gpu::ChainPoolGeometry& g = pc.g;
                        const bool max = g.pool == gpu::ChainPool::Max;
                        const auto out = gpu::chain_pool_output(g);
                        const int64_t s = g.y[0] * g.y[1] * g.y[2];
                        const int64_t count = g.n * g.c * s, all_pooled = g.n * g.c * out[0] * out[1] * out[2];
                        ChainInputs last = in;
                        last.y = to_channels_last(in.y, g.n, g.c, s);
                        const size_t off = with_bias ? 0 : 1;
                        ChainBuffers b(last, g.c, count, all_pooled, 0, off);
                        gpu::channels_last_pool_forward(b.y.get() + off, b.bias_ptr(), b.chain, b.p.get() + off,
                                                        gpu::PLayout::Packed, max ? b.argmax.get() + off : nullptr,
                                                        max ? b.y_at_max.get() + off : nullptr, g, nullptr);
                        const std::vector<float> p = b.p.download(off, all_pooled);
                        expect_untouched(b.p, off, all_pooled, what + "p");
                        expect_no_nan(p, what + "p");
                        expect_exact(p, ref.p, what + "p vs reference");
                      });
}

// ---------------------------------------------------------------------------
// Large tensors: the vector paths over many blocks, 64-bit counts of blocks
// ---------------------------------------------------------------------------

TEST(CudaKernels, LargeTensors) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(601);
  const int64_t count = (int64_t(1) << 24) + 3;
  const std::vector<float> a = random_floats(count, rng), b = random_floats(count, rng);
  for (size_t off : {0, 1}) {
    const std::string what = describe({{"count", double(count)}, {"off", double(off)}});
    DeviceBuffer<float> ba(count + kSlack), bb(count + kSlack), by(count + kSlack);
    ba.upload(a, off);
    bb.upload(b, off);

    std::vector<float> want(count), y(count);
    for (PointwiseOp op : anvil::kAllPointwiseOps) {
      const std::string ow = what + anvil::pointwise_op_name(op) + " ";
      cpu::pointwise_forward<float>(op, 0.01f, a.data(), y.data(), count);
      by.poison();
      gpu::pointwise_forward(op, 0.01f, ba.get() + off, by.get() + off, count, nullptr);
      expect_ulp(by.download(off, count), y, kPointwiseForwardUlp, ow + "pointwise_forward");
      expect_untouched(by, off, count, ow + "pointwise_forward");

      // dy = b; x = a and y = op(a) agree, whichever of them the op reads.
      std::vector<float> acc = b;
      cpu::pointwise_backward<float>(op, 0.01f, a.data(), y.data(), b.data(), acc.data(), count, true);
      DeviceBuffer<float> bsaved(count + kSlack);
      bsaved.upload(y, off);
      by.upload(b, off);
      gpu::pointwise_backward(op, 0.01f, ba.get() + off, bsaved.get() + off, bb.get() + off, by.get() + off, count,
                              true, nullptr);
      expect_ulp(by.download(off, count), acc, 1, ow + "pointwise_backward accumulate");
    }

    cpu::add_forward<float>(a.data(), b.data(), want.data(), count);
    by.poison();
    gpu::add_forward({ba.get() + off, bb.get() + off}, by.get() + off, count, nullptr);
    expect_ulp(by.download(off, count), want, 1, what + "add_forward");

    // Per-channel: one channel of 2^24 + 3, and 3 x 7 x 798915 (not a multiple of 4).
    for (const ChannelDims& d : {ChannelDims{1, 1, count}, ChannelDims{3, 7, 798915}}) {
      const std::string cw = what + describe({{"n", double(d.n)}, {"c", double(d.c)}, {"spatial", double(d.spatial)}});
      const int64_t cn = d.n * d.c * d.spatial;
      const std::vector<float> head(a.begin(), a.begin() + cn), head_b(b.begin(), b.begin() + cn);
      const std::vector<float> m = random_floats(d.c, rng);
      std::vector<double> want_db(d.c), want_dm(d.c);
      cpu::bias_backward<double>(to_double(head).data(), want_db.data(), d.n, d.c, d.spatial);
      expect_rel(run_bias_backward(head, d, off), want_db, 1e-5, cw + "bias_backward");
      cpu::channel_scale_backward<double>(to_double(head_b).data(), to_double(m).data(), to_double(head).data(),
                                          nullptr, want_dm.data(), d.n, d.c, d.spatial, false);
      const ScaleBackwardResult r = run_channel_scale_backward(head_b, m, head, {}, d, off, off, true, false);
      expect_rel(r.dm, want_dm, 1e-5, cw + "channel_scale_backward dm");
      std::vector<float> want_dx(cn), dm_f(d.c);
      cpu::channel_scale_backward<float>(head_b.data(), m.data(), head.data(), want_dx.data(), dm_f.data(), d.n, d.c,
                                         d.spatial, false);
      expect_ulp(r.dx, want_dx, 1, cw + "channel_scale_backward dx");

      std::vector<float> want_bias = head;
      cpu::bias_forward<float>(want_bias.data(), m.data(), d.n, d.c, d.spatial);
      DeviceBuffer<float> bm(d.c);
      bm.upload(m);
      by.upload(head, off);
      gpu::bias_forward(by.get() + off, bm.get(), d.n, d.c, d.spatial, nullptr);
      expect_ulp(by.download(off, cn), want_bias, 1, cw + "bias_forward");
    }
  }
}

// ---------------------------------------------------------------------------
// Argument checks (no kernel runs)
// ---------------------------------------------------------------------------

TEST(CudaKernels, RejectsBadArguments) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  DeviceBuffer<float> f(4096);
  DeviceBuffer<uint8_t> u(4096);
  DeviceBuffer<unsigned char> scratch(1 << 16);
  float* x = f.get();
  for (PointwiseOp op : anvil::kAllPointwiseOps) {
    EXPECT_THROW(gpu::pointwise_forward(op, 0.1f, nullptr, x, 8, nullptr), anvil::Error);
    EXPECT_THROW(gpu::pointwise_forward(op, 0.1f, x, x, 0, nullptr), anvil::Error);
    EXPECT_THROW(gpu::pointwise_backward(op, 0.1f, x, x, nullptr, x, 8, false, nullptr), anvil::Error);
    // the tensor the backward reads is missing
    const bool uses_y = anvil::pointwise_backward_uses_output(op);
    EXPECT_THROW(gpu::pointwise_backward(op, 0.1f, uses_y ? x : nullptr, uses_y ? nullptr : x, x, x, 8, false, nullptr),
                 anvil::Error);
  }
  EXPECT_THROW(gpu::pointwise_forward(static_cast<PointwiseOp>(-1), 0.1f, x, x, 8, nullptr), std::invalid_argument);
  EXPECT_THROW(gpu::copy_or_accumulate(x, nullptr, 8, true, nullptr), anvil::Error);
  EXPECT_THROW(gpu::add_forward({x, x}, x, -1, nullptr), anvil::Error);
  EXPECT_THROW(gpu::bias_forward(x, x, 0, 1, 8, nullptr), anvil::Error);
  EXPECT_THROW(gpu::bias_backward(x, x, 1, 1, 8, nullptr, nullptr), anvil::Error);
  EXPECT_THROW(gpu::bias_backward_scratch_bytes(1, 0, 8), anvil::Error);
  EXPECT_THROW(gpu::channel_scale_backward_scratch_bytes(1, 0, 8), anvil::Error);
  EXPECT_THROW(gpu::channel_scale_forward(x, nullptr, x, 1, 1, 8, nullptr), anvil::Error);
  EXPECT_THROW(gpu::channel_scale_backward(x, x, x, x, nullptr, 1, 1, 8, false, scratch.get(), nullptr), anvil::Error);

  gpu::EpilogueChain chain;  // leaky -> scale
  chain.ops = 2;
  chain.param[0] = 0.1f;
  chain.is_scale[1] = true;
  chain.scale[1] = x;
  gpu::EpilogueChain no_multiplier = chain;
  no_multiplier.scale[1] = nullptr;
  gpu::EpilogueChain too_long;
  too_long.ops = gpu::kMaxChainOps + 1;
  gpu::ChainGrads grads;
  grads.dbias = x;
  const EpilogueGeometry too_big = epi_geometry(1, 1, {8, 8, 8}, {8, 8, 8});  // window 512
  const EpilogueGeometry not_divisible = epi_geometry(1, 1, {3, 4, 4}, {2, 2, 2});
  const EpilogueGeometry zero_c = epi_geometry(1, 0, {2, 2, 2}, {2, 2, 2});
  for (const EpilogueGeometry& g : {too_big, not_divisible, zero_c}) {
    EXPECT_THROW(gpu::fused_epilogue_forward(x, nullptr, chain, x, u.get(), x, g, nullptr), anvil::Error);
    EXPECT_THROW(gpu::fused_epilogue_backward_scratch_bytes(g, chain), anvil::Error);
  }
  const EpilogueGeometry ok = epi_geometry(1, 1, {2, 4, 4}, {2, 2, 2});
  EXPECT_THROW(gpu::fused_epilogue_forward(x, nullptr, chain, x, u.get(), nullptr, ok, nullptr), anvil::Error);
  EXPECT_THROW(gpu::fused_epilogue_forward(x, nullptr, no_multiplier, x, nullptr, nullptr, ok, nullptr), anvil::Error);
  EXPECT_THROW(gpu::fused_epilogue_forward(x, nullptr, too_long, x, nullptr, nullptr, ok, nullptr), anvil::Error);
  EXPECT_THROW(gpu::fused_epilogue_backward(x, u.get(), x, chain, x, grads, nullptr, ok, nullptr), anvil::Error);
  EXPECT_THROW(gpu::fused_epilogue_backward(x, nullptr, x, chain, x, grads, scratch.get(), ok, nullptr), anvil::Error);

  gpu::ChainPoolGeometry pool;
  pool.y = {1, 4, 4};
  pool.pool = gpu::ChainPool::Max;
  pool.k = {1, 2, 2};
  pool.stride = {1, 2, 2};
  EXPECT_THROW(gpu::chain_pool_forward(nullptr, nullptr, chain, x, u.get(), pool, nullptr), anvil::Error);
  EXPECT_THROW(gpu::chain_pool_backward(x, x, nullptr, nullptr, chain, x, false, grads, scratch.get(), pool, nullptr),
               anvil::Error);  // a max pool needs its argmax
  EXPECT_THROW(gpu::chain_pool_backward(x, x, nullptr, u.get(), chain, x, false, grads, nullptr, pool, nullptr),
               anvil::Error);  // no scratch for the sums
  EXPECT_THROW(gpu::chain_pool_backward(x, nullptr, nullptr, u.get(), chain, x, false, {}, nullptr, pool, nullptr),
               anvil::Error);  // y is needed for a chain
  EXPECT_THROW(gpu::chain_pool_backward(x, x, nullptr, u.get(), chain, x, false, grads, nullptr, pool, nullptr),
               anvil::Error);  // no scratch for the sums
  // Codes stand in for Y only for a chain of leaky_relus (this one has a multiplier), and must be given.
  EXPECT_THROW(
      gpu::chain_pool_backward_from_codes(x, u.get(), u.get(), chain, x, false, grads, scratch.get(), pool, nullptr),
      anvil::Error);
  gpu::EpilogueChain relu;
  relu.ops = 1;  // leaky_relu of slope 0
  EXPECT_THROW(
      gpu::chain_pool_backward_from_codes(x, nullptr, u.get(), relu, x, false, grads, scratch.get(), pool, nullptr),
      anvil::Error);
  EXPECT_THROW(
      gpu::chain_pool_backward_from_codes(x, u.get(), nullptr, relu, x, false, grads, scratch.get(), pool, nullptr),
      anvil::Error);  // a max pool needs its argmax
  EXPECT_THROW(gpu::add_chain_pool_forward(x, nullptr, chain, x, u.get(), pool, nullptr), anvil::Error);
  EXPECT_THROW(
      gpu::add_chain_pool_backward(x, x, nullptr, u.get(), chain, x, false, grads, scratch.get(), pool, nullptr),
      anvil::Error);  // y without its addend
  gpu::ChainPoolGeometry bad = pool;
  bad.pad = {0, 2, 0};  // more than half the window
  EXPECT_THROW(gpu::chain_pool_backward_scratch_bytes(bad, chain), anvil::Error);
  bad = pool;
  bad.y = {1290, 1290, 1290};  // a plane of y under 2^31 elements, but p's (1291^3, padded) over
  bad.k = {2, 2, 2};
  bad.stride = {1, 1, 1};
  bad.pad = {1, 1, 1};
  EXPECT_THROW(gpu::chain_pool_backward_scratch_bytes(bad, chain), anvil::Error);
  bad = pool;
  bad.k = {1, 16, 16};  // a max window of 256: the argmax byte has no room for "padding only"
  bad.y = {1, 16, 16};
  EXPECT_THROW(gpu::chain_pool_forward(x, nullptr, chain, x, u.get(), bad, nullptr), anvil::Error);
  bad = pool;
  bad.pool = gpu::ChainPool::None;  // no pool with a window
  EXPECT_THROW(gpu::chain_pool_forward(x, nullptr, chain, x, nullptr, bad, nullptr), anvil::Error);
  EXPECT_THROW(gpu::chain_pool_forward(
                   x, nullptr, chain, x, u.get(),
                   [] {
                     gpu::ChainPoolGeometry avg;
                     avg.pool = gpu::ChainPool::Avg;
                     return avg;
                   }(),
                   nullptr),
               anvil::Error);  // argmax only with a max pool
  const gpu::PLayout packed = gpu::PLayout::Packed;
  EXPECT_THROW(gpu::channels_last_pool_forward(nullptr, nullptr, chain, x, packed, u.get(), x, pool, nullptr),
               anvil::Error);
  EXPECT_THROW(gpu::channels_last_pool_forward(x, nullptr, chain, x, packed, nullptr, x, pool, nullptr),
               anvil::Error);  // y_at_max only with argmax
  EXPECT_THROW(gpu::channels_last_pool_forward(x, nullptr, chain, x, gpu::PLayout::ChannelsLast, u.get(), nullptr, pool,
                                               nullptr),
               anvil::Error);  // argmax only with a packed P
  EXPECT_THROW(gpu::channels_last_pool_forward(x, nullptr, no_multiplier, x, packed, nullptr, nullptr, pool, nullptr),
               anvil::Error);
  bad = pool;
  bad.c = int64_t(65536) * 32;  // more channel tiles than a grid's y
  EXPECT_NE(gpu::channels_last_pool_geometry_error(bad), nullptr);
  EXPECT_THROW(gpu::channels_last_pool_forward(x, nullptr, chain, x, packed, nullptr, nullptr, bad, nullptr),
               anvil::Error);
  EXPECT_THROW(gpu::add_channels_last_pool_forward(x, nullptr, chain, x, packed, nullptr, pool, nullptr), anvil::Error);
  EXPECT_THROW(gpu::add_channels_last_pool_forward(x, x, chain, x, packed, nullptr, bad, nullptr), anvil::Error);
  device_sync();  // nothing was launched, nothing failed
}

}  // namespace
