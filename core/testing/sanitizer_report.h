// Test support: a sanitizer report in what a child process wrote.
//
// The integration tests run the real daemon as a child process; in a
// sanitizer build (`make tsan`, `make asan`) its reports go to its stderr, the
// log the test harness keeps, and would pass unseen because the daemon goes
// on serving. The harnesses call ExpectNoSanitizerReport on every log they
// are about to stop reading, so a report fails the test that provoked it.
#ifndef IOMMU_CORE_TESTING_SANITIZER_REPORT_H_
#define IOMMU_CORE_TESTING_SANITIZER_REPORT_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <string_view>

namespace iommu::testing {

// The first sanitizer report in `output`, from the start of its first line
// through its SUMMARY line (at most 16 KiB of it); empty when there is none.
inline std::string SanitizerReport(std::string_view output) {
  constexpr std::string_view kStarts[] = {
      "WARNING: ThreadSanitizer:", "ERROR: AddressSanitizer:", "ERROR: LeakSanitizer:",
      ": runtime error: ",  // UBSan: "file:line:col: runtime error: ..."
  };
  size_t first = std::string_view::npos;
  for (std::string_view start : kStarts) first = std::min(first, output.find(start));
  if (first == std::string_view::npos) return "";
  const size_t line = output.rfind('\n', first);
  const size_t begin = line == std::string_view::npos ? 0 : line + 1;
  size_t end = output.find("SUMMARY:", first);
  end = end == std::string_view::npos ? output.size() : output.find('\n', end);
  if (end == std::string_view::npos) end = output.size();
  constexpr size_t kMaxBytes = 16 << 10;
  return std::string(output.substr(begin, std::min(end - begin, kMaxBytes)));
}

// Fails the running test, quoting the report, when `output` (what `process`
// wrote) holds one.
inline void ExpectNoSanitizerReport(std::string_view output, std::string_view process) {
  const std::string report = SanitizerReport(output);
  if (!report.empty()) ADD_FAILURE() << process << " reported:\n" << report;
}

}  // namespace iommu::testing

#endif  // IOMMU_CORE_TESTING_SANITIZER_REPORT_H_
