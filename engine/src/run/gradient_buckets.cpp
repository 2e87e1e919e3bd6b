#include "engine/src/run/gradient_buckets.hpp"

#include <algorithm>

#include "anvil/error.hpp"

#if ANVIL_WITH_CUDA
#include "engine/src/cuda/check.hpp"
#include "engine/src/cuda/context.hpp"
#endif

namespace anvil {

GradientBuckets::GradientBuckets(Communicator& comm, [[maybe_unused]] CudaContext* ctx,
                                 const std::vector<int>& backward_order, const std::vector<Range>& node_gradients)
    : comm_(comm) {
  float* low = nullptr;  // the open bucket: [low, high), growing downwards as backward goes
  float* high = nullptr;
  for (size_t i = 0; i < backward_order.size(); ++i) {
    const int node = backward_order[i];
    const Range& r = node_gradients[size_t(node)];
    if (r.count > 0) {
      if (!high) high = r.first + r.count;
      if (low && r.first + r.count != low)
        throw Error("internal error: a layer's gradients are not next to the next layer's in the slab");
      low = r.first;
    }
    const bool last = i + 1 == backward_order.size();
    if (high && (last || size_t(high - low) * sizeof(float) >= kBucketBytes)) {
      buckets_.push_back({node, low, high - low});
      low = high = nullptr;
    }
  }
#if ANVIL_WITH_CUDA
  ctx_ = ctx;
  if (!ctx_) return;
  ANVIL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  ready_.resize(buckets_.size());
  for (cudaEvent_t& e : ready_) ANVIL_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  ANVIL_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
#endif
}

GradientBuckets::~GradientBuckets() {
#if ANVIL_WITH_CUDA
  for (cudaEvent_t e : ready_) cudaEventDestroy(e);
  if (done_) cudaEventDestroy(done_);
  if (stream_) cudaStreamDestroy(stream_);
#endif
}

void GradientBuckets::after_backward_of(int node) {
  for (const Bucket& b : buckets_)
    if (b.last_node == node) issue(b);
}

void GradientBuckets::issue(const Bucket& bucket) {
#if ANVIL_WITH_CUDA
  if (ctx_) {
    const cudaEvent_t ready = ready_[size_t(&bucket - buckets_.data())];
    ANVIL_CUDA_CHECK(cudaEventRecord(ready, ctx_->stream()));
    ANVIL_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready, 0));
    comm_.average(bucket.first, bucket.count, stream_);
    return;
  }
#endif
  comm_.average(bucket.first, bucket.count, nullptr);  // the CPU: done when it returns
}

void GradientBuckets::join() {
#if ANVIL_WITH_CUDA
  if (ctx_) {
    ANVIL_CUDA_CHECK(cudaEventRecord(done_, stream_));
    ANVIL_CUDA_CHECK(cudaStreamWaitEvent(ctx_->stream(), done_, 0));
  }
#endif
}

}  // namespace anvil
