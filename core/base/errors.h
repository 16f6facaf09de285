// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BASE_ERRORS_H_
#define IOMMU_CORE_BASE_ERRORS_H_

// Error construction. Every error the core returns names the offending field
// and its value, in one format, so users and tests can rely on it:
//
//   "<field>=<value>: <why>"     e.g. "size_bytes=0x0: must be non-zero"
//
// Numbers print in hex (addresses and sizes are read in hex by kernel people);
// strings print quoted. A string is a client's to choose, so what is echoed of
// it is bounded: at most kMaxEchoedBytes of it, cut at a UTF-8 character
// boundary, then a marker with its whole length,
//
//   device="aaaa...aaaa"...(10485760 bytes): no such device
//
// so that neither an error nor a log line that carries it grows with the
// request (docs/design.md#limits).

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace iommu::core {

// The most bytes of a string value an error echoes.
inline constexpr size_t kMaxEchoedBytes = 128;

// `value` as an error echoes it: quoted, and bounded as described above.
std::string EchoString(absl::string_view value);

// `value` cut to at most `max_bytes`, never inside a UTF-8 character.
absl::string_view Utf8Prefix(absl::string_view value, size_t max_bytes);

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
