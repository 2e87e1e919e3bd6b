// The CUDA context: one stream, and the cuDNN handle bound to it.
// Every device allocation and host synchronisation goes through here and is
// counted, so a test can prove that a train step allocates and syncs nothing.
#pragma once

#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstddef>
#include <cstdint>
#include <functional>

#include "anvil/engine.hpp"

namespace anvil {

class CudaContext {
 public:
  CudaContext();
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  cudaStream_t stream() const { return stream_; }
  cudnnHandle_t cudnn() const { return cudnn_; }

  void* allocate(size_t bytes);  // throws Error naming the size on out-of-memory
  size_t free_memory() const;    // bytes free on the device now
  void release(void* ptr);
  void synchronize();
  void copy_to_device(void* dst, const void* src, size_t bytes);  // async on the stream
  void copy_to_host(void* dst, const void* src, size_t bytes);    // synchronises
  void copy_on_device(void* dst, const void* src, size_t bytes);  // device to device, async on the stream
  double time_ms(const std::function<void()>& work);  // CUDA events on the stream around the work; synchronises

  using Counters = Engine::DeviceCounters;
  const Counters& counters() const { return counters_; }

 private:
  cudaStream_t stream_ = nullptr;
  cudnnHandle_t cudnn_ = nullptr;
  Counters counters_;
};

}  // namespace anvil
