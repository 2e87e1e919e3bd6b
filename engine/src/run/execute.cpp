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
  for (size_t i = 0; i < runs.size(); ++i) graph->nodes[i].layer->forward(options.device, cuda_context(), runs[i].forward);
}

void Engine::Impl::run_loss_backward() {
  {
    NvtxRange range("loss");
    loss->forward_backward(options.device, cuda_context(), output, target, output_grad, loss_value, output_count(),
                           loss_scratch);
  }
  for (int n : schedule.backward_order) graph->nodes[n].layer->backward(options.device, cuda_context(), runs[n].backward);
}

void Engine::Impl::run_optimizer() {
  NvtxRange range("optimizer");
  optimizer->step(options.device, cuda_context(), optimizer_args);
}

void Engine::Impl::run_work(Work work) {
  NvtxRange range(work == kForward ? "forward" : work == kGradients ? "gradients" : "train step");
  run_forward();
  if (work == kForward) return;
  run_loss_backward();
  if (work == kTrainStep) run_optimizer();
}

// CUDA engines capture each kind of work once, on first use, and replay it:
// everything that changes from step to step lives in device memory.
void Engine::Impl::enqueue(Work work) {
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
