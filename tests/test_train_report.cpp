// Tests of the progress display, the summary and the metrics file of
// `anvil train` (tools/train_report.cpp), with an injected clock, and of what a
// program using them shows on a pseudo-terminal against a pipe.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "tests/contains.hpp"
#include "tests/temp_dir_test.hpp"
#include "anvil/error.hpp"
#include "tests/terminal_run.hpp"
#include "tools/train_report.hpp"

namespace {

using anvil::testing::Contains;

namespace fs = std::filesystem;
using anvil::cli::MetricsWriter;
using anvil::cli::TrainReporter;
using anvil::testing::read_bytes;
using anvil::testing::with_file_size_limit;

// A file the reporter writes to, read back as text.
class Capture {
 public:
  Capture() : file_(std::tmpfile()) {}
  ~Capture() { std::fclose(file_); }
  std::FILE* file() const { return file_; }
  std::string text() const {
    std::fflush(file_);
    std::rewind(file_);
    std::string s;
    for (int c; (c = std::fgetc(file_)) != EOF;) s += static_cast<char>(c);
    return s;
  }

 private:
  std::FILE* file_;
};

// A clock the test moves by hand.
struct FakeClock {
  double now = 0;
  anvil::cli::Clock clock() {
    return [this] { return now; };
  }
};

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(text);
  while (std::getline(in, part, sep)) parts.push_back(part);
  return parts;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = 0; (at = s.find(from, at)) != std::string::npos; at += to.size()) s.replace(at, from.size(), to);
  return s;
}

class MetricsFile : public anvil::testing::TempDirTest {
 protected:
  // Every line parsed; a line that does not parse fails the test.
  static std::vector<nlohmann::json> read_jsonl(const std::string& file) {
    std::vector<nlohmann::json> records;
    std::ifstream in(file);
    int number = 0;
    for (std::string line; std::getline(in, line);) {
      ++number;
      try {
        records.push_back(nlohmann::json::parse(line));
      } catch (const nlohmann::json::exception& e) {
        ADD_FAILURE() << file << ":" << number << " is not JSON: " << e.what() << "\n  " << line;
      }
    }
    return records;
  }
};

TEST(TrainReport, PlainOutputIsOneLinePerLogWithEveryField) {
  Capture out;
  FakeClock t;
  TrainReporter report(out.file(), /*interactive=*/false, nullptr, t.clock());
  report.begin(100, 10, 4);
  t.now = 1;
  report.log(1, 1, 2.0, 0.01);
  t.now = 2;
  report.log(10, 1, 1.0, 0.01, 1.5);
  const std::string text = out.text();
  EXPECT_EQ(text.find('\r'), std::string::npos);
  EXPECT_EQ(text.find('\x1b'), std::string::npos);
  const std::vector<std::string> lines = split(text, '\n');
  ASSERT_EQ(lines.size(), 2u) << text;
  EXPECT_EQ(lines[0], "step 1/100  epoch 1/10  loss 2  smoothed 2  1.00 steps/s  4.0 samples/s  ETA 1m39s");
  // Steps 2..10 in one second: 9 steps/s, 36 samples/s, 90 steps left.
  EXPECT_EQ(lines[1],
            "step 10/100  epoch 1/10  loss 1  smoothed 1.47368  val 1.5  9.00 steps/s  36.0 samples/s  ETA 10.0s");
}

TEST(TrainReport, LeavesTheEpochOutWithoutEpochs) {
  Capture out;
  FakeClock t;
  TrainReporter report(out.file(), false, nullptr, t.clock());
  report.begin(5, 0, 1);
  report.log(1, 0, 1.0, 0.1);  // the clock did not move: no rate yet
  const std::string text = out.text();
  EXPECT_EQ(text.find("epoch"), std::string::npos) << text;
  EXPECT_PRED_FORMAT2(Contains, text, "- steps/s  - samples/s  ETA -");
}

