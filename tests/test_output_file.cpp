// Tests of write_output_file (anvil/output_file.hpp), the one writer of whole
// files: whatever goes wrong during a write (a failed write, an exception from
// the caller's writer, SIGINT or SIGTERM, the file size limit), the destination keeps its old
// contents and no temporary file remains.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <grp.h>
#include <linux/fs.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "anvil/error.hpp"
#include "anvil/network.hpp"
#include "anvil/output_file.hpp"
#include "anvil/safetensors.hpp"
#include "tests/fifo_reader.hpp"
#include "tests/temp_dir_test.hpp"

namespace {

namespace fs = std::filesystem;
using anvil::testing::read_bytes;

bool put(std::FILE* f, const std::string& text) { return std::fwrite(text.data(), 1, text.size(), f) == text.size(); }

class OutputFile : public anvil::testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    target_ = path("out.txt");
    std::ofstream(target_, std::ios::binary) << kOld;
  }

  // Every name in the directory: only the destination may be there.
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& e : fs::directory_iterator(dir_)) n.push_back(e.path().filename().string());
    return n;
  }

  void expect_untouched() const {
    EXPECT_EQ(read_bytes(target_), kOld);
    EXPECT_EQ(names(), std::vector<std::string>{"out.txt"});
  }

  static constexpr const char* kOld = "the old contents\n";
  std::string target_;
};

// A path with a NUL byte would name the file before it to the system calls (here out.txt): every
// writer and reader refuses it by that reason instead, and out.txt stays as it was.
TEST_F(OutputFile, APathWithANulByteIsRefusedByEveryWriterAndReader) {
  const std::string nul_path = target_ + std::string("\0.safetensors", 13);
  const std::string want = target_ + ": the path has a NUL byte at offset " + std::to_string(target_.size()) +
                           " (a file name cannot hold one)";
  const std::vector<std::pair<std::string, std::function<void()>>> calls = {
      {"write_output_file", [&] { anvil::write_output_file(nul_path, [](std::FILE* f) { return put(f, "x"); }); }},
      {"check_output_path", [&] { anvil::check_output_path(nul_path); }},
      {"output_target", [&] { anvil::output_target(nul_path); }},
      {"same_file_key", [&] { anvil::same_file_key(nul_path); }},
      {"InputFile::read_now", [&] { anvil::InputFile::read_now(nul_path); }},
      {"write_safetensors", [&] { anvil::write_safetensors(nul_path, anvil::TensorFile{}); }},
      {"read_safetensors", [&] { anvil::read_safetensors(nul_path); }},
      {"Network::load", [&] { anvil::Network::load(nul_path); }}};
  for (const auto& [name, call] : calls) {
    try {
      call();
      ADD_FAILURE() << name << ": no error";
    } catch (const anvil::InputError& e) {
      EXPECT_EQ(std::string(e.what()), want) << name;
    }
  }
  expect_untouched();
}

TEST_F(OutputFile, ReplacesTheFileAndLeavesNothingElse) {
  anvil::write_output_file(target_, [](std::FILE* f) { return put(f, "new\n"); });
  EXPECT_EQ(read_bytes(target_), "new\n");
  EXPECT_EQ(names(), std::vector<std::string>{"out.txt"});
}

// A symlink is written through: the link stays, its target (made where it
// dangles) gets the contents, and the temporary goes next to the target.
TEST_F(OutputFile, WritesThroughASymlink) {
  fs::create_directories(path("sub"));
  const std::string link = path("sub/link");
  fs::create_symlink("../out.txt", link);  // relative to the link's own directory
  anvil::write_output_file(link, [](std::FILE* f) { return put(f, "through\n"); });
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(read_bytes(target_), "through\n");
  const std::string dangling = path("dangling");
  fs::create_symlink("made.txt", dangling);
  anvil::write_output_file(dangling, [](std::FILE* f) { return put(f, "made\n"); });
  EXPECT_TRUE(fs::is_symlink(dangling));
  EXPECT_EQ(read_bytes(path("made.txt")), "made\n");
  EXPECT_EQ(std::distance(fs::directory_iterator(path("sub")), fs::directory_iterator()), 1);  // the link alone
}

