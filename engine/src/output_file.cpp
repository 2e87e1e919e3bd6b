#include "anvil/output_file.hpp"

#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <mutex>

#include "anvil/error.hpp"

namespace anvil {

namespace {

// The permissions a new file gets: 0666 less the umask (read without changing it for long).
mode_t new_file_mode() {
  const mode_t mask = ::umask(0);
  ::umask(mask);
  return 0666 & ~mask;
}

// The temporary file being written, where a signal handler can find it without
// allocating: one write at a time in a process (write_mutex), its name in a
// fixed buffer, published by temp_state. Whoever takes the state from kLive
// first (the handler, or the writer at the end) deals with the file, so it is
// removed once. kCreating covers mkstemp: the writer's thread blocks the
// signals meanwhile, and a handler on another thread (OpenMP's workers do not
// block them) waits for the writer to publish the name.
enum TempState : int { kIdle, kCreating, kLive };
std::mutex write_mutex;
thread_local bool writing = false;  // this thread holds write_mutex
char live_temp[PATH_MAX];
std::atomic<int> temp_state{kIdle};
static_assert(std::atomic<int>::is_always_lock_free, "read in a signal handler");

// The signals whose default action ends the process and that come from
// outside (a fault, such as SIGSEGV, is a bug and is left alone).
constexpr int kEndingSignals[] = {SIGHUP,  SIGINT,  SIGQUIT, SIGTERM,   SIGPIPE, SIGALRM,
                                  SIGUSR1, SIGUSR2, SIGXCPU, SIGVTALRM, SIGPROF};
constexpr int kEndingSignalCount = sizeof kEndingSignals / sizeof kEndingSignals[0];

sigset_t ending_signals() {
  sigset_t set;
  ::sigemptyset(&set);
  for (int sig : kEndingSignals) ::sigaddset(&set, sig);
  return set;
}

// One of them during a write: remove the temporary file, then end the
// process as the signal's default action would (128 + the signal, to a shell).
// Only async-signal-safe calls.
extern "C" void remove_temporary_and_reraise(int sig) {
  int state;
  while ((state = temp_state.load()) == kCreating) {  // the writer is on another thread, inside mkstemp
  }
  if (state == kLive && temp_state.exchange(kIdle) == kLive) ::unlink(live_temp);
  ::signal(sig, SIG_DFL);
  ::raise(sig);  // blocked until this handler returns, then ends the process
}

// For its lifetime, each of a set of signals whose action is the default
// takes another; a program that handles or ignores one keeps its own handling.
template <size_t kCount>
class WhileDefault {
 public:
  WhileDefault(const int (&signals)[kCount], const struct sigaction& action) : signals_(signals) {
    for (size_t i = 0; i < kCount; ++i) {
      struct sigaction old {};
      replaced_[i] = ::sigaction(signals[i], nullptr, &old) == 0 && !(old.sa_flags & SA_SIGINFO) &&
                     old.sa_handler == SIG_DFL && ::sigaction(signals[i], &action, nullptr) == 0;
    }
  }
  ~WhileDefault() {
    for (size_t i = 0; i < kCount; ++i)
      if (replaced_[i]) ::signal(signals_[i], SIG_DFL);
  }
  WhileDefault(const WhileDefault&) = delete;
  WhileDefault& operator=(const WhileDefault&) = delete;

