// The checking macros of the CUDA backend. Each evaluates its call once and
// throws anvil::Error carrying the file, the line, the call and the library's
// own error string (ggml's CUDA_CHECK_GEN, tiny-cuda-nn's CUDA_CHECK_THROW).
// They never exit(), so tests and embedding programs can catch them.
#pragma once

#include "anvil/error.hpp"

namespace anvil::cuda_check {
[[noreturn]] void throw_cuda_error(int code, const char* call, const char* file, int line);
[[noreturn]] void throw_cudnn_error(int code, const char* call, const char* file, int line);
void print_cuda_error(int code, const char* call, const char* file, int line);
}  // namespace anvil::cuda_check

#define ANVIL_CUDA_CHECK(call)                                                                               \
  do {                                                                                                       \
    const int anvil_status_ = static_cast<int>(call);                                                        \
    if (anvil_status_ != 0) ::anvil::cuda_check::throw_cuda_error(anvil_status_, #call, __FILE__, __LINE__); \
  } while (0)

#define ANVIL_CUDNN_CHECK(call)                                                                               \
  do {                                                                                                        \
    const int anvil_status_ = static_cast<int>(call);                                                         \
    if (anvil_status_ != 0) ::anvil::cuda_check::throw_cudnn_error(anvil_status_, #call, __FILE__, __LINE__); \
  } while (0)

// For destructors, which must not throw: prints the same message to stderr.
#define ANVIL_CUDA_CHECK_PRINT(call)                                                                         \
  do {                                                                                                       \
    const int anvil_status_ = static_cast<int>(call);                                                        \
    if (anvil_status_ != 0) ::anvil::cuda_check::print_cuda_error(anvil_status_, #call, __FILE__, __LINE__); \
  } while (0)

// After every kernel launch.
#define ANVIL_CHECK_LAUNCH() ANVIL_CUDA_CHECK(cudaGetLastError())