// A FIFO is written into, never replaced by a file.
TEST_F(OutputFile, WritesIntoAFifo) {
  const std::string fifo = path("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  anvil::testing::FifoReader reader(fifo);
  ASSERT_TRUE(reader.opened());
  anvil::write_output_file(fifo, [](std::FILE* f) { return put(f, "piped\n"); });
  EXPECT_EQ(reader.finish(), "piped\n");
  EXPECT_EQ(fs::symlink_status(fifo).type(), fs::file_type::fifo);
}

// A link to a pipe through /proc (as /dev/stdout is when stdout is a pipe):
// readlink gives "pipe:[...]", which names nothing; the write goes into the pipe.
TEST_F(OutputFile, WritesThroughAMagicLinkToAPipe) {
  int ends[2];
  ASSERT_EQ(::pipe(ends), 0);
  const std::string link = path("stdout_like");
  fs::create_symlink("/proc/self/fd/" + std::to_string(ends[1]), link);
  EXPECT_EQ(anvil::output_target(link), link);
  anvil::write_output_file(link, [](std::FILE* f) { return put(f, "through the pipe\n"); });
  ::close(ends[1]);
  std::string got;
  char buf[64];
  for (ssize_t n; (n = ::read(ends[0], buf, sizeof buf)) > 0;) got.append(buf, size_t(n));
  ::close(ends[0]);
  EXPECT_EQ(got, "through the pipe\n");
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(link)));
  std::vector<std::string> left = names();
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"out.txt", "stdout_like"}));
}

// A device that takes no bytes fails with its reason and stays a device.
TEST_F(OutputFile, AFullDeviceIsAnErrorAndStaysADevice) {
  ASSERT_EQ(fs::status("/dev/full").type(), fs::file_type::character);
  try {
    anvil::write_output_file("/dev/full", [](std::FILE* f) { return put(f, std::string(1 << 16, 'x')); });
    FAIL() << "no error";
  } catch (const anvil::Error& e) {
    EXPECT_EQ(std::string(e.what()), "/dev/full: cannot write: No space left on device");
  }
  EXPECT_EQ(fs::status("/dev/full").type(), fs::file_type::character);
}

// An output that must be a file (a checkpoint) is refused where write_output_file would write into a
// device or a pipe in place: the path itself, a symlink to one, or a magic link to a pipe (as
// /dev/stdout is). A file, a new name and a link to either are taken.
TEST_F(OutputFile, AnOutputThatMustBeAFileRefusesADeviceOrAPipe) {
  const std::string fifo = path("fifo"), to_null = path("to_null"), to_file = path("to_file");
  const std::string dangling = path("dangling"), to_pipe = path("stdout_like");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  fs::create_symlink("/dev/null", to_null);
  fs::create_symlink("out.txt", to_file);
  fs::create_symlink("new.txt", dangling);
  int ends[2];
  ASSERT_EQ(::pipe(ends), 0);
  fs::create_symlink("/proc/self/fd/" + std::to_string(ends[1]), to_pipe);
  const std::string tail =
      ", and a checkpoint must be a regular file or a new name (written to a temporary file, "
      "then renamed)";
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"/dev/null", "/dev/null: cannot write: it is a character device" + tail},
      {fifo, fifo + ": cannot write: it is a pipe or FIFO" + tail},
      {to_null, to_null + ": cannot write: it leads to a character device" + tail},
      {to_pipe, to_pipe + ": cannot write: it leads to a pipe or FIFO" + tail}};
  for (const auto& [p, want] : refused) {
    try {
      anvil::check_output_is_a_file(p, "a checkpoint");
      ADD_FAILURE() << p << ": no error";
    } catch (const anvil::InputError& e) {
      EXPECT_EQ(std::string(e.what()), want);
    }
  }
  ::close(ends[0]);
  ::close(ends[1]);
  for (const std::string& p : {target_, path("new.txt"), to_file, dangling})
    EXPECT_NO_THROW(anvil::check_output_is_a_file(p, "a checkpoint")) << p;
  EXPECT_EQ(fs::symlink_status(fifo).type(), fs::file_type::fifo);
  EXPECT_EQ(fs::symlink_status("/dev/null").type(), fs::file_type::character);
  EXPECT_EQ(read_bytes(target_), kOld);
}

