#include "server/rpc_call.h"

#include "absl/strings/str_cat.h"

namespace iommu::server {

absl::StatusOr<std::optional<std::string>> RequestIdOf(const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  auto [first, last] = metadata.equal_range(kRequestIdMetadataKey);
  if (first == last) return std::optional<std::string>();
  const absl::string_view id(first->second.data(), first->second.size());
  if (std::next(first) != last) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: sent %d times; a call carries one request id", kRequestIdMetadataKey,
                        std::distance(first, last)));
  }
  if (absl::Status s = core::CheckRequestId(kRequestIdMetadataKey, id); !s.ok()) return s;
  return std::optional<std::string>(std::string(id));
}

std::string RequestPrincipal(const core::Caller& caller) {
  // A device's ids and the admins' are apart; within a device every client
  // acting as it shares one scope (ids are random, so they do not meet).
  return caller.admin && caller.device.empty()
             ? std::string("admin")
             : absl::StrCat(caller.admin ? "admin:" : "device:", caller.device);
}

absl::Time RequestDeadline(const grpc::ServerContextBase& context) {
  // A retry waits for an earlier attempt at most this long (and never past
  // its own deadline): an attempt holds no lock a retry needs.
  const absl::Time cap = absl::Now() + absl::Seconds(30);
  const absl::Time deadline = absl::FromChrono(context.deadline());
  return std::min(cap, deadline);
}

}  // namespace iommu::server
