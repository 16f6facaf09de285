// SPDX-License-Identifier: Apache-2.0
#include "client/client.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/connection.h"
#include "client/request_id.h"
#include "client/status.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace iommu::client {
namespace {

// kNo: the call changes the daemon's state (a Translate records its fault,
// an export mints a token), so its retries carry a request id.
enum class Idempotent { kNo, kYes };

template <typename Stub, typename Req, typename Resp>
using UnaryMethod = grpc::Status (Stub::*)(grpc::ClientContext*, const Req&, Resp*);

template <typename Req>
void FillDevice(Req& request, const std::string& device) {
  if constexpr (requires { request.device(); }) {
    if (request.device().empty() && !device.empty()) request.set_device(device);
  }
}

// One unary call: fills the device, sets deadline and metadata, and retries
// on UNAVAILABLE with exponential backoff while the call's one deadline
// leaves room (and options.retry.max_attempts allows). A read is repeated
// as it is; a mutating call sends one request id with every attempt, so a
// call the daemon applied before it restarted is answered with its original
// reply rather than applied again. Attempts after the first wait for the
// channel to reconnect instead of failing fast while it is down.
template <typename Stub, typename Req, typename Resp>
absl::StatusOr<Resp> Call(const Client& client, Stub* stub, UnaryMethod<Stub, Req, Resp> method,
                          Req request, Idempotent idempotent) {
  FillDevice(request, client.device());
  const Options& options = client.options();
  // The daemon would refuse it unread; say why, and send nothing.
  if (absl::Status s = internal::CheckRequestBytes(options, request.ByteSizeLong()); !s.ok()) {
    return s;
  }
  const absl::Time deadline = absl::Now() + options.default_deadline;
  std::string request_id;
  if (idempotent == Idempotent::kNo) {
    const internal::RequestId id = internal::NewRequestId();
    request_id.assign(id.data(), id.size());
  }
  absl::Duration backoff = options.retry.initial_backoff;
  grpc::Status unavailable;  // the last UNAVAILABLE answer
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    client.PrepareContext(&context, deadline - absl::Now());
    if (!request_id.empty()) context.AddMetadata(internal::kRequestIdMetadataKey, request_id);
    if (attempt > 1) context.set_wait_for_ready(true);
    Resp response;
    grpc::Status status = (stub->*method)(&context, request, &response);
    if (status.ok()) return response;
    // A retry that ran out of time waiting for the channel: the daemon is
    // still unreachable, which the last UNAVAILABLE says better.
    if (attempt > 1 && status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
        client.connection()->channel->GetState(/*try_to_connect=*/false) != GRPC_CHANNEL_READY) {
      return absl::UnavailableError(absl::StrCat(
          unavailable.error_message(), " (still unreachable at the deadline, ",
          absl::FormatDuration(options.default_deadline), ", after ", attempt, " attempts)"));
    }
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE ||
        attempt >= options.retry.max_attempts || absl::Now() + backoff >= deadline) {
      return FromGrpcStatus(status);
    }
    unavailable = std::move(status);
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, options.retry.max_backoff);
  }
}

class GrpcFaultStream final : public FaultStream {
 public:
  GrpcFaultStream(const Client& client, const v1::WatchFaultsRequest& request) {
    client.PrepareContext(&context_, absl::InfiniteDuration());
    reader_ = client.connection()->devices->WatchFaults(&context_, request);
  }
  bool Read(v1::FaultEvent* event) override { return reader_->Read(event); }
  void Cancel() override { context_.TryCancel(); }
  absl::Status Finish() override { return FromGrpcStatus(reader_->Finish()); }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::FaultEvent>> reader_;
};

// Plaintext for kNone; TLS verified against the CA for kToken (the token
// travels as call metadata) and kMtls (which adds the client certificate).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const Credentials& c) {
  if (c.kind == Credentials::Kind::kNone) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> ca = ReadFileForField("tls_ca", c.tls_ca_file);
  if (!ca.ok()) return ca.status();
  ssl.pem_root_certs = *std::move(ca);
  if (c.kind == Credentials::Kind::kMtls) {
    absl::StatusOr<std::string> key = ReadFileForField("tls_key", c.tls_key_file);
    if (!key.ok()) return key.status();
    absl::StatusOr<std::string> cert = ReadFileForField("tls_cert", c.tls_cert_file);
    if (!cert.ok()) return cert.status();
    ssl.pem_private_key = *std::move(key);
    ssl.pem_cert_chain = *std::move(cert);
  }
  return grpc::SslCredentials(ssl);
}

}  // namespace

