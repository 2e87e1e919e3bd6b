// NVTX ranges, so a profiler's timeline names each op's forward and backward
// and the step (the header-only NVTX 3 of the CUDA toolkit). Free when no
// profiler is attached; nothing at all in a build without CUDA.
#pragma once

#if ANVIL_WITH_CUDA
#include <nvtx3/nvToolsExt.h>
#endif

namespace anvil {

class NvtxRange {
 public:
#if ANVIL_WITH_CUDA
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
#else
  explicit NvtxRange(const char*) {}
#endif
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

}  // namespace anvil
