// A child process for the CLI tests: stdout and stderr on two pipes, read
// while it runs; signals sent to it; its end reaped with a deadline.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace anvil::testing {

struct Finished {
  int status = -1;  // exit code; -1 when the process did not exit normally
  int signal = 0;   // the signal that ended it, if one did
  bool timed_out = false;
  std::string out, err;
};

// A child process with stdout and stderr on two pipes. The destructor kills
// (SIGKILL) and reaps a child still running, so a failed test leaves nothing behind.
// in_child runs in the child before exec (async-signal-safe calls only, e.g.
// setrlimit), to start the program under a limit.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv, const std::function<void()>& in_child = nullptr) {
    int out[2], err[2];
    if (::pipe(out) != 0 || ::pipe(err) != 0) return;
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    std::fflush(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      ::dup2(err[1], STDERR_FILENO);
      for (int fd : {out[0], out[1], err[0], err[1]}) ::close(fd);
      if (in_child) in_child();
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(err[1]);
    out_fd_ = out[0];
    err_fd_ = err[0];
    if (pid_ < 0) close_pipes();
  }
  ~Child() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    close_pipes();
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  bool started() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  const std::string& out() const { return out_; }

  // Reads until stdout contains `part` (true), or the pipes close or the time is up (false).
  bool wait_for_output(const std::string& part, double timeout_s) {
    const auto deadline =
        clock::now() + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(timeout_s));
    while (out_.find(part) == std::string::npos) {
      if (!pump(deadline)) return out_.find(part) != std::string::npos;
    }
    return true;
  }

  void send(int sig) const { ::kill(pid_, sig); }

  // Reads to the end and reaps the child; SIGKILLs it when it runs past the time.
  Finished finish(double timeout_s) {
    Finished r;
    const auto deadline =
        clock::now() + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(timeout_s));
    while (pump(deadline)) {
    }
    if (out_fd_ >= 0 || err_fd_ >= 0) {  // the time is up
      r.timed_out = true;
      ::kill(pid_, SIGKILL);
      while (pump(clock::now() + std::chrono::seconds(5))) {
      }
    }
    int status = 0;
    ::waitpid(pid_, &status, 0);
    reaped_ = true;
    if (WIFEXITED(status)) r.status = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
    r.out = out_;
    r.err = err_;
    close_pipes();
    return r;
  }

 private:
  using clock = std::chrono::steady_clock;

  // One poll over the open pipes; false when both are closed or the deadline has passed.
  bool pump(clock::time_point deadline) {
    if (out_fd_ < 0 && err_fd_ < 0) return false;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
    if (left <= 0) return false;
    pollfd fds[2] = {{out_fd_, POLLIN, 0}, {err_fd_, POLLIN, 0}};
    const int ready = ::poll(fds, 2, static_cast<int>(left));
    if (ready < 0 && errno == EINTR) return true;
    if (ready <= 0) return ready == 0;  // 0: the deadline check above ends it
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      int& fd = i == 0 ? out_fd_ : err_fd_;
      if (n <= 0) {
        ::close(fd);
        fd = -1;
        continue;
      }
      (i == 0 ? out_ : err_).append(buf, static_cast<size_t>(n));
    }
    return true;
  }
  void close_pipes() {
    for (int* fd : {&out_fd_, &err_fd_})
      if (*fd >= 0) {
        ::close(*fd);
        *fd = -1;
      }
  }

  pid_t pid_ = -1;
  bool reaped_ = false;
  int out_fd_ = -1, err_fd_ = -1;
  std::string out_, err_;
};

inline std::string describe(const Finished& r) {
  return "exit " + std::to_string(r.status) + (r.signal ? " (signal " + std::to_string(r.signal) + ")" : "") +
         (r.timed_out ? " (timed out)" : "") + "\n--- stdout\n" + r.out + "--- stderr\n" + r.err;
}

// The start of a command line that runs `processes` copies of a program under mpirun, found on
// PATH (Child execs without a PATH search); empty when there is no mpirun. --oversubscribe lets
// a 2-core machine run more; Open MPI refuses root without --allow-run-as-root.
inline std::vector<std::string> mpirun_argv(int processes) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const std::string mpirun = dir + "/mpirun";
    if (dir.empty() || ::access(mpirun.c_str(), X_OK) != 0) continue;
    std::vector<std::string> argv{mpirun, "--oversubscribe", "-np", std::to_string(processes)};
    if (::geteuid() == 0) argv.push_back("--allow-run-as-root");
    return argv;
  }
  return {};
}

// For Child's in_child: stdout becomes a pipe whose reader is gone (a `| head` that has
// exited), so every write to it fails with EPIPE.
inline void stdout_to_a_pipe_without_reader() {
  int p[2];
  if (::pipe(p) != 0) ::_exit(126);
  ::dup2(p[1], STDOUT_FILENO);
  ::close(p[0]);
  ::close(p[1]);
}

}  // namespace anvil::testing
