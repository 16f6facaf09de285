// SPDX-License-Identifier: Apache-2.0
// The C++ SDK of iommud: a typed wrapper over the iommu.v1 services.
//
//   ASSIGN_OR_RETURN(Client client, Client::Connect({.target = "unix:/tmp/iommud.sock",
//                                                    .device = "nic0"}));
//   ASSIGN_OR_RETURN(Buffer buf, client.AllocBufferScoped(64 * 1024));
//   ASSIGN_OR_RETURN(Mapping m, client.MapScoped(buf, 0, 4096, v1::DMA_DIRECTION_TO_DEVICE));
//   ... hand m.dma_addr() to the device; m unmaps, then buf frees, at scope exit.
//
// Every RPC is a method taking its request message and returning
// absl::StatusOr<its response>; the request's `device` is filled with
// Options::device when empty. Errors are the server's status, mapped once
// (client/status.h), message unchanged. Each unary call gets
// Options::default_deadline, within which it is retried with backoff on
// UNAVAILABLE; a mutating call carries one request id across its retries,
// so a daemon restart neither loses it nor applies it twice (RetryPolicy).
//
// Client is a cheap handle (one shared channel); copies share it.
// WithSession(id) returns a copy whose calls carry `iommu-session-id: <id>`,
// so what they create belongs to that session (see Session in session.h).
//
// Thread-safe: every method may be called concurrently (gRPC stubs are).
#ifndef IOMMU_CLIENT_CLIENT_H_
#define IOMMU_CLIENT_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/handles.h"
#include "client/options.h"
#include "iommu/v1/device.pb.h"
#include "iommu/v1/dma.pb.h"
#include "iommu/v1/domain.pb.h"
#include "iommu/v1/memory.pb.h"
#include "iommu/v1/session.pb.h"
#include "iommu/v1/stats.pb.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace iommu::client {

namespace v1 = ::iommu::v1;

namespace internal {
struct Connection;
}  // namespace internal

class FaultStream;

class Client {
 public:
  // Validates the options, reads credential files and opens the channel.
  // INVALID_ARGUMENT / NOT_FOUND for bad options or unreadable files;
  // UNAVAILABLE if connect_timeout > 0 and the daemon is not reachable in time.
  static absl::StatusOr<Client> Connect(const Options& options);

  const Options& options() const;
  const std::string& device() const;
  uint64_t session_id() const { return session_id_; }
  // A copy whose calls carry `iommu-session-id: <session_id>` (0: none).
  Client WithSession(uint64_t session_id) const;

