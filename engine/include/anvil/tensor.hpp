// Shapes and host tensors: the currency between files, tests and the engine.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace anvil {

using Shape = std::vector<int64_t>;

int64_t numel(const Shape& shape);          // InputError for a negative dimension or a count beyond int64
std::string to_string(const Shape& shape);  // "(16, 32, 8)"

// The limits a network is validated against, so that no size computed from
// it can overflow: every dimension, channel count, kernel, stride, padding
// and dilation at most kMaxDimension; every tensor (activations and each
// parameter) and the parameters together at most kMaxTensorElements.
constexpr int64_t kMaxDimension = (int64_t(1) << 31) - 1;
constexpr int64_t kMaxTensorElements = int64_t(1) << 40;
// Whether shape has at most kMaxTensorElements elements (computed without overflow).
bool within_element_limit(const Shape& shape);

// A dense, row-major float32 tensor in host memory.
struct HostTensor {
  Shape shape;
  std::vector<float> data;

  HostTensor() = default;
  // Zeros of shape s: InputError as numel for a shape that has no count, Error where the host
  // memory available cannot hold it (refused before any page is touched, not left to the OOM killer).
  explicit HostTensor(Shape s);
  HostTensor(Shape s, std::vector<float> d) : shape(std::move(s)), data(std::move(d)) {}
  int64_t size() const { return static_cast<int64_t>(data.size()); }
};

// Whether t's values fill its shape exactly: no negative dimension, and as many
// values as the dimensions' product (computed without overflow).
bool holds_shape(const HostTensor& t);

}  // namespace anvil
