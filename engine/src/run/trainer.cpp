#include "anvil/trainer.hpp"

#include <cmath>

#include "anvil/error.hpp"

namespace anvil {

Trainer::Trainer(Engine& engine, const Dataset& train, const Dataset* validation, const TrainOptions& options,
                 const DataOptions& data)
    : engine_(engine), validation_(validation), options_(options) {
  if ((options.epochs > 0) == (options.steps > 0))
    throw InputError("give the length of training as epochs or as steps (one of them, positive)");
  if (options.log_every < 1) throw InputError("log_every must be positive, got " + std::to_string(options.log_every));
  if (options.val_every < 0 || options.checkpoint_every < 0)
    throw InputError("val_every and checkpoint_every must not be negative");
  if (options.checkpoint_every > 0 && options.checkpoint.empty())
    throw InputError("checkpoint_every needs a checkpoint path");
  engine_.attach_data(train, data);
  steps_per_epoch_ = engine_.batches_per_epoch();
  total_steps_ = options.epochs > 0 ? options.epochs * steps_per_epoch_ : options.steps;
}

void Trainer::resume(const std::string& checkpoint) {
  const TrainPosition at = engine_.load_checkpoint(checkpoint);
  if (at.batch_in_epoch >= steps_per_epoch_)
    throw InputError(checkpoint + ": batch " + std::to_string(at.batch_in_epoch) + " of an epoch of " +
                     std::to_string(steps_per_epoch_) + " (another dataset or batch size?)");
  position_ = at;
  engine_.start_epoch(position_.epoch, position_.batch_in_epoch);
}

void Trainer::save_checkpoint(const std::string& path) const { engine_.save_checkpoint(path, position_); }

void Trainer::validate(const Callbacks& callbacks) {
  const float val = engine_.evaluate(*validation_);
  if (callbacks.on_validation) callbacks.on_validation(position_.step, val);
}

void Trainer::run(const Callbacks& callbacks, const std::atomic<bool>* stop) {
  while (position_.step < total_steps_) {
    if (stop && stop->load()) return;
    const int64_t epoch = position_.epoch;
    engine_.enqueue_train_step();
    ++position_.step;
    if (++position_.batch_in_epoch == steps_per_epoch_) {
      ++position_.epoch;
      position_.batch_in_epoch = 0;
      if (position_.step < total_steps_) engine_.start_epoch(position_.epoch);
    }
    const bool last = position_.step == total_steps_;
    const bool logged = position_.step == 1 || position_.step % options_.log_every == 0 || last;
    // The loss is read before a validation overwrites it; the validation is reported first, so the
    // step's log line carries it.
    TrainProgress progress{position_.step, total_steps_, epoch, 0.f, 0.f};
    if (logged) {
      progress.loss = engine_.last_loss();
      progress.lr = engine_.learning_rate();
      if (!std::isfinite(progress.loss))
        throw Error("step " + std::to_string(position_.step) + ": the loss became " + std::to_string(progress.loss));
    }
    if (validation_ && (last || (options_.val_every > 0 && position_.step % options_.val_every == 0)))
      validate(callbacks);
    if (logged && callbacks.on_log) callbacks.on_log(progress);
    if (options_.checkpoint_every > 0 && position_.step % options_.checkpoint_every == 0) {
      save_checkpoint(options_.checkpoint);
      if (callbacks.on_checkpoint) callbacks.on_checkpoint(position_.step);
    }
  }
}

}  // namespace anvil