namespace internal {

absl::Status CheckRequestBytes(const Options& options, size_t request_bytes) {
  if (request_bytes <= options.limits.max_message_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the request takes ", request_bytes, " bytes, more than limits.max_message_bytes=",
      options.limits.max_message_bytes, " (the daemon's --max_message_bytes); nothing was sent"));
}

}  // namespace internal

absl::StatusOr<Client> Client::Connect(const Options& options) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
      MakeChannelCredentials(options.credentials);
  if (!creds.ok()) return creds.status();

  grpc::ChannelArguments args;
  // The daemon's --max_message_bytes: every reply fits (docs/design.md#limits).
  args.SetMaxReceiveMessageSize(static_cast<int>(options.limits.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.limits.max_message_bytes));
  // The daemon is local: reconnect within ~100 ms rather than gRPC's
  // default 1 s, and never back off past 1 s (gRPC's default grows to
  // 2 min), so a restarted daemon is found within ~1 s, well inside the
  // deadline its callers retry in.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  const Credentials& c = options.credentials;
  if (c.kind != Credentials::Kind::kNone) {
    if (!c.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(c.tls_server_name);
    } else if (absl::StartsWith(options.target, "unix:")) {
      args.SetSslTargetNameOverride("localhost");
    }
  }
  auto conn = std::make_shared<internal::Connection>();
  conn->options = options;
  if (c.kind == Credentials::Kind::kToken) conn->authorization = absl::StrCat("Bearer ", c.token);
  conn->channel = grpc::CreateCustomChannel(options.target, *creds, args);
  if (options.connect_timeout > absl::ZeroDuration() &&
      !conn->channel->WaitForConnected(absl::ToChronoTime(absl::Now() + options.connect_timeout))) {
    return FieldStatus(
        absl::StatusCode::kUnavailable, "target", options.target,
        absl::StrCat("not reachable within ", absl::FormatDuration(options.connect_timeout)));
  }
  conn->dma = v1::Dma::NewStub(conn->channel);
  conn->memory = v1::Memory::NewStub(conn->channel);
  conn->domains = v1::Domains::NewStub(conn->channel);
  conn->devices = v1::Devices::NewStub(conn->channel);
  conn->sessions = v1::Sessions::NewStub(conn->channel);
  conn->stats = v1::Stats::NewStub(conn->channel);
  return Client(std::move(conn), /*session_id=*/0);
}

const Options& Client::options() const { return conn_->options; }
const std::string& Client::device() const { return conn_->options.device; }
Client Client::WithSession(uint64_t session_id) const { return Client(conn_, session_id); }

void Client::PrepareContext(grpc::ClientContext* context, absl::Duration deadline) const {
  if (deadline != absl::InfiniteDuration()) {
    context->set_deadline(
        absl::ToChronoTime(absl::Now() + std::max(deadline, absl::ZeroDuration())));
  }
  if (!conn_->authorization.empty()) context->AddMetadata("authorization", conn_->authorization);
  if (session_id_ != 0)
    context->AddMetadata(internal::kSessionMetadataKey, absl::StrCat(session_id_));
}