TEST(TrainReport, InteractiveRedrawsOneLineCutToTheWidth) {
  Capture out;
  FakeClock t;
  const int width = 50;
  TrainReporter report(out.file(), /*interactive=*/true, nullptr, t.clock(), width);
  report.begin(30, 10, 2);
  for (int64_t step = 10; step <= 30; step += 10) {
    t.now += 1;
    report.log(step, step / 10, 1.0 / static_cast<double>(step), 0.01);
  }
  const std::string drawn = out.text();
  EXPECT_EQ(drawn.find('\n'), std::string::npos) << "a newline before end(): " << drawn;
  const std::vector<std::string> draws = split(drawn, '\r');
  ASSERT_EQ(draws.size(), 4u) << drawn;  // "" then one per log
  for (size_t i = 1; i < draws.size(); ++i) {
    ASSERT_EQ(draws[i].rfind("\x1b[2K", 0), 0u) << "no erase-line: " << draws[i];
    EXPECT_LE(draws[i].size() - 4, static_cast<size_t>(width - 1)) << draws[i];
    EXPECT_PRED_FORMAT2(Contains, draws[i], "step " + std::to_string(10 * i) + "/30");
  }
  report.end();
  const std::string text = out.text();
  EXPECT_EQ(text.substr(drawn.size(), 9), "\ntrained ") << text;
}

TEST(TrainReport, AnOpenLineIsEndedWhenTheReporterGoes) {
  Capture out;
  {
    FakeClock t;
    TrainReporter report(out.file(), true, nullptr, t.clock());
    report.begin(10, 0, 1);
    t.now = 1;
    report.log(1, 0, 0.5, 0.01);
    EXPECT_EQ(out.text().back(), 's');  // "... ETA 9.0s", and no newline yet
  }
  EXPECT_EQ(out.text().back(), '\n');
}

TEST(TrainReport, ALineTooWideLeavesTheLeastUsefulPartsOut) {
  Capture out;
  FakeClock t;
  TrainReporter report(out.file(), true, nullptr, t.clock());  // not a terminal: 80 columns
  report.begin(1000000, 1000, 1000000);
  t.now = 1e-3;
  report.log(1, 1, 123456.789, 0.01, 98765.4321);
  // samples/s and the raw loss go first; still 85 columns wide with steps/s, so it goes too.
  EXPECT_EQ(out.text(), "\r\x1b[2Kstep 1/1000000  epoch 1/1000  smoothed 123457  val 98765.4  ETA 16m40s");
}

TEST(TrainReport, ALineCutWhenEvenTheEssentialsAreTooWide) {
  Capture out;
  FakeClock t;
  TrainReporter report(out.file(), true, nullptr, t.clock(), 20);
  report.begin(1000, 0, 1);
  t.now = 1;
  report.log(1, 0, 0.5, 0.01);
  EXPECT_EQ(out.text(), "\r\x1b[2Kstep 1/1000  smooth");  // 19 columns
}

TEST(TrainReport, SmoothedLossIsABiasCorrectedMovingAverage) {
  Capture out;
  FakeClock t;
  TrainReporter report(out.file(), false, nullptr, t.clock());
  report.begin(3, 0, 1);
  report.log(1, 0, 4.0, 0.1);
  EXPECT_DOUBLE_EQ(report.smoothed_loss(), 4.0);  // corrected: not 0.4
  report.log(2, 0, 2.0, 0.1);
  // (0.9 * 0.4 + 0.1 * 2) / (1 - 0.9^2)
  EXPECT_NEAR(report.smoothed_loss(), 0.56 / 0.19, 1e-12);
  report.log(3, 0, std::numeric_limits<double>::quiet_NaN(), 0.1);
  EXPECT_TRUE(std::isnan(report.smoothed_loss()));
  EXPECT_PRED_FORMAT2(Contains, out.text(), "loss nan");
}

