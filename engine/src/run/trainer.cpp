#include "anvil/trainer.hpp"

#include <cmath>

#include "anvil/error.hpp"
#include "anvil/output_file.hpp"

namespace anvil {

namespace {

void check_options(const TrainOptions& options, const Engine& engine) {
  if (options.steps < 0 || options.epochs < 0 || options.steps > kMaxSteps || options.epochs > kMaxSteps)
    throw InputError("steps and epochs must be between 0 and 2^53, got " + std::to_string(options.steps) + " and " +
                     std::to_string(options.epochs));
  if (options.log_every < 1) throw InputError("log_every must be positive, got " + std::to_string(options.log_every));
  if (options.val_every < 0 || options.checkpoint_every < 0)
    throw InputError("val_every and checkpoint_every must not be negative");
  if (options.checkpoint_every > 0 && options.checkpoint.empty())
    throw InputError("checkpoint_every needs a checkpoint path");
  if (options.check_finite && !engine.options().check_finite)
    throw Error("TrainOptions::check_finite needs an engine built with Options::check_finite");
}

// The checkpoint is written during the run: where it cannot be, is no file to replace (a device,
// a pipe), or would replace a dataset the run reads, say so now, not after the first
// checkpoint_every steps.
void check_checkpoint_path(const TrainOptions& options, std::initializer_list<const Dataset*> read) {
  if (options.checkpoint.empty()) return;
  check_output_is_a_file(options.checkpoint, "a checkpoint");
  check_output_path(options.checkpoint);
  for (const Dataset* data : read)
    if (data && data->file().replaced_by(options.checkpoint))
      throw InputError(options.checkpoint + ": the checkpoint would overwrite the dataset " + data->file().absolute);
}

// "step 3: the loss became nan".
NonFiniteError non_finite(int64_t step, const std::string& what, float value) {
  return NonFiniteError("step " + std::to_string(step) + ": " + what + " " + NonFiniteError::shown(value));
}

}  // namespace

Trainer::Trainer(Engine& engine, const Dataset& train, const Dataset* validation, const TrainOptions& options,
                 const DataOptions& data)
    : engine_(engine), train_(&train), validation_(validation), options_(options) {
  if ((options.epochs > 0) == (options.steps > 0))
    throw InputError("give the length of training as epochs or as steps (one of them, positive)");
  check_options(options, engine);
  check_checkpoint_path(options, {&train, validation});
  if (validation) validation->check_fits(engine.network());  // now, not at the first validation
  engine_.attach_data(train, data);
  attachment_ = engine_.data_attachments();
  try {
    steps_per_epoch_ = engine_.batches_per_epoch();
    if (steps_per_epoch_ > 0 && options.epochs > kMaxSteps / steps_per_epoch_)
      throw InputError(std::to_string(options.epochs) + " epochs of " + std::to_string(steps_per_epoch_) +
                       " steps are more than 2^53 steps");
    total_steps_ = options.epochs > 0 ? options.epochs * steps_per_epoch_ : options.steps;
    if (!options.checkpoint.empty()) engine_.check_checkpoint_fits(options.checkpoint);  // the data is attached
  } catch (...) {
    engine_.detach_data();  // a Trainer that was not made leaves no dataset on the engine
    throw;
  }
}

Trainer::Trainer(Engine& engine, const TrainOptions& options) : engine_(engine), options_(options) {
  if (options.steps < 1 || options.epochs != 0)
    throw InputError("training on the engine's own batch needs a positive step count and no epochs");
  check_options(options, engine);
  check_checkpoint_path(options, {});
  check_engine_data();
  total_steps_ = options.steps;
  if (!options.checkpoint.empty()) engine_.check_checkpoint_fits(options.checkpoint);
}

void Trainer::check_engine_data() const {
  const Dataset* attached = engine_.attached_data();
  if (!train_ && attached)
    throw Error(
        "the engine has a dataset attached (attach_data): this Trainer trains on the engine's own batch; "
        "give the dataset to the Trainer instead");
  // The attachment, not only the object: the same dataset attached again (other DataOptions, or a
  // second Trainer) has another batch plan and order than the one this Trainer counts positions in.
  if (train_ && (attached != train_ || engine_.data_attachments() != attachment_))
    throw Error(
        "a dataset was attached to the engine since this Trainer was made (attach_data, or a "
        "second Trainer): one Trainer at a time trains an engine");
}

void Trainer::resume(const std::string& checkpoint) {
  check_engine_data();
  const TrainPosition at = engine_.load_checkpoint(checkpoint);  // checks the batch against the epoch
  if (steps_per_epoch_ > 0) engine_.start_epoch(at.epoch, at.batch_in_epoch);
  position_ = at;
  good_.reset();  // a state kept before is not this run's: run() keeps the checkpoint's
}

void Trainer::save_checkpoint(const std::string& path) {
  check_finite();  // on every rank: a finding is replayed by all of them together
  const Communicator* ranks = engine_.options().communicator;
  if (ranks && ranks->rank() != 0) return;  // data parallel: the ranks are identical, rank 0 writes
  engine_.save_checkpoint(path, position_);
}

float Trainer::validate(const Callbacks& callbacks) {
  const float val = engine_.evaluate(*validation_);
  if (callbacks.on_validation) callbacks.on_validation(position_.step, val);
  return val;
}

void Trainer::advance() {
  ++position_.step;
  if (steps_per_epoch_ == 0) return;  // the engine's own batch: no epochs
  if (++position_.batch_in_epoch == steps_per_epoch_) {
    ++position_.epoch;
    position_.batch_in_epoch = 0;
    if (position_.step < total_steps_) engine_.start_epoch(position_.epoch);
  }
}

void Trainer::check_finite() {
  if (const auto failure = non_finite_failure()) throw NonFiniteError(*failure);
}

std::optional<std::string> Trainer::non_finite_failure() {
  if (!options_.check_finite) return std::nullopt;
  if (const auto found = engine_.find_non_finite()) return locate_non_finite(*found);
  engine_.keep_good_state();
  good_ = position_;
  return std::nullopt;
}

// Back to the good state, then the same steps again, op by op, until one shows where it starts.
std::string Trainer::locate_non_finite(const NonFinite& found) {
  const int64_t found_at = position_.step;
  if (!good_) return "step " + std::to_string(found_at) + ": " + found.describe();  // before run(): none to replay
  engine_.restore_good_state();
  position_ = *good_;
  if (steps_per_epoch_ > 0) engine_.start_epoch(position_.epoch, position_.batch_in_epoch);
  while (position_.step < found_at) {
    const auto traced = engine_.traced_train_step();
    advance();
    if (!traced) continue;
    const std::string at = "step " + std::to_string(position_.step) + ": ";
    if (traced->on_another_rank) throw PeerFailure(at + "another rank's step was not finite");
    return at + traced->describe();
  }
  return "step " + std::to_string(found_at) + ": " + found.describe() + " (replaying from step " +
         std::to_string(good_->step) + " op by op did not make it again)";
}

// Data-parallel ranks agree to stop on a logged step (a sync point already) and at least every
// kStopAgreementSteps steps, so none is left waiting in the next step's all-reduce and a stop is
// honoured within that many steps whatever log_every is; a single engine stops before any step.
constexpr int64_t kStopAgreementSteps = 10;

void Trainer::run(const Callbacks& callbacks, const std::atomic<bool>* stop) {
  check_engine_data();
  const bool ranks = engine_.options().communicator != nullptr;
  if (options_.check_finite) {  // the starting state is the first good one (no loss yet to check)
    engine_.keep_good_state();
    good_ = position_;
  }
  while (position_.step < total_steps_) {
    if (stop && !ranks && stop->load()) return;
    const int64_t epoch = position_.epoch;
    engine_.enqueue_train_step();
    advance();
    const bool last = position_.step == total_steps_;
    const bool logged = position_.step == 1 || position_.step % options_.log_every == 0 || last;
    // The validation is reported before the step's log line, so that the line carries it.
    TrainProgress progress{position_.step, total_steps_, epoch, 0.f, 0.f};
    std::optional<std::string> failure;  // the check's finding, thrown once the step is logged
    if (logged) {
      progress.loss = engine_.last_loss();
      progress.lr = engine_.learning_rate();
      failure = non_finite_failure();  // read first: a finding is located by replaying steps
    }
    const bool finite = !failure && (!logged || std::isfinite(progress.loss));
    const bool validating =
        finite && validation_ && (last || (options_.val_every > 0 && position_.step % options_.val_every == 0));
    const float val = validating ? validate(callbacks) : 0.f;    // 0: no validation this step
    if (logged && callbacks.on_log) callbacks.on_log(progress);  // a non-finite step too: its record says so
    if (failure) throw NonFiniteError(*failure);
    if (!finite) throw non_finite(position_.step, "the loss became", progress.loss);
    // As the training loss: a validation loss that overflowed or went NaN ends the run before its checkpoint.
    if (!std::isfinite(val)) throw non_finite(position_.step, "the validation loss is", val);
    if (options_.checkpoint_every > 0 && position_.step % options_.checkpoint_every == 0) {
      save_checkpoint(options_.checkpoint);
      if (callbacks.on_checkpoint) callbacks.on_checkpoint(position_.step);
    }
    const bool agree = logged || position_.step % kStopAgreementSteps == 0;
    if (ranks && agree && engine_.any_rank(stop && stop->load())) return;
  }
}

}  // namespace anvil
