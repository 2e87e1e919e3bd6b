// Reads everything written into a FIFO during a test, in a thread. It holds the
// read end from the start (so a writer's open does not wait) and a write end of
// its own until finish(), so the reader sees the end only after the last
// write; a FIFO that a writer replaced by a file then reads as empty, and the
// test fails instead of hanging.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <string>
#include <thread>

namespace anvil::testing {

class FifoReader {
 public:
  explicit FifoReader(const std::string& fifo)
      : read_end_(::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)),
        keeper_(read_end_ >= 0 ? ::open(fifo.c_str(), O_WRONLY | O_CLOEXEC) : -1) {
    if (keeper_ < 0 || ::fcntl(read_end_, F_SETFL, 0) != 0) return;  // blocking reads from here on
    reader_ = std::thread([this] {
      char buf[4096];
      ssize_t n;
      while ((n = ::read(read_end_, buf, sizeof buf)) > 0) bytes_.append(buf, static_cast<size_t>(n));
    });
  }
  ~FifoReader() { finish(); }
  FifoReader(const FifoReader&) = delete;
  FifoReader& operator=(const FifoReader&) = delete;

  bool opened() const { return reader_.joinable(); }

  // Everything read, once the writers other than this one are done.
  const std::string& finish() {
    if (keeper_ >= 0) ::close(keeper_);
    keeper_ = -1;
    if (reader_.joinable()) reader_.join();
    if (read_end_ >= 0) ::close(read_end_);
    read_end_ = -1;
    return bytes_;
  }

 private:
  int read_end_, keeper_;
  std::string bytes_;
  std::thread reader_;
};

}  // namespace anvil::testing
