// A stand-in for `anvil train` that drives TrainReporter the way the CLI does,
// interactive exactly when stdout is a terminal. The pseudo-terminal test in
// tests/test_train_report.cpp runs it on a terminal and on a pipe.
// 20 steps of batch 4, 10 steps an epoch, logged every 5 steps and at step 1,
// validated every 10 steps; the loss is 1/step.
#include <unistd.h>

#include <cstdio>

#include "tools/train_report.hpp"

int main() {
  const int64_t steps = 20, log_every = 5, steps_per_epoch = 10;
  anvil::cli::TrainReporter report(stdout, isatty(STDOUT_FILENO) == 1);
  report.begin(steps, steps_per_epoch, 4);
  for (int64_t step = 1; step <= steps; ++step) {
    if (step % 10 == 0) report.validation(step, 1.5 / static_cast<double>(step));
    if (step == 1 || step % log_every == 0 || step == steps)
      report.log(step, (step - 1) / steps_per_epoch + 1, 1.0 / static_cast<double>(step), 0.01);
  }
  report.end();
  return 0;
}