TEST(TrainReport, SummaryHasTheTimeLossesBestValidationAndThroughput) {
  Capture out;
  FakeClock t;
  TrainReporter report(out.file(), false, nullptr, t.clock());
  report.begin(50, 25, 4);
  t.now = 0.5;
  report.log(1, 1, 2.0, 0.01);
  report.validation(25, 0.3);
  report.validation(40, std::numeric_limits<double>::quiet_NaN());  // never the best
  t.now = 5;
  report.log(50, 2, 0.5, 0.01, 0.4);
  t.now = 6;
  report.end();
  const std::vector<std::string> lines = split(out.text(), '\n');
  ASSERT_EQ(lines.size(), 6u) << out.text();
  EXPECT_EQ(lines[2], "trained 50 steps in 6.0s");
  EXPECT_PRED_FORMAT2(Contains, lines[3], "loss: first 2, last 0.5 (smoothed ");
  EXPECT_EQ(lines[4], "best validation loss: 0.3 at step 25");
  // 50 steps up to the last log, at 5 s: 10 steps/s, 40 samples/s.
  EXPECT_EQ(lines[5], "throughput: 10.00 steps/s, 40.0 samples/s");
}

// Stopped past the last logged step (a signal): the summary counts the steps to where it stopped;
// the throughput still covers the timed steps, to the last log.
TEST(TrainReport, SummaryCountsTheStepsToWhereTrainingStopped) {
  Capture out;
  FakeClock t;
  TrainReporter report(out.file(), false, nullptr, t.clock());
  report.begin(100, 0, 2, 3);  // resumed at step 3
  t.now = 1;
  report.log(13, 0, 1.0, 0.01);
  t.now = 2;
  report.end(17);
  const std::vector<std::string> lines = split(out.text(), '\n');
  ASSERT_EQ(lines.size(), 4u) << out.text();
  EXPECT_EQ(lines[1], "trained 14 steps in 2.0s");
  EXPECT_EQ(lines[3], "throughput: 10.00 steps/s, 20.0 samples/s");
}

// --keep-last: each epoch of 10 samples is batches of 4, 4 and 2, the last padded to 4 rows. samples/s
// counts the 2 real samples of that batch, not its 4 rows, in the progress lines and in the summary.
TEST(TrainReport, SamplesPerSecondCountsOnlyTheRealSamplesOfAPartialLastBatch) {
  Capture out;
  FakeClock t;
  TrainReporter report(out.file(), false, nullptr, t.clock());
  report.begin(6, 3, 4, 0, 10);
  for (int64_t step = 2; step <= 6; step += 2) {
    t.now += 1;
    report.log(step, (step - 1) / 3 + 1, 1.0, 0.01);
  }
  report.end();
  const std::vector<std::string> lines = split(out.text(), '\n');
  ASSERT_EQ(lines.size(), 6u) << out.text();
  EXPECT_PRED_FORMAT2(Contains, lines[0], "  2.00 steps/s  8.0 samples/s  ");  // steps 1, 2: 4 + 4
  EXPECT_PRED_FORMAT2(Contains, lines[1], "  2.00 steps/s  6.0 samples/s  ");  // steps 3, 4: 2 + 4
  EXPECT_PRED_FORMAT2(Contains, lines[2], "  2.00 steps/s  6.0 samples/s  ");  // steps 5, 6: 4 + 2
  EXPECT_EQ(lines[5], "throughput: 2.00 steps/s, 6.7 samples/s");              // 20 samples in 3 s

  // Resumed at step 2: step 3 still ends the first epoch (its batch is the partial one).
  Capture resumed;
  TrainReporter again(resumed.file(), false, nullptr, t.clock());
  t.now = 0;
  again.begin(6, 3, 4, 2, 10);
  t.now = 1;
  again.log(3, 1, 1.0, 0.01);
  EXPECT_PRED_FORMAT2(Contains, resumed.text(), "  1.00 steps/s  2.0 samples/s  ");
}

