// The engine's state, shared by the files of the run stage:
//   build.cpp         lower, build ops, schedule, plan, allocate, bind, initialise
//   execute.cpp       forward, loss, backward, optimizer; CUDA-graph capture and replay
//   parameter_io.cpp  inputs, targets, outputs, parameters and gradients in and out
//   data_api.cpp      datasets: attach_data, start_epoch, evaluate (through data_feed.hpp)
//   checkpoint.cpp    save_checkpoint, load_checkpoint
//   finite_check.cpp  non-finite values: the checks, the good state, the traced step
//   engine.cpp        the rest of the public API
// (trainer.cpp is the training loop over this API.)
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "anvil/engine.hpp"
#include "engine/src/lower/graph.hpp"
#include "engine/src/plan/schedule.hpp"
#include "engine/src/run/data_feed.hpp"
#include "engine/src/run/gradient_buckets.hpp"
#include "engine/src/train/loss.hpp"
#include "engine/src/train/optimizer.hpp"

#if ANVIL_WITH_CUDA
#include <cuda_runtime.h>

#include "engine/src/cuda/context.hpp"
#endif

namespace anvil {

// One scheduled op call with its arguments resolved to arena pointers.
struct NodeRun {
  LayerArgs forward, backward;
  bool runs_backward = false;
};

struct Engine::Impl {
  Network network;
  Options options;
  std::unique_ptr<Graph> graph;
  std::unique_ptr<Loss> loss;            // training only
  std::unique_ptr<Optimizer> optimizer;  // training only
  Schedule schedule;
  MemoryPlan plan;
  std::vector<NodeRun> runs;  // per graph node, topological order

  char* arena = nullptr;  // host or device
  float* params = nullptr;
  float* grads = nullptr;
  OptimizerArgs optimizer_args;
  float* input = nullptr;
  float* target = nullptr;
  float* output = nullptr;
  float* output_grad = nullptr;
  float* input_grad = nullptr;
  float* loss_value = nullptr;
  void* loss_scratch = nullptr;
  int64_t* valid_elements = nullptr;
  void* flag = nullptr;  // one word of the arena: finite checks and rank agreement
  int64_t steps = 0;
  bool gradients_made = false;        // a train step (or enqueue_gradients) has run since the build
  std::optional<int64_t> good_steps;  // the step count keep_good_state saw
  // Where train steps and evaluations take their batches from, when a dataset is attached.
  DataOptions data_options;
  int64_t data_attachments = 0;  // attach_data calls that succeeded (a Trainer knows its own by it)
  std::unique_ptr<DataFeed> train_feed, eval_feed;
  std::unique_ptr<GradientBuckets> buckets;  // data parallel: the gradient all-reduces

  enum Work { kForward = 0, kGradients = 1, kTrainStep = 2, kEvaluate = 3, kWorkKinds = 4 };

#if ANVIL_WITH_CUDA
  std::unique_ptr<CudaContext> ctx;  // CUDA engines only
  // One captured CUDA graph per kind of work, made on first use.
  cudaGraphExec_t graphs[kWorkKinds] = {};
  bool graph_failed = false;
  CudaContext* cuda_context() const { return ctx.get(); }
  void capture(Work work);  // execute.cpp
#else
  CudaContext* cuda_context() const { return nullptr; }
#endif

  Impl(const Network& net, const Options& opts) : network(net), options(opts) {}
  ~Impl();

  bool cuda() const { return options.device == Device::Cuda; }
  bool training() const { return options.mode == Mode::Train; }
  // Activations may pass channels-last between ops (lower/channels_last.cpp): inference under tf32 on CUDA.
  bool channels_last() const {
    return cuda() && !training() && options.channels_last && network.precision() == Precision::TF32;
  }
  int64_t output_count() const { return numel(graph->tensors[graph->output].shape); }
  int ranks() const { return options.communicator ? options.communicator->size() : 1; }
  int rank() const { return options.communicator ? options.communicator->rank() : 0; }
  int64_t global_batch() const { return network.input_shape()[0] * ranks(); }
  void average_across_ranks(float* data, int64_t count);  // execute.cpp, on the engine's stream
  void average_loss_across_ranks();                       // (the gradients go in buckets during backward)
  size_t slab_floats() const { return schedule.slab_bytes / sizeof(float); }
  char* address(int request) const { return request == kNoBuffer ? nullptr : arena + plan.tensors[request].offset; }

  // build.cpp
  void build();
  char* allocate_arena(size_t bytes);
  void bind();
  void initialise();
  // parameter_io.cpp
  void upload_bytes(void* dst, const void* src, size_t bytes);
  void download_bytes(void* dst, const void* src, size_t bytes) const;  // synchronises on CUDA
  void upload(float* dst, const float* src, size_t count);
  void download(float* dst, const float* src, size_t count) const;
  void synchronize();  // waits for the CUDA stream; nothing on the CPU
  void copy_in(float* dst, const float* src, size_t count, Memory where);  // a caller's buffer into the arena
  // By parameter name; `what` names the copy where host memory refuses it.
  std::map<std::string, HostTensor> read_slab(const float* slab, const std::string& what) const;
  void write_slab(float* slab, const std::map<std::string, HostTensor>& tensors);  // every parameter, shapes checked
  // execute.cpp
  void run_forward();
  void run_loss(bool backward, bool fed);  // fed: the batch came from a dataset (a partial one is padded)
  void run_backward();
  void run_optimizer();
  void run_work(Work work);
  void enqueue(Work work);
  DataFeed* feed_of(Work work) const;  // the dataset a work takes its batch from, if any
  void forget_graph(Work work);        // after what a captured graph reads has changed
  // data_api.cpp: the engine's own batch (input, target) and last loss, kept aside while
  // evaluate() gathers its batches there, and put back. The room for them is taken at the
  // first evaluate() and kept, so later calls allocate nothing.
#if ANVIL_WITH_CUDA
  struct ReleaseOn {
    CudaContext* ctx;
    void operator()(void* ptr) const { ctx->release(ptr); }
  };
#endif
  struct BatchAside {
    size_t input_bytes = 0, target_bytes = 0;
    float loss = 0;
    std::vector<char> host;  // CPU engines
#if ANVIL_WITH_CUDA
    std::unique_ptr<void, ReleaseOn> device{nullptr, ReleaseOn{nullptr}};  // CUDA engines
#endif
  };
  BatchAside batch_aside;
  // checkpoint.cpp: a checkpoint never replaces what the engine reads (InputError): its
  // network's file, the dataset it trains on or the one it last evaluated.
  void refuse_own_inputs(const std::string& path) const;
  void set_batch_aside();
  void restore_batch();
  // finite_check.cpp
  bool finite(const float* data, int64_t count);  // a host sync on CUDA
  std::optional<NonFinite> first_non_finite_parameter(const float* slab, const char* kind, const std::string& stage);
  std::optional<NonFinite> traced_gradients(DataFeed* feed);
  void copy_good_state(bool keep);  // the training state to its good copy, or back
  bool any_rank(bool mine);
};

}  // namespace anvil
