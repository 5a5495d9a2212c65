// Runs a shell command from a test and collects its exit code and output,
// and reads the files it wrote, for tests that drive the real binaries
// (litestage-eval, litestage-search, promtool).
#ifndef LITESTAGE_TESTS_COMMON_RUN_COMMAND_H_
#define LITESTAGE_TESTS_COMMON_RUN_COMMAND_H_

#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace litestage::testing {

struct CommandResult {
  int exit_code = -1;  // -1: not started, or ended by a signal.
  std::string output;  // stdout, plus stderr unless redirected.
};

// Runs `command` with /bin/sh; stderr goes to `stderr_path` when given, else
// into `output` with stdout.
inline CommandResult RunCommand(const std::string& command,
                                const std::string& stderr_path = "") {
  CommandResult result;
  const std::string redirect =
      stderr_path.empty() ? " 2>&1" : " 2>'" + stderr_path + "'";
  FILE* pipe = popen((command + redirect).c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) {
    result.output.append(buffer, n);
  }
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// The whole of a (small) file a command wrote; "" when it cannot be read.
inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace litestage::testing

#endif  // LITESTAGE_TESTS_COMMON_RUN_COMMAND_H_
