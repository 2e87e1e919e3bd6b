#include "engine/src/cuda/check.hpp"

#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstdio>
#include <string>

namespace anvil::cuda_check {

static std::string where(const char* call, const char* file, int line) {
  return std::string(file) + ":" + std::to_string(line) + ": " + call + ": ";
}

void throw_cuda_error(int code, const char* call, const char* file, int line) {
  const auto err = static_cast<cudaError_t>(code);
  cudaGetLastError();  // clear a sticky launch error so later calls report their own
  throw Error(where(call, file, line) + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

void throw_cudnn_error(int code, const char* call, const char* file, int line) {
  throw Error(where(call, file, line) + cudnnGetErrorString(static_cast<cudnnStatus_t>(code)));
}

void print_cuda_error(int code, const char* call, const char* file, int line) {
  std::fprintf(stderr, "anvil: %s%s\n", where(call, file, line).c_str(),
               cudaGetErrorString(static_cast<cudaError_t>(code)));
}

}  // namespace anvil::cuda_check
