#include "server/dma_service.h"

#include "core/base/status_macros.h"
#include "server/batch_reactor.h"
#include "server/proto_convert.h"

namespace iommu::server {

using grpc::CallbackServerContext;
using grpc::ServerUnaryReactor;

// Every mutating call runs through ServeMutating: exactly once per request
// id (docs/design.md#request-ids).

ServerUnaryReactor* DmaService::Map(CallbackServerContext* context, const v1::MapRequest* request,
                                    v1::MapResponse* response) {
  return ServeMutating<core::MapResult>(
      env_, context, Method::kMap, *request, response,
      [&](const core::Caller& caller) -> absl::StatusOr<core::MapResult> {
        ASSIGN_OR_RETURN(core::MapRequest req, FromProto(*request));
        return env_.broker->Map(caller, caller.device, req);
      },
      [](const core::MapResult& r, v1::MapResponse* out) { ToProto(r, out); });
}

ServerUnaryReactor* DmaService::Unmap(CallbackServerContext* context,
                                      const v1::UnmapRequest* request,
                                      v1::UnmapResponse* response) {
  return ServeMutating<absl::Status>(
      env_, context, Method::kUnmap, *request, response,
      [&](const core::Caller& caller) {
        return env_.broker->Unmap(caller, caller.device, FromProto(*request));
      },
      kNoFill);
}

ServerUnaryReactor* DmaService::MapSg(CallbackServerContext* context,
                                      const v1::MapSgRequest* request,
                                      v1::MapSgResponse* response) {
  return ServeMutating<core::MapSgResult>(
      env_, context, Method::kMapSg, *request, response,
      [&](const core::Caller& caller) -> absl::StatusOr<core::MapSgResult> {
        ASSIGN_OR_RETURN(core::MapSgRequest req, FromProto(*request));
        return env_.broker->MapSg(caller, caller.device, req);
      },
      [](const core::MapSgResult& r, v1::MapSgResponse* out) { ToProto(r, out); });
}

ServerUnaryReactor* DmaService::UnmapSg(CallbackServerContext* context,
                                        const v1::UnmapSgRequest* request,
                                        v1::UnmapSgResponse* response) {
  return ServeMutating<absl::Status>(
      env_, context, Method::kUnmapSg, *request, response,
      [&](const core::Caller& caller) {
        return env_.broker->UnmapSg(caller, caller.device, core::Iova(request->dma_addr()));
      },
      kNoFill);
}

ServerUnaryReactor* DmaService::Alloc(CallbackServerContext* context,
                                      const v1::AllocRequest* request,
                                      v1::AllocResponse* response) {
  return ServeMutating<core::AllocResult>(
      env_, context, Method::kAlloc, *request, response,
      [&](const core::Caller& caller) -> absl::StatusOr<core::AllocResult> {
        ASSIGN_OR_RETURN(core::AllocRequest req, FromProto(*request));
        return env_.broker->Alloc(caller, caller.device, req);
      },
      [](const core::AllocResult& r, v1::AllocResponse* out) { ToProto(r, out); });
}

ServerUnaryReactor* DmaService::Free(CallbackServerContext* context, const v1::FreeRequest* request,
                                     v1::FreeResponse* response) {
  return ServeMutating<absl::Status>(
      env_, context, Method::kFree, *request, response,
      [&](const core::Caller& caller) {
        return env_.broker->Free(caller, caller.device, core::Iova(request->dma_addr()));
      },
      kNoFill);
}

ServerUnaryReactor* DmaService::GetSgTable(CallbackServerContext* context,
                                           const v1::GetSgTableRequest* request,
                                           v1::GetSgTableResponse* response) {
  // Mutating when it makes an export (a new token).
  return ServeMutating<core::SgTableResult>(
      env_, context, Method::kGetSgTable, *request, response,
      [&](const core::Caller& caller) -> absl::StatusOr<core::SgTableResult> {
        std::optional<core::ExportGrant> grant;
        if (request->export_()) {
          grant = core::ExportGrant{
              .importers = {request->export_importers().begin(), request->export_importers().end()},
              .writable = request->export_writable()};
        }
        return env_.broker->GetSgTable(caller, caller.device, core::Iova(request->dma_addr()),
                                       std::move(grant));
      },
      [](const core::SgTableResult& r, v1::GetSgTableResponse* out) { ToProto(r, out); });
}

ServerUnaryReactor* DmaService::RevokeExport(CallbackServerContext* context,
                                             const v1::RevokeExportRequest* request,
                                             v1::RevokeExportResponse* response) {
  return ServeMutating<uint64_t>(
      env_, context, Method::kRevokeExport, *request, response,
      [&](const core::Caller& caller) {
        return env_.broker->RevokeExport(caller, request->export_token());
      },
      [](uint64_t unmapped, v1::RevokeExportResponse* out) {
        out->set_imports_unmapped(unmapped);
      });
}

ServerUnaryReactor* DmaService::MsiCookie(CallbackServerContext* context,
                                          const v1::MsiCookieRequest* request,
                                          v1::MsiCookieResponse* response) {
  return ServeMutating<core::MsiCookieResult>(
      env_, context, Method::kMsiCookie, *request, response,
      [&](const core::Caller& caller) {
        return env_.broker->MsiCookie(caller, caller.device, FromProto(*request));
      },
      [](const core::MsiCookieResult& r, v1::MsiCookieResponse* out) { ToProto(r, out); });
}

ServerUnaryReactor* DmaService::MapAt(CallbackServerContext* context,
                                      const v1::MapAtRequest* request,
                                      v1::MapAtResponse* response) {
  return ServeMutating<core::MapResult>(
      env_, context, Method::kMapAt, *request, response,
      [&](const core::Caller& caller) -> absl::StatusOr<core::MapResult> {
        ASSIGN_OR_RETURN(core::MapAtRequest map_at, FromProto(*request));
        return env_.broker->MapAt(caller, caller.device, map_at);
      },
      [](const core::MapResult& r, v1::MapAtResponse* out) {
        out->set_mapping_id(r.mapping_id);
        out->set_domain_id(r.domain_id);
      });
}

ServerUnaryReactor* DmaService::UnmapRange(CallbackServerContext* context,
                                           const v1::UnmapRangeRequest* request,
                                           v1::UnmapRangeResponse* response) {
  return ServeMutating<uint64_t>(
      env_, context, Method::kUnmapRange, *request, response,
      [&](const core::Caller& caller) {
        return env_.broker->UnmapRange(caller, caller.device, core::Iova(request->iova()),
                                       request->size_bytes());
      },
      [](uint64_t unmapped, v1::UnmapRangeResponse* out) { out->set_unmapped_bytes(unmapped); });
}

ServerUnaryReactor* DmaService::Sync(CallbackServerContext* context, const v1::SyncRequest* request,
                                     v1::SyncResponse*) {
  return ServeUnary(
      env_, context, Method::kSync, request->device(),
      [&](const core::Caller& caller) { return env_.broker->Sync(caller, caller.device); });
}

grpc::ServerBidiReactor<v1::BatchRequest, v1::BatchResponse>* DmaService::Batch(
    CallbackServerContext* context) {
  return new BatchReactor(env_, context);
}

}  // namespace iommu::server