  // Dma.
  absl::StatusOr<v1::MapResponse> Map(v1::MapRequest request) const;
  absl::StatusOr<v1::UnmapResponse> Unmap(v1::UnmapRequest request) const;
  absl::StatusOr<v1::MapSgResponse> MapSg(v1::MapSgRequest request) const;
  absl::StatusOr<v1::UnmapSgResponse> UnmapSg(v1::UnmapSgRequest request) const;
  absl::StatusOr<v1::AllocResponse> Alloc(v1::AllocRequest request) const;
  absl::StatusOr<v1::FreeResponse> Free(v1::FreeRequest request) const;
  absl::StatusOr<v1::GetSgTableResponse> GetSgTable(v1::GetSgTableRequest request) const;
  // Revokes an export token: every live import of it is unmapped first.
  absl::StatusOr<v1::RevokeExportResponse> RevokeExport(v1::RevokeExportRequest request) const;
  absl::StatusOr<v1::MsiCookieResponse> MsiCookie(v1::MsiCookieRequest request) const;
  absl::StatusOr<v1::MapAtResponse> MapAt(v1::MapAtRequest request) const;
  absl::StatusOr<v1::UnmapRangeResponse> UnmapRange(v1::UnmapRangeRequest request) const;
  absl::StatusOr<v1::SyncResponse> Sync(v1::SyncRequest request = {}) const;
  // Memory.
  absl::StatusOr<v1::AllocBufferResponse> AllocBuffer(v1::AllocBufferRequest request) const;
  absl::StatusOr<v1::FreeBufferResponse> FreeBuffer(v1::FreeBufferRequest request) const;
  absl::StatusOr<v1::GetBufferResponse> GetBuffer(v1::GetBufferRequest request) const;
  // Domains.
  absl::StatusOr<v1::CreateDomainResponse> CreateDomain(v1::CreateDomainRequest request) const;
  absl::StatusOr<v1::DestroyDomainResponse> DestroyDomain(v1::DestroyDomainRequest request) const;
  absl::StatusOr<v1::GetDomainResponse> GetDomain(v1::GetDomainRequest request) const;
  absl::StatusOr<v1::ListDomainsResponse> ListDomains(v1::ListDomainsRequest request = {}) const;
  absl::StatusOr<v1::AttachDeviceResponse> AttachDevice(v1::AttachDeviceRequest request) const;
  absl::StatusOr<v1::DetachDeviceResponse> DetachDevice(v1::DetachDeviceRequest request = {}) const;
  absl::StatusOr<v1::GetIovaRangesResponse> GetIovaRanges(
      v1::GetIovaRangesRequest request = {}) const;
  absl::StatusOr<v1::WalkDomainResponse> WalkDomain(v1::WalkDomainRequest request) const;
  // Devices. Translate by (smmu, stream_id) is for the admin: a client with a
  // device set sends it, and the daemon refuses a device identity.
  absl::StatusOr<v1::ListIommusResponse> ListIommus(v1::ListIommusRequest request = {}) const;
  absl::StatusOr<v1::ListDevicesResponse> ListDevices(v1::ListDevicesRequest request = {}) const;
  absl::StatusOr<v1::TranslateResponse> Translate(v1::TranslateRequest request) const;
  absl::StatusOr<v1::TranslateBatchResponse> TranslateBatch(
      v1::TranslateBatchRequest request) const;
  // Opens the fault stream; read it with FaultStream::Read.
  absl::StatusOr<std::unique_ptr<FaultStream>> WatchFaults(
      v1::WatchFaultsRequest request = {}) const;
  // Sessions (see also Session in session.h, which keeps a lease alive).
  absl::StatusOr<v1::OpenSessionResponse> OpenSession(v1::OpenSessionRequest request = {}) const;
  absl::StatusOr<v1::KeepAliveResponse> KeepAlive(v1::KeepAliveRequest request) const;
  absl::StatusOr<v1::CloseSessionResponse> CloseSession(v1::CloseSessionRequest request) const;
  // Stats.
  absl::StatusOr<v1::GetStatsResponse> GetStats(v1::GetStatsRequest request = {}) const;

  // RAII forms: the handle frees or unmaps what the call created when it is
  // destroyed (see handles.h).
  absl::StatusOr<Buffer> AllocBufferScoped(uint64_t size_bytes,
                                           v1::Placement placement = v1::PLACEMENT_SCATTERED,
                                           const std::string& pool = "") const;
  absl::StatusOr<Buffer> AllocBufferScoped(v1::AllocBufferRequest request) const;
  // Maps [offset_bytes, offset_bytes + length_bytes) of `buffer`.
  absl::StatusOr<Mapping> MapScoped(
      const Buffer& buffer, uint64_t offset_bytes, uint64_t length_bytes,
      v1::DmaDirection direction = v1::DMA_DIRECTION_BIDIRECTIONAL) const;
  absl::StatusOr<Mapping> MapScoped(v1::MapRequest request) const;
  absl::StatusOr<Mapping> MapSgScoped(v1::MapSgRequest request) const;
  absl::StatusOr<Mapping> AllocScoped(v1::AllocRequest request) const;
  absl::StatusOr<Mapping> MapAtScoped(v1::MapAtRequest request) const;

  // The connection internals, for Session / BatchStream / FaultStream.
  const std::shared_ptr<internal::Connection>& connection() const { return conn_; }
  // Prepares a context: deadline (none if `deadline` is infinite), credential
  // metadata and this client's session id.
  void PrepareContext(grpc::ClientContext* context, absl::Duration deadline) const;

 private:
  Client(std::shared_ptr<internal::Connection> conn, uint64_t session_id)
      : conn_(std::move(conn)), session_id_(session_id) {}

  std::shared_ptr<internal::Connection> conn_;
  uint64_t session_id_ = 0;
};

// A WatchFaults server stream. Read() blocks until the next event; false at
// the end of the stream, after which Finish() gives its status (CANCELLED
// after Cancel()). Cancel() may be called from any thread; everything else
// from the reading thread only.
class FaultStream {
 public:
  virtual ~FaultStream() = default;
  virtual bool Read(v1::FaultEvent* event) = 0;
  virtual void Cancel() = 0;
  virtual absl::Status Finish() = 0;
};

}  // namespace iommu::client

#endif  // IOMMU_CLIENT_CLIENT_H_
