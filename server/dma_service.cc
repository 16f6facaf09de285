#include "server/dma_service.h"

#include "core/base/status_macros.h"
#include "server/batch_reactor.h"
#include "server/proto_convert.h"

namespace iommu::server {

using grpc::CallbackServerContext;
using grpc::ServerUnaryReactor;

ServerUnaryReactor* DmaService::Map(CallbackServerContext* context, const v1::MapRequest* request,
                                    v1::MapResponse* response) {
  return ServeUnary(env_, context, Method::kMap, request->device(),
                    [&](const core::Caller& caller) -> absl::Status {
                      ASSIGN_OR_RETURN(core::MapRequest req, FromProto(*request));
                      ASSIGN_OR_RETURN(core::MapResult result,
                                       env_.broker->Map(caller, caller.device, req));
                      ToProto(result, response);
                      return absl::OkStatus();
                    });
}

ServerUnaryReactor* DmaService::Unmap(CallbackServerContext* context,
                                      const v1::UnmapRequest* request, v1::UnmapResponse*) {
  return ServeUnary(env_, context, Method::kUnmap, request->device(),
                    [&](const core::Caller& caller) {
                      return env_.broker->Unmap(caller, caller.device, FromProto(*request));
                    });
}

ServerUnaryReactor* DmaService::MapSg(CallbackServerContext* context,
                                      const v1::MapSgRequest* request,
                                      v1::MapSgResponse* response) {
  return ServeUnary(env_, context, Method::kMapSg, request->device(),
                    [&](const core::Caller& caller) -> absl::Status {
                      ASSIGN_OR_RETURN(core::MapSgRequest req, FromProto(*request));
                      ASSIGN_OR_RETURN(core::MapSgResult result,
                                       env_.broker->MapSg(caller, caller.device, req));
                      ToProto(result, response);
                      return absl::OkStatus();
                    });
}

ServerUnaryReactor* DmaService::UnmapSg(CallbackServerContext* context,
                                        const v1::UnmapSgRequest* request, v1::UnmapSgResponse*) {
  return ServeUnary(
      env_, context, Method::kUnmapSg, request->device(), [&](const core::Caller& caller) {
        return env_.broker->UnmapSg(caller, caller.device, core::Iova(request->dma_addr()));
      });
}

ServerUnaryReactor* DmaService::Alloc(CallbackServerContext* context,
                                      const v1::AllocRequest* request,
                                      v1::AllocResponse* response) {
  return ServeUnary(env_, context, Method::kAlloc, request->device(),
                    [&](const core::Caller& caller) -> absl::Status {
                      ASSIGN_OR_RETURN(core::AllocRequest req, FromProto(*request));
                      ASSIGN_OR_RETURN(core::AllocResult result,
                                       env_.broker->Alloc(caller, caller.device, req));
                      ToProto(result, response);
                      return absl::OkStatus();
                    });
}

ServerUnaryReactor* DmaService::Free(CallbackServerContext* context, const v1::FreeRequest* request,
                                     v1::FreeResponse*) {
  return ServeUnary(
      env_, context, Method::kFree, request->device(), [&](const core::Caller& caller) {
        return env_.broker->Free(caller, caller.device, core::Iova(request->dma_addr()));
      });
}

ServerUnaryReactor* DmaService::GetSgTable(CallbackServerContext* context,
                                           const v1::GetSgTableRequest* request,
                                           v1::GetSgTableResponse* response) {
  return ServeUnary(env_, context, Method::kGetSgTable, request->device(),
                    [&](const core::Caller& caller) -> absl::Status {
                      std::optional<core::ExportGrant> grant;
                      if (request->export_()) {
                        grant = core::ExportGrant{.importers = {request->export_importers().begin(),
                                                                request->export_importers().end()},
                                                  .writable = request->export_writable()};
                      }
                      ASSIGN_OR_RETURN(core::SgTableResult result,
                                       env_.broker->GetSgTable(caller, caller.device,
                                                               core::Iova(request->dma_addr()),
                                                               std::move(grant)));
                      ToProto(result, response);
                      return absl::OkStatus();
                    });
}

ServerUnaryReactor* DmaService::RevokeExport(CallbackServerContext* context,
                                             const v1::RevokeExportRequest* request,
                                             v1::RevokeExportResponse* response) {
  return ServeUnary(env_, context, Method::kRevokeExport, request->device(),
                    [&](const core::Caller& caller) -> absl::Status {
                      ASSIGN_OR_RETURN(uint64_t unmapped,
                                       env_.broker->RevokeExport(caller, request->export_token()));
                      response->set_imports_unmapped(unmapped);
                      return absl::OkStatus();
                    });
}

ServerUnaryReactor* DmaService::MsiCookie(CallbackServerContext* context,
                                          const v1::MsiCookieRequest* request,
                                          v1::MsiCookieResponse* response) {
  return ServeUnary(env_, context, Method::kMsiCookie, request->device(),
                    [&](const core::Caller& caller) -> absl::Status {
                      ASSIGN_OR_RETURN(
                          core::MsiCookieResult result,
                          env_.broker->MsiCookie(caller, caller.device, FromProto(*request)));
                      ToProto(result, response);
                      return absl::OkStatus();
                    });
}

ServerUnaryReactor* DmaService::MapAt(CallbackServerContext* context,
                                      const v1::MapAtRequest* request,
                                      v1::MapAtResponse* response) {
  return ServeUnary(
      env_, context, Method::kMapAt, request->device(),
      [&](const core::Caller& caller) -> absl::Status {
        ASSIGN_OR_RETURN(core::MemRef mem, FromProto(request->mem(), "mem"));
        ASSIGN_OR_RETURN(core::DmaDirection direction, FromProto(request->direction()));
        ASSIGN_OR_RETURN(core::MapResult result,
                         env_.broker->MapAt(caller, caller.device, core::Iova(request->iova()), mem,
                                            direction, FromProto(request->attrs())));
        response->set_mapping_id(result.mapping_id);
        response->set_domain_id(result.domain_id);
        return absl::OkStatus();
      });
}

ServerUnaryReactor* DmaService::UnmapRange(CallbackServerContext* context,
                                           const v1::UnmapRangeRequest* request,
                                           v1::UnmapRangeResponse* response) {
  return ServeUnary(
      env_, context, Method::kUnmapRange, request->device(),
      [&](const core::Caller& caller) -> absl::Status {
        ASSIGN_OR_RETURN(uint64_t unmapped,
                         env_.broker->UnmapRange(caller, caller.device, core::Iova(request->iova()),
                                                 request->size_bytes()));
        response->set_unmapped_bytes(unmapped);
        return absl::OkStatus();
      });
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
