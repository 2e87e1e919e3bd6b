// CUDA minibatch gather (see gather.hpp): the y blocks stride over the rows
// (a grid has at most 65535 of them), the x blocks over a row's floats, as
// float4 where every row is 16-byte aligned.
#include "kernels/cuda/gather.hpp"

#include "kernels/cuda/common.cuh"

namespace anvil::cuda {
namespace {

__device__ __forceinline__ int64_t valid_rows(int64_t count, int64_t first, int64_t batch) {
  return max(int64_t(0), min(batch, count - first));
}

template <class V>
__global__ void gather_batch_kernel(const V* src, int64_t row_items, const int64_t* order, int64_t count,
                                    const int64_t* cursor, int64_t batch, V* dst) {
  const int64_t first = *cursor * batch, valid = valid_rows(count, first, batch);
  for (int64_t row = blockIdx.y; row < batch; row += gridDim.y) {
    const bool exists = row < valid;
    const V* from = exists ? src + order[first + row] * row_items : nullptr;
    V* to = dst + row * row_items;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < row_items;
         i += int64_t(gridDim.x) * blockDim.x)
      to[i] = exists ? from[i] : V{};
  }
}

__global__ void finish_batch_kernel(int64_t* cursor, int64_t count, int64_t batch, int64_t elements_per_row,
                                    int64_t* valid_elements) {
  const int64_t first = *cursor * batch;
  *valid_elements = valid_rows(count, first, batch) * elements_per_row;
  *cursor += 1;
}

}  // namespace

void gather_batch(const float* src, int64_t row_floats, const int64_t* order, int64_t count, const int64_t* cursor,
                  int64_t batch, float* dst, cudaStream_t stream) {
  constexpr const char* op = "gather_batch";
  detail::require(src != nullptr && order != nullptr && cursor != nullptr && dst != nullptr, op, "null pointer");
  detail::require(row_floats > 0 && count > 0 && batch > 0, op, "sizes must be positive");
  const bool vec = row_floats % 4 == 0 && detail::aligned_to(src, 16) && detail::aligned_to(dst, 16);
  const int64_t row_items = vec ? row_floats / 4 : row_floats;
  const unsigned rows = unsigned(std::min<int64_t>(batch, 65535));  // the grid's y limit; the kernel strides
  const dim3 grid(std::max(1u, detail::grid_stride_blocks(row_items * batch) / rows), rows);
  if (vec)
    gather_batch_kernel<<<grid, detail::kThreads, 0, stream>>>(reinterpret_cast<const float4*>(src), row_items, order,
                                                               count, cursor, batch, reinterpret_cast<float4*>(dst));
  else
    gather_batch_kernel<<<grid, detail::kThreads, 0, stream>>>(src, row_items, order, count, cursor, batch, dst);
  ANVIL_CHECK_LAUNCH();
}

void finish_batch(int64_t* cursor, int64_t count, int64_t batch, int64_t elements_per_row, int64_t* valid_elements,
                  cudaStream_t stream) {
  constexpr const char* op = "finish_batch";
  detail::require(cursor != nullptr && valid_elements != nullptr, op, "null pointer");
  detail::require(count > 0 && batch > 0 && elements_per_row > 0, op, "sizes must be positive");
  finish_batch_kernel<<<1, 1, 0, stream>>>(cursor, count, batch, elements_per_row, valid_elements);
  ANVIL_CHECK_LAUNCH();
}

}  // namespace anvil::cuda