// Dma.
absl::StatusOr<v1::MapResponse> Client::Map(v1::MapRequest r) const {
  return Call(*this, conn_->dma.get(), &v1::Dma::Stub::Map, std::move(r), Idempotent::kNo);
}
absl::StatusOr<v1::UnmapResponse> Client::Unmap(v1::UnmapRequest r) const {
  return Call(*this, conn_->dma.get(), &v1::Dma::Stub::Unmap, std::move(r), Idempotent::kNo);
}
absl::StatusOr<v1::MapSgResponse> Client::MapSg(v1::MapSgRequest r) const {
  return Call(*this, conn_->dma.get(), &v1::Dma::Stub::MapSg, std::move(r), Idempotent::kNo);
}
absl::StatusOr<v1::UnmapSgResponse> Client::UnmapSg(v1::UnmapSgRequest r) const {
  return Call(*this, conn_->dma.get(), &v1::Dma::Stub::UnmapSg, std::move(r), Idempotent::kNo);
}
absl::StatusOr<v1::AllocResponse> Client::Alloc(v1::AllocRequest r) const {
  return Call(*this, conn_->dma.get(), &v1::Dma::Stub::Alloc, std::move(r), Idempotent::kNo);
}
absl::StatusOr<v1::FreeResponse> Client::Free(v1::FreeRequest r) const {
  return Call(*this, conn_->dma.get(), &v1::Dma::Stub::Free, std::move(r), Idempotent::kNo);
}
absl::StatusOr<v1::GetSgTableResponse> Client::GetSgTable(v1::GetSgTableRequest r) const {
  // An export mints a token: not a pure read.
  const Idempotent idem = r.export_() ? Idempotent::kNo : Idempotent::kYes;
  return Call(*this, conn_->dma.get(), &v1::Dma::Stub::GetSgTable, std::move(r), idem);
}
absl::StatusOr<v1::RevokeExportResponse> Client::RevokeExport(v1::RevokeExportRequest r) const {
  // A second revocation would answer NOT_FOUND: a retry needs the request id.
  return Call(*this, conn_->dma.get(), &v1::Dma::Stub::RevokeExport, std::move(r), Idempotent::kNo);
}
absl::StatusOr<v1::MsiCookieResponse> Client::MsiCookie(v1::MsiCookieRequest r) const {
  return Call(*this, conn_->dma.get(), &v1::Dma::Stub::MsiCookie, std::move(r), Idempotent::kNo);
}
absl::StatusOr<v1::MapAtResponse> Client::MapAt(v1::MapAtRequest r) const {
  return Call(*this, conn_->dma.get(), &v1::Dma::Stub::MapAt, std::move(r), Idempotent::kNo);
}
absl::StatusOr<v1::UnmapRangeResponse> Client::UnmapRange(v1::UnmapRangeRequest r) const {
  return Call(*this, conn_->dma.get(), &v1::Dma::Stub::UnmapRange, std::move(r), Idempotent::kNo);
}
absl::StatusOr<v1::SyncResponse> Client::Sync(v1::SyncRequest r) const {
  return Call(*this, conn_->dma.get(), &v1::Dma::Stub::Sync, std::move(r), Idempotent::kYes);
}

// Memory.
absl::StatusOr<v1::AllocBufferResponse> Client::AllocBuffer(v1::AllocBufferRequest r) const {
  return Call(*this, conn_->memory.get(), &v1::Memory::Stub::AllocBuffer, std::move(r),
              Idempotent::kNo);
}
absl::StatusOr<v1::FreeBufferResponse> Client::FreeBuffer(v1::FreeBufferRequest r) const {
  return Call(*this, conn_->memory.get(), &v1::Memory::Stub::FreeBuffer, std::move(r),
              Idempotent::kNo);
}
absl::StatusOr<v1::GetBufferResponse> Client::GetBuffer(v1::GetBufferRequest r) const {
  return Call(*this, conn_->memory.get(), &v1::Memory::Stub::GetBuffer, std::move(r),
              Idempotent::kYes);
}

