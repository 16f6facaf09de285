// SPDX-License-Identifier: Apache-2.0
// Test support: runs the real iommud binary on a private Unix socket (and a
// free TCP port), and runs iommuctl, for the integration tests.
//
// Thread-compatible.
#ifndef IOMMU_CLIENT_TESTING_IOMMUD_PROCESS_H_
#define IOMMU_CLIENT_TESTING_IOMMUD_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace iommu::client::testing {

// Paths of the binaries under test, compiled in by CMake.
const char* IommudPath();
const char* IommuctlPath();

// A fresh private directory (core/testing/temp_dir.h); empty if none can be
// made.
std::string MakeTempDir();
// A TCP port free at the time of the call.
int FreeTcpPort();

class IommudProcess {
 public:
  IommudProcess() = default;
  IommudProcess(const IommudProcess&) = delete;
  IommudProcess& operator=(const IommudProcess&) = delete;
  ~IommudProcess();

  // Starts iommud listening on unix:<dir>/iommud.sock and 127.0.0.1:<port>,
  // metrics on another free port, plus `extra_flags`; waits until the Unix
  // socket accepts connections (up to 20 s). `ready_probe` false skips the
  // wait (for tests that start the daemon late on purpose).
  absl::Status Start(const std::vector<std::string>& extra_flags = {}, bool wait_ready = true);
  // Listen on this Unix socket path instead of one in a fresh directory.
  void UseUnixSocket(std::string path) { socket_path_ = std::move(path); }
  // SIGTERM, then waits; returns the exit status (or -signal).
  int Stop();
  // SIGKILL, then waits (a crash); returns -SIGKILL. Start() again restarts
  // the daemon on the same Unix socket and state directory.
  int Kill();

  bool running() const { return pid_ > 0; }
  const std::string& unix_target() const { return unix_target_; }
  const std::string& tcp_target() const { return tcp_target_; }
  const std::string& dir() const { return dir_; }
  // What the daemon printed (stdout and stderr).
  std::string Log() const;

 private:
  // Sends `signal`, waits, and checks the run's log for a sanitizer report.
  int Signal(int signal);

  pid_t pid_ = -1;
  std::string dir_;
  std::string socket_path_;
  std::string unix_target_;
  std::string tcp_target_;
};

struct CtlResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs iommuctl with `args` (no shell; each element one argument) to completion.
CtlResult RunCtl(const std::vector<std::string>& args);

// Starts iommuctl in the background; returns its pid.
pid_t SpawnCtl(const std::vector<std::string>& args);

}  // namespace iommu::client::testing

#endif  // IOMMU_CLIENT_TESTING_IOMMUD_PROCESS_H_
