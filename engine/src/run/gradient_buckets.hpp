// Data parallel: the gradient slab is averaged across the ranks in buckets, each
// issued as soon as backward has made its gradients. Backward runs the layers
// in reverse, and each layer's parameters sit together in the slab, so a
// bucket is one contiguous range: the layers finished since the last bucket,
// until the range passes kBucketBytes. On CUDA the all-reduces go on a stream
// of their own, after an event on the engine's stream, so they overlap the rest
// of backward; join() makes the engine's stream wait for them before the
// optimizer. The fork and the join are events, so a captured step keeps them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "anvil/communicator.hpp"

#if ANVIL_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace anvil {

class CudaContext;

class GradientBuckets {
 public:
  static constexpr size_t kBucketBytes = size_t(4) << 20;

  // The gradients each node makes: a range of the slab (count 0: none), per node.
  struct Range {
    float* first = nullptr;
    int64_t count = 0;
  };
  // backward_order: node indices in the order backward runs them.
  GradientBuckets(Communicator& comm, CudaContext* ctx, const std::vector<int>& backward_order,
                  const std::vector<Range>& node_gradients);
  ~GradientBuckets();
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;

  void after_backward_of(int node);  // issues the bucket this node completes, if it does
  void join();                       // the engine's stream waits for every bucket issued
  size_t count() const { return buckets_.size(); }

 private:
  struct Bucket {
    int last_node;  // issued after this node's backward
    float* first;
    int64_t count;
  };
  void issue(const Bucket& bucket);

  Communicator& comm_;
  std::vector<Bucket> buckets_;
#if ANVIL_WITH_CUDA
  CudaContext* ctx_ = nullptr;
  cudaStream_t stream_ = nullptr;   // the all-reduces'
  std::vector<cudaEvent_t> ready_;  // per bucket: its gradients are made
  cudaEvent_t done_ = nullptr;      // the last all-reduce issued has finished
#endif
};

}  // namespace anvil