 private:
  const int (&signals_)[kCount];
  bool replaced_[kCount] = {};
};

// For the duration of one write, the ending signals at their default (which
// would leave the temporary file) go through remove_temporary_and_reraise: the
// write then completes, or fails, as usual where a program handles them.
struct sigaction cleanup_action() {
  struct sigaction cleanup {};
  cleanup.sa_handler = remove_temporary_and_reraise;
  cleanup.sa_mask = ending_signals();
  return cleanup;
}

// And SIGXFSZ at its default (ending the process, which would leave the
// temporary file) is ignored: a write past the file size limit (ulimit -f)
// then fails with EFBIG, and the write's error path removes the temporary
// file and names the reason.
constexpr int kFileSizeSignal[] = {SIGXFSZ};
struct sigaction ignore_action() {
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  ::sigemptyset(&ignore.sa_mask);
  return ignore;
}

// Writes straight into a character device or FIFO (/dev/null, a pipe): there
// is no file to replace, and renaming over one would destroy it.
void write_into(const std::string& path, const std::string& target, const std::function<bool(std::FILE*)>& write) {
  const int fd = ::open(target.c_str(), O_WRONLY | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot write: " + std::strerror(errno));
  std::FILE* f = ::fdopen(fd, "wb");
  if (f == nullptr) {
    const int err = errno;
    ::close(fd);
    throw Error(path + ": cannot write: " + std::strerror(err));
  }
  errno = 0;
  bool ok = false;
  try {
    ok = write(f) && std::fflush(f) == 0;
  } catch (...) {
    std::fclose(f);
    throw;
  }
  int err = errno;
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (!ok) throw Error(path + ": cannot write: " + std::strerror(err ? err : EIO));
}

// The attributes chattr sets on a file or directory (FS_IMMUTABLE_FL,
// FS_APPEND_FL, ...), or 0 where it cannot be opened or its file system keeps none.
int inode_flags(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) return 0;
  int flags = 0;  // the kernel reads and writes an int, whatever the ioctl's declared type
  const bool known = ::ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0;
  ::close(fd);
  return known ? flags : 0;
}

// Why chattr's attributes keep `path` (the destination, or the directory it
// is written in) from being written by a rename, or empty. In an append-only
// directory a file can be made but neither renamed nor removed: the write
// would fail at its end and leave its temporary file.
std::string why_attributes_forbid(const std::string& path, const std::string& what) {
  const int flags = inode_flags(path);
  if (flags & FS_IMMUTABLE_FL) return what + " is immutable (chattr +i)";
  if (flags & FS_APPEND_FL) return what + " is append-only (chattr +a)";
  return "";
}

// Why no file can be written into `dir` by a rename, where its mode allows it, or empty.
std::string why_directory_forbids(const std::string& dir) {
  return why_attributes_forbid(dir, "directory '" + dir + "'");
}

// Why the existing file `target` in `dir` is not to be replaced by a rename
// (which the directory alone allows), or empty: a file made immutable or
// append-only; another user's file this process may not write, or someone
// else's in a sticky directory (such as /tmp, where only owners may replace
// files); or our own made read-only by hand. Our own without write permission
// because the umask gives none (as this writer made it) is replaced.
std::string why_not_replaceable(const std::string& target, const std::string& dir) {
  struct stat file {
  }, folder{};
  if (::stat(target.c_str(), &file) != 0) return "";
  const std::string file_forbids = why_attributes_forbid(target, "it");
  if (!file_forbids.empty()) return file_forbids;
  const uid_t me = ::geteuid();
  if (file.st_uid == me) return !(file.st_mode & S_IWUSR) && (new_file_mode() & S_IWUSR) ? "it is read-only" : "";
  if (::access(target.c_str(), W_OK) != 0) return errno == EACCES ? "it is read-only" : std::strerror(errno);
  if (me != 0 && ::stat(dir.c_str(), &folder) == 0 && (folder.st_mode & S_ISVTX) && folder.st_uid != me)
    return "it belongs to another user, in a sticky directory";
  return "";
}

// One write's turn: the process's one temporary file at a time (write_mutex),
// the signal handling for it, and the file's creation in `dir`, published to
// the handler as one step. path names the destination in errors.
class Turn {
 public:
  Turn(const std::string& path, const std::string& dir) : lock_(lock_for(path)) {
    const std::string pattern = dir + "/.anvil-XXXXXX";
    if (pattern.size() >= sizeof live_temp) throw Error(path + ": cannot write: " + std::strerror(ENAMETOOLONG));
    writing = true;
    std::memcpy(live_temp, pattern.c_str(), pattern.size() + 1);
  }
  ~Turn() {
    remove();
    writing = false;
  }
  Turn(const Turn&) = delete;
  Turn& operator=(const Turn&) = delete;

  // Makes the temporary file: its descriptor, or -1 with errno set. The
  // writer's thread blocks the signals meanwhile, so that none comes between
  // the file and its registration.
  int create() {
    const sigset_t signals = ending_signals();
    sigset_t before;
    ::pthread_sigmask(SIG_BLOCK, &signals, &before);
    temp_state.store(kCreating);
    const int fd = ::mkstemp(live_temp);
    const int err = errno;
    temp_state.store(fd >= 0 ? kLive : kIdle);
    ::pthread_sigmask(SIG_SETMASK, &before, nullptr);  // a signal that came meanwhile is handled now
    errno = err;
    return fd;
  }
  const char* name() const { return live_temp; }
  // The temporary file is the destination now: nothing to remove.
  void renamed() { temp_state.store(kIdle); }
  // Removes the temporary file, unless a signal handler took it first: 0, or unlink's errno.
  int remove() { return temp_state.exchange(kIdle) == kLive && ::unlink(live_temp) != 0 ? errno : 0; }

