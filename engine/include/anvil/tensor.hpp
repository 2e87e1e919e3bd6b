// Shapes and host tensors: the currency between files, tests and the engine.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace anvil {

using Shape = std::vector<int64_t>;

int64_t numel(const Shape& shape);
std::string to_string(const Shape& shape);  // "(16, 32, 8)"

// A dense, row-major float32 tensor in host memory.
struct HostTensor {
  Shape shape;
  std::vector<float> data;

  HostTensor() = default;
  explicit HostTensor(Shape s) : shape(std::move(s)), data(static_cast<size_t>(numel(shape))) {}
  HostTensor(Shape s, std::vector<float> d) : shape(std::move(s)), data(std::move(d)) {}
  int64_t size() const { return static_cast<int64_t>(data.size()); }
};

}  // namespace anvil
