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

// Calls row(t, a_row, b_row, lo, hi) for every kernel tap t (its index in a
// W plane) and every row of B positions that read A through it: B position
// b_row + ow pairs with A position a_row + ow * stride[2], for ow in [lo, hi)
// (offsets within one plane; A positions outside A are skipped). The order is
// fixed: taps, then B's rows in order, shared by the three passes.
template <class Row> void for_each_tap_row(const ConvGeometry& g, Row&& row) {
  const int64_t aH = g.a[1], aW = g.a[2], bH = g.b[1], bW = g.b[2];
  for (int64_t td = 0; td < g.k[0]; ++td)
    for (int64_t th = 0; th < g.k[1]; ++th)
      for (int64_t tw = 0; tw < g.k[2]; ++tw) {
        const int64_t t[3] = {td, th, tw};
        Range r[3];
        int64_t off[3];
        for (int i = 0; i < 3; ++i) {
          off[i] = t[i] * g.dilation[i] - g.pad[i];
          r[i] = valid_range(g.a[i], g.b[i], g.stride[i], off[i]);
        }
        const int64_t tap = (td * g.k[1] + th) * g.k[2] + tw;
        for (int64_t od = r[0].lo; od < r[0].hi; ++od)
          for (int64_t oh = r[1].lo; oh < r[1].hi; ++oh)
            row(tap, ((od * g.stride[0] + off[0]) * aH + oh * g.stride[1] + off[1]) * aW + off[2],
                (od * bH + oh) * bW, r[2].lo, r[2].hi);
      }
}

}  // namespace

template <class T> void conv_forward(const T* a, const T* w, T* b, const ConvGeometry& g, bool accumulate) {
  const int64_t av = volume(g.a), bv = volume(g.b), kv = volume(g.k), sW = g.stride[2];
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
      for_each_tap_row(g, [&](int64_t tap, int64_t a_row, int64_t b_row, int64_t lo, int64_t hi) {
        const double wv = wp[tap];
        for (int64_t ow = lo; ow < hi; ++ow) acc[b_row + ow] += wv * ap[a_row + ow * sW];
      });
    }
    for (int64_t i = 0; i < bv; ++i) bp[i] = static_cast<T>(acc[i]);
  }
}

template <class T> void conv_backward_data(const T* db, const T* w, T* da, const ConvGeometry& g, bool accumulate) {
  const int64_t av = volume(g.a), bv = volume(g.b), kv = volume(g.k), sW = g.stride[2];
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
      for_each_tap_row(g, [&](int64_t tap, int64_t a_row, int64_t b_row, int64_t lo, int64_t hi) {
        const double wv = wp[tap];
        for (int64_t ow = lo; ow < hi; ++ow) acc[a_row + ow * sW] += wv * bp[b_row + ow];
      });
    }
    for (int64_t i = 0; i < av; ++i) dap[i] = static_cast<T>(acc[i]);
  }
}

template <class T> void conv_backward_filter(const T* a, const T* db, T* dw, const ConvGeometry& g) {
  const int64_t av = volume(g.a), bv = volume(g.b), kv = volume(g.k), sW = g.stride[2];
  const int64_t pairs = g.cb * g.ca;
  std::vector<double> scratch(static_cast<size_t>(max_threads()) * static_cast<size_t>(kv));
  ANVIL_OMP_PARALLEL_FOR_IF(g.n * g.ca * g.cb * bv * kv)
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t cb = p / g.ca, ca = p % g.ca;
    // One sum per tap, each over the images in order and then B's rows in order.
    double* const sums = scratch.data() + thread_slot() * kv;
    std::fill(sums, sums + kv, 0.0);
    for (int64_t n = 0; n < g.n; ++n) {
      const T* ap = a + (n * g.ca + ca) * av;
      const T* bp = db + (n * g.cb + cb) * bv;
      for_each_tap_row(g, [&](int64_t tap, int64_t a_row, int64_t b_row, int64_t lo, int64_t hi) {
        double sum = sums[tap];
        for (int64_t ow = lo; ow < hi; ++ow) sum += static_cast<double>(bp[b_row + ow]) * ap[a_row + ow * sW];
        sums[tap] = sum;
      });
    }
    T* wp = dw + p * kv;
    for (int64_t t = 0; t < kv; ++t) wp[t] = static_cast<T>(sums[t]);
  }
}

#define ANVIL_INSTANTIATE_CONV(T)                                                                              \
  template void conv_forward<T>(const T*, const T*, T*, const ConvGeometry&, bool);                            \
  template void conv_backward_data<T>(const T*, const T*, T*, const ConvGeometry&, bool);                      \
  template void conv_backward_filter<T>(const T*, const T*, T*, const ConvGeometry&);

ANVIL_INSTANTIATE_CONV(float)
ANVIL_INSTANTIATE_CONV(double)

}  // namespace anvil::cpu
