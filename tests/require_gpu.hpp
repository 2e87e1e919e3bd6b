// GPU tests skip visibly where there is no CUDA device. On the GPU machine
// tools/gpu_check.sh sets ANVIL_REQUIRE_GPU=1, which turns a skip into a failure,
// so a GPU test can never pass there by being skipped. Needs no CUDA header, so
// tests that run on either backend can use it in a build without CUDA.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "anvil/engine.hpp"

#define ANVIL_REQUIRE_GPU_OR_SKIP()                                                                        \
  do {                                                                                                     \
    if (!::anvil::cuda_available()) {                                                                      \
      const char* require_ = std::getenv("ANVIL_REQUIRE_GPU");                                             \
      if (require_ && std::strcmp(require_, "1") == 0) FAIL() << "ANVIL_REQUIRE_GPU=1 but no CUDA device"; \
      GTEST_SKIP() << "no CUDA device: GPU test skipped";                                                  \
    }                                                                                                      \
  } while (0)
