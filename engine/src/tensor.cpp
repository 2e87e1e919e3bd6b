#include "anvil/tensor.hpp"

#include <algorithm>
#include <cstdint>
#include <string>

#include "anvil/error.hpp"
#include "engine/src/run/host_memory.hpp"

namespace anvil {

HostTensor::HostTensor(Shape s) : shape(std::move(s)) {
  const int64_t count = numel(shape);
  const std::string what = "out of host memory: a tensor of shape " + to_string(shape);
  if (uint64_t(count) > SIZE_MAX / sizeof(float)) throw Error(what + " takes 2^64 bytes or more");
  const size_t bytes = size_t(count) * sizeof(float);
  if (bytes >= kUncheckedHostBytes)
    if (const auto why = beyond_host_memory(bytes)) throw Error(what + " takes " + *why);
  try {
    data.resize(size_t(count));
  } catch (const std::exception&) {  // bad_alloc, or length_error past the vector's max_size
    throw Error(what + " (" + std::to_string(bytes) + " bytes) could not be allocated");
  }
}

int64_t numel(const Shape& shape) {
  if (std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d < 0; }))
    throw InputError("shape " + to_string(shape) + " has a negative dimension");
  // A zero makes the count zero, whatever the other sizes (whose product may not fit 64 bits).
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  int64_t n = 1;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(n, d, &n))
      throw InputError("shape " + to_string(shape) + " has more than 2^63 elements");
  return n;
}

bool within_element_limit(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d != 0 && n > kMaxTensorElements / d) return false;
    n *= d;
  }
  return true;
}

bool holds_shape(const HostTensor& t) {
  if (std::any_of(t.shape.begin(), t.shape.end(), [](int64_t d) { return d < 0; })) return false;
  const uint64_t count = t.data.size();
  if (count == 0) return std::find(t.shape.begin(), t.shape.end(), 0) != t.shape.end();
  uint64_t n = 1;  // stays <= count, so never overflows
  for (int64_t d : t.shape) {
    if (d == 0 || static_cast<uint64_t>(d) > count / n) return false;
    n *= static_cast<uint64_t>(d);
  }
  return n == count;
}

std::string to_string(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

}  // namespace anvil
