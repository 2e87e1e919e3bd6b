// Shared pieces of anvil's tensor-core kernels: the m16n8k8 TF32 MMA,
// cp.async copies, and the walk over the phase grid in steps of 32 positions
// along its innermost dim.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/phase_split.hpp"

namespace anvil::cuda {

constexpr int kGridStep = 32;  // positions per step of the phase grid, along its innermost dim

// The phase grid of a phase-split conv as the tensor-core kernels walk it.
struct PhaseGridDims {
  int cout, cin, kpv, kp1, kp2, rows;  // kpv: combined taps; rows: x rows per channel (kp0 * kp1)
  int x0, x1, x2;                      // x_pad spatial dims
  int q0, q1, q2, steps_per_row;       // the phase grid
  int64_t steps;                       // steps in all (images included)
};

inline PhaseGridDims phase_grid_dims(const PhaseSplitGeometry& g) {
  PhaseGridDims d{};
  d.cout = int(g.cout);
  d.cin = int(g.cin);
  d.kpv = int(g.kp[0] * g.kp[1] * g.kp[2]);
  d.kp1 = int(g.kp[1]);
  d.kp2 = int(g.kp[2]);
  d.rows = int(g.kp[0] * g.kp[1]);
  d.x0 = int(g.in[0] + g.front[0] + g.end[0]);
  d.x1 = int(g.in[1] + g.front[1] + g.end[1]);
  d.x2 = int(g.in[2] + g.front[2] + g.end[2]);
  d.q0 = int(g.q[0]);  // x_pad may reach past q + kp - 1 (padded for the shifted form too)
  d.q1 = int(g.q[1]);
  d.q2 = int(g.q[2]);
  d.steps_per_row = int(detail::ceil_div(d.q2, kGridStep));
  d.steps = g.n * d.q0 * d.q1 * d.steps_per_row;
  return d;
}

// Fragments (g = lane / 4, t = lane % 4): a = A(g, t), A(g+8, t), A(g, t+4),
// A(g+8, t+4); b = B(t, g), B(t+4, g); c = C(g, 2t), C(g, 2t+1), C(g+8, 2t), C(g+8, 2t+1).
__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Four 8x8 matrices of 16-bit elements = four 8-row x 4-word tiles: lane l
// gives the address of row l % 8 of tile l / 8 (16-byte aligned), and r[i]
// is word l % 4 of row l / 4 of tile i, which is a TF32 fragment's layout.
__device__ __forceinline__ void load_matrix_x4(uint32_t (&r)[4], const void* row) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// 4-byte asynchronous copy; zero-fills the destination when !valid.
__device__ __forceinline__ void copy_async(void* dst, const void* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 4 : 0));
}
// 16-byte asynchronous copy (both addresses 16-byte aligned), past L1; zero-fills the destination when !valid.
__device__ __forceinline__ void copy_async16(void* dst, const void* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// The "memory" clobber keeps the compiler from moving shared-memory reads of the copies above the wait.
template <int kPending>
__device__ __forceinline__ void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// A count of steps as digits of the grid's mixed radix, for StepCursor::advance.
struct StepStride {
  int w0, qh, qd, image;
};
inline StepStride step_stride(int64_t steps, const PhaseGridDims& d) {
  const int64_t rows = steps / d.steps_per_row;
  return {int(steps % d.steps_per_row) * kGridStep, int(rows % d.q1), int(rows / d.q1 % d.q0),
          int(rows / (int64_t(d.q1) * d.q0))};
}

// Where step s of the phase grid starts: (image, qd, qh, w0), w0 a multiple
// of kStep (Dims: a PhaseGridDims). dy_index is the step's first element of
// a (n, cout, q) tensor at channel 0, x_index of x_pad at channel 0. Steps
// advance with counters, not divisions.
struct StepCursor {
  static constexpr int kStep = kGridStep;
  int w0 = 0, qh = 0, qd = 0, image = 0;
  template <class Dims>
  __device__ void seek(int s, const Dims& d) {  // int: callers keep the step count below 2^31
    w0 = s % d.steps_per_row * kStep;
    const int row = s / d.steps_per_row;
    qh = row % d.q1;
    qd = row / d.q1 % d.q0;
    image = row / (d.q1 * d.q0);
  }
  template <class Dims>
  __device__ void next(const Dims& d) {
    if ((w0 += kStep) < d.q2) return;
    w0 = 0;
    if (++qh < d.q1) return;
    qh = 0;
    if (++qd < d.q0) return;
    qd = 0;
    ++image;
  }
  // Moves on by a stride: digit-wise adds with one carry each (every digit stays below its radix).
  template <class Dims>
  __device__ void advance(const StepStride& by, const Dims& d) {
    w0 += by.w0;
    const int carry_h = w0 >= d.q2;
    w0 -= carry_h * d.steps_per_row * kStep;
    qh += by.qh + carry_h;
    const int carry_d = qh >= d.q1;
    qh -= carry_d * d.q1;
    qd += by.qd + carry_d;
    const int carry_i = qd >= d.q0;
    qd -= carry_i * d.q0;
    image += by.image + carry_i;
  }
  template <class Dims>
  __device__ int dy_index(const Dims& d) const {
    return (image * d.cout * d.q0 + qd) * d.q1 * d.q2 + qh * d.q2 + w0;
  }
  template <class Dims>
  __device__ int x_index(const Dims& d) const {
    return ((image * d.cin * d.x0 + qd) * d.x1 + qh) * d.x2 + w0;
  }
};

}  // namespace anvil::cuda
