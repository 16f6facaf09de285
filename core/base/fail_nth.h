// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BASE_FAIL_NTH_H_
#define IOMMU_CORE_BASE_FAIL_NTH_H_

// Failure injection for tests, as the Linux iommufd selftests' fail_nth: each
// place in core where a call draws on memory or another resource that can
// run dry (a page-table page, physical pages, IOVA space, a translation
// context, a record of a mapping, buffer, export, import or session) is a
// named injection point (the few left out, and why: the doc below). A test arms "fail the n-th hit"
// (of any point, or of one), runs an operation, and reads which point failed; the point then fails
// as a real exhaustion would, RESOURCE_EXHAUSTED naming what ran out, and the operation must unwind
// and leave no trace (docs/design.md#failure-injection).
//
// Cost. Compiled into every build: disarmed, a point is one load of a
// thread-local flag and a branch predicted not taken, and every point sits on
// a path that is about to allocate or search (a new page-table table, a
// buddy allocation, a domain transaction's IOVA allocation), never on the
// engines' inline fast paths (the IOVA magazine hit, a leaf store into a
// cached table). One build for tests and the daemon means the code the sweep
// proves is the code that ships, with no option to forget.
//
// Thread-local: arming affects only the calling thread's operations (the
// sweep is single-threaded; other threads never see an injected failure).

#include <cstdint>
#include <optional>

#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace iommu::core {

// The injection points, each named "<engine>.<what>" (FailPointName).
enum class FailPoint : uint8_t {
  kPgtableTable = 0,  // a page-table table (LpaePgtable, root included)
  kMemoryPages,       // physical pages for a buffer (PhysMemory::AllocPages)
  kIovaRange,         // IOVA space in a domain transaction (DMA and DMA_FQ cookies)
  kSmmuContext,       // a translation context for a new domain
  kMappingRecord,     // a domain's mapping record
  kBufferRecord,      // a buffer's record in the buffer table
  kExportRecord,      // an export token's record
  kImportRecord,      // an import's entry in its export's import list
  kSessionRecord,     // a session's record
};
inline constexpr int kNumFailPoints = 9;

// "pgtable.table", "memory.pages", ...
absl::string_view FailPointName(FailPoint point);

namespace fail_nth {

namespace internal {
// Whether this thread is armed: the only state a disarmed point reads.
inline constinit thread_local bool armed = false;
bool Hit(FailPoint point);
}  // namespace internal

// Arms this thread: the n-th hit (1-based) from now of `point`, or of any
// point when none is given, fails; every hit is counted. Resets the counts.
// REQUIRES: n >= 1.
void Arm(uint64_t n, std::optional<FailPoint> point = std::nullopt);
// Disarms this thread (a point no longer counts or fails).
void Disarm();

struct Result {
  uint64_t hits = 0;                // hits counted since Arm (of the armed point, or of any)
  std::optional<FailPoint> failed;  // the point that failed, if the n-th hit came
  uint64_t hits_by_point[kNumFailPoints] = {};  // every point's hits since Arm
};
// What happened on this thread since Arm.
Result Get();

// Arms for one scope and disarms at its end.
class ScopedArm {
 public:
  explicit ScopedArm(uint64_t n, std::optional<FailPoint> point = std::nullopt) { Arm(n, point); }
  ~ScopedArm() { Disarm(); }
  ScopedArm(const ScopedArm&) = delete;
  ScopedArm& operator=(const ScopedArm&) = delete;
};

// At an injection point: true when this hit must fail (the caller then
// fails as a real exhaustion of `point` would). Disarmed: one thread-local
// load.
inline bool ShouldFail(FailPoint point) {
  if (ABSL_PREDICT_TRUE(!internal::armed)) return false;
  return internal::Hit(point);
}

// The RESOURCE_EXHAUSTED a point returns when it fails: "<field>=<value>:
// <why> (injected failure at <point>)".
absl::Status Exhausted(FailPoint point, absl::string_view field, uint64_t value,
                       absl::string_view why);
absl::Status Exhausted(FailPoint point, absl::string_view field, absl::string_view value,
                       absl::string_view why);

}  // namespace fail_nth
}  // namespace iommu::core

#endif  // IOMMU_CORE_BASE_FAIL_NTH_H_
