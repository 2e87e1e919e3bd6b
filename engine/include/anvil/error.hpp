// The two kinds of failure that reach the user: bad input (a malformed
// network, a wrong shape, a bad file: exit code 2) and runtime failures (CUDA,
// cuDNN, out of memory: exit code 1). Both are exceptions, never exit(), so
// tests and embedding programs can catch them.
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

}  // namespace anvil
