// SPDX-License-Identifier: Apache-2.0
#include "core/base/errors.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace iommu::core {

absl::string_view Utf8Prefix(absl::string_view value, size_t max_bytes) {
  if (value.size() <= max_bytes) return value;
  size_t n = max_bytes;
  // Back off over continuation bytes (10xxxxxx) to the start of a character.
  while (n > 0 && (static_cast<unsigned char>(value[n]) & 0xC0) == 0x80) --n;
  return value.substr(0, n);
}

std::string EchoString(absl::string_view value) {
  if (value.size() <= kMaxEchoedBytes) return absl::StrCat("\"", value, "\"");
  return absl::StrCat("\"", Utf8Prefix(value, kMaxEchoedBytes), "\"...(", value.size(), " bytes)");
}

absl::Status FieldError(absl::StatusCode code, absl::string_view field, uint64_t value,
                        absl::string_view why) {
  return absl::Status(code, absl::StrFormat("%s=%#x: %s", field, value, why));
}

absl::Status FieldError(absl::StatusCode code, absl::string_view field, absl::string_view value,
                        absl::string_view why) {
  return absl::Status(code, absl::StrCat(field, "=", EchoString(value), ": ", why));
}

}  // namespace iommu::core
