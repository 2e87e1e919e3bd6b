// Errors and the checking macros used everywhere in anvil.
//
// Two kinds of failure reach the user: bad input (a malformed network, a wrong
// shape, a bad file: exit code 2) and runtime failures (CUDA, cuDNN, out of
// memory: exit code 1). Both are exceptions, never exit(), so tests and
// embedding programs can catch them.
#pragma once

#include <stdexcept>
#include <string>

namespace anvil {

// A runtime failure: a library call failed or the device ran out of memory.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The user's input is wrong: JSON, shapes, tensor files, command-line values.
class InputError : public Error {
 public:
  using Error::Error;
};

namespace detail {
[[noreturn]] void throw_cuda_error(int code, const char* call, const char* file, int line);
[[noreturn]] void throw_cudnn_error(int code, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas_error(int code, const char* call, const char* file, int line);
void print_cuda_error(int code, const char* call, const char* file, int line);
}  // namespace detail

}  // namespace anvil

// Each macro evaluates its call once and throws anvil::Error carrying the file,
// the line, the call and the library's own error string.
#define ANVIL_CUDA_CHECK(call)                                                          \
  do {                                                                                  \
    const int anvil_status_ = static_cast<int>(call);                                   \
    if (anvil_status_ != 0) ::anvil::detail::throw_cuda_error(anvil_status_, #call, __FILE__, __LINE__); \
  } while (0)

#define ANVIL_CUDNN_CHECK(call)                                                         \
  do {                                                                                  \
    const int anvil_status_ = static_cast<int>(call);                                   \
    if (anvil_status_ != 0) ::anvil::detail::throw_cudnn_error(anvil_status_, #call, __FILE__, __LINE__); \
  } while (0)

#define ANVIL_CUBLAS_CHECK(call)                                                        \
  do {                                                                                  \
    const int anvil_status_ = static_cast<int>(call);                                   \
    if (anvil_status_ != 0) ::anvil::detail::throw_cublas_error(anvil_status_, #call, __FILE__, __LINE__); \
  } while (0)

// For destructors, which must not throw: prints the same message to stderr.
#define ANVIL_CUDA_CHECK_PRINT(call)                                                    \
  do {                                                                                  \
    const int anvil_status_ = static_cast<int>(call);                                   \
    if (anvil_status_ != 0) ::anvil::detail::print_cuda_error(anvil_status_, #call, __FILE__, __LINE__); \
  } while (0)

// After every kernel launch.
#define ANVIL_CHECK_LAUNCH() ANVIL_CUDA_CHECK(cudaGetLastError())
