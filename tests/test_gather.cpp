// The minibatch gather: the CPU kernel against a direct copy, the CUDA kernel
// (with its device-side cursor and valid count) against the CPU one.
#include <gtest/gtest.h>

#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/gather.hpp"
#include "kernels/cuda/gather.hpp"
#include "tests/gpu_test_util.hpp"

namespace anvil::testing {
namespace {

// 11 samples of 7 floats (odd, so the CUDA kernel takes its scalar path) or 8 (float4), batch 4: 2 full batches
// and a partial one of 3 rows, then one past the end with no rows at all.
struct GatherCase {
  int64_t count = 11, row = 7, batch = 4;
};

std::vector<int64_t> shuffled_order(int64_t count, std::mt19937& rng) {
  std::vector<int64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

TEST(GatherCpu, CopiesTheRowsOfEachBatchAndZeroesThePadding) {
  std::mt19937 rng(5);
  const GatherCase c;
  const std::vector<float> src = random_floats(size_t(c.count * c.row), rng);
  const std::vector<int64_t> order = shuffled_order(c.count, rng);
  for (int64_t cursor = 0; cursor < 4; ++cursor) {
    std::vector<float> dst(size_t(c.batch * c.row), NAN);
    cpu::gather_batch(src.data(), c.row, order.data(), c.count, cursor, c.batch, dst.data());
    const int64_t valid = cpu::valid_rows(c.count, cursor, c.batch);
    EXPECT_EQ(valid, cursor < 2 ? 4 : cursor == 2 ? 3 : 0);
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t k = 0; k < c.row; ++k)
        EXPECT_EQ(dst[b * c.row + k], b < valid ? src[order[cursor * c.batch + b] * c.row + k] : 0.f)
            << "batch " << cursor << " row " << b;
  }
}

// The CUDA gather of a case: the dataset, the order, the cursor and the valid count on the device.
struct DeviceGather {
  DeviceGather(const GatherCase& c, const std::vector<float>& src, const std::vector<int64_t>& order)
      : c(c), d_src(src.size()), d_dst(size_t(c.batch * c.row)), d_order(order.size()), d_cursor(1), d_valid(1) {
    d_src.upload(src);
    d_order.upload(order);
    d_cursor.upload({0});
  }
  // The batch at the cursor, into a poisoned destination; the cursor moves on.
  std::vector<float> next_batch(int64_t elements_per_row) {
    d_dst.poison();
    d_valid.poison();
    cuda::gather_batch(d_src.get(), c.row, d_order.get(), c.count, d_cursor.get(), c.batch, d_dst.get(), nullptr);
    cuda::finish_batch(d_cursor.get(), c.count, c.batch, elements_per_row, d_valid.get(), nullptr);
    return d_dst.download_all();
  }

  GatherCase c;
  DeviceBuffer<float> d_src, d_dst;
  DeviceBuffer<int64_t> d_order, d_cursor, d_valid;
};

TEST(GatherCuda, MatchesCpuWithTheCursorOnTheDevice) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(6);
  for (const int64_t row : {7, 8}) {
    GatherCase c;
    c.row = row;
    const std::vector<float> src = random_floats(size_t(c.count * c.row), rng);
    const std::vector<int64_t> order = shuffled_order(c.count, rng);
    DeviceGather device(c, src, order);
    for (int64_t cursor = 0; cursor < 4; ++cursor) {
      const std::vector<float> got = device.next_batch(3);
      std::vector<float> want(size_t(c.batch * c.row));
      cpu::gather_batch(src.data(), c.row, order.data(), c.count, cursor, c.batch, want.data());
      for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << "row " << row << " batch " << cursor;
      EXPECT_EQ(device.d_valid.download_all()[0], 3 * cpu::valid_rows(c.count, cursor, c.batch));
      EXPECT_EQ(device.d_cursor.download_all()[0], cursor + 1);
    }
  }
}

// More rows than a grid has y blocks (65535): the kernel strides over them. 70001 samples of 5
// floats in batches of 70000: a full batch, then a partial one of one row.
TEST(GatherCuda, BatchesOfMoreRowsThanAGridHasBlocks) {
  ANVIL_REQUIRE_GPU_OR_SKIP();
  std::mt19937 rng(7);
  const GatherCase c{70001, 5, 70000};
  const std::vector<float> src = random_floats(size_t(c.count * c.row), rng);
  const std::vector<int64_t> order = shuffled_order(c.count, rng);
  DeviceGather device(c, src, order);
  for (int64_t cursor = 0; cursor < 2; ++cursor) {
    std::vector<float> want(size_t(c.batch * c.row));
    cpu::gather_batch(src.data(), c.row, order.data(), c.count, cursor, c.batch, want.data());
    EXPECT_EQ(device.next_batch(1), want) << "batch " << cursor;
    EXPECT_EQ(device.d_valid.download_all()[0], cursor == 0 ? 70000 : 1);
  }
}

}  // namespace
}  // namespace anvil::testing
