// SPDX-License-Identifier: Apache-2.0
#include "core/base/fail_nth.h"

#include <cassert>

#include "absl/strings/str_cat.h"
#include "core/base/errors.h"

namespace iommu::core {

absl::string_view FailPointName(FailPoint point) {
  switch (point) {
    case FailPoint::kPgtableTable:
      return "pgtable.table";
    case FailPoint::kMemoryPages:
      return "memory.pages";
    case FailPoint::kIovaRange:
      return "iova.range";
    case FailPoint::kSmmuContext:
      return "smmu.context";
    case FailPoint::kMappingRecord:
      return "mapping.record";
    case FailPoint::kBufferRecord:
      return "buffer.record";
    case FailPoint::kExportRecord:
      return "export.record";
    case FailPoint::kImportRecord:
      return "import.record";
    case FailPoint::kSessionRecord:
      return "session.record";
  }
  return "?";
}

namespace fail_nth {
namespace {

// This thread's arming (meaningful while internal::armed).
struct State {
  uint64_t nth = 0;
  std::optional<FailPoint> only;
  Result result;
};
thread_local State state;

}  // namespace

bool internal::Hit(FailPoint point) {
  ++state.result.hits_by_point[int(point)];
  if (state.only && *state.only != point) return false;
  if (++state.result.hits != state.nth) return false;
  state.result.failed = point;
  return true;
}

void Arm(uint64_t n, std::optional<FailPoint> point) {
  assert(n >= 1);
  state = State{.nth = n, .only = point};
  internal::armed = true;
}

void Disarm() { internal::armed = false; }

Result Get() { return state.result; }

absl::Status Exhausted(FailPoint point, absl::string_view field, uint64_t value,
                       absl::string_view why) {
  return FieldError(absl::StatusCode::kResourceExhausted, field, value,
                    absl::StrCat(why, " (injected failure at ", FailPointName(point), ")"));
}

absl::Status Exhausted(FailPoint point, absl::string_view field, absl::string_view value,
                       absl::string_view why) {
  return FieldError(absl::StatusCode::kResourceExhausted, field, value,
                    absl::StrCat(why, " (injected failure at ", FailPointName(point), ")"));
}

}  // namespace fail_nth
}  // namespace iommu::core
