// SPDX-License-Identifier: Apache-2.0
#include "client/health.h"

#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/connection.h"
#include "client/status.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"

namespace iommu::client {
namespace internal {
namespace {

constexpr char kCheckMethod[] = "/grpc.health.v1.Health/Check";

void PutVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(0x80 | (v & 0x7f)));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

bool GetVarint(absl::string_view* in, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64 && !in->empty(); shift += 7) {
    const uint8_t byte = static_cast<uint8_t>(in->front());
    in->remove_prefix(1);
    *v |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

}  // namespace

std::string EncodeHealthCheckRequest(absl::string_view service) {
  std::string out;
  if (service.empty()) return out;  // proto3: an empty string is not sent
  out.push_back(0x0a);              // field 1, length-delimited
  PutVarint(service.size(), &out);
  out.append(service.data(), service.size());
  return out;
}

absl::StatusOr<HealthStatus> DecodeHealthCheckResponse(absl::string_view bytes) {
  uint64_t status = 0;  // absent: UNKNOWN
  while (!bytes.empty()) {
    uint64_t key = 0;
    if (!GetVarint(&bytes, &key))
      return absl::InternalError("health response: truncated field key");
    const uint64_t field = key >> 3, wire_type = key & 7;
    if (wire_type == 0) {
      uint64_t value = 0;
      if (!GetVarint(&bytes, &value))
        return absl::InternalError("health response: truncated varint");
      if (field == 1) status = value;
    } else if (wire_type == 2) {
      uint64_t length = 0;
      if (!GetVarint(&bytes, &length) || length > bytes.size()) {
        return absl::InternalError("health response: truncated length-delimited field");
      }
      bytes.remove_prefix(length);
    } else {
      return absl::InternalError(absl::StrCat("health response: unexpected wire type ", wire_type));
    }
  }
  if (status > static_cast<uint64_t>(HealthStatus::kServiceUnknown)) {
    return absl::InternalError(
        absl::StrCat("health response: status=", status, ": not a ServingStatus"));
  }
  return static_cast<HealthStatus>(status);
}

}  // namespace internal

absl::string_view HealthStatusName(HealthStatus status) {
  switch (status) {
    case HealthStatus::kUnknown:
      return "UNKNOWN";
    case HealthStatus::kServing:
      return "SERVING";
    case HealthStatus::kNotServing:
      return "NOT_SERVING";
    case HealthStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
  }
  return "UNKNOWN";
}

absl::StatusOr<HealthStatus> CheckHealth(const Client& client, absl::string_view service) {
  const std::string request = internal::EncodeHealthCheckRequest(service);
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::GenericStub stub(client.connection()->channel);
  grpc::ClientContext context;
  client.PrepareContext(&context, client.options().default_deadline);
  grpc::CompletionQueue cq;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> call =
      stub.PrepareUnaryCall(&context, internal::kCheckMethod, request_buffer, &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  call->Finish(&response, &status, nullptr);
  void* tag = nullptr;
  bool ok = false;
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  if (!status.ok()) return FromGrpcStatus(status);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok())
    return absl::InternalError("health response: unreadable message");
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return internal::DecodeHealthCheckResponse(bytes);
}

}  // namespace iommu::client
