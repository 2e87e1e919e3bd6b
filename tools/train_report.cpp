#include "tools/train_report.hpp"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "anvil/error.hpp"

namespace anvil::cli {

namespace {

std::string format(const char* fmt, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, value);
  return buf;
}

// a / b, or nothing when b is not positive (the clock did not move, no rate yet).
std::optional<double> ratio(double a, double b) {
  if (!(b > 0)) return std::nullopt;
  return a / b;
}

// The value, or "-" when it is not known.
std::string format_or_dash(const char* fmt, std::optional<double> value) { return value ? format(fmt, *value) : "-"; }

}  // namespace

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "-";
  if (seconds < 60) return format("%.1fs", seconds);
  const long long s = std::llround(seconds);
  char buf[64];
  if (s < 3600)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%lldh%02lldm%02llds", s / 3600, s / 60 % 60, s % 60);
  return buf;
}

namespace {

// Whether a file starts as metrics lines do, with {"step" (JSON whitespace allowed; a first line cut
// short, a start of it), or cannot be read to tell. An append to anything else (a checkpoint or a
// picture given by mistake) would spoil it. Read through a descriptor of its own, as ends_mid_line.
bool starts_as_metrics(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true;
  char head[64];
  const ssize_t n = ::pread(fd, head, sizeof head, 0);
  ::close(fd);
  const std::string start = "{\"step\"";
  size_t matched = 0;
  for (ssize_t i = 0; i < n && matched < start.size(); ++i) {
    const bool space = head[i] == ' ' || head[i] == '\t' || head[i] == '\n' || head[i] == '\r';
    if (space && matched < 2) continue;  // before the brace, or between it and the key
    if (head[i] != start[matched]) return false;
    ++matched;
  }
  return true;
}

}  // namespace

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
  // Created here (O_EXCL), or a name that exists appended to (through a symlink, as before).
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0666);
  created_ = fd_ >= 0;
  if (!created_ && errno == EEXIST) fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
  if (fd_ < 0) throw InputError(path + ": cannot open the metrics file for appending: " + std::strerror(errno));
  struct stat st {};
  if (!created_ && ::fstat(fd_, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 && !starts_as_metrics(path)) {
    ::close(fd_);
    throw InputError(path +
                     ": not a metrics file (it does not start with {\"step\"): anvil appends only to its own "
                     "JSON lines; give a new name, or remove it");
  }
}

namespace {

// Whether a regular file's last byte is not a newline (a line cut short). Read through a descriptor of
// its own: the writer's stays write-only, so a pipe or FIFO keeps the reader it had, and no other.
bool ends_mid_line(const std::string& path, const struct stat& st) {
  if (!S_ISREG(st.st_mode) || st.st_size == 0) return false;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;  // unreadable (write-only): left as it is
  char last = '\n';
  const bool read = ::pread(fd, &last, 1, st.st_size - 1) == 1;
  ::close(fd);
  return read && last != '\n';
}

// Why `bytes` more cannot be appended to the file `st` describes, known before writing any of them:
// past the file size limit, or no disk space (or quota) to reserve for them. 0 where they fit, or
// where that cannot be known beforehand (not a regular file, a file system without fallocate).
int no_room_to_append(int fd, const struct stat& st, size_t bytes) {
  if (!S_ISREG(st.st_mode)) return 0;
  rlimit limit{};
  if (::getrlimit(RLIMIT_FSIZE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
      static_cast<rlim_t>(st.st_size) + bytes > limit.rlim_cur)
    return EFBIG;
  // KEEP_SIZE: the blocks are reserved past the end, and the size stays until the write.
  if (::fallocate(fd, FALLOC_FL_KEEP_SIZE, st.st_size, static_cast<off_t>(bytes)) != 0 &&
      (errno == ENOSPC || errno == EDQUOT))
    return errno;
  return 0;
}

}  // namespace

MetricsWriter::~MetricsWriter() {
  if (created_ && !written_) remove_if_still_ours();  // a run that ended before its first record
  ::close(fd_);
}

void MetricsWriter::write(const MetricsRecord& r) {
  nlohmann::ordered_json j;  // ordered: the keys read in the order documented
  j["step"] = r.step;
  j["epoch"] = r.epoch;
  // JSON has no NaN: a non-finite value is null plus a flag saying why.
  const bool loss_ok = std::isfinite(r.loss);
  j["loss"] = loss_ok ? nlohmann::ordered_json(r.loss) : nullptr;
  if (!loss_ok) j["loss_nonfinite"] = true;
  const bool val_ok = r.val_loss && std::isfinite(*r.val_loss);
  j["val_loss"] = val_ok ? nlohmann::ordered_json(*r.val_loss) : nullptr;
  if (r.val_loss && !val_ok) j["val_loss_nonfinite"] = true;
  j["val_step"] = r.val_step ? nlohmann::ordered_json(*r.val_step) : nullptr;
  const bool lr_ok = std::isfinite(r.lr);  // a schedule's factor can overflow float
  j["lr"] = lr_ok ? nlohmann::ordered_json(r.lr) : nullptr;
  if (!lr_ok) j["lr_nonfinite"] = true;
  j["elapsed_s"] = r.elapsed_s;
  std::string line = j.dump() + '\n';
  struct stat before {};
  const bool sized = ::fstat(fd_, &before) == 0;
  if (!end_checked_ && sized && ends_mid_line(path_, before)) line.insert(0, 1, '\n');
  end_checked_ = true;
  const auto cannot_write = [this](int err, bool torn) {
    return Error(path_ + ": cannot write the metrics file: " + std::strerror(err) +
                 (torn ? " (its last line is incomplete)" : ""));
  };
  // A line that cannot fit is refused whole, before any of it is written: taking back a part
  // afterwards needs ftruncate, which a file marked append-only (or a full copy-on-write file
  // system, or one remounted read-only) refuses.
  if (const int err = sized ? no_room_to_append(fd_, before, line.size()) : 0) throw cannot_write(err, false);
  for (size_t done = 0; done < line.size();) {
    const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);  // one call, unless the disk fills
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      // No part of a line may stay behind for a resumed run to append to.
      const bool torn = done > 0 && !(sized && ::ftruncate(fd_, before.st_size) == 0);
      throw cannot_write(err, torn);
    }
    done += static_cast<size_t>(n);
  }
  written_ = true;
}

