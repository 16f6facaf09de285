// SPDX-License-Identifier: Apache-2.0
// Test support: a fresh private directory for a test's files (a daemon's
// socket, log and state store, throw-away keys), for the integration test
// harnesses of tests/ and client/testing/.
#ifndef IOMMU_CORE_TESTING_TEMP_DIR_H_
#define IOMMU_CORE_TESTING_TEMP_DIR_H_

#include <stdlib.h>

#include <string>
#include <string_view>

namespace iommu::testing {

// mkdtemp of `prefix` + "XXXXXX" under TEST_TMPDIR, else TMPDIR (`make test`
// gives each run its own, removed when the run passes:
// scripts/with_test_tmpdir.sh), else /tmp. Empty when it cannot be made.
inline std::string MakeTestTempDir(std::string_view prefix) {
  const char* base = getenv("TEST_TMPDIR");
  if (base == nullptr || *base == '\0') base = getenv("TMPDIR");
  if (base == nullptr || *base == '\0') base = "/tmp";
  std::string tmpl = std::string(base) + "/" + std::string(prefix) + "XXXXXX";
  return mkdtemp(tmpl.data()) != nullptr ? tmpl : std::string();
}

}  // namespace iommu::testing

#endif  // IOMMU_CORE_TESTING_TEMP_DIR_H_
