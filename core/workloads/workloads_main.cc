// SPDX-License-Identifier: Apache-2.0
// iommu_workloads: runs the benchmark workloads of
// docs/performance.md#workloads against the project's engines and prints one
// line per workload.
//
//   iommu_workloads [--filter=SUBSTRING] [--repetitions=N] [--list]

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"
#include "core/workloads/workload.h"

int main(int argc, char** argv) {
  std::string filter;
  int repetitions = 5;
  bool list = false;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (absl::ConsumePrefix(&arg, "--filter=")) {
      filter = std::string(arg);
    } else if (absl::ConsumePrefix(&arg, "--repetitions=")) {
      if (!absl::SimpleAtoi(arg, &repetitions) || repetitions < 1) {
        std::fprintf(stderr, "--repetitions=%s: must be a positive integer\n",
                     std::string(arg).c_str());
        return 2;
      }
    } else if (arg == "--list") {
      list = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--filter=SUBSTRING] [--repetitions=N] [--list]\n"
                   "unknown argument: %s\n",
                   argv[0], argv[i]);
      return 2;
    }
  }
  int ran = 0;
  for (const auto& w : iommu::workloads::RegisteredWorkloads()) {
    if (!filter.empty() && !absl::StrContains(w.name, filter)) continue;
    ++ran;
    if (list) {
      std::printf("%s\n", w.name.c_str());
      continue;
    }
    std::printf("%s\n", w.run(repetitions).Format().c_str());
    std::fflush(stdout);
  }
  if (ran == 0) {
    std::fprintf(stderr, "no workload matches --filter=%s\n", filter.c_str());
    return 1;
  }
  return 0;
}