TEST(TrainReport, SummaryWithoutValidationOrLogs) {
  Capture out;
  FakeClock t;
  TrainReporter report(out.file(), true, nullptr, t.clock());
  report.begin(10, 0, 1);
  t.now = 65;
  report.end();
  EXPECT_EQ(out.text(), "trained 0 steps in 1m05s\nthroughput: - steps/s, - samples/s\n");
}

TEST(TrainReport, FormatsDurations) {
  EXPECT_EQ(anvil::cli::format_duration(0), "0.0s");
  EXPECT_EQ(anvil::cli::format_duration(59.94), "59.9s");
  EXPECT_EQ(anvil::cli::format_duration(61), "1m01s");
  EXPECT_EQ(anvil::cli::format_duration(3723), "1h02m03s");
  EXPECT_EQ(anvil::cli::format_duration(-1), "-");
  EXPECT_EQ(anvil::cli::format_duration(std::numeric_limits<double>::infinity()), "-");
}

TEST_F(MetricsFile, EveryLoggedStepIsOneJsonLineWithEveryKey) {
  const std::string file = path("run.jsonl");
  {
    MetricsWriter metrics(file);
    Capture out;
    FakeClock t;
    TrainReporter report(out.file(), false, &metrics, t.clock());
    t.now = 10;  // elapsed time counts from begin()
    report.begin(20, 10, 2);
    t.now = 11;
    report.log(1, 1, 2.5, 0.1);
    t.now = 12.5;
    report.log(10, 1, 1.25, 0.05, 1.5);
    t.now = 14;
    report.log(20, 2, 0.75, 0.025);
  }
  const std::vector<nlohmann::json> rows = read_jsonl(file);
  ASSERT_EQ(rows.size(), 3u);
  for (const nlohmann::json& row : rows)
    for (const char* key : {"step", "epoch", "loss", "val_loss", "val_step", "lr", "elapsed_s"})
      EXPECT_TRUE(row.contains(key)) << key << " missing in " << row.dump();
  EXPECT_EQ(rows[0]["step"], 1);
  EXPECT_EQ(rows[0]["epoch"], 1);
  EXPECT_EQ(rows[0]["loss"], 2.5);
  EXPECT_TRUE(rows[0]["val_loss"].is_null());
  EXPECT_TRUE(rows[0]["val_step"].is_null());
  EXPECT_EQ(rows[0]["lr"], 0.1);
  EXPECT_EQ(rows[0]["elapsed_s"], 1.0);
  EXPECT_EQ(rows[1]["val_loss"], 1.5);
  EXPECT_EQ(rows[1]["val_step"], 10);
  // The latest validation stays in later lines, with the step it was measured at.
  EXPECT_EQ(rows[2]["step"], 20);
  EXPECT_EQ(rows[2]["epoch"], 2);
  EXPECT_EQ(rows[2]["val_loss"], 1.5);
  EXPECT_EQ(rows[2]["val_step"], 10);
  EXPECT_EQ(rows[2]["lr"], 0.025);
  EXPECT_EQ(rows[2]["elapsed_s"], 4.0);
}

