// What `anvil train` shows while it runs and writes for later: the progress
// display, the closing summary and the metrics file (one JSON object a line).
//
// The train loop reads the loss back from the device only on logged steps
// (every --log-every steps, plus the first and the last), so the reporter
// never adds a host sync to the other steps: it is only told about logged steps.
//
//   TrainReporter report(stdout, isatty(fileno(stdout)), metrics ? &writer : nullptr);
//   report.begin(steps, steps_per_epoch, batch);
//   for (step = 1..steps) {
//     const bool logged = step == 1 || step % log_every == 0 || step == steps;
//     if (logged) loss = engine.train_step();  // reads the loss back: one sync
//     else engine.enqueue_train_step();        // no sync
//     if (validating) report.validation(step, val_loss);
//     if (logged) report.log(step, epoch, loss, lr);
//   }
//   report.end();
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>

namespace anvil::cli {

// Seconds on a monotonic clock. Tests inject their own.
using Clock = std::function<double()>;
double steady_seconds();

// "12.3s", "4m05s", "1h02m03s".
std::string format_duration(double seconds);

// One logged step, as the metrics file stores it.
struct MetricsRecord {
  int64_t step = 0;
  int64_t epoch = 0;
  double loss = 0;
  std::optional<double> val_loss;   // the latest validation loss, if any yet
  std::optional<int64_t> val_step;  // the step it was measured at
  double lr = 0;
  double elapsed_s = 0;
};

// Appends one JSON object per record to a .jsonl file, opened in append mode
// so a resumed run adds to the same file. Each line is one write(2) of the
// whole line, so a run that dies keeps what it logged, in whole lines. A line
// that does not fit (a full disk or quota, the file size limit) is refused
// before any of it is written, where that can be known beforehand (a regular
// file; its space reserved with fallocate); a write that fails midway all the
// same takes back the part of its line that got written. Either throws
// anvil::Error naming the file and the reason. Lines are not
// fsynced: a power failure may lose the last ones. Keys: step, epoch, loss, val_loss, val_step, lr,
// elapsed_s. val_loss and val_step are null before the first validation. A
// non-finite loss (or val_loss) is written as null with "loss_nonfinite": true
// (or "val_loss_nonfinite": true), since JSON has no NaN or Infinity.
class MetricsWriter {
 public:
  // Throws anvil::InputError naming the file when it cannot be opened, or where it
  // exists, is not empty and does not start as metrics lines do ({"step"): an
  // append would spoil a checkpoint or picture given by mistake. A file
  // whose last line is not ended (cut short) gets its newline before the first
  // record, so every record is a line of its own. A file this writer created
  // is removed again, when the writer goes, if no record was written to it (the
  // first one failed, or the run ended before it): no empty log is left behind.
  explicit MetricsWriter(const std::string& path);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  void write(const MetricsRecord& record);

 private:
  void remove_if_still_ours() const;

  std::string path_;
  int fd_ = -1;
  bool created_ = false;      // the file did not exist before this writer
  bool written_ = false;      // a record has been written whole
  bool end_checked_ = false;  // whether the file's last byte was looked at (before the first record)
};

// The progress display and the summary. Interactive output (a terminal)
// redraws one line in place: "\r", the ANSI erase-line "\x1b[2K", the line
// fitted to the terminal width, and no newline until end(). Otherwise every
// log() prints one plain line with every field.
//
// The smoothed loss is an exponential moving average of the logged losses with
// weight kSmoothing on the newest, divided by (1 - (1 - kSmoothing)^n) after n
// values (Adam's bias correction), so the first values are not pulled towards
// zero. A non-finite loss makes it non-finite too: the run has diverged.
// steps/s and samples/s are measured over the window since the previous log()
// (since begin() for the first), and the ETA divides the remaining steps by
// that rate.
class TrainReporter {
 public:
  static constexpr double kSmoothing = 0.1;

  // out: where the display goes (the CLI passes stdout). interactive: redraw in
  // place (the CLI passes isatty(fileno(stdout))). metrics: written on every
  // log() when given. width: the terminal width; 0 asks the terminal
  // (TIOCGWINSZ) at every redraw, falling back to 80.
  TrainReporter(std::FILE* out, bool interactive, MetricsWriter* metrics = nullptr, Clock clock = steady_seconds,
                int width = 0);
  // Ends a progress line still open, so that an error thrown out of the train
  // loop is printed on a line of its own.
  ~TrainReporter();
  TrainReporter(const TrainReporter&) = delete;
  TrainReporter& operator=(const TrainReporter&) = delete;

  // steps_per_epoch <= 0 when the data has no epochs (the seeded generator):
  // the display then leaves the epoch out. batch: samples per step.
  // first_step: the steps a resumed run had already taken (its rates count only its own).
  // samples_per_epoch: the real samples of an epoch, fewer than steps_per_epoch * batch where
  // its last batch is a keep-last partial one (padded to the batch, but only its real samples
  // count in samples/s); 0: steps_per_epoch full batches.
  void begin(int64_t total_steps, int64_t steps_per_epoch, int64_t batch, int64_t first_step = 0,
             int64_t samples_per_epoch = 0);
  // A validation loss measured after `step`; shown from the next log() on.
  void validation(int64_t step, double val_loss);
  // A logged step; val_loss, when given, is validation(step, *val_loss) first.
  void log(int64_t step, int64_t epoch, double loss, double lr, std::optional<double> val_loss = std::nullopt);
  // Ends the progress line and prints the summary: wall time, the steps trained
  // (to last_step, where training stopped; the last logged step when not given),
  // first and last loss, best validation loss and its step, mean steps/s and
  // samples/s (up to the last logged step: the steps after it were not timed).
  void end(std::optional<int64_t> last_step = std::nullopt);

  double smoothed_loss() const { return smoothed_; }
  // The errno of the first write to `out` that failed (stdio keeps only a flag), or 0.
  int write_error() const { return write_error_; }

 private:
  // At most `width` characters: parts of a line too wide are left out (samples/s,
  // the raw loss, steps/s, the epoch, the validation loss, in that order) before
  // it is cut; the step, the smoothed loss and the ETA stay.
  std::string progress_line(int64_t step, int64_t epoch, double loss, std::optional<double> steps_per_s,
                            std::optional<double> samples_per_s, size_t width) const;
  int terminal_width() const;
  double samples_between(int64_t from_step, int64_t to_step) const;  // trained by steps from_step+1..to_step
  void end_line();
  void flush();  // out, noting the first failure

  std::FILE* out_;
  bool interactive_;
  MetricsWriter* metrics_;
  Clock clock_;
  int width_;
  int write_error_ = 0;

  int64_t total_steps_ = 0, steps_per_epoch_ = 0, batch_ = 1;
  int64_t epoch_shortfall_ = 0;  // the padding rows of each epoch's last batch (keep-last), not samples
  double start_ = 0, last_time_ = 0;
  int64_t first_step_ = 0;
  int64_t last_step_ = 0, logs_ = 0;
  double ema_ = 0, smoothed_ = 0, first_loss_ = 0, last_loss_ = 0;
  std::optional<double> val_loss_, best_val_;
  int64_t val_step_ = 0, best_val_step_ = 0;
  bool line_open_ = false;  // an interactive line is drawn and not yet ended
};

}  // namespace anvil::cli
