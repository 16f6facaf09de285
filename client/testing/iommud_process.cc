// SPDX-License-Identifier: Apache-2.0
#include "client/testing/iommud_process.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/testing/sanitizer_report.h"
#include "core/testing/temp_dir.h"

namespace iommu::client::testing {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// fork + exec with stdout/stderr redirected to files, in `env` (empty: this
// process's environment).
pid_t Spawn(const std::string& binary, const std::vector<std::string>& args,
            const std::string& out_path, const std::string& err_path,
            std::vector<std::string> env = {}) {
  std::vector<std::string> argv_storage = {binary};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err =
        err_path == out_path ? out : open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, 1);
    dup2(err, 2);
    if (env.empty()) {
      execv(binary.c_str(), argv.data());
    } else {
      execve(binary.c_str(), argv.data(), envp.data());
    }
    _exit(127);
  }
  return pid;
}

bool UnixSocketAccepts(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

int WaitExit(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? -WTERMSIG(status) : -1;
}

}  // namespace

const char* IommudPath() { return IOMMUD_PATH; }
const char* IommuctlPath() { return IOMMUCTL_PATH; }

std::string MakeTempDir() { return ::iommu::testing::MakeTestTempDir("iommu-it-"); }

int FreeTcpPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

IommudProcess::~IommudProcess() {
  if (pid_ > 0) Stop();
}

absl::Status IommudProcess::Start(const std::vector<std::string>& extra_flags, bool wait_ready) {
  if (access(IommudPath(), X_OK) != 0)
    return absl::NotFoundError(absl::StrCat("no iommud at ", IommudPath()));
  if (dir_.empty()) dir_ = MakeTempDir();
  const std::string socket = socket_path_.empty() ? dir_ + "/iommud.sock" : socket_path_;
  unix_target_ = "unix:" + socket;
  tcp_target_ = absl::StrCat("127.0.0.1:", FreeTcpPort());
  std::vector<std::string> args = {absl::StrCat("--listen=", unix_target_, ",", tcp_target_),
                                   absl::StrCat("--metrics_listen=127.0.0.1:", FreeTcpPort()),
                                   // A state store of its own (never the system's).
                                   absl::StrCat("--state_dir=", dir_, "/state")};
  args.insert(args.end(), extra_flags.begin(), extra_flags.end());
  const std::string log = dir_ + "/iommud.log";
  pid_ = Spawn(IommudPath(), args, log, log, ::iommu::testing::DaemonEnvironment());
  if (!wait_ready) return absl::OkStatus();
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    if (UnixSocketAccepts(socket)) return absl::OkStatus();
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError(absl::StrCat("iommud exited at start: ", Log()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat("iommud not ready: ", Log()));
}

int IommudProcess::Stop() { return Signal(SIGTERM); }

int IommudProcess::Kill() { return Signal(SIGKILL); }

int IommudProcess::Signal(int signal) {
  if (pid_ <= 0) return -1;
  kill(pid_, signal);
  const int status = WaitExit(pid_);
  pid_ = -1;
  // The next Start truncates the log: a sanitizer report in this run's fails
  // the test now.
  ::iommu::testing::ExpectNoSanitizerReport(Log(), "iommud");
  return status;
}

std::string IommudProcess::Log() const { return ReadAll(dir_ + "/iommud.log"); }

CtlResult RunCtl(const std::vector<std::string>& args) {
  static const std::string dir = MakeTempDir();
  const std::string out = dir + "/ctl.out", err = dir + "/ctl.err";
  CtlResult result;
  result.exit_code = WaitExit(Spawn(IommuctlPath(), args, out, err));
  result.out = ReadAll(out);
  result.err = ReadAll(err);
  return result;
}

pid_t SpawnCtl(const std::vector<std::string>& args) {
  static const std::string dir = MakeTempDir();
  static int n = 0;
  const std::string out = absl::StrCat(dir, "/bg", n++, ".out");
  return Spawn(IommuctlPath(), args, out, out);
}

}  // namespace iommu::client::testing