TEST_F(MetricsFile, NonFiniteValuesAreNullWithAFlag) {
  const std::string file = path("run.jsonl");
  {
    MetricsWriter metrics(file);
    anvil::cli::MetricsRecord r;
    r.step = 1;
    r.loss = std::numeric_limits<double>::quiet_NaN();
    metrics.write(r);
    r.step = 2;
    r.loss = std::numeric_limits<double>::infinity();
    r.val_loss = -std::numeric_limits<double>::infinity();
    r.val_step = 2;
    r.lr = std::numeric_limits<double>::infinity();  // a schedule's factor that overflowed
    metrics.write(r);
    r.step = 3;
    r.loss = 1;
    r.val_loss = 1;
    r.lr = 0.5;
    metrics.write(r);
  }
  const std::vector<nlohmann::json> rows = read_jsonl(file);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_TRUE(rows[0]["loss"].is_null());
  EXPECT_EQ(rows[0]["loss_nonfinite"], true);
  EXPECT_FALSE(rows[0].contains("val_loss_nonfinite"));  // no validation yet is not non-finite
  EXPECT_TRUE(rows[1]["loss"].is_null());
  EXPECT_EQ(rows[1]["loss_nonfinite"], true);
  EXPECT_TRUE(rows[1]["val_loss"].is_null());
  EXPECT_EQ(rows[1]["val_loss_nonfinite"], true);
  EXPECT_TRUE(rows[1]["lr"].is_null());
  EXPECT_EQ(rows[1]["lr_nonfinite"], true);
  EXPECT_EQ(rows[0]["lr"], 0.0);
  EXPECT_FALSE(rows[0].contains("lr_nonfinite"));
  EXPECT_EQ(rows[2]["loss"], 1.0);
  EXPECT_EQ(rows[2]["lr"], 0.5);
  EXPECT_FALSE(rows[2].contains("loss_nonfinite"));
  EXPECT_FALSE(rows[2].contains("val_loss_nonfinite"));
  EXPECT_FALSE(rows[2].contains("lr_nonfinite"));
}

TEST_F(MetricsFile, AppendsToWhatIsThere) {
  const std::string file = path("run.jsonl");
  std::ofstream(file) << R"({"step": 7, "loss": 3.0})" << '\n';
  {
    MetricsWriter metrics(file);
    anvil::cli::MetricsRecord r;
    r.step = 8;
    r.loss = 2;
    metrics.write(r);
  }
  {
    MetricsWriter metrics(file);
    anvil::cli::MetricsRecord r;
    r.step = 9;
    r.loss = 1;
    metrics.write(r);
  }
  const std::vector<nlohmann::json> rows = read_jsonl(file);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0]["step"], 7);
  EXPECT_EQ(rows[1]["step"], 8);
  EXPECT_EQ(rows[2]["step"], 9);
}

// Only a file that starts as metrics lines do, or is empty, is appended to: an append would spoil
// anything else given by mistake, which is refused and left as it was.
TEST_F(MetricsFile, AFileThatIsNotMetricsIsRefusedAndKept) {
  const std::string file = path("existing");
  auto opens = [&](const std::string& content) {
    std::ofstream(file, std::ios::binary | std::ios::trunc) << content;
    try {
      MetricsWriter metrics(file);
    } catch (const anvil::InputError& e) {
      EXPECT_EQ(std::string(e.what()), file + R"(: not a metrics file (it does not start with {"step"): anvil )"
                                              "appends only to its own JSON lines; give a new name, or remove it");
      std::ifstream in(file, std::ios::binary);
      EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), content);
      return false;
    }
    return true;
  };
  EXPECT_TRUE(opens(""));
  EXPECT_TRUE(opens(R"({"step":1,"loss":2})"
                    "\n"));
  EXPECT_TRUE(opens(" \n{ \t\"step\" : 1}\n"));  // JSON's whitespace
  EXPECT_TRUE(opens(R"({"st)"));                 // a first line cut short
  EXPECT_FALSE(opens(R"({"loss":2,"step":1})"));
  EXPECT_FALSE(opens(R"({"stepping":1})"));
  EXPECT_FALSE(opens(std::string("\x10\0\0\0\0\0\0\0{\"w\":{}}", 17)));  // a tensor file's start
  EXPECT_FALSE(opens("s"));
}

TEST_F(MetricsFile, AFileThatCannotBeOpenedIsBadInputNamingIt) {
  const std::string file = path("no/such/dir/run.jsonl");
  try {
    MetricsWriter metrics(file);
    FAIL() << "no error";
  } catch (const anvil::InputError& e) {
    EXPECT_PRED_FORMAT2(Contains, e.what(), file);
  }
}

TEST_F(MetricsFile, AFileItCreatedIsRemovedWhenTheRunEndsBeforeItsFirstRecord) {
  const std::string file = path("run.jsonl");
  { MetricsWriter metrics(file); }
  EXPECT_FALSE(std::filesystem::exists(file));
}

