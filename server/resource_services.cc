// SPDX-License-Identifier: Apache-2.0
#include "server/resource_services.h"

#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "server/proto_convert.h"

namespace iommu::server {

using grpc::ByteBuffer;
using grpc::CallbackServerContext;
using grpc::ServerUnaryReactor;

// --- Memory ------------------------------------------------------------------------

ServerUnaryReactor* MemoryService::AllocBuffer(CallbackServerContext* context,
                                               const ByteBuffer* request_bytes,
                                               ByteBuffer* reply_bytes) {
  // Its runs are bounded by the core (--max_buffer_runs) before any page is
  // taken, so the reply that lists them fits.
  return ServeMutating<v1::AllocBufferRequest, v1::AllocBufferResponse, core::BufferInfo>(
      env_, context, Method::kAllocBuffer, request_bytes, reply_bytes,
      [&](const v1::AllocBufferRequest& request,
          const core::Caller& caller) -> absl::StatusOr<core::BufferInfo> {
        ASSIGN_OR_RETURN(core::Placement placement, FromProto(request.placement()));
        return env_.broker->AllocBuffer(caller, caller.device, request.size_bytes(), placement,
                                        request.pool());
      },
      [](const core::BufferInfo& b, v1::AllocBufferResponse* out) {
        ToProto(b, out->mutable_buffer());
      });
}

ServerUnaryReactor* MemoryService::FreeBuffer(CallbackServerContext* context,
                                              const ByteBuffer* request_bytes,
                                              ByteBuffer* reply_bytes) {
  return ServeMutating<v1::FreeBufferRequest, v1::FreeBufferResponse, absl::Status>(
      env_, context, Method::kFreeBuffer, request_bytes, reply_bytes,
      [&](const v1::FreeBufferRequest& request, const core::Caller& caller) {
        return env_.broker->FreeBuffer(caller, request.buffer_id());
      },
      kNoFill);
}

ServerUnaryReactor* MemoryService::GetBuffer(CallbackServerContext* context,
                                             const ByteBuffer* request_bytes,
                                             ByteBuffer* reply_bytes) {
  return ServeUnary<v1::GetBufferRequest, v1::GetBufferResponse>(
      env_, context, Method::kGetBuffer, request_bytes, reply_bytes,
      [&](const v1::GetBufferRequest& request, const core::Caller& caller,
          v1::GetBufferResponse* response) -> absl::Status {
        ASSIGN_OR_RETURN(core::BufferInfo buffer,
                         env_.broker->GetBuffer(caller, request.buffer_id()));
        ToProto(buffer, response->mutable_buffer());
        return absl::OkStatus();
      });
}

// --- Domains -----------------------------------------------------------------------

ServerUnaryReactor* DomainsService::CreateDomain(CallbackServerContext* context,
                                                 const ByteBuffer* request_bytes,
                                                 ByteBuffer* reply_bytes) {
  return ServeMutating<v1::CreateDomainRequest, v1::CreateDomainResponse, core::DomainInfo>(
      env_, context, Method::kCreateDomain, request_bytes, reply_bytes,
      [&](const v1::CreateDomainRequest& request,
          const core::Caller& caller) -> absl::StatusOr<core::DomainInfo> {
        ASSIGN_OR_RETURN(core::CreateDomainRequest req, FromProto(request));
        return env_.broker->CreateDomain(caller, req);
      },
      [](const core::DomainInfo& d, v1::CreateDomainResponse* out) {
        ToProto(d, out->mutable_domain());
      });
}

ServerUnaryReactor* DomainsService::DestroyDomain(CallbackServerContext* context,
                                                  const ByteBuffer* request_bytes,
                                                  ByteBuffer* reply_bytes) {
  return ServeMutating<v1::DestroyDomainRequest, v1::DestroyDomainResponse, absl::Status>(
      env_, context, Method::kDestroyDomain, request_bytes, reply_bytes,
      [&](const v1::DestroyDomainRequest& request, const core::Caller& caller) {
        return env_.broker->DestroyDomain(caller, request.domain_id());
      },
      kNoFill);
}

ServerUnaryReactor* DomainsService::GetDomain(CallbackServerContext* context,
                                              const ByteBuffer* request_bytes,
                                              ByteBuffer* reply_bytes) {
  return ServeUnary<v1::GetDomainRequest, v1::GetDomainResponse>(
      env_, context, Method::kGetDomain, request_bytes, reply_bytes,
      [&](const v1::GetDomainRequest& request, const core::Caller& caller,
          v1::GetDomainResponse* response) -> absl::Status {
        ASSIGN_OR_RETURN(core::DomainInfo domain,
                         env_.broker->GetDomain(caller, request.domain_id()));
        ToProto(domain, response->mutable_domain());
        return absl::OkStatus();
      });
}

ServerUnaryReactor* DomainsService::ListDomains(CallbackServerContext* context,
                                                const ByteBuffer* request_bytes,
                                                ByteBuffer* reply_bytes) {
  return ServeUnary<v1::ListDomainsRequest, v1::ListDomainsResponse>(
      env_, context, Method::kListDomains, request_bytes, reply_bytes,
      [&](const v1::ListDomainsRequest&, const core::Caller& caller,
          v1::ListDomainsResponse* response) -> absl::Status {
        ASSIGN_OR_RETURN(std::vector<core::DomainInfo> domains, env_.broker->ListDomains(caller));
        for (const core::DomainInfo& d : domains) ToProto(d, response->add_domains());
        return absl::OkStatus();
      });
}

namespace {

// The device an attach or detach acts on: the request's target_device when
// given (the core refuses a device caller naming another), else the caller.
const std::string& TargetDevice(const core::Caller& caller, const std::string& target) {
  return target.empty() ? caller.device : target;
}

}  // namespace

ServerUnaryReactor* DomainsService::AttachDevice(CallbackServerContext* context,
                                                 const ByteBuffer* request_bytes,
                                                 ByteBuffer* reply_bytes) {
  return ServeMutating<v1::AttachDeviceRequest, v1::AttachDeviceResponse, absl::Status>(
      env_, context, Method::kAttachDevice, request_bytes, reply_bytes,
      [&](const v1::AttachDeviceRequest& request, const core::Caller& caller) {
        return env_.broker->AttachDevice(caller, TargetDevice(caller, request.target_device()),
                                         request.domain_id());
      },
      kNoFill);
}

ServerUnaryReactor* DomainsService::DetachDevice(CallbackServerContext* context,
                                                 const ByteBuffer* request_bytes,
                                                 ByteBuffer* reply_bytes) {
  return ServeMutating<v1::DetachDeviceRequest, v1::DetachDeviceResponse, absl::Status>(
      env_, context, Method::kDetachDevice, request_bytes, reply_bytes,
      [&](const v1::DetachDeviceRequest& request, const core::Caller& caller) {
        return env_.broker->DetachDevice(caller, TargetDevice(caller, request.target_device()));
      },
      kNoFill);
}

ServerUnaryReactor* DomainsService::GetIovaRanges(CallbackServerContext* context,
                                                  const ByteBuffer* request_bytes,
                                                  ByteBuffer* reply_bytes) {
  return ServeUnary<v1::GetIovaRangesRequest, v1::GetIovaRangesResponse>(
      env_, context, Method::kGetIovaRanges, request_bytes, reply_bytes,
      [&](const v1::GetIovaRangesRequest&, const core::Caller& caller,
          v1::GetIovaRangesResponse* response) -> absl::Status {
        ASSIGN_OR_RETURN(core::IovaRangesResult ranges,
                         env_.broker->GetIovaRanges(caller, caller.device));
        ToProto(ranges, response);
        return absl::OkStatus();
      });
}

ServerUnaryReactor* DomainsService::WalkDomain(CallbackServerContext* context,
                                               const ByteBuffer* request_bytes,
                                               ByteBuffer* reply_bytes) {
  return ServeUnary<v1::WalkDomainRequest, v1::WalkDomainResponse>(
      env_, context, Method::kWalkDomain, request_bytes, reply_bytes,
      [&](const v1::WalkDomainRequest& request, const core::Caller& caller,
          v1::WalkDomainResponse* response) -> absl::Status {
        constexpr uint32_t kDefaultLeaves = 4096, kMaxLeaves = 65536;
        const uint32_t max = request.max_leaves() == 0 ? kDefaultLeaves : request.max_leaves();
        if (max > kMaxLeaves) {
          return core::InvalidField("max_leaves", max, "at most 65536 leaves per call");
        }
        RETURN_IF_ERROR(
            CheckReplyFits(*env_.limits, "max_leaves", max,
                           reply_bytes::kWalkFixed + uint64_t{max} * reply_bytes::kPageTableLeaf));
        // One leaf more than asked tells whether the walk goes on.
        ASSIGN_OR_RETURN(std::vector<core::PgtableMapping> leaves,
                         env_.broker->WalkDomain(caller, request.domain_id(),
                                                 core::Iova(request.start_iova()), max + 1));
        response->set_domain_id(request.domain_id());
        if (leaves.size() > max) {
          response->set_next_iova(leaves[max].iova.value());
          leaves.resize(max);
        }
        for (const core::PgtableMapping& leaf : leaves) ToProto(leaf, response->add_leaves());
        return absl::OkStatus();
      });
}

// --- Sessions ----------------------------------------------------------------------

ServerUnaryReactor* SessionsService::OpenSession(CallbackServerContext* context,
                                                 const ByteBuffer* request_bytes,
                                                 ByteBuffer* reply_bytes) {
  absl::Duration ttl;
  return ServeMutating<v1::OpenSessionRequest, v1::OpenSessionResponse, uint64_t>(
      env_, context, Method::kOpenSession, request_bytes, reply_bytes,
      [&](const v1::OpenSessionRequest& request, const core::Caller& caller) {
        ttl =
            request.ttl_ms() == 0 ? env_.default_session_ttl : absl::Milliseconds(request.ttl_ms());
        return env_.broker->OpenSession(caller, ttl);
      },
      [&](uint64_t id, v1::OpenSessionResponse* out) {
        out->set_session_id(id);
        out->set_ttl_ms(static_cast<uint64_t>(absl::ToInt64Milliseconds(ttl)));
      });
}

ServerUnaryReactor* SessionsService::KeepAlive(CallbackServerContext* context,
                                               const ByteBuffer* request_bytes,
                                               ByteBuffer* reply_bytes) {
  return ServeUnary<v1::KeepAliveRequest, v1::KeepAliveResponse>(
      env_, context, Method::kKeepAlive, request_bytes, reply_bytes,
      [&](const v1::KeepAliveRequest& request, const core::Caller& caller, v1::KeepAliveResponse*) {
        return env_.broker->KeepAlive(caller, request.session_id());
      });
}

ServerUnaryReactor* SessionsService::CloseSession(CallbackServerContext* context,
                                                  const ByteBuffer* request_bytes,
                                                  ByteBuffer* reply_bytes) {
  return ServeMutating<v1::CloseSessionRequest, v1::CloseSessionResponse, absl::Status>(
      env_, context, Method::kCloseSession, request_bytes, reply_bytes,
      [&](const v1::CloseSessionRequest& request, const core::Caller& caller) {
        return env_.broker->CloseSession(caller, request.session_id());
      },
      kNoFill);
}

// --- Stats -------------------------------------------------------------------------

ServerUnaryReactor* StatsService::GetStats(CallbackServerContext* context,
                                           const ByteBuffer* request_bytes,
                                           ByteBuffer* reply_bytes) {
  return ServeUnary<v1::GetStatsRequest, v1::GetStatsResponse>(
      env_, context, Method::kGetStats, request_bytes, reply_bytes,
      [&](const v1::GetStatsRequest&, const core::Caller& caller,
          v1::GetStatsResponse* response) -> absl::Status {
        ASSIGN_OR_RETURN(core::BrokerStats stats, env_.broker->GetStats(caller));
        ToProto(stats, response);
        return absl::OkStatus();
      });
}

}  // namespace iommu::server