TEST_F(OutputFile, ADirectoryOrALinkToOneIsRefused) {
  fs::create_directories(path("dir"));
  fs::create_symlink("dir", path("to_dir"));
  for (const std::string& p : {path("dir"), path("to_dir")}) {
    try {
      anvil::write_output_file(p, [](std::FILE* f) { return put(f, "x"); });
      ADD_FAILURE() << p << ": no error";
    } catch (const anvil::Error& e) {
      EXPECT_EQ(std::string(e.what()), p + ": cannot write: it is a directory");
    }
  }
  EXPECT_TRUE(fs::is_empty(path("dir")));
}

// A writer that fails partway (a full disk) is an error naming the file and the reason.
TEST_F(OutputFile, AFailedWriteKeepsTheOldFile) {
  try {
    anvil::write_output_file(target_, [](std::FILE* f) {
      put(f, "half of the new ");
      errno = ENOSPC;
      return false;
    });
    FAIL() << "no error";
  } catch (const anvil::Error& e) {
    EXPECT_EQ(std::string(e.what()), target_ + ": cannot write: No space left on device");
  }
  expect_untouched();
}

TEST_F(OutputFile, AnExceptionFromTheWriterComesOutAndKeepsTheOldFile) {
  EXPECT_THROW(anvil::write_output_file(target_,
                                        [](std::FILE* f) -> bool {
                                          put(f, "half of the new ");
                                          throw std::runtime_error("the caller's own failure");
                                        }),
               std::runtime_error);
  expect_untouched();
  // The writer is usable again (its lock and its signal state were released).
  anvil::write_output_file(target_, [](std::FILE* f) { return put(f, "new\n"); });
  EXPECT_EQ(read_bytes(target_), "new\n");
}

// A writer that starts another write would wait on itself (writes take turns):
// the inner write is refused, its Error comes out of the outer one, and
// neither file is touched.
TEST_F(OutputFile, AWriteFromInsideAWriterIsRefusedNotADeadlock) {
  const std::string inner = path("inner.txt");
  try {
    anvil::write_output_file(target_, [&](std::FILE* f) {
      anvil::write_output_file(inner, [](std::FILE* g) { return put(g, "inner\n"); });
      return put(f, "new\n");
    });
    ADD_FAILURE() << "no error";
  } catch (const anvil::Error& e) {
    EXPECT_EQ(std::string(e.what()),
              inner + ": cannot write: write_output_file was called from inside another write's writer");
  }
  expect_untouched();
  anvil::write_output_file(inner, [](std::FILE* g) { return put(g, "inner\n"); });  // usable again
  EXPECT_EQ(read_bytes(inner), "inner\n");
}

// A signal from outside whose default action ends the process, in the middle
// of a write: the process ends by that signal (128 + it, to a shell), the
// temporary file removed.
TEST_F(OutputFile, AnEndingSignalDuringAWriteRemovesTheTemporaryAndEndsTheProcess) {
  // The "fast" death test style: the child is a fork, writing into this test's directory.
  GTEST_FLAG_SET(death_test_style, "fast");
  const auto write_raising = [this](int sig) {
    ::signal(sig, SIG_DFL);      // not ignored as under nohup or in a background job
    const rlimit no_core{0, 0};  // SIGQUIT's default dumps core
    ::setrlimit(RLIMIT_CORE, &no_core);
    anvil::write_output_file(target_, [sig](std::FILE* f) {
      put(f, "half of the new ");
      std::fflush(f);
      ::raise(sig);
      return put(f, "contents\n");
    });
  };
  for (int sig : {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGPIPE, SIGALRM, SIGUSR1, SIGUSR2, SIGXCPU, SIGVTALRM, SIGPROF}) {
    EXPECT_EXIT(write_raising(sig), ::testing::KilledBySignal(sig), "") << "signal " << sig;
    expect_untouched();
  }
}

