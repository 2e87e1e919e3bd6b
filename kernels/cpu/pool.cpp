// CPU reference max and average pooling over independent (n * c) planes, with
// PyTorch's conventions: max padding is -inf and the gradient goes to the first
// maximum in window order (NaN wins, as torch propagates it); the average
// divides by the full window volume (count_include_pad=True).
#include "kernels/cpu/pool.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "kernels/cpu/parallel.hpp"

namespace anvil::cpu {
namespace {

// The in-bounds part [lo, hi) of the window of output o along one axis.
struct Window {
  int64_t lo, hi;
};
Window window(const PoolGeometry& g, int axis, int64_t o) {
  const int64_t start = o * g.stride[axis] - g.pad[axis];
  return {std::max<int64_t>(start, 0), std::min<int64_t>(start + g.k[axis], g.in[axis])};
}

// Calls element(i) for the flat in-plane index i of every input element of
// output o's window, in window order (padding is skipped).
template <class Element> void for_each_in_window(const PoolGeometry& g, int64_t o, Element&& element) {
  const int64_t ow = o % g.out[2], oh = o / g.out[2] % g.out[1], od = o / g.out[2] / g.out[1];
  const Window wd = window(g, 0, od), wh = window(g, 1, oh), ww = window(g, 2, ow);
  for (int64_t d = wd.lo; d < wd.hi; ++d)
    for (int64_t h = wh.lo; h < wh.hi; ++h)
      for (int64_t w = ww.lo; w < ww.hi; ++w) element((d * g.in[1] + h) * g.in[2] + w);
}

// Flat in-plane index of the first maximum of output o, or -1 when the window
// holds no input element (only padding).
template <class T> int64_t argmax(const T* xp, const PoolGeometry& g, int64_t o) {
  int64_t best_i = -1;
  T best = -std::numeric_limits<T>::infinity();
  for_each_in_window(g, o, [&](int64_t i) {
    const T v = xp[i];
    // Strictly greater keeps the first of tied maxima; the first element
    // seeds the index so an all -inf window still routes its gradient.
    if (best_i < 0 || v > best || std::isnan(v)) {
      best = v;
      best_i = i;
    }
  });
  return best_i;
}

}  // namespace

template <class T> void max_pool_forward(const T* x, T* y, const PoolGeometry& g) {
  const int64_t iv = volume(g.in), ov = volume(g.out);
  ANVIL_OMP_PARALLEL_FOR_IF(g.planes * ov * volume(g.k))
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* xp = x + p * iv;
    T* yp = y + p * ov;
    for (int64_t o = 0; o < ov; ++o) {
      const int64_t i = argmax(xp, g, o);
      yp[o] = i < 0 ? -std::numeric_limits<T>::infinity() : xp[i];
    }
  }
}

template <class T> void max_pool_backward(const T* x, const T* dy, T* dx, const PoolGeometry& g, bool accumulate) {
  const int64_t iv = volume(g.in), ov = volume(g.out);
  // One thread per plane: overlapping windows add into the same dx element in
  // a fixed order.
  ANVIL_OMP_PARALLEL_FOR_IF(g.planes * ov * volume(g.k))
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* xp = x + p * iv;
    const T* dyp = dy + p * ov;
    T* dxp = dx + p * iv;
    if (!accumulate) std::fill(dxp, dxp + iv, T(0));
    for (int64_t o = 0; o < ov; ++o) {
      const int64_t i = argmax(xp, g, o);
      if (i >= 0) dxp[i] += dyp[o];
    }
  }
}

template <class T> void avg_pool_forward(const T* x, T* y, const PoolGeometry& g) {
  const int64_t iv = volume(g.in), ov = volume(g.out);
  const double divisor = static_cast<double>(volume(g.k));
  ANVIL_OMP_PARALLEL_FOR_IF(g.planes * ov * volume(g.k))
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* xp = x + p * iv;
    T* yp = y + p * ov;
    for (int64_t o = 0; o < ov; ++o) {
      double sum = 0.0;
      for_each_in_window(g, o, [&](int64_t i) { sum += xp[i]; });
      yp[o] = static_cast<T>(sum / divisor);
    }
  }
}

template <class T> void avg_pool_backward(const T* dy, T* dx, const PoolGeometry& g, bool accumulate) {
  const int64_t iv = volume(g.in), ov = volume(g.out);
  const T divisor = static_cast<T>(volume(g.k));
  ANVIL_OMP_PARALLEL_FOR_IF(g.planes * ov * volume(g.k))
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* dyp = dy + p * ov;
    T* dxp = dx + p * iv;
    if (!accumulate) std::fill(dxp, dxp + iv, T(0));
    for (int64_t o = 0; o < ov; ++o) {
      const T gv = dyp[o] / divisor;
      for_each_in_window(g, o, [&](int64_t i) { dxp[i] += gv; });
    }
  }
}

#define ANVIL_INSTANTIATE_POOL(T)                                                                              \
  template void max_pool_forward<T>(const T*, T*, const PoolGeometry&);                                        \
  template void max_pool_backward<T>(const T*, const T*, T*, const PoolGeometry&, bool);                       \
  template void avg_pool_forward<T>(const T*, T*, const PoolGeometry&);                                        \
  template void avg_pool_backward<T>(const T*, T*, const PoolGeometry&, bool);

ANVIL_INSTANTIATE_POOL(float)
ANVIL_INSTANTIATE_POOL(double)

}  // namespace anvil::cpu
