// CPU reference convolution: the relation
//   B[n, cb, o] = sum_{ca, t} A[n, ca, o * stride - pad + t * dilation] * W[cb, ca, t]
// evaluated three ways (forward, adjoint in A, adjoint in W). Every output
// element is summed by one thread in a fixed order (channels, then taps), so
// results are deterministic whatever the thread count. Sums run in double.
// The forward and the adjoint in A sum their output planes a box of at most
// kChunk elements at a time: the double accumulators a thread needs stay that
// size (and in its cache) however large a plane is.
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

// Elements of an output plane a thread sums at once (128 KiB of doubles).
constexpr int64_t kChunk = int64_t{1} << 14;

// floor(a / b) for b > 0 and any a.
int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// The o in r with lo <= o * stride + offset < hi.
Range preimage(Range r, int64_t stride, int64_t offset, int64_t lo, int64_t hi) {
  const int64_t first = std::max(r.lo, floor_div(lo - offset + stride - 1, stride));
  const int64_t end = std::min(r.hi, floor_div(hi - offset + stride - 1, stride));
  return {first, std::max(first, end)};
}

bool empty(const Range (&r)[3]) { return r[0].lo == r[0].hi || r[1].lo == r[1].hi || r[2].lo == r[2].hi; }

// A plane of dims t cut into boxes of at most kChunk elements, each a
// contiguous run of the plane: whole (H, W) slabs, else whole rows of one
// slab, else pieces of one row. Box c spans lo[i] <= index < hi[i] along each
// axis and the elements [first, end) of the plane.
struct Chunks {
  Dims3 t, box, count;
  explicit Chunks(const Dims3& dims) : t(dims) {
    const int64_t slab = t[1] * t[2];
    box = slab <= kChunk   ? Dims3{kChunk / slab, t[1], t[2]}
          : t[2] <= kChunk ? Dims3{1, kChunk / t[2], t[2]}
                           : Dims3{1, 1, kChunk};
    for (int i = 0; i < 3; ++i) {
      box[i] = std::min(box[i], t[i]);
      count[i] = (t[i] + box[i] - 1) / box[i];
    }
  }
  int64_t total() const { return count[0] * count[1] * count[2]; }
  int64_t elements() const { return box[0] * box[1] * box[2]; }
  struct Box {
    int64_t lo[3], hi[3], first, end;
  };
  Box at(int64_t c) const {
    Box b{};
    const int64_t index[3] = {c / (count[1] * count[2]), c / count[2] % count[1], c % count[2]};
    for (int i = 0; i < 3; ++i) {
      b.lo[i] = index[i] * box[i];
      b.hi[i] = std::min(t[i], b.lo[i] + box[i]);
    }
    b.first = (b.lo[0] * t[1] + b.lo[1]) * t[2] + b.lo[2];
    b.end = ((b.hi[0] - 1) * t[1] + b.hi[1] - 1) * t[2] + b.hi[2];
    return b;
  }
};

}  // namespace

// Each of out's planes (dims each) summed a box at a time into one thread's
// double accumulators, which start from out where accumulating (so the sum
// rounds once) and are stored back: add(plane, box, acc) adds plane's sums
// over the box's elements i into acc[i - box.first].
template <class T, class Add>
void sum_by_boxes(T* out, int64_t planes, const Dims3& dims, bool accumulate, int64_t work, const Add& add) {
  const int64_t plane_size = volume(dims);
  if (plane_size == 0) return;  // nothing to write (and no box to cut)
  const Chunks chunks(dims);
  const int64_t items = planes * chunks.total();
  std::vector<double> scratch(static_cast<size_t>(max_threads()) * static_cast<size_t>(chunks.elements()));
  ANVIL_OMP_PARALLEL_FOR_IF(work)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t plane = item / chunks.total();
    const Chunks::Box box = chunks.at(item % chunks.total());
    T* op = out + plane * plane_size;
    double* const acc = scratch.data() + thread_slot() * chunks.elements();
    for (int64_t i = box.first; i < box.end; ++i) acc[i - box.first] = accumulate ? double(op[i]) : 0.0;
    add(plane, box, acc);
    for (int64_t i = box.first; i < box.end; ++i) op[i] = static_cast<T>(acc[i - box.first]);
  }
}

