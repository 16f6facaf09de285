#ifndef IOMMU_TESTS_DAEMON_HARNESS_H_
#define IOMMU_TESTS_DAEMON_HARNESS_H_

// Starts the real `iommud` binary for integration tests: a temp directory
// for its Unix socket and log, TCP and metrics on free ports (port 0, read
// back from its "serving" log line), and a SIGTERM stop that reports the
// exit code. Every wait is bounded.

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

namespace iommu::testing {

inline std::string MakeTempDir() {
  char tmpl[] = "/tmp/iommud_test.XXXXXX";
  const char* dir = mkdtemp(tmpl);
  return dir ? dir : "/tmp";
}

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class DaemonProcess {
 public:
  // Starts iommud with `extra_flags`; fails the test (returns false) when it
  // does not report serving within 15 s.
  bool Start(std::vector<std::string> extra_flags = {}) {
    dir_ = MakeTempDir();
    socket_path_ = dir_ + "/iommud.sock";
    log_path_ = dir_ + "/iommud.log";
    std::vector<std::string> args = {IOMMUD_PATH,
                                     "--listen=unix:" + socket_path_ + ",127.0.0.1:0",
                                     "--metrics_listen=127.0.0.1:0"};
    for (auto& f : extra_flags) args.push_back(std::move(f));
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    const std::regex serving(R"(serving grpc=unix:(\S+),(\S+) metrics=http://(\S+)/metrics)");
    while (std::chrono::steady_clock::now() < deadline) {
      std::smatch m;
      const std::string log = ReadAll(log_path_);
      if (std::regex_search(log, m, serving)) {
        tcp_address_ = m[2];
        metrics_address_ = m[3];
        return true;
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  // SIGTERM, then waits up to `timeout`; the exit code, or nullopt when it
  // had to be killed.
  std::optional<int> Stop(std::chrono::seconds timeout = std::chrono::seconds(20)) {
    if (pid_ <= 0) return std::nullopt;
    kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
    return std::nullopt;
  }

  ~DaemonProcess() { Stop(); }

  std::string unix_target() const { return "unix:" + socket_path_; }
  const std::string& tcp_target() const { return tcp_address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  const std::string& dir() const { return dir_; }
  std::string log() const { return ReadAll(log_path_); }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  std::string dir_, socket_path_, log_path_, tcp_address_, metrics_address_;
};

// GET http://address/metrics with curl-free plain sockets is overkill here:
// the metrics test uses Python; C++ tests only need the body occasionally.
inline std::string HttpGet(const std::string& address, const std::string& path) {
  const std::string cmd = "curl -s --max-time 5 http://" + address + path;
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    pclose(p);
  }
  return out;
}

}  // namespace iommu::testing

#endif  // IOMMU_TESTS_DAEMON_HARNESS_H_
