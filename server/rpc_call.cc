// SPDX-License-Identifier: Apache-2.0
#include "server/rpc_call.h"

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace iommu::server {

FlatBytes::FlatBytes(const grpc::ByteBuffer& bytes) {
  if (!bytes.TrySingleSlice(&slice_).ok()) (void)bytes.DumpToSingleSlice(&slice_);
}

absl::Status ParseRequest(const ServiceEnv& env, Method method, const grpc::ByteBuffer& bytes,
                          google::protobuf::Message* request) {
  const MethodInfo& info = Describe(method);
  const FlatBytes flat(bytes);
  absl::Status scanned = env.scanner->Scan(request->GetDescriptor(), flat.view());
  if (!scanned.ok()) {
    if (!absl::IsInvalidArgument(scanned)) return scanned;  // a limit, naming the field
    return absl::InvalidArgumentError(
        absl::StrCat(info.service, "/", info.method, ": ", scanned.message()));
  }
  ProtobufLogCapture capture;
  if (request->ParseFromArray(flat.view().data(), static_cast<int>(flat.view().size()))) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(info.service, "/", info.method, ": the request could not be parsed as ",
                   request->GetDescriptor()->full_name(),
                   capture.text().empty() ? "" : absl::StrCat(" (", capture.text(), ")")));
}

absl::Status SerializeReply(const ServiceEnv& env, Method method,
                            const google::protobuf::Message& reply, grpc::ByteBuffer* out) {
  // A reactor reuses its reply buffer: gRPC's writer requires an empty one
  // (it aborts the process otherwise), whatever the previous write left.
  out->Clear();
  bool own_buffer = false;
  const grpc::Status s = grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::Message>(
      reply, out, &own_buffer);
  if (!s.ok()) return absl::InternalError(s.error_message());
  if (out->Length() <= env.limits->max_message_bytes) return absl::OkStatus();
  const MethodInfo& info = Describe(method);
  const absl::Status refused = absl::ResourceExhaustedError(
      absl::StrFormat("the reply of %s/%s takes %d bytes, more than --max_message_bytes=%d",
                      info.service, info.method, out->Length(), env.limits->max_message_bytes));
  out->Clear();
  // Every reply is bounded by a limit checked before the work: this one
  // escaped them.
  LogError("reply_unbounded", refused.message());
  return refused;
}

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
