#include "server/resource_services.h"

#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "server/proto_convert.h"

namespace iommu::server {

using grpc::CallbackServerContext;
using grpc::ServerUnaryReactor;

// --- Memory ------------------------------------------------------------------------

ServerUnaryReactor* MemoryService::AllocBuffer(CallbackServerContext* context,
                                               const v1::AllocBufferRequest* request,
                                               v1::AllocBufferResponse* response) {
  return ServeMutating<core::BufferInfo>(
      env_, context, Method::kAllocBuffer, *request, response,
      [&](const core::Caller& caller) -> absl::StatusOr<core::BufferInfo> {
        ASSIGN_OR_RETURN(core::Placement placement, FromProto(request->placement()));
        return env_.broker->AllocBuffer(caller, caller.device, request->size_bytes(), placement,
                                        request->pool());
      },
      [](const core::BufferInfo& b, v1::AllocBufferResponse* out) {
        ToProto(b, out->mutable_buffer());
      });
}

ServerUnaryReactor* MemoryService::FreeBuffer(CallbackServerContext* context,
                                              const v1::FreeBufferRequest* request,
                                              v1::FreeBufferResponse* response) {
  return ServeMutating<absl::Status>(
      env_, context, Method::kFreeBuffer, *request, response,
      [&](const core::Caller& caller) {
        return env_.broker->FreeBuffer(caller, request->buffer_id());
      },
      kNoFill);
}

ServerUnaryReactor* MemoryService::GetBuffer(CallbackServerContext* context,
                                             const v1::GetBufferRequest* request,
                                             v1::GetBufferResponse* response) {
  return ServeUnary(env_, context, Method::kGetBuffer, request->device(),
                    [&](const core::Caller& caller) -> absl::Status {
                      ASSIGN_OR_RETURN(core::BufferInfo buffer,
                                       env_.broker->GetBuffer(caller, request->buffer_id()));
                      ToProto(buffer, response->mutable_buffer());
                      return absl::OkStatus();
                    });
}

// --- Domains -----------------------------------------------------------------------

ServerUnaryReactor* DomainsService::CreateDomain(CallbackServerContext* context,
                                                 const v1::CreateDomainRequest* request,
                                                 v1::CreateDomainResponse* response) {
  return ServeMutating<core::DomainInfo>(
      env_, context, Method::kCreateDomain, *request, response,
      [&](const core::Caller& caller) -> absl::StatusOr<core::DomainInfo> {
        ASSIGN_OR_RETURN(core::CreateDomainRequest req, FromProto(*request));
        return env_.broker->CreateDomain(caller, req);
      },
      [](const core::DomainInfo& d, v1::CreateDomainResponse* out) {
        ToProto(d, out->mutable_domain());
      });
}

ServerUnaryReactor* DomainsService::DestroyDomain(CallbackServerContext* context,
                                                  const v1::DestroyDomainRequest* request,
                                                  v1::DestroyDomainResponse* response) {
  return ServeMutating<absl::Status>(
      env_, context, Method::kDestroyDomain, *request, response,
      [&](const core::Caller& caller) {
        return env_.broker->DestroyDomain(caller, request->domain_id());
      },
      kNoFill);
}

ServerUnaryReactor* DomainsService::GetDomain(CallbackServerContext* context,
                                              const v1::GetDomainRequest* request,
                                              v1::GetDomainResponse* response) {
  return ServeUnary(env_, context, Method::kGetDomain, request->device(),
                    [&](const core::Caller& caller) -> absl::Status {
                      ASSIGN_OR_RETURN(core::DomainInfo domain,
                                       env_.broker->GetDomain(caller, request->domain_id()));
                      ToProto(domain, response->mutable_domain());
                      return absl::OkStatus();
                    });
}

ServerUnaryReactor* DomainsService::ListDomains(CallbackServerContext* context,
                                                const v1::ListDomainsRequest* request,
                                                v1::ListDomainsResponse* response) {
  return ServeUnary(env_, context, Method::kListDomains, request->device(),
                    [&](const core::Caller& caller) -> absl::Status {
                      ASSIGN_OR_RETURN(std::vector<core::DomainInfo> domains,
                                       env_.broker->ListDomains(caller));
                      for (const core::DomainInfo& d : domains) {
                        ToProto(d, response->add_domains());
                      }
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
                                                 const v1::AttachDeviceRequest* request,
                                                 v1::AttachDeviceResponse* response) {
  return ServeMutating<absl::Status>(
      env_, context, Method::kAttachDevice, *request, response,
      [&](const core::Caller& caller) {
        return env_.broker->AttachDevice(caller, TargetDevice(caller, request->target_device()),
                                         request->domain_id());
      },
      kNoFill);
}

ServerUnaryReactor* DomainsService::DetachDevice(CallbackServerContext* context,
                                                 const v1::DetachDeviceRequest* request,
                                                 v1::DetachDeviceResponse* response) {
  return ServeMutating<absl::Status>(
      env_, context, Method::kDetachDevice, *request, response,
      [&](const core::Caller& caller) {
        return env_.broker->DetachDevice(caller, TargetDevice(caller, request->target_device()));
      },
      kNoFill);
}

ServerUnaryReactor* DomainsService::GetIovaRanges(CallbackServerContext* context,
                                                  const v1::GetIovaRangesRequest* request,
                                                  v1::GetIovaRangesResponse* response) {
  return ServeUnary(env_, context, Method::kGetIovaRanges, request->device(),
                    [&](const core::Caller& caller) -> absl::Status {
                      ASSIGN_OR_RETURN(core::IovaRangesResult ranges,
                                       env_.broker->GetIovaRanges(caller, caller.device));
                      ToProto(ranges, response);
                      return absl::OkStatus();
                    });
}

ServerUnaryReactor* DomainsService::WalkDomain(CallbackServerContext* context,
                                               const v1::WalkDomainRequest* request,
                                               v1::WalkDomainResponse* response) {
  return ServeUnary(
      env_, context, Method::kWalkDomain, request->device(),
      [&](const core::Caller& caller) -> absl::Status {
        constexpr uint32_t kDefaultLeaves = 4096, kMaxLeaves = 65536;
        const uint32_t max = request->max_leaves() == 0 ? kDefaultLeaves : request->max_leaves();
        if (max > kMaxLeaves) {
          return core::InvalidField("max_leaves", max, "at most 65536 leaves per call");
        }
        // One leaf more than asked tells whether the walk goes on.
        ASSIGN_OR_RETURN(std::vector<core::PgtableMapping> leaves,
                         env_.broker->WalkDomain(caller, request->domain_id(),
                                                 core::Iova(request->start_iova()), max + 1));
        response->set_domain_id(request->domain_id());
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
                                                 const v1::OpenSessionRequest* request,
                                                 v1::OpenSessionResponse* response) {
  const absl::Duration ttl =
      request->ttl_ms() == 0 ? env_.default_session_ttl : absl::Milliseconds(request->ttl_ms());
  return ServeMutating<uint64_t>(
      env_, context, Method::kOpenSession, *request, response,
      [&](const core::Caller& caller) { return env_.broker->OpenSession(caller, ttl); },
      [&](uint64_t id, v1::OpenSessionResponse* out) {
        out->set_session_id(id);
        out->set_ttl_ms(static_cast<uint64_t>(absl::ToInt64Milliseconds(ttl)));
      });
}

ServerUnaryReactor* SessionsService::KeepAlive(CallbackServerContext* context,
                                               const v1::KeepAliveRequest* request,
                                               v1::KeepAliveResponse*) {
  return ServeUnary(env_, context, Method::kKeepAlive, request->device(),
                    [&](const core::Caller& caller) {
                      return env_.broker->KeepAlive(caller, request->session_id());
                    });
}

ServerUnaryReactor* SessionsService::CloseSession(CallbackServerContext* context,
                                                  const v1::CloseSessionRequest* request,
                                                  v1::CloseSessionResponse* response) {
  return ServeMutating<absl::Status>(
      env_, context, Method::kCloseSession, *request, response,
      [&](const core::Caller& caller) {
        return env_.broker->CloseSession(caller, request->session_id());
      },
      kNoFill);
}

// --- Stats -------------------------------------------------------------------------

ServerUnaryReactor* StatsService::GetStats(CallbackServerContext* context,
                                           const v1::GetStatsRequest* request,
                                           v1::GetStatsResponse* response) {
  return ServeUnary(env_, context, Method::kGetStats, request->device(),
                    [&](const core::Caller& caller) -> absl::Status {
                      ASSIGN_OR_RETURN(core::BrokerStats stats, env_.broker->GetStats(caller));
                      ToProto(stats, response);
                      return absl::OkStatus();
                    });
}

}  // namespace iommu::server
