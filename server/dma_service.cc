// SPDX-License-Identifier: Apache-2.0
#include "server/dma_service.h"

#include "core/base/status_macros.h"
#include "server/batch_reactor.h"
#include "server/proto_convert.h"

namespace iommu::server {

using grpc::ByteBuffer;
using grpc::CallbackServerContext;
using grpc::ServerUnaryReactor;

// Every mutating call runs through ServeMutating: exactly once per request
// id (docs/design.md#request-ids).

ServerUnaryReactor* DmaService::Map(CallbackServerContext* context, const ByteBuffer* request_bytes,
                                    ByteBuffer* reply_bytes) {
  return ServeMutating<v1::MapRequest, v1::MapResponse, core::MapResult>(
      env_, context, Method::kMap, request_bytes, reply_bytes,
      [&](const v1::MapRequest& request,
          const core::Caller& caller) -> absl::StatusOr<core::MapResult> {
        ASSIGN_OR_RETURN(core::MapRequest req, FromProto(request));
        return env_.broker->Map(caller, caller.device, req);
      },
      [](const core::MapResult& r, v1::MapResponse* out) { ToProto(r, out); });
}

ServerUnaryReactor* DmaService::Unmap(CallbackServerContext* context,
                                      const ByteBuffer* request_bytes, ByteBuffer* reply_bytes) {
  return ServeMutating<v1::UnmapRequest, v1::UnmapResponse, absl::Status>(
      env_, context, Method::kUnmap, request_bytes, reply_bytes,
      [&](const v1::UnmapRequest& request, const core::Caller& caller) {
        return env_.broker->Unmap(caller, caller.device, FromProto(request));
      },
      kNoFill);
}

ServerUnaryReactor* DmaService::MapSg(CallbackServerContext* context,
                                      const ByteBuffer* request_bytes, ByteBuffer* reply_bytes) {
  // The scan bounded the segments (--max_sg_segments), and with them the
  // DMA segments of the reply (ValidateLimits).
  return ServeMutating<v1::MapSgRequest, v1::MapSgResponse, core::MapSgResult>(
      env_, context, Method::kMapSg, request_bytes, reply_bytes,
      [&](const v1::MapSgRequest& request,
          const core::Caller& caller) -> absl::StatusOr<core::MapSgResult> {
        ASSIGN_OR_RETURN(core::MapSgRequest req, FromProto(request));
        return env_.broker->MapSg(caller, caller.device, req);
      },
      [](const core::MapSgResult& r, v1::MapSgResponse* out) { ToProto(r, out); });
}

ServerUnaryReactor* DmaService::UnmapSg(CallbackServerContext* context,
                                        const ByteBuffer* request_bytes, ByteBuffer* reply_bytes) {
  return ServeMutating<v1::UnmapSgRequest, v1::UnmapSgResponse, absl::Status>(
      env_, context, Method::kUnmapSg, request_bytes, reply_bytes,
      [&](const v1::UnmapSgRequest& request, const core::Caller& caller) {
        return env_.broker->UnmapSg(caller, caller.device, core::Iova(request.dma_addr()));
      },
      kNoFill);
}

ServerUnaryReactor* DmaService::Alloc(CallbackServerContext* context,
                                      const ByteBuffer* request_bytes, ByteBuffer* reply_bytes) {
  // Its runs are bounded by the core (--max_buffer_runs).
  return ServeMutating<v1::AllocRequest, v1::AllocResponse, core::AllocResult>(
      env_, context, Method::kAlloc, request_bytes, reply_bytes,
      [&](const v1::AllocRequest& request,
          const core::Caller& caller) -> absl::StatusOr<core::AllocResult> {
        ASSIGN_OR_RETURN(core::AllocRequest req, FromProto(request));
        return env_.broker->Alloc(caller, caller.device, req);
      },
      [](const core::AllocResult& r, v1::AllocResponse* out) { ToProto(r, out); });
}

ServerUnaryReactor* DmaService::Free(CallbackServerContext* context,
                                     const ByteBuffer* request_bytes, ByteBuffer* reply_bytes) {
  return ServeMutating<v1::FreeRequest, v1::FreeResponse, absl::Status>(
      env_, context, Method::kFree, request_bytes, reply_bytes,
      [&](const v1::FreeRequest& request, const core::Caller& caller) {
        return env_.broker->Free(caller, caller.device, core::Iova(request.dma_addr()));
      },
      kNoFill);
}

ServerUnaryReactor* DmaService::GetSgTable(CallbackServerContext* context,
                                           const ByteBuffer* request_bytes,
                                           ByteBuffer* reply_bytes) {
  // Mutating when it makes an export (a new token).
  return ServeMutating<v1::GetSgTableRequest, v1::GetSgTableResponse, core::SgTableResult>(
      env_, context, Method::kGetSgTable, request_bytes, reply_bytes,
      [&](const v1::GetSgTableRequest& request,
          const core::Caller& caller) -> absl::StatusOr<core::SgTableResult> {
        std::optional<core::ExportGrant> grant;
        if (request.export_()) {
          grant = core::ExportGrant{
              .importers = {request.export_importers().begin(), request.export_importers().end()},
              .writable = request.export_writable()};
        }
        return env_.broker->GetSgTable(caller, caller.device, core::Iova(request.dma_addr()),
                                       std::move(grant));
      },
      [](const core::SgTableResult& r, v1::GetSgTableResponse* out) { ToProto(r, out); });
}

ServerUnaryReactor* DmaService::RevokeExport(CallbackServerContext* context,
                                             const ByteBuffer* request_bytes,
                                             ByteBuffer* reply_bytes) {
  return ServeMutating<v1::RevokeExportRequest, v1::RevokeExportResponse, uint64_t>(
      env_, context, Method::kRevokeExport, request_bytes, reply_bytes,
      [&](const v1::RevokeExportRequest& request, const core::Caller& caller) {
        return env_.broker->RevokeExport(caller, request.export_token());
      },
      [](uint64_t unmapped, v1::RevokeExportResponse* out) {
        out->set_imports_unmapped(unmapped);
      });
}

ServerUnaryReactor* DmaService::MsiCookie(CallbackServerContext* context,
                                          const ByteBuffer* request_bytes,
                                          ByteBuffer* reply_bytes) {
  return ServeMutating<v1::MsiCookieRequest, v1::MsiCookieResponse, core::MsiCookieResult>(
      env_, context, Method::kMsiCookie, request_bytes, reply_bytes,
      [&](const v1::MsiCookieRequest& request, const core::Caller& caller) {
        return env_.broker->MsiCookie(caller, caller.device, FromProto(request));
      },
      [](const core::MsiCookieResult& r, v1::MsiCookieResponse* out) { ToProto(r, out); });
}

ServerUnaryReactor* DmaService::MapAt(CallbackServerContext* context,
                                      const ByteBuffer* request_bytes, ByteBuffer* reply_bytes) {
  return ServeMutating<v1::MapAtRequest, v1::MapAtResponse, core::MapResult>(
      env_, context, Method::kMapAt, request_bytes, reply_bytes,
      [&](const v1::MapAtRequest& request,
          const core::Caller& caller) -> absl::StatusOr<core::MapResult> {
        ASSIGN_OR_RETURN(core::MapAtRequest map_at, FromProto(request));
        return env_.broker->MapAt(caller, caller.device, map_at);
      },
      [](const core::MapResult& r, v1::MapAtResponse* out) {
        out->set_mapping_id(r.mapping_id);
        out->set_domain_id(r.domain_id);
      });
}

ServerUnaryReactor* DmaService::UnmapRange(CallbackServerContext* context,
                                           const ByteBuffer* request_bytes,
                                           ByteBuffer* reply_bytes) {
  return ServeMutating<v1::UnmapRangeRequest, v1::UnmapRangeResponse, uint64_t>(
      env_, context, Method::kUnmapRange, request_bytes, reply_bytes,
      [&](const v1::UnmapRangeRequest& request, const core::Caller& caller) {
        return env_.broker->UnmapRange(caller, caller.device, core::Iova(request.iova()),
                                       request.size_bytes());
      },
      [](uint64_t unmapped, v1::UnmapRangeResponse* out) { out->set_unmapped_bytes(unmapped); });
}

ServerUnaryReactor* DmaService::Sync(CallbackServerContext* context,
                                     const ByteBuffer* request_bytes, ByteBuffer* reply_bytes) {
  return ServeUnary<v1::SyncRequest, v1::SyncResponse>(
      env_, context, Method::kSync, request_bytes, reply_bytes,
      [&](const v1::SyncRequest&, const core::Caller& caller, v1::SyncResponse*) {
        return env_.broker->Sync(caller, caller.device);
      });
}

grpc::ServerBidiReactor<ByteBuffer, ByteBuffer>* DmaService::Batch(CallbackServerContext* context) {
  return new BatchReactor(env_, context);
}

}  // namespace iommu::server
