// CPU reference convolution: the relation
//   B[n, cb, o] = sum_{ca, t} A[n, ca, o * stride - pad + t * dilation] * W[cb, ca, t]
// evaluated three ways (forward, adjoint in A, adjoint in W). Every output
// plane is owned by one thread and summed in a fixed order, so results are
// deterministic whatever the thread count. Sums run in double.
#include "kernels/cpu/conv.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cpu/parallel.hpp"

namespace anvil::cpu {
namespace {

// Output indices o in [lo, hi) with 0 <= o * stride + offset < in_size and o < out_size,
// so the inner loops need no bounds checks.
struct Range {
  int64_t lo, hi;
};
Range valid_range(int64_t in_size, int64_t out_size, int64_t stride, int64_t offset) {
  int64_t lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  int64_t last = in_size - 1 - offset;  // o * stride <= last
  int64_t hi = last < 0 ? 0 : std::min(out_size, last / stride + 1);
  return {lo, std::max(lo, hi)};
}

// Per-kernel-tap ranges along D, H, W, shared by the three passes.
struct Tap {
  Range r[3];
  int64_t off[3];
};
Tap make_tap(const ConvGeometry& g, int64_t td, int64_t th, int64_t tw) {
  Tap tap{};
  const int64_t t[3] = {td, th, tw};
  for (int i = 0; i < 3; ++i) {
    tap.off[i] = t[i] * g.dilation[i] - g.pad[i];
    tap.r[i] = valid_range(g.a[i], g.b[i], g.stride[i], tap.off[i]);
  }
  return tap;
}

}  // namespace

template <class T> void conv_forward(const T* a, const T* w, T* b, const ConvGeometry& g, bool accumulate) {
  const int64_t av = volume(g.a), bv = volume(g.b), kv = volume(g.k);
  const int64_t aH = g.a[1], aW = g.a[2], bH = g.b[1], bW = g.b[2];
  const int64_t sD = g.stride[0], sH = g.stride[1], sW = g.stride[2];
  const int64_t planes = g.n * g.cb;
  std::vector<double> scratch(static_cast<size_t>(max_threads()) * static_cast<size_t>(bv));
  ANVIL_OMP_PARALLEL_FOR_IF(g.n * g.ca * g.cb * bv * kv)
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t n = p / g.cb, cb = p % g.cb;
    T* bp = b + p * bv;
    // Start from the existing output so accumulation rounds once.
    double* const acc = scratch.data() + thread_slot() * bv;
    for (int64_t i = 0; i < bv; ++i) acc[i] = accumulate ? double(bp[i]) : 0.0;
    for (int64_t ca = 0; ca < g.ca; ++ca) {
      const T* ap = a + (n * g.ca + ca) * av;
      const T* wp = w + (cb * g.ca + ca) * kv;
      for (int64_t td = 0; td < g.k[0]; ++td)
        for (int64_t th = 0; th < g.k[1]; ++th)
          for (int64_t tw = 0; tw < g.k[2]; ++tw) {
            const double wv = wp[(td * g.k[1] + th) * g.k[2] + tw];
            const Tap tap = make_tap(g, td, th, tw);
            for (int64_t od = tap.r[0].lo; od < tap.r[0].hi; ++od)
              for (int64_t oh = tap.r[1].lo; oh < tap.r[1].hi; ++oh) {
                const T* arow = ap + ((od * sD + tap.off[0]) * aH + oh * sH + tap.off[1]) * aW;
                double* brow = acc + (od * bH + oh) * bW;
                for (int64_t ow = tap.r[2].lo; ow < tap.r[2].hi; ++ow) brow[ow] += wv * arow[ow * sW + tap.off[2]];
              }
          }
    }
    for (int64_t i = 0; i < bv; ++i) bp[i] = static_cast<T>(acc[i]);
  }
}

