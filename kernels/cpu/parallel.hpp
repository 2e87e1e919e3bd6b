// Shared by the CPU reference kernels: OpenMP only for enough work. Small
// calls (tests, tiny layers) would pay more in thread wake-up than they save,
// badly so on a loaded 2-core machine.
#pragma once

#include <cstdint>

#if defined(_OPENMP)
#define ANVIL_PRAGMA(x) _Pragma(#x)
#define ANVIL_OMP_PARALLEL_FOR_IF(work) \
  ANVIL_PRAGMA(omp parallel for schedule(static) if ((work) >= (int64_t{1} << 16)))
#else
#define ANVIL_OMP_PARALLEL_FOR_IF(work)
#endif