TEST_F(MetricsFile, AFileThatTookItsNameAfterwardsIsNotRemoved) {
  const std::string file = path("run.jsonl");
  {
    MetricsWriter metrics(file);
    std::filesystem::rename(file, path("moved.jsonl"));
    std::ofstream(file).close();  // another file, empty, under the name
  }
  EXPECT_TRUE(std::filesystem::exists(file));
  EXPECT_TRUE(std::filesystem::exists(path("moved.jsonl")));
}

TEST_F(MetricsFile, AFileItCreatedIsRemovedWhenTheFirstLineCannotBeWritten) {
  const std::string file = path("run.jsonl");
  {
    MetricsWriter metrics(file);
    ASSERT_TRUE(std::filesystem::exists(file));
    with_file_size_limit(10, [&] { EXPECT_THROW(metrics.write(anvil::cli::MetricsRecord{}), anvil::Error); });
  }
  EXPECT_FALSE(std::filesystem::exists(file));
}

TEST_F(MetricsFile, AFileItDidNotCreateIsKeptWhenTheFirstLineCannotBeWritten) {
  const std::string file = path("run.jsonl");
  std::ofstream(file).close();  // empty, made by someone else
  {
    MetricsWriter metrics(file);
    with_file_size_limit(10, [&] { EXPECT_THROW(metrics.write(anvil::cli::MetricsRecord{}), anvil::Error); });
  }
  ASSERT_TRUE(std::filesystem::exists(file));
  EXPECT_EQ(std::filesystem::file_size(file), 0u);
}

TEST_F(MetricsFile, AFileWithRecordsIsKeptWhenALaterLineCannotBeWritten) {
  const std::string file = path("run.jsonl");
  {
    MetricsWriter metrics(file);
    anvil::cli::MetricsRecord first;
    first.step = 1;
    metrics.write(first);
    const auto size = std::filesystem::file_size(file);
    with_file_size_limit(size + 10, [&] { EXPECT_THROW(metrics.write(anvil::cli::MetricsRecord{}), anvil::Error); });
  }
  const std::vector<nlohmann::json> rows = read_jsonl(file);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0]["step"], 1);
}

// A file marked append-only (chattr +a) while this lives: it can be appended to, not truncated.
// Marking needs CAP_LINUX_IMMUTABLE and a file system that keeps the flag; error() says why not.
class AppendOnly {
 public:
  explicit AppendOnly(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    int flags = 0;
    if (fd_ < 0 || ::ioctl(fd_, FS_IOC_GETFLAGS, &flags) != 0) {
      error_ = errno;
      return;
    }
    flags_ = flags;
    flags |= FS_APPEND_FL;
    if (::ioctl(fd_, FS_IOC_SETFLAGS, &flags) != 0) error_ = errno;
  }
  ~AppendOnly() {
    if (error_ == 0) ::ioctl(fd_, FS_IOC_SETFLAGS, &flags_);  // else the directory could not be removed
    if (fd_ >= 0) ::close(fd_);
  }
  AppendOnly(const AppendOnly&) = delete;
  AppendOnly& operator=(const AppendOnly&) = delete;
  int error() const { return error_; }

 private:
  int fd_;
  int flags_ = 0;
  int error_ = 0;
};

// A line that does not fit (the file size limit here, as a full disk) is refused before any of it
// is written: a part written would have to be truncated away, which a file marked append-only
// refuses. Such a part once stayed ("(its last line is incomplete)") for the next run to follow.
TEST_F(MetricsFile, ALineThatDoesNotFitLeavesNoPartWhereTheFileCannotBeTruncated) {
  const std::string file = path("run.jsonl");
  MetricsWriter metrics(file);
  metrics.write(anvil::cli::MetricsRecord{});
  const std::string before = read_bytes(file);
  const AppendOnly append_only(file);
  if (append_only.error() != 0)
    GTEST_SKIP() << "cannot mark a file append-only here (needs CAP_LINUX_IMMUTABLE): "
                 << std::strerror(append_only.error());
  with_file_size_limit(before.size() + 20, [&] {
    try {
      metrics.write(anvil::cli::MetricsRecord{});
      ADD_FAILURE() << "no error";
    } catch (const anvil::Error& e) {
      EXPECT_EQ(std::string(e.what()), file + ": cannot write the metrics file: File too large");
    }
  });
  EXPECT_EQ(read_bytes(file), before);
}

