// The pointwise activations: one functor each, shared by the CPU reference
// (kernels/cpu/pointwise) and the CUDA kernels (kernels/cuda/pointwise), which
// dispatch through ANVIL_POINTWISE_OPS. A new activation is a functor here plus
// an entry in that list; both backends and the generic tests pick it up.
//
// A functor has, for T = float and double:
//   static T forward(T x, T param)
//   static T backward(T x, T y, T dy, T param)   dx for y = forward(x)
//   kBackwardUsesOutput: backward reads y (true) or x (false); the other
//                        argument is passed as 0 and must not be used
//   kName: the layer type in network JSON
// param is the slope for leaky_relu, unused by the others.
#pragma once

#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <stdexcept>

#include "kernels/host_device.hpp"

// X(Name): PointwiseOp::Name, computed by the functor pointwise::Name.
#define ANVIL_POINTWISE_OPS(X) \
  X(LeakyRelu)                 \
  X(Sigmoid)                   \
  X(Tanh)

namespace anvil {

namespace pointwise {

// float and double overloads, callable on host and device.
ANVIL_HD inline float exp_of(float x) { return ::expf(x); }
ANVIL_HD inline double exp_of(double x) { return ::exp(x); }
ANVIL_HD inline float tanh_of(float x) { return ::tanhf(x); }
ANVIL_HD inline double tanh_of(double x) { return ::tanh(x); }

// y = x > 0 ? x : slope * x, but for 0 * -inf (NaN): relu (slope 0) maps -inf
// to zero as torch.relu does, to -slope, the zero slope * x is for every finite
// x < 0. A NaN x stays NaN; other slopes' results are slope * x, bit for bit.
// The CPU reference and every CUDA path (the pointwise kernels, each epilogue
// chain policy) compute it here.
struct LeakyRelu {
  static constexpr const char* kName = "leaky_relu";
  static constexpr bool kBackwardUsesOutput = false;
  template <class T>
  ANVIL_HD static T forward(T x, T slope) {
    if (x > T(0)) return x;
    return slope == T(0) && x == -std::numeric_limits<T>::infinity() ? -slope : slope * x;
  }
  // Strictly x > 0: at x == 0 the gradient is slope * dy, as in PyTorch.
  template <class T>
  ANVIL_HD static T backward(T x, T, T dy, T slope) {
    return x > T(0) ? dy : slope * dy;
  }
};

// torch.sigmoid. exp only ever of -|x|: it cannot overflow, and the result
// keeps its relative precision far into the negative range.
struct Sigmoid {
  static constexpr const char* kName = "sigmoid";
  static constexpr bool kBackwardUsesOutput = true;
  template <class T>
  ANVIL_HD static T forward(T x, T) {
    if (x >= T(0)) return T(1) / (T(1) + exp_of(-x));
    const T e = exp_of(x);
    return e / (T(1) + e);
  }
  template <class T>
  ANVIL_HD static T backward(T, T y, T dy, T) {
    return dy * y * (T(1) - y);
  }
};

// torch.tanh.
struct Tanh {
  static constexpr const char* kName = "tanh";
  static constexpr bool kBackwardUsesOutput = true;
  template <class T>
  ANVIL_HD static T forward(T x, T) {
    return tanh_of(x);
  }
  template <class T>
  ANVIL_HD static T backward(T, T y, T dy, T) {
    return dy * (T(1) - y * y);
  }
};

// Op's backward from the one saved tensor it reads (x or y, per kBackwardUsesOutput).
template <class Op, class T>
ANVIL_HD T backward_from_saved(T saved, T dy, T param) {
  if constexpr (Op::kBackwardUsesOutput) {
    return Op::backward(T(0), saved, dy, param);
  } else {
    return Op::backward(saved, T(0), dy, param);
  }
}

}  // namespace pointwise

enum class PointwiseOp {
#define ANVIL_POINTWISE_ENUM(Name) Name,
  ANVIL_POINTWISE_OPS(ANVIL_POINTWISE_ENUM)
#undef ANVIL_POINTWISE_ENUM
};

// Every op, in list order.
constexpr PointwiseOp kAllPointwiseOps[] = {
#define ANVIL_POINTWISE_ENTRY(Name) PointwiseOp::Name,
    ANVIL_POINTWISE_OPS(ANVIL_POINTWISE_ENTRY)
#undef ANVIL_POINTWISE_ENTRY
};

// Calls f(pointwise::Name{}) for op's functor and returns what it returns.
template <class F>
decltype(auto) visit_pointwise_op(PointwiseOp op, F&& f) {
  switch (op) {
#define ANVIL_POINTWISE_CASE(Name) \
  case PointwiseOp::Name: return f(pointwise::Name{});
    ANVIL_POINTWISE_OPS(ANVIL_POINTWISE_CASE)
#undef ANVIL_POINTWISE_CASE
  }
  throw std::invalid_argument("anvil: invalid PointwiseOp");
}

inline const char* pointwise_op_name(PointwiseOp op) {
  return visit_pointwise_op(op, [](auto functor) { return decltype(functor)::kName; });
}

inline bool pointwise_backward_uses_output(PointwiseOp op) {
  return visit_pointwise_op(op, [](auto functor) { return decltype(functor)::kBackwardUsesOutput; });
}

// The op whose kName is `name`, if any.
inline std::optional<PointwiseOp> pointwise_op_from_name(const char* name) {
  for (PointwiseOp op : kAllPointwiseOps)
    if (std::strcmp(pointwise_op_name(op), name) == 0) return op;
  return std::nullopt;
}

}  // namespace anvil
