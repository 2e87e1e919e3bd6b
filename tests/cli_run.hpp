// Runs the command-line tool (ANVIL_CLI_PATH) as a separate process through the
// shell, capturing stdout and stderr apart, for tests of its exit codes and
// messages.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "tests/test_support.hpp"

namespace anvil::testing {

struct CliResult {
  int status = -1;  // exit code; -1 when the process did not exit normally
  std::string out, err;
};

// `s` as one shell word.
inline std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

inline std::string describe(const CliResult& r) {
  return "exit " + std::to_string(r.status) + "\n--- stdout\n" + r.out + "--- stderr\n" + r.err;
}

// Runs the CLI with `args` (already quoted where needed); stderr goes through `err_file`, removed
// after. env: assignments for the child, e.g. "CUDA_VISIBLE_DEVICES=" (no GPU visible to it).
inline CliResult run_cli(const std::string& args, const std::string& err_file, const std::string& env = "") {
  const std::string command = env + " " + quote(ANVIL_CLI_PATH) + " " + args + " 2>" + quote(err_file);
  CliResult r;
  std::FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) {
    ADD_FAILURE() << "popen failed for " << command;
    return r;
  }
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) r.out.append(buf, n);
  const int status = ::pclose(pipe);
  r.status = status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = read_text(err_file);
  std::remove(err_file.c_str());
  return r;
}

}  // namespace anvil::testing
