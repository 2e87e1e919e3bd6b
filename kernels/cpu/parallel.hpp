// Shared by the CPU reference kernels: OpenMP only for enough work. Small
// calls (tests, tiny layers) would pay more in thread wake-up than they save,
// badly so on a loaded 2-core machine.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>

#if defined(_OPENMP)
#include <omp.h>
#define ANVIL_PRAGMA(x) _Pragma(#x)
#define ANVIL_OMP_PARALLEL_FOR_IF(work) \
  ANVIL_PRAGMA(omp parallel for schedule(static) if ((work) >= (int64_t{1} << 16)))
#else
#define ANVIL_OMP_PARALLEL_FOR_IF(work)
#endif

namespace anvil::cpu {

// A loop's work for ANVIL_OMP_PARALLEL_FOR_IF: the product of its extents,
// held at int64's largest where it would overflow (a huge pool window over a
// large output is valid, and only needs to count as "enough").
inline int64_t work_of(std::initializer_list<int64_t> extents) {
  int64_t work = 1;
  for (int64_t e : extents)
    if (__builtin_mul_overflow(work, e, &work)) return std::numeric_limits<int64_t>::max();
  return work;
}

// No exception may leave an OpenMP region (it would end the process), so the
// per-thread scratch a loop needs is allocated before it: thread_slot()
// indexes a buffer of max_threads() slots.
inline int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_slot() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace anvil::cpu