// Domains.
absl::StatusOr<v1::CreateDomainResponse> Client::CreateDomain(v1::CreateDomainRequest r) const {
  return Call(*this, conn_->domains.get(), &v1::Domains::Stub::CreateDomain, std::move(r),
              Idempotent::kNo);
}
absl::StatusOr<v1::DestroyDomainResponse> Client::DestroyDomain(v1::DestroyDomainRequest r) const {
  return Call(*this, conn_->domains.get(), &v1::Domains::Stub::DestroyDomain, std::move(r),
              Idempotent::kNo);
}
absl::StatusOr<v1::GetDomainResponse> Client::GetDomain(v1::GetDomainRequest r) const {
  return Call(*this, conn_->domains.get(), &v1::Domains::Stub::GetDomain, std::move(r),
              Idempotent::kYes);
}
absl::StatusOr<v1::ListDomainsResponse> Client::ListDomains(v1::ListDomainsRequest r) const {
  return Call(*this, conn_->domains.get(), &v1::Domains::Stub::ListDomains, std::move(r),
              Idempotent::kYes);
}
absl::StatusOr<v1::AttachDeviceResponse> Client::AttachDevice(v1::AttachDeviceRequest r) const {
  return Call(*this, conn_->domains.get(), &v1::Domains::Stub::AttachDevice, std::move(r),
              Idempotent::kNo);
}
absl::StatusOr<v1::DetachDeviceResponse> Client::DetachDevice(v1::DetachDeviceRequest r) const {
  return Call(*this, conn_->domains.get(), &v1::Domains::Stub::DetachDevice, std::move(r),
              Idempotent::kNo);
}
absl::StatusOr<v1::GetIovaRangesResponse> Client::GetIovaRanges(v1::GetIovaRangesRequest r) const {
  return Call(*this, conn_->domains.get(), &v1::Domains::Stub::GetIovaRanges, std::move(r),
              Idempotent::kYes);
}
absl::StatusOr<v1::WalkDomainResponse> Client::WalkDomain(v1::WalkDomainRequest r) const {
  return Call(*this, conn_->domains.get(), &v1::Domains::Stub::WalkDomain, std::move(r),
              Idempotent::kYes);
}

// Devices.
absl::StatusOr<v1::ListIommusResponse> Client::ListIommus(v1::ListIommusRequest r) const {
  return Call(*this, conn_->devices.get(), &v1::Devices::Stub::ListIommus, std::move(r),
              Idempotent::kYes);
}
absl::StatusOr<v1::ListDevicesResponse> Client::ListDevices(v1::ListDevicesRequest r) const {
  return Call(*this, conn_->devices.get(), &v1::Devices::Stub::ListDevices, std::move(r),
              Idempotent::kYes);
}
absl::StatusOr<v1::TranslateResponse> Client::Translate(v1::TranslateRequest r) const {
  return Call(*this, conn_->devices.get(), &v1::Devices::Stub::Translate, std::move(r),
              Idempotent::kNo);
}
absl::StatusOr<v1::TranslateBatchResponse> Client::TranslateBatch(
    v1::TranslateBatchRequest r) const {
  for (v1::TranslateRequest& access : *r.mutable_accesses()) FillDevice(access, device());
  return Call(*this, conn_->devices.get(), &v1::Devices::Stub::TranslateBatch, std::move(r),
              Idempotent::kNo);
}
absl::StatusOr<std::unique_ptr<FaultStream>> Client::WatchFaults(v1::WatchFaultsRequest r) const {
  FillDevice(r, device());
  return std::unique_ptr<FaultStream>(std::make_unique<GrpcFaultStream>(*this, r));
}

// Sessions.
absl::StatusOr<v1::OpenSessionResponse> Client::OpenSession(v1::OpenSessionRequest r) const {
  return Call(*this, conn_->sessions.get(), &v1::Sessions::Stub::OpenSession, std::move(r),
              Idempotent::kNo);
}
absl::StatusOr<v1::KeepAliveResponse> Client::KeepAlive(v1::KeepAliveRequest r) const {
  return Call(*this, conn_->sessions.get(), &v1::Sessions::Stub::KeepAlive, std::move(r),
              Idempotent::kYes);
}
absl::StatusOr<v1::CloseSessionResponse> Client::CloseSession(v1::CloseSessionRequest r) const {
  return Call(*this, conn_->sessions.get(), &v1::Sessions::Stub::CloseSession, std::move(r),
              Idempotent::kNo);
}

// Stats.
absl::StatusOr<v1::GetStatsResponse> Client::GetStats(v1::GetStatsRequest r) const {
  return Call(*this, conn_->stats.get(), &v1::Stats::Stub::GetStats, std::move(r),
              Idempotent::kYes);
}

}  // namespace iommu::client