// The empty file this writer created, unless something else has taken its name since (lstat: a
// symlink put there is not ours).
void MetricsWriter::remove_if_still_ours() const {
  struct stat mine {
  }, named{};
  if (::fstat(fd_, &mine) == 0 && ::lstat(path_.c_str(), &named) == 0 && mine.st_dev == named.st_dev &&
      mine.st_ino == named.st_ino && mine.st_size == 0)
    ::unlink(path_.c_str());
}

TrainReporter::TrainReporter(std::FILE* out, bool interactive, MetricsWriter* metrics, Clock clock, int width)
    : out_(out), interactive_(interactive), metrics_(metrics), clock_(std::move(clock)), width_(width) {}

TrainReporter::~TrainReporter() { end_line(); }

void TrainReporter::end_line() {
  if (!line_open_) return;
  std::fputc('\n', out_);
  flush();
  line_open_ = false;
}

void TrainReporter::begin(int64_t total_steps, int64_t steps_per_epoch, int64_t batch, int64_t first_step,
                          int64_t samples_per_epoch) {
  first_step_ = last_step_ = first_step;
  total_steps_ = total_steps;
  steps_per_epoch_ = steps_per_epoch;
  batch_ = batch;
  epoch_shortfall_ = steps_per_epoch > 0 && samples_per_epoch > 0 ? steps_per_epoch * batch - samples_per_epoch : 0;
  start_ = last_time_ = clock_();
}

// Whole batches, less the padding of each epoch's last batch among them: only the last batch of an
// epoch can be partial, so each epoch that ended in the range lacks the same shortfall.
double TrainReporter::samples_between(int64_t from_step, int64_t to_step) const {
  double samples = static_cast<double>(to_step - from_step) * static_cast<double>(batch_);
  if (steps_per_epoch_ > 0)
    samples -= static_cast<double>(to_step / steps_per_epoch_ - from_step / steps_per_epoch_) *
               static_cast<double>(epoch_shortfall_);
  return samples;
}

void TrainReporter::validation(int64_t step, double val_loss) {
  val_loss_ = val_loss;
  val_step_ = step;
  if (std::isfinite(val_loss) && (!best_val_ || val_loss < *best_val_)) {
    best_val_ = val_loss;
    best_val_step_ = step;
  }
}

void TrainReporter::flush() {
  errno = 0;
  if (std::fflush(out_) != 0 && write_error_ == 0) write_error_ = errno != 0 ? errno : EIO;
}

