// Runs a program with its stdout and stderr on a pseudo-terminal or on a pipe,
// to test what a program shows on a terminal against what it writes to a file.
// Bounded in time: the child is killed when it runs past the deadline.
#pragma once

#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace anvil::testing {

struct ChildOutput {
  int status = -1;  // exit code; -1 when the process did not exit normally
  bool timed_out = false;
  std::string out;  // stdout and stderr together, as read; a terminal turns "\n" into "\r\n"
};

// argv[0] is the program's path. On a terminal, it is `columns` wide.
inline ChildOutput run_child(const std::vector<std::string>& argv, bool terminal, int columns = 100,
                             double timeout_s = 30) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  std::fflush(nullptr);  // nothing buffered here may be written twice
  ChildOutput r;
  int fd = -1;
  pid_t pid = -1;
  if (terminal) {
    winsize size{};
    size.ws_row = 24;
    size.ws_col = static_cast<unsigned short>(columns);
    pid = forkpty(&fd, nullptr, nullptr, &size);
    if (pid == 0) {
      execv(args[0], args.data());
      _exit(127);
    }
  } else {
    int p[2];
    if (pipe(p) != 0) return r;
    pid = fork();
    if (pid == 0) {
      dup2(p[1], STDOUT_FILENO);
      dup2(p[1], STDERR_FILENO);
      close(p[0]);
      close(p[1]);
      execv(args[0], args.data());
      _exit(127);
    }
    close(p[1]);
    fd = p[0];
  }
  if (pid < 0) return r;

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  char buf[4096];
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      r.timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    pollfd p{fd, POLLIN, 0};
    const int ready = poll(&p, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) break;
    if (ready == 0) continue;  // the deadline check above ends it
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // end of file; a terminal whose child has gone answers EIO
    r.out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status)) r.status = WEXITSTATUS(status);
  return r;
}

}  // namespace anvil::testing
