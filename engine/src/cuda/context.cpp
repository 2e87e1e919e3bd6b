#include "engine/src/cuda/context.hpp"

#include "anvil/engine.hpp"
#include "anvil/plan.hpp"
#include "engine/src/cuda/check.hpp"

namespace anvil {

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
  cudaGetLastError();  // a missing driver leaves a sticky error; clear it
  return count;
}

bool cuda_available() { return cuda_device_count() > 0; }

std::string cuda_device_name() {
  int device = 0;
  cudaDeviceProp prop{};
  ANVIL_CUDA_CHECK(cudaGetDevice(&device));
  ANVIL_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

std::string cudnn_version() {
  const size_t v = cudnnGetVersion();  // major * 10000 + minor * 100 + patch
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

size_t device_memory_used() {
  size_t free_bytes = 0, total = 0;
  ANVIL_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
  return total - free_bytes;
}

CudaContext::CudaContext() {
  if (!cuda_available()) throw Error("no CUDA device is available (use --device cpu)");
  ANVIL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  ANVIL_CUDNN_CHECK(cudnnCreate(&cudnn_));
  ANVIL_CUDNN_CHECK(cudnnSetStream(cudnn_, stream_));
}

CudaContext::~CudaContext() {
  if (cudnn_) cudnnDestroy(cudnn_);
  if (stream_) ANVIL_CUDA_CHECK_PRINT(cudaStreamDestroy(stream_));
}

size_t CudaContext::free_memory() const {
  size_t free_bytes = 0, total = 0;
  ANVIL_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
  return free_bytes;
}

void* CudaContext::allocate(size_t bytes) {
  void* ptr = nullptr;
  const cudaError_t err = cudaMalloc(&ptr, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_bytes = 0, total = 0;
    cudaMemGetInfo(&free_bytes, &total);
    throw Error("out of device memory: needs " + gib(bytes) + ", the device has " + gib(free_bytes) + " free");
  }
  ANVIL_CUDA_CHECK(err);
  ++counters_.allocations;
  return ptr;
}

void CudaContext::release(void* ptr) {
  if (!ptr) return;
  ANVIL_CUDA_CHECK_PRINT(cudaFree(ptr));
  ++counters_.frees;
}

void CudaContext::synchronize() {
  ANVIL_CUDA_CHECK(cudaStreamSynchronize(stream_));
  ++counters_.synchronizations;
}

void CudaContext::copy_to_device(void* dst, const void* src, size_t bytes) {
  ANVIL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
}

void CudaContext::copy_on_device(void* dst, const void* src, size_t bytes) {
  ANVIL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void CudaContext::copy_to_host(void* dst, const void* src, size_t bytes) {
  ANVIL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  synchronize();
}

double CudaContext::time_ms(const std::function<void()>& work) {
  cudaEvent_t start = nullptr, stop = nullptr;
  ANVIL_CUDA_CHECK(cudaEventCreate(&start));
  ANVIL_CUDA_CHECK(cudaEventCreate(&stop));
  float ms = 0;
  try {
    ANVIL_CUDA_CHECK(cudaEventRecord(start, stream_));
    work();
    ANVIL_CUDA_CHECK(cudaEventRecord(stop, stream_));
    ANVIL_CUDA_CHECK(cudaEventSynchronize(stop));
    ++counters_.synchronizations;
    ANVIL_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  } catch (...) {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    throw;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms;
}

}  // namespace anvil
