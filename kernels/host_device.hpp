// ANVIL_HD marks a function that both the C++ and the CUDA kernels call, so a
// formula has one definition: __host__ __device__ under nvcc, nothing otherwise.
#pragma once

#if defined(__CUDACC__)
#define ANVIL_HD __host__ __device__
#else
#define ANVIL_HD
#endif