void TrainReporter::log(int64_t step, int64_t epoch, double loss, double lr, std::optional<double> val_loss) {
  if (val_loss) validation(step, *val_loss);
  const double now = clock_();
  const std::optional<double> steps_per_s = ratio(static_cast<double>(step - last_step_), now - last_time_);
  const std::optional<double> samples_per_s = ratio(samples_between(last_step_, step), now - last_time_);
  last_step_ = step;
  last_time_ = now;

  ema_ = (1 - kSmoothing) * ema_ + kSmoothing * loss;
  ++logs_;
  smoothed_ = ema_ / (1 - std::pow(1 - kSmoothing, static_cast<double>(logs_)));
  if (logs_ == 1) first_loss_ = loss;
  last_loss_ = loss;

  if (interactive_) {
    // One column short of the width: writing the last column makes some
    // terminals wrap, and the next "\r" would then redraw one line down.
    const size_t cols = static_cast<size_t>(terminal_width() - 1);
    std::fprintf(out_, "\r\x1b[2K%s", progress_line(step, epoch, loss, steps_per_s, samples_per_s, cols).c_str());
    line_open_ = true;
  } else {
    std::fprintf(out_, "%s\n", progress_line(step, epoch, loss, steps_per_s, samples_per_s, std::string::npos).c_str());
  }
  flush();

  if (metrics_) {
    MetricsRecord r;
    r.step = step;
    r.epoch = epoch;
    r.loss = loss;
    r.lr = lr;
    r.elapsed_s = now - start_;
    if (val_loss_) {
      r.val_loss = val_loss_;
      r.val_step = val_step_;
    }
    metrics_->write(r);
  }
}

std::string TrainReporter::progress_line(int64_t step, int64_t epoch, double loss, std::optional<double> steps_per_s,
                                         std::optional<double> samples_per_s, size_t width) const {
  struct Part {
    std::string text;
    int rank;  // the order in which parts are left out of a line too wide; 0: never
  };
  std::vector<Part> parts{{"step " + std::to_string(step) + "/" + std::to_string(total_steps_), 0}};
  if (steps_per_epoch_ > 0) {
    const int64_t epochs = (total_steps_ + steps_per_epoch_ - 1) / steps_per_epoch_;
    parts.push_back({"epoch " + std::to_string(epoch) + "/" + std::to_string(epochs), 4});
  }
  parts.push_back({"loss " + format("%.6g", loss), 2});
  parts.push_back({"smoothed " + format("%.6g", smoothed_), 0});
  if (val_loss_) parts.push_back({"val " + format("%.6g", *val_loss_), 5});
  parts.push_back({format_or_dash("%.2f", steps_per_s) + " steps/s", 3});
  parts.push_back({format_or_dash("%.1f", samples_per_s) + " samples/s", 1});
  const std::optional<double> eta =
      step >= total_steps_ ? 0.0 : ratio(static_cast<double>(total_steps_ - step), steps_per_s.value_or(0));
  parts.push_back({"ETA " + (eta ? format_duration(*eta) : "-"), 0});

  const auto join = [&parts] {
    std::string line;
    for (const Part& p : parts) line += (line.empty() ? "" : "  ") + p.text;
    return line;
  };
  std::string line = join();
  for (int rank = 1; line.size() > width && rank <= 5; ++rank) {
    parts.erase(std::remove_if(parts.begin(), parts.end(), [rank](const Part& p) { return p.rank == rank; }),
                parts.end());
    line = join();
  }
  if (line.size() > width) line.resize(width);
  return line;
}

int TrainReporter::terminal_width() const {
  if (width_ > 0) return width_;
  winsize ws{};
  if (ioctl(fileno(out_), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1) return ws.ws_col;
  return 80;
}

void TrainReporter::end(std::optional<int64_t> last_step) {
  end_line();
  const double wall = clock_() - start_;
  std::fprintf(out_, "trained %lld steps in %s\n", static_cast<long long>(last_step.value_or(last_step_) - first_step_),
               format_duration(wall).c_str());
  if (logs_ > 0)
    std::fprintf(out_, "loss: first %.6g, last %.6g (smoothed %.6g)\n", first_loss_, last_loss_, smoothed_);
  if (best_val_)
    std::fprintf(out_, "best validation loss: %.6g at step %lld\n", *best_val_, static_cast<long long>(best_val_step_));
  // Up to the last logged step: the steps after it were not timed.
  const std::optional<double> steps_per_s = ratio(static_cast<double>(last_step_ - first_step_), last_time_ - start_);
  const std::optional<double> samples_per_s = ratio(samples_between(first_step_, last_step_), last_time_ - start_);
  std::fprintf(out_, "throughput: %s steps/s, %s samples/s\n", format_or_dash("%.2f", steps_per_s).c_str(),
               format_or_dash("%.1f", samples_per_s).c_str());
  flush();
}

}  // namespace anvil::cli
