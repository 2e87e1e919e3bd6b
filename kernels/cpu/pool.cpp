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

// Flat in-plane index of the first maximum of output (od, oh, ow), or -1 when
// the window holds no input element (only padding).
template <class T>
int64_t argmax(const T* xp, const PoolGeometry& g, int64_t od, int64_t oh, int64_t ow) {
  const Window wd = window(g, 0, od), wh = window(g, 1, oh), ww = window(g, 2, ow);
  int64_t best_i = -1;
  T best = -std::numeric_limits<T>::infinity();
  for (int64_t d = wd.lo; d < wd.hi; ++d)
    for (int64_t h = wh.lo; h < wh.hi; ++h)
      for (int64_t w = ww.lo; w < ww.hi; ++w) {
        const int64_t i = (d * g.in[1] + h) * g.in[2] + w;
        const T v = xp[i];
        // Strictly greater keeps the first of tied maxima; the first element
        // seeds the index so an all -inf window still routes its gradient.
        if (best_i < 0 || v > best || std::isnan(v)) {
          best = v;
          best_i = i;
        }
      }
  return best_i;
}

}  // namespace

template <class T>
void max_pool_forward(const T* x, T* y, const PoolGeometry& g) {
  const int64_t iv = volume(g.in), ov = volume(g.out);
  ANVIL_OMP_PARALLEL_FOR_IF(work_of({g.planes, ov, g.k[0], g.k[1], g.k[2]}))
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* xp = x + p * iv;
    T* yp = y + p * ov;
    for (int64_t od = 0; od < g.out[0]; ++od)
      for (int64_t oh = 0; oh < g.out[1]; ++oh)
        for (int64_t ow = 0; ow < g.out[2]; ++ow) {
          const int64_t i = argmax(xp, g, od, oh, ow);
          yp[(od * g.out[1] + oh) * g.out[2] + ow] = i < 0 ? -std::numeric_limits<T>::infinity() : xp[i];
        }
  }
}

template <class T>
void max_pool_backward(const T* x, const T* dy, T* dx, const PoolGeometry& g, bool accumulate) {
  const int64_t iv = volume(g.in), ov = volume(g.out);
  // One thread per plane: overlapping windows add into the same dx element in
  // a fixed order.
  ANVIL_OMP_PARALLEL_FOR_IF(work_of({g.planes, ov, g.k[0], g.k[1], g.k[2]}))
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* xp = x + p * iv;
    const T* dyp = dy + p * ov;
    T* dxp = dx + p * iv;
    if (!accumulate) std::fill(dxp, dxp + iv, T(0));
    for (int64_t od = 0; od < g.out[0]; ++od)
      for (int64_t oh = 0; oh < g.out[1]; ++oh)
        for (int64_t ow = 0; ow < g.out[2]; ++ow) {
          const int64_t i = argmax(xp, g, od, oh, ow);
          if (i >= 0) dxp[i] += dyp[(od * g.out[1] + oh) * g.out[2] + ow];
        }
  }
}

template <class T>
void avg_pool_forward(const T* x, T* y, const PoolGeometry& g) {
  const int64_t iv = volume(g.in), ov = volume(g.out);
  const double divisor = static_cast<double>(volume(g.k));
  ANVIL_OMP_PARALLEL_FOR_IF(work_of({g.planes, ov, g.k[0], g.k[1], g.k[2]}))
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* xp = x + p * iv;
    T* yp = y + p * ov;
    for (int64_t od = 0; od < g.out[0]; ++od)
      for (int64_t oh = 0; oh < g.out[1]; ++oh)
        for (int64_t ow = 0; ow < g.out[2]; ++ow) {
          const Window wd = window(g, 0, od), wh = window(g, 1, oh), ww = window(g, 2, ow);
          double sum = 0.0;
          for (int64_t d = wd.lo; d < wd.hi; ++d)
            for (int64_t h = wh.lo; h < wh.hi; ++h)
              for (int64_t w = ww.lo; w < ww.hi; ++w) sum += xp[(d * g.in[1] + h) * g.in[2] + w];
          yp[(od * g.out[1] + oh) * g.out[2] + ow] = static_cast<T>(sum / divisor);
        }
  }
}

template <class T>
void avg_pool_backward(const T* dy, T* dx, const PoolGeometry& g, bool accumulate) {
  const int64_t iv = volume(g.in), ov = volume(g.out);
  const T divisor = static_cast<T>(volume(g.k));
  ANVIL_OMP_PARALLEL_FOR_IF(work_of({g.planes, ov, g.k[0], g.k[1], g.k[2]}))
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* dyp = dy + p * ov;
    T* dxp = dx + p * iv;
    if (!accumulate) std::fill(dxp, dxp + iv, T(0));
    for (int64_t od = 0; od < g.out[0]; ++od)
      for (int64_t oh = 0; oh < g.out[1]; ++oh)
        for (int64_t ow = 0; ow < g.out[2]; ++ow) {
          const Window wd = window(g, 0, od), wh = window(g, 1, oh), ww = window(g, 2, ow);
          const T gv = dyp[(od * g.out[1] + oh) * g.out[2] + ow] / divisor;
          for (int64_t d = wd.lo; d < wd.hi; ++d)
            for (int64_t h = wh.lo; h < wh.hi; ++h)
              for (int64_t w = ww.lo; w < ww.hi; ++w) dxp[(d * g.in[1] + h) * g.in[2] + w] += gv;
        }
  }
}

#define ANVIL_INSTANTIATE_POOL(T)                                                        \
  template void max_pool_forward<T>(const T*, T*, const PoolGeometry&);                  \
  template void max_pool_backward<T>(const T*, const T*, T*, const PoolGeometry&, bool); \
  template void avg_pool_forward<T>(const T*, T*, const PoolGeometry&);                  \
  template void avg_pool_backward<T>(const T*, T*, const PoolGeometry&, bool);

ANVIL_INSTANTIATE_POOL(float)
ANVIL_INSTANTIATE_POOL(double)

}  // namespace anvil::cpu
