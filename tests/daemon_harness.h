// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_TESTS_DAEMON_HARNESS_H_
#define IOMMU_TESTS_DAEMON_HARNESS_H_

// Starts the real `iommud` binary for integration tests: a temp directory
// for its Unix socket, log and state store (<dir>/state), TCP, metrics and
// health on free ports (port 0, read back from its "serving" log line), a
// SIGTERM stop that reports the exit code, a SIGKILL, and a restart on the
// same directory and state. Every wait is bounded.

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/testing/sanitizer_report.h"
#include "core/testing/temp_dir.h"

namespace iommu::testing {

// A fresh private directory (MakeTestTempDir), or /tmp if none can be made.
inline std::string MakeTempDir() {
  std::string dir = MakeTestTempDir("iommud_test.");
  return dir.empty() ? "/tmp" : dir;
}

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class DaemonProcess {
 public:
  // What Start waits for.
  enum class Ready {
    kServingLine,  // the "serving" log line (at --log_level info or below)
    kUnixSocket,   // the Unix socket accepting connections (any log level)
  };

  // Starts iommud on a Unix socket in a fresh directory and 127.0.0.1:0,
  // metrics on 127.0.0.1:0, then `extra_flags` (a later flag overrides an
  // earlier one, so --listen may be replaced). Returns false when it does
  // not get `ready` within 15 s or exits first (exit_code() then tells).
  // stderr goes to log(), stdout to out().
  bool Start(std::vector<std::string> extra_flags = {}, Ready ready = Ready::kServingLine) {
    dir_ = MakeTempDir();
    socket_path_ = dir_ + "/iommud.sock";
    log_path_ = dir_ + "/iommud.log";
    out_path_ = dir_ + "/iommud.out";
    flags_ = std::move(extra_flags);
    ready_ = ready;
    return Launch();
  }

  // Starts iommud again on the same directory, state and flags (after Stop
  // or Kill); the previous run's log moves to log.N.
  bool Restart() {
    if (pid_ > 0) return false;
    ExpectNoSanitizerReport(log(), "iommud");
    rename(log_path_.c_str(), (log_path_ + "." + std::to_string(++runs_)).c_str());
    return Launch();
  }

  // SIGKILL (a crash: no drain, nothing flushed by the daemon itself).
  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  // The state store's directory (--state_dir, unless the flags override it).
  std::string state_dir() const { return dir_ + "/state"; }

 private:
  bool Launch() {
    const Ready ready = ready_;
    exit_code_.reset();
    tcp_address_.clear();
    metrics_address_.clear();
    health_address_.clear();
    std::vector<std::string> args = {IOMMUD_PATH, "--listen=unix:" + socket_path_ + ",127.0.0.1:0",
                                     "--metrics_listen=127.0.0.1:0", "--state_dir=" + state_dir()};
    for (const auto& f : flags_) args.push_back(f);
    std::vector<std::string> env = DaemonEnvironment();
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      int out = open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int err = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(out, 1);
      dup2(err, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execve(argv[0], argv.data(), envp.data());
      _exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    const std::regex serving(R"(serving grpc=(\S+) metrics=(\S+) health=(\S+))");
    while (std::chrono::steady_clock::now() < deadline) {
      if (ready == Ready::kServingLine) {
        std::smatch m;
        const std::string log = ReadAll(log_path_);
        if (std::regex_search(log, m, serving)) {
          ParseServing(m[1], m[2], m[3]);
          return true;
        }
      } else if (UnixSocketAccepts()) {
        return true;
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

 public:
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

  // Stops the daemon; a sanitizer report in the last run's log fails the
  // test (Restart checks the runs before it).
  ~DaemonProcess() {
    Stop();
    if (!log_path_.empty()) ExpectNoSanitizerReport(log(), "iommud");
  }

  std::string unix_target() const { return "unix:" + socket_path_; }
  // The first TCP listen address as bound ("127.0.0.1:41234").
  const std::string& tcp_target() const { return tcp_address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  // The bound --health_listen address; empty when there is none.
  const std::string& health_address() const { return health_address_; }
  const std::string& dir() const { return dir_; }
  // What the daemon wrote to stderr (its log).
  std::string log() const { return ReadAll(log_path_); }
  // What it wrote to stdout.
  std::string out() const { return ReadAll(out_path_); }
  pid_t pid() const { return pid_; }
  // The exit code when Start saw the daemon exit.
  std::optional<int> exit_code() const { return exit_code_; }

 private:
  void ParseServing(const std::string& grpc, const std::string& metrics,
                    const std::string& health) {
    std::stringstream addresses(grpc);
    std::string address;
    while (std::getline(addresses, address, ',')) {
      if (address.rfind("unix:", 0) != 0 && tcp_address_.empty()) tcp_address_ = address;
    }
    const std::string http = "http://", suffix = "/metrics";
    if (metrics.rfind(http, 0) == 0 && metrics.size() > http.size() + suffix.size()) {
      metrics_address_ = metrics.substr(http.size(), metrics.size() - http.size() - suffix.size());
    }
    if (health != "off") health_address_ = health;
  }

  bool UnixSocketAccepts() const {
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_path_.c_str(), sizeof(addr.sun_path) - 1);
    const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    close(fd);
    return ok;
  }

  pid_t pid_ = -1;
  std::vector<std::string> flags_;
  Ready ready_ = Ready::kServingLine;
  int runs_ = 0;
  std::optional<int> exit_code_;
  std::string dir_, socket_path_, log_path_, out_path_, tcp_address_, metrics_address_,
      health_address_;
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