// Runs `check` in a forked child (so that what it changes of the process
// stays there), with as_nobody as user nobody where this is root (who may
// write anything); true when it returned true.
bool in_a_child(const std::function<bool()>& check, bool as_nobody = false) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (as_nobody && ::geteuid() == 0 && (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0))
      ::_exit(2);
    ::_exit(check() ? 0 : 1);
  }
  int status = 0;
  return pid > 0 && ::waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// `said` is `want`; if not, says so on stderr (a child's output shows in the test's).
bool said_as_wanted(const std::string& said, const std::string& want) {
  if (said != want) std::fprintf(stderr, "said: %s\nwant: %s\n", said.c_str(), want.c_str());
  return said == want;
}

// What check_output_path and write_output_file say of `file`, or "" where they let it be written.
std::string refusals(const std::string& file) {
  std::string said;
  try {
    anvil::check_output_path(file);
  } catch (const anvil::InputError& e) {
    said = e.what();
  }
  try {
    anvil::write_output_file(file, [](std::FILE* f) { return put(f, "replaced\n"); });
  } catch (const anvil::Error& e) {
    said += std::string(" | ") + e.what();
  }
  return said;
}

// An existing file not to be written is refused up front and by the writer,
// not replaced by the rename (which the directory alone would allow): one
// made read-only by hand, and (as root only: it needs a file of another
// user's) one of another user in a sticky directory such as /tmp. Run as
// nobody where this is root, who may write anything else.
TEST_F(OutputFile, AReadOnlyOrAnotherUsersFileIsRefusedNotReplaced) {
  const bool root = ::geteuid() == 0;
  fs::permissions(dir_, fs::perms::all);
  const std::string ro_dir = path("ro"), ro = ro_dir + "/f";
  fs::create_directory(ro_dir);
  fs::permissions(ro_dir, fs::perms::all);
  if (!in_a_child([&] { return ::access(ro_dir.c_str(), W_OK | X_OK) == 0; }, true))
    GTEST_SKIP() << "user nobody cannot reach " << ro_dir << " (a private TMPDIR, or no such user here)";
  std::ofstream(ro) << kOld;
  fs::permissions(ro, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
  if (root) {
    ASSERT_EQ(::chown(ro.c_str(), 65534, 65534), 0);
  }
  const std::string want_ro = ro + ": cannot write: it is read-only";
  EXPECT_TRUE(in_a_child([&] { return said_as_wanted(refusals(ro), want_ro + " | " + want_ro); }, true));
  EXPECT_EQ(read_bytes(ro), kOld);

  if (!root) return;
  const std::string sticky_dir = path("sticky"), sticky = sticky_dir + "/f";
  fs::create_directory(sticky_dir);
  fs::permissions(sticky_dir, fs::perms::all | fs::perms::sticky_bit);
  std::ofstream(sticky) << kOld;
  fs::permissions(sticky, fs::perms::all & ~(fs::perms::owner_exec | fs::perms::group_exec | fs::perms::others_exec));
  const std::string want_sticky = sticky + ": cannot write: it belongs to another user, in a sticky directory";
  EXPECT_TRUE(in_a_child([&] { return said_as_wanted(refusals(sticky), want_sticky + " | " + want_sticky); }, true));
  EXPECT_EQ(read_bytes(sticky), kOld);
}

// Sets chattr's attribute `flag` on `file` for the guard's life: set() is
// false where this process may not (CAP_LINUX_IMMUTABLE) or its file system keeps none.
class Attribute {
 public:
  Attribute(std::string file, int flag) : file_(std::move(file)), flag_(flag) { set_ = change(true); }
  ~Attribute() {
    if (set_) change(false);
  }
  Attribute(const Attribute&) = delete;
  Attribute& operator=(const Attribute&) = delete;
  bool set() const { return set_; }

 private:
  bool change(bool on) const {
    const int fd = ::open(file_.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    int flags = 0;
    bool ok = fd >= 0 && ::ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0;
    flags = on ? flags | flag_ : flags & ~flag_;
    ok = ok && ::ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0;
    if (fd >= 0) ::close(fd);
    return ok;
  }
  std::string file_;
  int flag_;
  bool set_ = false;
};

// A destination or its directory made immutable or append-only (chattr) is
// refused up front and by the writer, by name, not found at the rename: the
// destination keeps its contents and no temporary file is left (in an
// append-only directory one could be made but never removed).
TEST_F(OutputFile, AnImmutableOrAppendOnlyFileOrDirectoryIsRefusedUpFront) {
  for (const int flag : {FS_IMMUTABLE_FL, FS_APPEND_FL}) {
    const std::string attribute = flag == FS_IMMUTABLE_FL ? "immutable (chattr +i)" : "append-only (chattr +a)";
    {
      const Attribute on_file(target_, flag);
      if (!on_file.set()) GTEST_SKIP() << "cannot set " << attribute << " here (needs CAP_LINUX_IMMUTABLE)";
      const std::string want = target_ + ": cannot write: it is " + attribute;
      EXPECT_EQ(refusals(target_), want + " | " + want);
    }
    expect_untouched();
    {
      const Attribute on_dir(dir_, flag);
      ASSERT_TRUE(on_dir.set()) << attribute;
      for (const std::string& file : {target_, path("new.bin")}) {
        const std::string want = file + ": cannot write: directory '" + dir_ + "' is " + attribute;
        EXPECT_EQ(refusals(file), want + " | " + want);
      }
    }
    expect_untouched();
  }
}

// The current directory removed: its mode still reads writable, but no file
// can be made in it; check_output_path finds that before any work.
TEST_F(OutputFile, ADeletedCurrentDirectoryIsRefusedUpFront) {
  const std::string gone = path("gone");
  fs::create_directory(gone);
  EXPECT_TRUE(in_a_child([&] {
    if (::chdir(gone.c_str()) != 0 || ::rmdir(gone.c_str()) != 0) return false;
    try {
      anvil::check_output_path("out.bin");
    } catch (const anvil::InputError& e) {
      return said_as_wanted(e.what(), "out.bin: cannot write in '.': No such file or directory");
    }
    return false;
  }));
}

// A file the writer made under a umask that leaves its owner no write
// permission is replaced again (a checkpoint written every N steps), not
// taken for one made read-only by hand.
TEST_F(OutputFile, AFileReadOnlyByTheUmaskIsReplacedAgain) {
  const std::string made = path("made.txt");
  EXPECT_TRUE(in_a_child([&] {
    ::umask(0277);
    for (const char* text : {"first\n", "second\n"}) {
      try {
        anvil::check_output_path(made);
        anvil::write_output_file(made, [text](std::FILE* f) { return put(f, text); });
      } catch (const anvil::Error& e) {
        return said_as_wanted(e.what(), "no error");
      }
    }
    return true;
  }));
  EXPECT_EQ(read_bytes(made), "second\n");
}

// A program that handles or ignores SIGINT keeps its handling: the write
// completes, and the disposition is the program's again afterwards. One that
// leaves the default gets the default back.
TEST_F(OutputFile, AProgramsOwnSignalHandlingIsKept) {
  static volatile sig_atomic_t handled = 0;
  struct sigaction own {
  }, saved{};
  own.sa_handler = [](int) { handled = 1; };
  sigemptyset(&own.sa_mask);
  ASSERT_EQ(sigaction(SIGINT, nullptr, &saved), 0);
  ASSERT_EQ(saved.sa_handler, SIG_DFL) << "the test runner must leave SIGINT at its default";
  for (void (*handler)(int) : {own.sa_handler, SIG_IGN}) {
    own.sa_handler = handler;
    ASSERT_EQ(sigaction(SIGINT, &own, nullptr), 0);
    handled = 0;
    anvil::write_output_file(target_,
                             [](std::FILE* f) { return put(f, "new ") && ::raise(SIGINT) == 0 && put(f, "file\n"); });
    EXPECT_EQ(read_bytes(target_), "new file\n");
    EXPECT_EQ(handled, handler == SIG_IGN ? 0 : 1);
    struct sigaction after {};
    ASSERT_EQ(sigaction(SIGINT, nullptr, &after), 0);
    EXPECT_EQ(after.sa_handler, handler);
  }
  ASSERT_EQ(sigaction(SIGINT, &saved, nullptr), 0);
  anvil::write_output_file(target_, [](std::FILE* f) { return put(f, "again\n"); });
  struct sigaction after {};
  ASSERT_EQ(sigaction(SIGINT, nullptr, &after), 0);
  EXPECT_EQ(after.sa_handler, SIG_DFL);
  EXPECT_EQ(names(), std::vector<std::string>{"out.txt"});
}

// A write past the file size limit (ulimit -f) with SIGXFSZ at its default
// action: an Error naming the reason, not the end of the process; the old
// file stays, and SIGXFSZ is at its default again afterwards. In a child: on
// a regression the signal would end the whole test program.
TEST_F(OutputFile, AWritePastTheFileSizeLimitIsAnError) {
  EXPECT_TRUE(in_a_child([&] {
    if (!anvil::testing::limit_file_size(4096, SIG_DFL)) return false;
    std::string said;
    try {
      anvil::write_output_file(target_, [](std::FILE* f) { return put(f, std::string(1 << 16, 'x')); });
    } catch (const anvil::Error& e) {
      said = e.what();
    }
    struct sigaction after {};
    return said_as_wanted(said, target_ + ": cannot write: File too large") &&
           ::sigaction(SIGXFSZ, nullptr, &after) == 0 && after.sa_handler == SIG_DFL;
  }));
  expect_untouched();
}

// Two names of one new file give one key, from any directory and even where the current directory is
// deeper than PATH_MAX (no path to it can be resolved there): the CLI tells --save ./c from
// --checkpoint c by it.
TEST_F(OutputFile, SameFileKeyJoinsANewFilesNamesBeyondPathMax) {
  const std::string level(200, 'd');
  // Back out of the levels made, then to where the test started, whatever failed in between.
  struct Levels {
    fs::path saved = fs::current_path();
    std::string name;
    int made = 0;
    ~Levels() {
      for (; made > 0; --made)
        if (::chdir("..") != 0 || ::rmdir(name.c_str()) != 0) break;
      fs::current_path(saved);
    }
  } levels{fs::current_path(), level};
  ASSERT_EQ(::chdir(dir_.c_str()), 0);
  EXPECT_EQ(anvil::same_file_key(path("c.st")), anvil::same_file_key("c.st"));  // absolute and relative
  for (; levels.made < 25; ++levels.made)                                       // 5000 bytes of path below dir_
    ASSERT_TRUE(::mkdir(level.c_str(), 0700) == 0 && ::chdir(level.c_str()) == 0);
  ASSERT_EQ(::mkdir("x", 0700), 0);
  EXPECT_EQ(anvil::same_file_key("c.st"), anvil::same_file_key("./c.st"));
  EXPECT_EQ(anvil::same_file_key("c.st"), anvil::same_file_key("x/../c.st"));
  EXPECT_EQ(anvil::same_file_key("x/c.st"), anvil::same_file_key("./x/c.st"));
  EXPECT_NE(anvil::same_file_key("c.st"), anvil::same_file_key("e.st"));
  EXPECT_NE(anvil::same_file_key("c.st"), anvil::same_file_key("x/c.st"));
  std::ofstream("e.st") << "an existing file";  // by inode, whatever its name
  EXPECT_EQ(anvil::same_file_key("e.st"), anvil::same_file_key("./x/../e.st"));
  EXPECT_EQ(::unlink("e.st"), 0);
  EXPECT_EQ(::rmdir("x"), 0);
}

}  // namespace