TEST_F(MetricsFile, AFullDiskIsAnErrorNamingTheFileAndTheReason) {
  MetricsWriter metrics("/dev/full");  // every write fails with ENOSPC
  try {
    metrics.write(anvil::cli::MetricsRecord{});
    FAIL() << "no error";
  } catch (const anvil::Error& e) {
    EXPECT_EQ(std::string(e.what()), "/dev/full: cannot write the metrics file: No space left on device");
  }
}

// A program using the reporter the way `anvil train` does
// (tests/helpers/train_report_demo.cpp): on a terminal it redraws one line in
// place, cut to the terminal's width; on a pipe it prints plain lines.
TEST(TrainReportTerminal, RedrawsInPlaceOnATerminal) {
  const int columns = 60;
  const anvil::testing::ChildOutput r = anvil::testing::run_child({ANVIL_TRAIN_REPORT_DEMO}, true, columns);
  ASSERT_FALSE(r.timed_out);
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string text = replace_all(r.out, "\r\n", "\n");  // the terminal's own output translation
  const size_t first_newline = text.find('\n');
  ASSERT_NE(first_newline, std::string::npos) << text;
  const std::vector<std::string> draws = split(text.substr(0, first_newline), '\r');
  ASSERT_EQ(draws.size(), 6u) << text;  // "" then steps 1, 5, 10, 15, 20
  for (size_t i = 1; i < draws.size(); ++i) {
    ASSERT_EQ(draws[i].rfind("\x1b[2K", 0), 0u) << "no erase-line: " << draws[i];
    EXPECT_LE(draws[i].size() - 4, static_cast<size_t>(columns - 1)) << draws[i];
  }
  // On 60 columns the last line keeps the step, the smoothed loss, the validation loss and the ETA.
  EXPECT_EQ(draws.back().rfind("\x1b[2Kstep 20/20  smoothed 0.242461  val 0.075  ETA 0.0s", 0), 0u) << draws.back();
  EXPECT_PRED_FORMAT2(Contains, text.substr(first_newline), "\ntrained 20 steps in ");
  EXPECT_PRED_FORMAT2(Contains, text, "best validation loss: 0.075 at step 20\n");
}

TEST(TrainReportTerminal, PrintsPlainLinesOnAPipe) {
  const anvil::testing::ChildOutput r = anvil::testing::run_child({ANVIL_TRAIN_REPORT_DEMO}, false);
  ASSERT_FALSE(r.timed_out);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(r.out.find('\r'), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find('\x1b'), std::string::npos) << r.out;
  const std::vector<std::string> lines = split(r.out, '\n');
  ASSERT_EQ(lines.size(), 5u + 4u) << r.out;  // five logged steps, then the summary
  const char* steps[] = {"step 1/20  epoch 1/2", "step 5/20  epoch 1/2", "step 10/20  epoch 1/2",
                         "step 15/20  epoch 2/2", "step 20/20  epoch 2/2"};
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(lines[i].rfind(steps[i], 0), 0u) << lines[i];
    EXPECT_PRED_FORMAT2(Contains, lines[i], " steps/s  ");
    EXPECT_PRED_FORMAT2(Contains, lines[i], " samples/s  ETA ");
  }
  EXPECT_PRED_FORMAT2(Contains, lines[2], "val 0.15  ");
  EXPECT_EQ(lines[5].rfind("trained 20 steps in ", 0), 0u) << lines[5];
}

}  // namespace