template <class T> void conv_backward_data(const T* db, const T* w, T* da, const ConvGeometry& g, bool accumulate) {
  const int64_t av = volume(g.a), bv = volume(g.b), kv = volume(g.k);
  const int64_t aH = g.a[1], aW = g.a[2], bH = g.b[1], bW = g.b[2];
  const int64_t sD = g.stride[0], sH = g.stride[1], sW = g.stride[2];
  const int64_t planes = g.n * g.ca;
  std::vector<double> scratch(static_cast<size_t>(max_threads()) * static_cast<size_t>(av));
  ANVIL_OMP_PARALLEL_FOR_IF(g.n * g.ca * g.cb * bv * kv)
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t n = p / g.ca, ca = p % g.ca;
    T* dap = da + p * av;
    // Start from the existing gradient so accumulation rounds once.
    double* const acc = scratch.data() + thread_slot() * av;
    for (int64_t i = 0; i < av; ++i) acc[i] = accumulate ? double(dap[i]) : 0.0;
    // Scatter each dB plane through each tap; this thread owns the whole dA plane.
    for (int64_t cb = 0; cb < g.cb; ++cb) {
      const T* bp = db + (n * g.cb + cb) * bv;
      const T* wp = w + (cb * g.ca + ca) * kv;
      for (int64_t td = 0; td < g.k[0]; ++td)
        for (int64_t th = 0; th < g.k[1]; ++th)
          for (int64_t tw = 0; tw < g.k[2]; ++tw) {
            const double wv = wp[(td * g.k[1] + th) * g.k[2] + tw];
            const Tap tap = make_tap(g, td, th, tw);
            for (int64_t od = tap.r[0].lo; od < tap.r[0].hi; ++od)
              for (int64_t oh = tap.r[1].lo; oh < tap.r[1].hi; ++oh) {
                double* arow = acc + ((od * sD + tap.off[0]) * aH + oh * sH + tap.off[1]) * aW;
                const T* brow = bp + (od * bH + oh) * bW;
                for (int64_t ow = tap.r[2].lo; ow < tap.r[2].hi; ++ow) arow[ow * sW + tap.off[2]] += wv * brow[ow];
              }
          }
    }
    for (int64_t i = 0; i < av; ++i) dap[i] = static_cast<T>(acc[i]);
  }
}

template <class T> void conv_backward_filter(const T* a, const T* db, T* dw, const ConvGeometry& g) {
  const int64_t av = volume(g.a), bv = volume(g.b), kv = volume(g.k);
  const int64_t aH = g.a[1], aW = g.a[2], bH = g.b[1], bW = g.b[2];
  const int64_t sD = g.stride[0], sH = g.stride[1], sW = g.stride[2];
  const int64_t pairs = g.cb * g.ca;
  ANVIL_OMP_PARALLEL_FOR_IF(g.n * g.ca * g.cb * bv * kv)
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t cb = p / g.ca, ca = p % g.ca;
    T* wp = dw + p * kv;
    for (int64_t td = 0; td < g.k[0]; ++td)
      for (int64_t th = 0; th < g.k[1]; ++th)
        for (int64_t tw = 0; tw < g.k[2]; ++tw) {
          const Tap tap = make_tap(g, td, th, tw);
          double sum = 0.0;
          for (int64_t n = 0; n < g.n; ++n) {
            const T* ap = a + (n * g.ca + ca) * av;
            const T* bp = db + (n * g.cb + cb) * bv;
            for (int64_t od = tap.r[0].lo; od < tap.r[0].hi; ++od)
              for (int64_t oh = tap.r[1].lo; oh < tap.r[1].hi; ++oh) {
                const T* arow = ap + ((od * sD + tap.off[0]) * aH + oh * sH + tap.off[1]) * aW;
                const T* brow = bp + (od * bH + oh) * bW;
                for (int64_t ow = tap.r[2].lo; ow < tap.r[2].hi; ++ow)
                  sum += static_cast<double>(brow[ow]) * arow[ow * sW + tap.off[2]];
              }
          }
          wp[(td * g.k[1] + th) * g.k[2] + tw] = static_cast<T>(sum);
        }
  }
}

#define ANVIL_INSTANTIATE_CONV(T)                                                                              \
  template void conv_forward<T>(const T*, const T*, T*, const ConvGeometry&, bool);                            \
  template void conv_backward_data<T>(const T*, const T*, T*, const ConvGeometry&, bool);                      \
  template void conv_backward_filter<T>(const T*, const T*, T*, const ConvGeometry&);

ANVIL_INSTANTIATE_CONV(float)
ANVIL_INSTANTIATE_CONV(double)

}  // namespace anvil::cpu
