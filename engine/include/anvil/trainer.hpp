// The training loop of `anvil train`, for embedding programs too: epochs (or
// a step count) over a dataset attached to an engine, validation, checkpoints
// and a callback on logged steps. The loss is read back only on logged steps,
// so the other steps cost the host nothing but their launch.
//
//   anvil::Dataset train = anvil::Dataset::load("train.safetensors", sample, target);
//   anvil::TrainOptions o;
//   o.epochs = 3;
//   anvil::Trainer trainer(engine, train, /*validation=*/nullptr, o, anvil::DataOptions{});
//   trainer.run({[](const anvil::TrainProgress& p) { std::printf("%lld %g\n", (long long)p.step, p.loss); }});
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "anvil/dataset.hpp"
#include "anvil/engine.hpp"

namespace anvil {

// The most steps a run or a checkpoint may count: far beyond any run, exact in a double,
// and far from the int64 counters' overflow.
constexpr int64_t kMaxSteps = int64_t(1) << 53;

struct TrainOptions {
  int64_t epochs = 0;      // train this many epochs, or
  int64_t steps = 0;       // this many steps (one of the two, > 0)
  int64_t log_every = 10;  // the loss is read back (one host sync) every N steps, on the first and on the last
  int64_t val_every = 0;   // with a validation set: every N steps (0: never) and at the end
  // Written every checkpoint_every steps (0: never) and by save_checkpoint(). The Trainer refuses
  // at construction a path it could not write (check_output_path), one that leads to a character
  // device or a pipe rather than a file (check_output_is_a_file), or one naming a dataset it reads.
  std::string checkpoint;
  int64_t checkpoint_every = 0;
  // Look for NaN and Inf in the loss, the gradients and the parameters on every logged step and
  // before every checkpoint. On a finding, go back to the last state that passed, replay the steps
  // since op by op (Engine::traced_train_step) and throw NonFiniteError: "step 412: non-finite
  // gradient first appears in conv.weight (backward of conv)". No checkpoint is written after the
  // last good check. Needs an engine built with Options::check_finite.
  bool check_finite = false;
};

struct TrainProgress {
  int64_t step = 0, total_steps = 0;
  int64_t epoch = 0;  // of the step just taken
  float loss = 0;     // of the step just taken
  float lr = 0;       // the learning rate it used
};

class Trainer {
 public:
  struct Callbacks {
    std::function<void(const TrainProgress&)> on_log;                 // logged steps
    std::function<void(int64_t step, float val_loss)> on_validation;  // after each validation
    std::function<void(int64_t step)> on_checkpoint;                  // after each checkpoint written
  };

  // The engine must be a training engine; the datasets must outlive the trainer. It attaches
  // train to the engine; another attach_data (or Trainer) on it since is refused by run().
  Trainer(Engine& engine, const Dataset& train, const Dataset* validation, const TrainOptions& options,
          const DataOptions& data);
  // Trains on the engine's own input and target (set_input and set_target, or the seeded
  // generator's) at every step: options.steps steps, no epochs. Refused where a dataset is attached.
  Trainer(Engine& engine, const TrainOptions& options);

  // Continues from a checkpoint: parameters, optimizer state, step and position.
  void resume(const std::string& checkpoint);
  // Runs to the end, or until *stop is set (the step in progress completes first; data-parallel
  // ranks stop together at the next logged step, within 10 steps).
  // Throws NonFiniteError when check_finite finds a NaN or an infinity, or a logged loss is not
  // finite: after that step's on_log, which carries the loss, and before any validation or
  // checkpoint of it (check_finite's message names the step where it first appears); or when a
  // validation loss is not finite (whatever check_finite): after its on_validation and that step's
  // on_log, if logged, and before any checkpoint of it.
  void run(const Callbacks& callbacks, const std::atomic<bool>* stop = nullptr);
  // Checks for non-finite values first (check_finite). Data parallel: every rank calls it, rank 0 writes.
  void save_checkpoint(const std::string& path);
  // With check_finite: throws NonFiniteError if the state holds a NaN or an infinity, else keeps it as good.
  void check_finite();

  const TrainPosition& position() const { return position_; }
  int64_t total_steps() const { return total_steps_; }
  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  bool finished() const { return position_.step >= total_steps_; }

 private:
  float validate(const Callbacks& callbacks);             // the validation loss, reported
  void advance();                                         // the position after a step
  std::string locate_non_finite(const NonFinite& found);  // the replay from the good state
  // With check_finite: the located finding's message, or none (the state is then kept as good).
  std::optional<std::string> non_finite_failure();

  void check_engine_data() const;  // the engine still feeds from this Trainer's dataset (or none)

  Engine& engine_;
  const Dataset* train_ = nullptr;  // null: the engine's own batch
  int64_t attachment_ = 0;          // the engine's data_attachments() once this Trainer attached train_
  const Dataset* validation_ = nullptr;
  TrainOptions options_;
  TrainPosition position_;
  std::optional<TrainPosition> good_;  // where the last check that passed was made (none yet: no replay)
  int64_t steps_per_epoch_ = 0, total_steps_ = 0;
};

}  // namespace anvil
