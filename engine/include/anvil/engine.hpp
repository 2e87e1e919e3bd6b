// anvil's public API: load a network description, build an engine for a
// device, run forward passes and SGD training steps.
//
//   anvil::Network net = anvil::Network::load("examples/kernelbench74.json");
//   anvil::Engine engine(net, {});           // cuda if a GPU is present, else cpu
//   engine.set_input(x);
//   anvil::HostTensor y = engine.forward();
//   engine.set_target(t);
//   float loss = engine.train_step();
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "anvil/communicator.hpp"
#include "anvil/dataset.hpp"
#include "anvil/network.hpp"
#include "anvil/plan.hpp"
#include "anvil/tensor.hpp"

namespace anvil {

enum class Device { Cpu, Cuda };
const char* to_string(Device d);  // "cpu", "cuda"; "not a Device" for a value cast from another
bool cuda_available();            // a CUDA device is present and usable
int cuda_device_count();          // how many (0 without a driver, or in a build without CUDA)
std::string cuda_device_name();   // of the current device
std::string cudnn_version();      // of the loaded cuDNN library, e.g. "9.14.0"
size_t device_memory_used();      // bytes in use on the current device (all processes)

enum class Mode { Forward, Train };  // what the memory plan must cover
enum class Memory { Host, Device };  // where a caller's buffer lives (Device: CUDA engines only)

struct Options {
  Device device = cuda_available() ? Device::Cuda : Device::Cpu;
  Mode mode = Mode::Train;
  bool fuse = true;  // the fusion pass (CUDA); also off when the network says "fuse": false
  // A fused conv_transpose, and under deterministic strict fp32 every strided backward-data
  // relation (a conv_transpose's forward, a strided conv's input gradient), as one stride-1
  // conv over the output's phases, where exact (docs/performance.md).
  bool phase_split = true;
  bool direct_conv = true;    // fused convs with few taps per output as anvil's direct kernel, where it applies
  bool wgmma_conv = true;     // fused stride-1 convs under tf32 as anvil's wgmma kernel (sm_90), where it applies
  bool channels_last = true;  // inference under tf32: activations around cuDNN's convs channels-last, where ops take it
  bool cuda_graph = true;     // capture the train step once and replay it
  bool deterministic = true;  // only deterministic cuDNN algorithms
  // Time the candidates once at build and keep the fastest: each fused
  // chain's formulation (phase split, direct conv, wgmma conv or cuDNN's), each pool's kernels and
  // each conv's engines of cuDNN's graph API (deterministic ones still,
  // unless deterministic is off). Off: fixed rules pick
  // (docs/performance.md), the same choice every build.
  bool autotune = false;
  // Also compute d(loss)/d(input), which nothing upstream needs (input_gradient()). Training
  // engines only: a forward-only engine (Mode::Forward) computes no gradient and refuses it
  // (InputError naming Options::input_grad), rather than ignore it.
  bool input_grad = false;
  size_t workspace_limit = size_t(256) << 20;  // per cuDNN call
  bool plan_only = false;                      // stop after the memory plan: no arena, nothing runs (for `anvil info`)
  // Room to find where a non-finite value starts (keep_good_state, restore_good_state): a copy of
  // the parameters and the optimizer state in the arena, one more slab each. Training engines only:
  // a forward-only engine (Mode::Forward) refuses it (InputError naming Options::check_finite).
  bool check_finite = false;
  // Data parallel (anvil/communicator.hpp, anvil/data_parallel.hpp): this engine is rank
  // communicator->rank() of communicator->size(). Its network's batch is its share of the global
  // batch; after backward it averages the gradients and the loss with the other ranks, and it
  // takes its slice of each global batch (of a dataset, or of the seeded generator's). Not owned:
  // the communicator must outlive the engine, as an attached dataset must (the engine keeps the
  // pointer and cannot tell a destroyed communicator from a live one).
  Communicator* communicator = nullptr;
};

// Where a non-finite value (NaN or +-Inf) was found.
struct NonFinite {
  std::string kind;    // "input", "target", "output", "value" (of the loss), "gradient" or "parameter"
  std::string tensor;  // the parameter, the tensor (named after the layer making it), "the batch" or "the loss"
  std::string stage;   // "forward of conv", "backward of conv", "the loss", "the optimizer step"; empty when not traced
  bool on_another_rank = false;  // data parallel: this rank's step was finite, another rank's was not
  // "non-finite gradient first appears in conv.weight (backward of conv)"
  std::string describe() const;
};

// Where a training run stands. A checkpoint stores it with the parameters and
// the optimizer state, so a resumed run continues exactly where it stopped.
struct TrainPosition {
  int64_t step = 0;            // optimizer steps taken
  int64_t epoch = 0;           // the epoch the next step belongs to
  int64_t batch_in_epoch = 0;  // the next step's batch within that epoch
};

// How an engine takes its minibatches from a dataset.
struct DataOptions {
  bool shuffle = true;     // each epoch in epoch_order(seed of the network, epoch)
  bool keep_last = false;  // run the last partial batch (padded; the loss averages its real samples only)
  // CUDA: the most device memory the dataset may take to live on the device (none: half of the free
  // memory). A dataset over it stays in pinned host memory and each batch is copied before its step.
  std::optional<size_t> device_budget;
};

struct LayerTiming {
  std::string layer;
  double forward_ms = 0, backward_ms = 0;
};

// Not thread-safe: one thread at a time uses an Engine (two threads stepping one engine lose steps
// and mix their buffers). Separate engines run on separate threads; data parallel gives each rank
// its own (run_data_parallel).
class Engine {
 public:
  Engine(const Network& network, const Options& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const Network& network() const;
  const Options& options() const;
  const MemoryPlan& plan() const;
  std::string describe() const;  // layers as built: fusion groups, cuDNN algorithms, workspaces

  // Inputs; shapes are checked (InputError on mismatch). Without them the
  // seeded generator fills "input" and "target" at build time.
  void set_input(const HostTensor& x);
  void set_target(const HostTensor& t);
  // The same from a caller's buffer of `shape`, in host or (CUDA) device memory; a device
  // buffer is copied on the engine's stream, so it may be reused once the next step is enqueued.
  void set_input(const float* data, const Shape& shape, Memory where = Memory::Host);
  void set_target(const float* data, const Shape& shape, Memory where = Memory::Host);

  HostTensor forward();  // runs the forward pass and returns the output
  // Runs the forward pass into a caller's buffer of `count` floats (the output's size), with no
  // allocation: a host buffer is filled when this returns; a device buffer once synchronize() returns.
  void forward_into(float* out, size_t count, Memory where = Memory::Host);
  float train_step();  // forward, loss, backward, optimizer; returns the loss of this step

  // Training from a dataset (anvil/dataset.hpp), which must outlive the engine:
  // after attach_data and start_epoch, each train step takes the epoch's next
  // batch itself (on CUDA, gathered on the device inside the captured step when
  // the dataset fits the budget). The dataset's sample shapes must be the network's.
  // Moved from or assigned another while attached, it is refused at the next step.
  void attach_data(const Dataset& data, const DataOptions& options);
  int64_t batches_per_epoch() const;  // of the attached dataset
  // Epoch >= 0 (its shuffle), first_batch in 0..batches_per_epoch() (a resumed position); once
  // the epoch's batches are taken, a train step throws until the next start_epoch.
  void start_epoch(int64_t epoch, int64_t first_batch = 0);
  bool data_on_device() const;           // the attached dataset lives on the device
  const Dataset* attached_data() const;  // the object last given to attach_data, or null
  int64_t data_attachments() const;      // how many attach_data calls have succeeded: each one's own number
  void detach_data();                    // train steps take the engine's own batch again (set_input)
  // The mean loss over every element of a dataset (forward and loss only; all
  // samples, the last partial batch included). Nothing else changes: the
  // parameters, and the engine's own input, target and last_loss(), are as
  // before. The dataset stays uploaded for the next call with the same object,
  // so it must outlive the engine or the next evaluate() of another dataset (an
  // object reassigned or loaded anew at the same address is another dataset).
  // A network without parameters builds for training only with Options::input_grad,
  // which `anvil eval` sets for it (the input's gradient is never run here).
  float evaluate(const Dataset& data);
  int64_t steps_done() const;
  float last_loss() const;  // of the last train step (a host sync on CUDA); an Error before the first
  // The last optimizer step's, a loaded checkpoint's included (0 before the first; a host sync on CUDA).
  float learning_rate() const;

  // Non-finite values; these four need an engine built for training with Options::check_finite
  // (Error). find_non_finite looks at the last step's loss, then every gradient (once a step has
  // run), then every parameter, and says where the first one is (no stage: it does not know which
  // op made it).
  std::optional<NonFinite> find_non_finite();
  // With Options::check_finite: copy the parameters, the optimizer state and the step count aside,
  // and go back to that copy. (Where the next batch comes from is the caller's: see start_epoch.)
  void keep_good_state();
  void restore_good_state();
  // One train step run eagerly, op by op, checking the batch, each op's output, the loss, each
  // gradient as it is made and the updated parameters; returns the first non-finite value with
  // its stage, or nothing. The step is taken either way, as enqueue_train_step() takes it. With a
  // communicator every rank must call it; a rank whose own step was finite gets on_another_rank
  // when another's was not.
  std::optional<NonFinite> traced_train_step();
  // Data parallel: whether any rank passed true. A collective (every rank calls it at the same
  // point) and a host sync; without a communicator it returns `mine`. Needs Mode::Train (Error).
  bool any_rank(bool mine);

  // Parameters by PyTorch state_dict name; load checks names and shapes. A copy on the host:
  // refused (Error) where it would not fit the host memory available.
  std::map<std::string, HostTensor> parameters() const;
  std::map<std::string, Shape> parameter_shapes() const;  // the names and shapes alone, no copy
  std::map<std::string, HostTensor> gradients() const;    // of the last train step (zeros before the first)
  void load_parameters(const std::map<std::string, HostTensor>& params);
  // Needs Options::input_grad and a train step run (else an Error). Data parallel: this rank's
  // slice of the input, and the gradient of this rank's loss (the mean over its slice), not of the
  // global one.
  HostTensor input_gradient() const;

  // Checkpoints: one safetensors file with the parameters (PyTorch names), the
  // optimizer state ("optimizer.<state>.<parameter>"), the step count and the
  // position, the network's hash and the anvil version, written atomically.
  // Loading refuses a checkpoint of another network, or of another optimizer.
  // Saving refuses (InputError) a path that names the network's file, the
  // attached dataset's or the last evaluated one's, one that leads to a
  // character device or a pipe (/dev/null, /dev/stdout: a checkpoint is a
  // regular file, replaced by rename; check_output_is_a_file), and a position
  // loading would refuse (a number outside 0 to 2^53, an epoch or batch past
  // the step, a batch past the attached dataset's epoch).
  void save_checkpoint(const std::string& path, const TrainPosition& position) const;
  // Throws the Error save_checkpoint(path, any position) would give because the path names one of
  // those inputs or a device or pipe, or the file's header (the tensor names and metadata) is beyond
  // what safetensors readers take: a run checks at its start.
  void check_checkpoint_fits(const std::string& path) const;
  TrainPosition load_checkpoint(const std::string& path);

  // Benchmark hooks: run without reading anything back, and time each layer once.
  void enqueue_forward();
  void enqueue_gradients();  // forward, loss and backward, no update
  void enqueue_train_step();
  void synchronize();
  std::vector<LayerTiming> profile_layers();          // each layer alone, eagerly: the median of 5 runs after 1
  double time_ms(const std::function<void()>& work);  // CUDA events on the stream, or a host clock
  size_t device_bytes() const;                        // the arena, the only allocation

  // Device allocations, frees and host synchronisations so far (CUDA engines):
  // a test proves with these that a train step does none of them.
  struct DeviceCounters {
    int64_t allocations = 0, frees = 0, synchronizations = 0;
  };
  DeviceCounters device_counters() const;
  bool replaying_cuda_graph() const;  // the train step runs as one captured CUDA graph

 private:
  struct Impl;  // defined inside the library
  void require_arena() const;
  std::unique_ptr<Impl> impl_;
};

}  // namespace anvil