// For each tap of W's slice wp (one cb, one ca), in order, the rows (od, oh)
// of B and the range of ow whose elements lie in the box: B's own elements
// (the box is in B: the forward), or those whose A element does (the box is
// in A: the adjoint). row(od, oh, ow_range, tap, weight) sums one row.
template <class T, class Row>
void for_each_tap_row(const ConvGeometry& g, const T* wp, const Chunks::Box& box, bool box_in_a, const Row& row) {
  for (int64_t td = 0; td < g.k[0]; ++td)
    for (int64_t th = 0; th < g.k[1]; ++th)
      for (int64_t tw = 0; tw < g.k[2]; ++tw) {
        const double wv = wp[(td * g.k[1] + th) * g.k[2] + tw];
        const Tap tap = make_tap(g, td, th, tw);
        Range r[3];
        for (int i = 0; i < 3; ++i)
          r[i] = box_in_a ? preimage(tap.r[i], g.stride[i], tap.off[i], box.lo[i], box.hi[i])
                          : preimage(tap.r[i], 1, 0, box.lo[i], box.hi[i]);
        if (empty(r)) continue;  // (and no pointer is formed outside the arrays)
        for (int64_t od = r[0].lo; od < r[0].hi; ++od)
          for (int64_t oh = r[1].lo; oh < r[1].hi; ++oh) row(od, oh, r[2], tap, wv);
      }
}

template <class T>
void conv_forward(const T* a, const T* w, T* b, const ConvGeometry& g, bool accumulate) {
  const int64_t av = volume(g.a), bv = volume(g.b), kv = volume(g.k);
  const int64_t aH = g.a[1], aW = g.a[2], bH = g.b[1], bW = g.b[2];
  const int64_t sD = g.stride[0], sH = g.stride[1], sW = g.stride[2];
  sum_by_boxes(b, g.n * g.cb, g.b, accumulate, work_of({g.n, g.ca, g.cb, bv, kv}),
               [&](int64_t p, const Chunks::Box& box, double* acc) {
                 const int64_t n = p / g.cb, cb = p % g.cb;
                 for (int64_t ca = 0; ca < g.ca; ++ca) {
                   const T* ap = a + (n * g.ca + ca) * av;
                   for_each_tap_row(g, w + (cb * g.ca + ca) * kv, box, false,
                                    [&](int64_t od, int64_t oh, const Range& ow, const Tap& tap, double wv) {
                                      const T* arow = ap + (((od * sD + tap.off[0]) * aH + oh * sH + tap.off[1]) * aW +
                                                            ow.lo * sW + tap.off[2]);
                                      double* brow = acc + ((od * bH + oh) * bW + ow.lo - box.first);
                                      for (int64_t i = 0; i < ow.hi - ow.lo; ++i) brow[i] += wv * arow[i * sW];
                                    });
                 }
               });
}

template <class T>
void conv_backward_data(const T* db, const T* w, T* da, const ConvGeometry& g, bool accumulate) {
  const int64_t bv = volume(g.b), kv = volume(g.k);
  const int64_t aH = g.a[1], aW = g.a[2], bH = g.b[1], bW = g.b[2];
  const int64_t sD = g.stride[0], sH = g.stride[1], sW = g.stride[2];
  sum_by_boxes(da, g.n * g.ca, g.a, accumulate, work_of({g.n, g.ca, g.cb, bv, kv}),
               [&](int64_t p, const Chunks::Box& box, double* acc) {
                 const int64_t n = p / g.ca, ca = p % g.ca;
                 // Scatter each dB plane through each tap into this box of the dA plane.
                 for (int64_t cb = 0; cb < g.cb; ++cb) {
                   const T* bp = db + (n * g.cb + cb) * bv;
                   for_each_tap_row(g, w + (cb * g.ca + ca) * kv, box, true,
                                    [&](int64_t od, int64_t oh, const Range& ow, const Tap& tap, double wv) {
                                      double* arow = acc + (((od * sD + tap.off[0]) * aH + oh * sH + tap.off[1]) * aW +
                                                            ow.lo * sW + tap.off[2] - box.first);
                                      const T* brow = bp + (od * bH + oh) * bW + ow.lo;
                                      for (int64_t i = 0; i < ow.hi - ow.lo; ++i) arow[i * sW] += wv * brow[i];
                                    });
                 }
               });
}

template <class T>
void conv_backward_filter(const T* a, const T* db, T* dw, const ConvGeometry& g) {
  const int64_t av = volume(g.a), bv = volume(g.b), kv = volume(g.k);
  const int64_t aH = g.a[1], aW = g.a[2], bH = g.b[1], bW = g.b[2];
  const int64_t sD = g.stride[0], sH = g.stride[1], sW = g.stride[2];
  const int64_t pairs = g.cb * g.ca;
  ANVIL_OMP_PARALLEL_FOR_IF(work_of({g.n, g.ca, g.cb, bv, kv}))
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

#define ANVIL_INSTANTIATE_CONV(T)                                                         \
  template void conv_forward<T>(const T*, const T*, T*, const ConvGeometry&, bool);       \
  template void conv_backward_data<T>(const T*, const T*, T*, const ConvGeometry&, bool); \
  template void conv_backward_filter<T>(const T*, const T*, T*, const ConvGeometry&);

ANVIL_INSTANTIATE_CONV(float)
ANVIL_INSTANTIATE_CONV(double)

}  // namespace anvil::cpu
