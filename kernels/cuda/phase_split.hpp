// Helpers of the phase-split transposed convolution. A stride-s transposed
// conv (or a strided conv's input gradient, the same relation) is s^d
// stride-1 sub-convolutions, one per output phase; they run as ONE cuDNN
// forward convolution with s^d times the output channels over the input
// padded by (front, end), each phase reading the combined output at its
// shift. These kernels pad the input, build the combined weight from
// PyTorch's (Cin, Cout, k...) weight, fold the combined weight's gradient
// back, crop the padded input gradient, and interleave the phases of the
// combined output into the transposed conv's output.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstdint>

namespace anvil::cuda {

constexpr int kMaxPhaseTaps = 64;  // s * kp per dim
constexpr int kMaxKernel = 16;     // original kernel per dim

struct PhaseSplitGeometry {
  int64_t n = 1, cin = 1, cout = 1;
  std::array<int64_t, 3> in{1, 1, 1};     // x spatial
  std::array<int64_t, 3> front{0, 0, 0};  // x_pad = x shifted by front, then zeros to in + front + end
  std::array<int64_t, 3> end{0, 0, 0};
  std::array<int64_t, 3> k{1, 1, 1};    // original kernel
  std::array<int64_t, 3> kp{1, 1, 1};   // combined kernel
  std::array<int64_t, 3> s{1, 1, 1};    // stride = phases per dim
  std::array<int64_t, 3> q{1, 1, 1};    // the phase grid: outputs per phase, ceil(out / s) (the pooled dims)
  std::array<int64_t, 3> out{1, 1, 1};  // the transposed conv's output: o = q * s + r < out
  // shift[d][r]: phase r's output q sits at q + shift in the combined output, which spans
  // in + front + end - kp + 1 >= q + max shift. All 0 where the phases are aligned, as anvil's
  // tensor-core kernels need; shifted phases need fewer combined taps (cuDNN's path).
  int8_t shift[3][kMaxPhaseTaps] = {};
  // tap[d][r * kp[d] + u]: the original tap of phase r at combined tap u, or -1.
  int8_t tap[3][kMaxPhaseTaps] = {};
  // phase_of[d][t], tap_of[d][t]: where original tap t sits (each tap serves exactly one phase).
  int8_t phase_of[3][kMaxKernel] = {}, combined_of[3][kMaxKernel] = {};
};

// The phases: stride^d.
inline int64_t phase_count(const PhaseSplitGeometry& g) { return g.s[0] * g.s[1] * g.s[2]; }

// Whether every phase reads the combined output at the same point (no shifts).
inline bool phases_aligned(const PhaseSplitGeometry& g) {
  for (int d = 0; d < 3; ++d)
    for (int64_t r = 0; r < g.s[d]; ++r)
      if (g.shift[d][r] != 0) return false;
  return true;
}

// x (n, cin, in) -> x_pad (n, cin, in + front + end); round_tf32 rounds each
// value to the nearest TF32 (for the TF32 kernels, which then skip it).
void phase_pad_input(const float* x, float* x_pad, bool round_tf32, const PhaseSplitGeometry& g, cudaStream_t stream);
// w (cin, cout, k) -> wp (phases * cout, cin, kp); phase-major output channels.
void phase_build_weight(const float* w, float* wp, const PhaseSplitGeometry& g, cudaStream_t stream);
// dwp (phases * cout, cin, kp) -> dw (cin, cout, k); overwrites dw.
void phase_fold_weight_grad(const float* dwp, float* dw, const PhaseSplitGeometry& g, cudaStream_t stream);
// dx_pad -> dx (the unpadded window), overwriting or accumulating.
void phase_crop_input_grad(const float* dx_pad, float* dx, bool accumulate, const PhaseSplitGeometry& g,
                           cudaStream_t stream);
// The combined output of the stride-1 conv, yp (n, phases * cout, in + front + end - kp + 1),
// -> y (n, cout, out): y[.., q * s + r] = yp[.., r * cout + c, q + shift of r], overwriting or accumulating.
void phase_interleave_output(const float* yp, float* y, bool accumulate, const PhaseSplitGeometry& g,
                             cudaStream_t stream);

}  // namespace anvil::cuda