 private:
  // The lock, taken before the handlers below are installed (members in order).
  static std::unique_lock<std::mutex> lock_for(const std::string& path) {
    if (writing) throw Error(path + ": cannot write: write_output_file was called from inside another write's writer");
    return std::unique_lock<std::mutex>(write_mutex);
  }

  std::unique_lock<std::mutex> lock_;
  const WhileDefault<kEndingSignalCount> cleanup_{kEndingSignals, cleanup_action()};
  const WhileDefault<1> file_size_limit_{kFileSizeSignal, ignore_action()};
};

// The errno of making a file in `dir` (0 where one can be), found by making
// one and removing it. It catches what the directory's mode does not show: a
// directory deleted while it is the current one, or a place such as /proc.
int creation_error(const std::string& path, const std::string& dir) {
  Turn turn(path, dir);
  const int fd = turn.create();
  if (fd < 0) return errno;
  ::close(fd);  // before the unlink: NFS renames a file removed while open
  return turn.remove();
}

}  // namespace

std::string output_target(const std::string& path) {
  check_path_text(path);
  namespace fs = std::filesystem;
  // A device or FIFO at the end of the chain is written into through the path
  // itself: a magic link (/dev/stdout -> /proc/self/fd/1 -> "pipe:[...]") names
  // nothing readlink can follow, but opening it reaches the object.
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode))) return path;
  fs::path p = path;
  for (int hops = 0; hops < 40; ++hops) {  // Linux's own limit on a chain of symlinks
    std::error_code ec;
    if (!fs::is_symlink(fs::symlink_status(p, ec))) return p.string();
    const fs::path link = fs::read_symlink(p, ec);
    if (ec) throw Error(path + ": cannot write: " + ec.message());
    p = link.is_absolute() ? link : p.parent_path() / link;
  }
  throw Error(path + ": cannot write: " + std::strerror(ELOOP));
}

OutputKind output_kind(const std::string& target) {
  struct stat st {};
  if (::stat(target.c_str(), &st) != 0 || S_ISREG(st.st_mode)) return {};
  if (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode)) return {true, nullptr};
  if (S_ISDIR(st.st_mode)) return {false, "a directory"};
  return {false, S_ISBLK(st.st_mode) ? "a block device" : S_ISSOCK(st.st_mode) ? "a socket" : "not a regular file"};
}

void check_path_text(const std::string& path) {
  const size_t nul = path.find('\0');
  if (nul != std::string::npos)
    throw InputError(path.substr(0, nul) + ": the path has a NUL byte at offset " + std::to_string(nul) +
                     " (a file name cannot hold one)");
}

std::string output_directory(const std::string& target) {
  const size_t slash = target.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : target.substr(0, slash);
}

void check_output_path(const std::string& path) {
  if (path.empty()) throw InputError("an empty file name");
  std::string target;
  try {
    target = output_target(path);
  } catch (const Error& e) {  // a loop of links
    throw InputError(e.what());
  }
  const OutputKind kind = output_kind(target);
  if (kind.refused != nullptr) throw InputError(path + ": cannot write: it is " + kind.refused);
  if (kind.in_place) return;
  const std::string dir = output_directory(target);
  struct stat st {};
  const int dir_error = ::stat(dir.c_str(), &st) != 0 ? errno : S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
  if (dir_error == ENOENT) throw InputError(path + ": cannot write: directory '" + dir + "' does not exist");
  if (dir_error != 0)  // a file where a directory should be, a loop of links, ...
    throw InputError(path + ": cannot write in '" + dir + "': " + std::strerror(dir_error));
  const std::string dir_forbids = why_directory_forbids(dir);
  if (!dir_forbids.empty()) throw InputError(path + ": cannot write: " + dir_forbids);
  if (::access(dir.c_str(), W_OK) != 0)  // read-only, or not ours (root passes)
    throw InputError(path + ": cannot write in '" + dir + "': " + std::strerror(errno));
  if (::lstat(target.c_str(), &st) != 0 && errno == ENAMETOOLONG)  // the final rename would fail
    throw InputError(path + ": cannot write: " + std::strerror(ENAMETOOLONG));
  const std::string why_not = why_not_replaceable(target, dir);
  if (!why_not.empty()) throw InputError(path + ": cannot write: " + why_not);
  if (const int err = creation_error(path, dir))
    throw InputError(path + ": cannot write in '" + dir + "': " + std::strerror(err));
}

