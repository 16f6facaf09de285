// SPDX-License-Identifier: Apache-2.0
// Test support: a sanitizer report in what a child process wrote.
//
// The integration tests run the real daemon as a child process; in a
// sanitizer build (`make tsan`, `make asan`) its reports go to its stderr, the
// log the test harness keeps, and would pass unseen because the daemon goes
// on serving. The harnesses call ExpectNoSanitizerReport on every log they
// are about to stop reading, so a report fails the test that provoked it,
// and start the daemon with TSan's exit code at 0, so that this check, not
// the exit status, judges its reports.
#ifndef IOMMU_CORE_TESTING_SANITIZER_REPORT_H_
#define IOMMU_CORE_TESTING_SANITIZER_REPORT_H_

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace iommu::testing {

namespace internal {

// Whether a ThreadSanitizer data race involves our code: a frame with a
// source location outside the system's headers (/usr/...) among the top
// three frames of either access. Races both of whose accesses are in gRPC's
// header code (or the standard library's atomics it uses) on objects gRPC
// hands between threads through its uninstrumented core are not: TSan
// cannot see that hand-over (core/testing/tsan.supp says more).
inline bool RaceInvolvesOurCode(std::string_view report) {
  int frame_in_stack = 3;  // past the top three until an access header
  size_t pos = 0;
  while (pos < report.size()) {
    size_t end = report.find('\n', pos);
    if (end == std::string_view::npos) end = report.size();
    const std::string_view line = report.substr(pos, end - pos);
    pos = end + 1;
    const size_t text = line.find_first_not_of(' ');
    if (text == std::string_view::npos) continue;
    const std::string_view body = line.substr(text);
    for (std::string_view access : {"Read of", "Write of", "Atomic ", "Previous "}) {
      if (body.substr(0, access.size()) == access) frame_in_stack = 0;
    }
    if (body.empty() || body[0] != '#') continue;
    if (frame_in_stack++ >= 3) continue;
    // "#N function /path/file.cc:line:col (module+0x...) (BuildId: ...)":
    // the source location is the first token starting with '/' (a frame
    // without one, "<null>", is in a library without line information).
    const size_t where = body.find(" /");
    if (where == std::string_view::npos) continue;
    if (body.substr(where + 1, 5) != "/usr/") return true;
  }
  return false;
}

}  // namespace internal

// The first sanitizer report in `output` that is ours, from the start of its
// first line through its SUMMARY line (at most 16 KiB of it); empty when
// there is none. Every AddressSanitizer, LeakSanitizer and UBSan report is
// ours, and every ThreadSanitizer one except a data race in which no access
// touches our code (internal::RaceInvolvesOurCode).
inline std::string SanitizerReport(std::string_view output) {
  constexpr std::string_view kStarts[] = {
      "WARNING: ThreadSanitizer:", "ERROR: AddressSanitizer:", "ERROR: LeakSanitizer:",
      ": runtime error: ",  // UBSan: "file:line:col: runtime error: ..."
  };
  size_t from = 0;
  while (true) {
    size_t first = std::string_view::npos;
    for (std::string_view start : kStarts) first = std::min(first, output.find(start, from));
    if (first == std::string_view::npos) return "";
    const size_t line = output.rfind('\n', first);
    const size_t begin = line == std::string_view::npos ? 0 : line + 1;
    size_t end = output.find("SUMMARY:", first);
    end = end == std::string_view::npos ? output.size() : output.find('\n', end);
    if (end == std::string_view::npos) end = output.size();
    const std::string_view report = output.substr(begin, end - begin);
    from = end;
    if (report.find("ThreadSanitizer: data race") != std::string_view::npos &&
        !internal::RaceInvolvesOurCode(report)) {
      continue;
    }
    constexpr size_t kMaxBytes = 16 << 10;
    return std::string(report.substr(0, kMaxBytes));
  }
}

// The environment a test starts the daemon in: this process's, with
// exitcode=0 added to TSAN_OPTIONS (ExpectNoSanitizerReport judges the
// daemon's reports instead). Built before fork, for execve.
inline std::vector<std::string> DaemonEnvironment() {
  std::vector<std::string> env;
  bool tsan_options = false;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry = *e;
    if (entry.rfind("TSAN_OPTIONS=", 0) == 0) {
      entry += " exitcode=0";
      tsan_options = true;
    }
    env.push_back(std::move(entry));
  }
  if (!tsan_options) env.push_back("TSAN_OPTIONS=exitcode=0");
  return env;
}

// Fails the running test, quoting the report, when `output` (what `process`
// wrote) holds one.
inline void ExpectNoSanitizerReport(std::string_view output, std::string_view process) {
  const std::string report = SanitizerReport(output);
  if (!report.empty()) ADD_FAILURE() << process << " reported:\n" << report;
}

}  // namespace iommu::testing

#endif  // IOMMU_CORE_TESTING_SANITIZER_REPORT_H_
