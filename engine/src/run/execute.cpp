// Execute: forward, loss, backward and the optimizer in schedule order on the
// engine's one stream; on CUDA each kind of work is captured once as a CUDA
// graph and replayed.
#include "engine/src/cuda/nvtx.hpp"
#include "engine/src/run/engine_impl.hpp"

#if ANVIL_WITH_CUDA
#include <iostream>

#include "engine/src/cuda/check.hpp"
#endif

namespace anvil {

void Engine::Impl::run_forward() {
  for (size_t i = 0; i < runs.size(); ++i)
    graph->nodes[i].layer->forward(options.device, cuda_context(), runs[i].forward);
}

void Engine::Impl::run_loss(bool backward, bool fed) {
  NvtxRange range("loss");
  loss->forward_backward(options.device, cuda_context(), output, target, backward ? output_grad : nullptr, loss_value,
                         output_count(), fed ? valid_elements : nullptr, loss_scratch);
}

void Engine::Impl::run_backward() {
  for (int n : schedule.backward_order) {
    graph->nodes[n].layer->backward(options.device, cuda_context(), runs[n].backward);
    if (buckets) buckets->after_backward_of(n);
  }
  if (buckets) buckets->join();
}

void Engine::Impl::average_across_ranks(float* data, int64_t count) {
  void* stream = nullptr;  // the CPU's in-process communicator needs none
#if ANVIL_WITH_CUDA
  if (cuda()) stream = ctx->stream();
#endif
  options.communicator->average(data, count, stream);
}

void Engine::Impl::average_loss_across_ranks() {
  if (options.communicator) average_across_ranks(loss_value, 1);
}

void Engine::Impl::run_optimizer() {
  NvtxRange range("optimizer");
  optimizer->step(options.device, cuda_context(), optimizer_args);
}

DataFeed* Engine::Impl::feed_of(Work work) const {
  if (work == kEvaluate) return eval_feed.get();
  return work == kForward ? nullptr : train_feed.get();
}

void Engine::Impl::run_work(Work work) {
  static const char* const kNames[kWorkKinds] = {"forward", "gradients", "train step", "evaluate"};
  NvtxRange range(kNames[work]);
  DataFeed* feed = feed_of(work);
  if (feed) feed->in_step({input, target, valid_elements});
  run_forward();
  if (work == kForward) return;
  run_loss(work != kEvaluate, feed != nullptr);
  if (work == kEvaluate) return;
  run_backward();
  gradients_made = true;
  average_loss_across_ranks();
  if (work == kTrainStep) run_optimizer();
}

// CUDA engines capture each kind of work once, on first use, and replay it:
// everything that changes from step to step lives in device memory.
void Engine::Impl::enqueue(Work work) {
  if (DataFeed* feed = feed_of(work)) feed->before_step({input, target, valid_elements});
#if ANVIL_WITH_CUDA
  if (cuda() && options.cuda_graph && !graph_failed) {
    if (!graphs[work]) capture(work);
    if (graphs[work]) {
      ANVIL_CUDA_CHECK(cudaGraphLaunch(graphs[work], ctx->stream()));
      return;
    }
  }
#endif
  run_work(work);
}

void Engine::Impl::forget_graph([[maybe_unused]] Work work) {
#if ANVIL_WITH_CUDA
  if (graphs[work]) ANVIL_CUDA_CHECK(cudaGraphExecDestroy(graphs[work]));
  graphs[work] = nullptr;
#endif
}

#if ANVIL_WITH_CUDA
// If capture fails, say so once and run eagerly from then on.
void Engine::Impl::capture(Work work) {
  cudaGraph_t captured = nullptr;
  ANVIL_CUDA_CHECK(cudaStreamBeginCapture(ctx->stream(), cudaStreamCaptureModeThreadLocal));
  std::string failure;
  try {
    run_work(work);
  } catch (const std::exception& e) {
    failure = e.what();
  }
  const cudaError_t end = cudaStreamEndCapture(ctx->stream(), &captured);
  if (failure.empty() && end == cudaSuccess) {
    const cudaError_t inst = cudaGraphInstantiate(&graphs[work], captured, 0);
    if (inst != cudaSuccess) failure = cudaGetErrorString(inst), graphs[work] = nullptr;
  } else if (failure.empty()) {
    failure = cudaGetErrorString(end);
  }
  if (captured) cudaGraphDestroy(captured);
  cudaGetLastError();
  if (!failure.empty()) {
    graph_failed = true;
    std::cerr << "anvil: CUDA-graph capture failed (" << failure << "); running eagerly\n";
  }
}
#endif  // ANVIL_WITH_CUDA

}  // namespace anvil
