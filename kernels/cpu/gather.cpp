#include "kernels/cpu/gather.hpp"

#include <algorithm>
#include <cstring>

namespace anvil::cpu {

int64_t valid_rows(int64_t count, int64_t cursor, int64_t batch) {
  return std::max<int64_t>(0, std::min(batch, count - cursor * batch));
}

void gather_batch(const float* src, int64_t row_floats, const int64_t* order, int64_t count, int64_t cursor,
                  int64_t batch, float* dst) {
  const int64_t valid = valid_rows(count, cursor, batch);
  const size_t row_bytes = static_cast<size_t>(row_floats) * sizeof(float);
  for (int64_t b = 0; b < valid; ++b)
    std::memcpy(dst + b * row_floats, src + order[cursor * batch + b] * row_floats, row_bytes);
  std::fill(dst + valid * row_floats, dst + batch * row_floats, 0.f);
}

}  // namespace anvil::cpu
