#include "core/base/errors.h"

#include "absl/strings/str_format.h"

namespace iommu::core {

absl::Status FieldError(absl::StatusCode code, absl::string_view field, uint64_t value,
                        absl::string_view why) {
  return absl::Status(code, absl::StrFormat("%s=%#x: %s", field, value, why));
}

absl::Status FieldError(absl::StatusCode code, absl::string_view field, absl::string_view value,
                        absl::string_view why) {
  return absl::Status(code, absl::StrFormat("%s=\"%s\": %s", field, value, why));
}

}  // namespace iommu::core
