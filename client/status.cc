// SPDX-License-Identifier: Apache-2.0
#include "client/status.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace iommu::client {
namespace {

constexpr int kMaxCanonicalCode = 16;  // UNAUTHENTICATED

absl::Status FromCode(int code, absl::string_view message) {
  if (code == 0) return absl::OkStatus();
  if (code < 0 || code > kMaxCanonicalCode) {
    return absl::UnknownError(absl::StrCat("non-canonical status code ", code, ": ", message));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  return FromCode(static_cast<int>(status.error_code()), status.error_message());
}

absl::Status BatchResultStatus(const iommu::v1::BatchResult& result) {
  return FromCode(result.code(), result.message());
}

absl::Status FieldStatus(absl::StatusCode code, absl::string_view field, uint64_t value,
                         absl::string_view why) {
  return absl::Status(code, absl::StrFormat("%s=0x%x: %s", field, value, why));
}

absl::Status FieldStatus(absl::StatusCode code, absl::string_view field, absl::string_view value,
                         absl::string_view why) {
  return absl::Status(code, absl::StrFormat("%s=\"%s\": %s", field, value, why));
}

}  // namespace iommu::client
