// Running the `zerocan` program from tests: a child process kept for the length of a
// test, and a run to completion with its output. ZEROCAN_TOOL_PATH comes from CMake.
#pragma once

#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace zerocan::testing {

inline const std::string& ToolPath() {
  static const std::string path = ZEROCAN_TOOL_PATH;
  return path;
}

// Whether this process may give a child a network namespace of its own (root, or
// unprivileged user namespaces), as ToolProcess's own_network_namespace does.
inline bool CanUnshareNetwork() {
  pid_t pid = fork();
  if (pid == 0) _exit(unshare(CLONE_NEWNET) == 0 ? 0 : 1);
  int status = -1;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// A child process running `zerocan ARGS...`, stopped (SIGTERM) and reaped on destruction.
// With `own_network_namespace` it runs in a new network namespace: another host, as far
// as zerocan's hellos can tell (it still reaches ipc:// endpoints; see CanUnshareNetwork).
class ToolProcess {
 public:
  explicit ToolProcess(const std::vector<std::string>& args, bool own_network_namespace = false) {
    pid_ = fork();
    if (pid_ == 0) {
      if (own_network_namespace && unshare(CLONE_NEWNET) != 0) _exit(126);
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(ToolPath().c_str()));
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(ToolPath().c_str(), argv.data());
      _exit(127);
    }
  }
  ToolProcess(const ToolProcess&) = delete;
  ToolProcess& operator=(const ToolProcess&) = delete;
  ~ToolProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  // Stops it now, without a chance to clean up.
  pid_t pid() const { return pid_; }
  void Signal(int sig) { kill(pid_, sig); }
  // Waits for the process to exit; its wait status.
  int Wait() {
    int status = -1;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }

  void Kill() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

struct ToolOutput {
  int status = -1;
  std::string out, err;
};

// Runs `zerocan ARGS...` to completion; its stdout, stderr and exit status.
inline ToolOutput RunTool(const std::vector<std::string>& args) {
  std::string err_path = "/tmp/zerocan-test-tool-err-" + std::to_string(getpid());
  std::string command = "'" + ToolPath() + "'";
  for (const std::string& a : args) command += " '" + a + "'";
  command += " 2>" + err_path;
  ToolOutput result;
  FILE* pipe = popen(command.c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) result.out.append(buf.data(), n);
  int status = pclose(pipe);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream err(err_path);
  std::stringstream ss;
  ss << err.rdbuf();
  result.err = ss.str();
  unlink(err_path.c_str());
  return result;
}

}  // namespace zerocan::testing
