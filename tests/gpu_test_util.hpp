// Device buffers and random data for the GPU tests (which skip visibly
// without a GPU: tests/require_gpu.hpp).
#pragma once

#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "anvil/engine.hpp"
#include "engine/src/cuda/check.hpp"
#include "kernels/tf32.hpp"
#include "tests/require_gpu.hpp"

namespace anvil::testing {

inline void device_sync() {
  ANVIL_CUDA_CHECK(cudaDeviceSynchronize());
  ANVIL_CUDA_CHECK(cudaGetLastError());
}

// A device allocation of `count` T, freed on scope exit.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count) : count_(std::max<size_t>(count, 1)) {
    ANVIL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), count_ * sizeof(T)));
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) ANVIL_CUDA_CHECK_PRINT(cudaFree(ptr_));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return ptr_; }
  size_t size() const { return count_; }

  // Every byte 0xFF: NaN for floats.
  void poison() {
    ANVIL_CUDA_CHECK(cudaMemset(ptr_, 0xFF, count_ * sizeof(T)));
    device_sync();
  }
  void upload(const std::vector<T>& host, size_t offset = 0) {
    if (offset + host.size() > count_) throw std::out_of_range("DeviceBuffer::upload");
    device_sync();
    ANVIL_CUDA_CHECK(cudaMemcpy(ptr_ + offset, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download(size_t offset, size_t n) const {
    if (offset + n > count_) throw std::out_of_range("DeviceBuffer::download");
    device_sync();
    std::vector<T> host(n);
    ANVIL_CUDA_CHECK(cudaMemcpy(host.data(), ptr_ + offset, n * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  std::vector<T> download_all() const { return download(0, count_); }

 private:
  T* ptr_ = nullptr;
  size_t count_;
};

// x rounded to TF32 as the tensor-core kernels take it (cvt.rna.tf32.f32: nearest, ties away).
inline float tf32(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  bits = tf32_round_bits(bits);
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// ||got - want|| / ||want||.
inline double rel_l2(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

// Fresh uniform [-1, 1] floats, never 0.
inline std::vector<float> random_floats(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) {
    do {
      x = dist(rng);
    } while (x == 0.f);
  }
  return v;
}

}  // namespace anvil::testing
