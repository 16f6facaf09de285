#ifndef IOMMU_CORE_BASE_ERRORS_H_
#define IOMMU_CORE_BASE_ERRORS_H_

// Error construction. Every error the core returns names the offending field
// and its value, in one format, so users and tests can rely on it:
//
//   "<field>=<value>: <why>"     e.g. "size_bytes=0x0: must be non-zero"
//
// Numbers print in hex (addresses and sizes are read in hex by kernel people);
// strings print quoted.

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace iommu::core {

absl::Status FieldError(absl::StatusCode code, absl::string_view field, uint64_t value,
                        absl::string_view why);
absl::Status FieldError(absl::StatusCode code, absl::string_view field, absl::string_view value,
                        absl::string_view why);

inline absl::Status InvalidField(absl::string_view field, uint64_t value, absl::string_view why) {
  return FieldError(absl::StatusCode::kInvalidArgument, field, value, why);
}
inline absl::Status OutOfRangeField(absl::string_view field, uint64_t value,
                                    absl::string_view why) {
  return FieldError(absl::StatusCode::kOutOfRange, field, value, why);
}

}  // namespace iommu::core

#endif  // IOMMU_CORE_BASE_ERRORS_H_