void check_output_is_a_file(const std::string& path, const std::string& what) {
  std::string target;
  try {
    target = output_target(path);
  } catch (const Error& e) {  // a loop of links
    throw InputError(e.what());
  }
  if (!output_kind(target).in_place) return;
  struct stat st {};
  const bool link = ::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
  const char* kind = ::stat(target.c_str(), &st) == 0 && S_ISCHR(st.st_mode) ? "a character device" : "a pipe or FIFO";
  throw InputError(path + ": cannot write: it " + (link ? "leads to " : "is ") + kind + ", and " + what +
                   " must be a regular file or a new name (written to a temporary file, then renamed)");
}

std::string same_file_key(const std::string& path) {
  check_path_text(path);
  namespace fs = std::filesystem;
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) return "inode " + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  const fs::path p(path), name = p.filename();
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  if (!name.empty() && name != "." && name != ".." && ::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    return "in directory " + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + " " + name.string();
  std::error_code absolute_error;
  const fs::path absolute = fs::absolute(p, absolute_error);
  return (absolute_error ? p : absolute).lexically_normal().string();
}

InputFile InputFile::read_now(const std::string& path) {
  // same_file_key checks the path's text (check_path_text) before anything reads the file.
  std::error_code ec;
  const std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  return InputFile{ec ? path : absolute.lexically_normal().string(), same_file_key(path)};
}

bool InputFile::replaced_by(const std::string& output_path) const {
  if (key.empty()) return false;
  const std::string output_key = same_file_key(output_target(output_path));
  return output_key == key || output_key == same_file_key(absolute);
}

void write_output_file(const std::string& path, const std::function<bool(std::FILE*)>& write) {
  if (!write) throw InputError(path + ": write_output_file: no writer given");
  const std::string target = output_target(path);
  const OutputKind kind = output_kind(target);
  if (kind.refused != nullptr) throw Error(path + ": cannot write: it is " + std::string(kind.refused));
  if (kind.in_place) return write_into(path, target, write);
  const std::string dir = output_directory(target);
  std::string why_not = why_directory_forbids(dir);
  if (why_not.empty()) why_not = why_not_replaceable(target, dir);
  if (!why_not.empty()) throw Error(path + ": cannot write: " + why_not);
  Turn turn(path, dir);
  const int fd = turn.create();
  if (fd < 0) throw Error(path + ": cannot write: " + std::strerror(errno));
  struct stat old {};
  const mode_t mode = ::stat(target.c_str(), &old) == 0 ? (old.st_mode & 07777) : new_file_mode();
  std::FILE* f = ::fdopen(fd, "wb");
  bool ok = f != nullptr && ::fchmod(fd, mode) == 0;
  int err = ok ? 0 : errno;
  std::exception_ptr thrown;  // by write(): rethrown once the temporary file is gone
  if (ok) {
    errno = 0;
    try {
      ok = write(f) && std::fflush(f) == 0 && ::fsync(fd) == 0;  // on disk before the rename
    } catch (...) {
      ok = false;
      thrown = std::current_exception();
    }
    err = ok ? 0 : errno;
  }
  if (f != nullptr ? std::fclose(f) != 0 : ::close(fd) != 0) {
    if (ok) err = errno;
    ok = false;
  }
  if (ok && std::rename(turn.name(), target.c_str()) != 0) {
    ok = false;
    err = errno;
  }
  // A signal from here on finds the name gone (renamed) or not live (removed here).
  if (ok)
    turn.renamed();
  else
    turn.remove();
  if (thrown) std::rethrow_exception(thrown);
  if (!ok) throw Error(path + ": cannot write: " + std::strerror(err ? err : EIO));
  // The rename itself on disk: flush the directory (best effort: some file systems refuse).
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace anvil
