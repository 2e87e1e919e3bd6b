// A test fixture with a fresh temporary directory, removed after the test,
// the whole-file reads and writes the tests of files make, and a full disk.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace anvil::testing {

// A file's bytes; empty if it cannot be read.
inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A full disk, simulated with the file size limit (RLIMIT_FSIZE): a write that would take a file past
// `bytes` fails with EFBIG ("File too large"), as one on a full disk fails with ENOSPC, where SIGXFSZ
// is ignored (anvil ignores it); at its default action the signal ends the process. on_xfsz: SIG_IGN
// or SIG_DFL. Only the soft limit is lowered, so that it can be put back; plain system calls only,
// so a forked child can call it before exec. False where the limit or the action was not set.
inline bool limit_file_size(rlim_t bytes, void (*on_xfsz)(int)) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_FSIZE, &limit) != 0) return false;
  limit.rlim_cur = bytes;
  struct sigaction action {};
  action.sa_handler = on_xfsz;
  return ::sigaction(SIGXFSZ, &action, nullptr) == 0 && ::setrlimit(RLIMIT_FSIZE, &limit) == 0;
}

// limit_file_size(bytes, SIG_IGN) in this process while `f` runs: writes past `bytes` fail, as on a
// full disk; the limit and SIGXFSZ's action are put back however `f` ends.
template <class F>
void with_file_size_limit(rlim_t bytes, F f) {
  rlimit limit{};
  struct sigaction action {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &limit), 0);
  ASSERT_EQ(::sigaction(SIGXFSZ, nullptr, &action), 0);
  struct Restore {
    const rlimit& limit;
    const struct sigaction& action;
    ~Restore() {
      ::sigaction(SIGXFSZ, &action, nullptr);
      ::setrlimit(RLIMIT_FSIZE, &limit);
    }
  } restore{limit, action};
  ASSERT_TRUE(limit_file_size(bytes, SIG_IGN)) << "cannot set the file size limit to " << bytes << " bytes";
  f();
}

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "anvil_test_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr)
        << "cannot create a temporary directory under " << ::testing::TempDir();
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  std::string dir_;
};

}  // namespace anvil::testing
