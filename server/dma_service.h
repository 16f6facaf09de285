#ifndef IOMMU_SERVER_DMA_SERVICE_H_
#define IOMMU_SERVER_DMA_SERVICE_H_

// iommu.v1.Dma: the DMA API as a thin translator over core::Broker. Each
// handler converts (proto_convert), calls core and returns through
// ServeUnary; Batch is a bidirectional stream (batch_reactor.h).
// Thread-safe: stateless beyond the ServiceEnv it shares.

#include "iommu/v1/dma.grpc.pb.h"
#include "server/rpc_call.h"

namespace iommu::server {

class DmaService final : public v1::Dma::CallbackService {
 public:
  explicit DmaService(const ServiceEnv& env) : env_(env) {}

  grpc::ServerUnaryReactor* Map(grpc::CallbackServerContext* context, const v1::MapRequest* request,
                                v1::MapResponse* response) override;
  grpc::ServerUnaryReactor* Unmap(grpc::CallbackServerContext* context,
                                  const v1::UnmapRequest* request,
                                  v1::UnmapResponse* response) override;
  grpc::ServerUnaryReactor* MapSg(grpc::CallbackServerContext* context,
                                  const v1::MapSgRequest* request,
                                  v1::MapSgResponse* response) override;
  grpc::ServerUnaryReactor* UnmapSg(grpc::CallbackServerContext* context,
                                    const v1::UnmapSgRequest* request,
                                    v1::UnmapSgResponse* response) override;
  grpc::ServerUnaryReactor* Alloc(grpc::CallbackServerContext* context,
                                  const v1::AllocRequest* request,
                                  v1::AllocResponse* response) override;
  grpc::ServerUnaryReactor* Free(grpc::CallbackServerContext* context,
                                 const v1::FreeRequest* request,
                                 v1::FreeResponse* response) override;
  grpc::ServerUnaryReactor* GetSgTable(grpc::CallbackServerContext* context,
                                       const v1::GetSgTableRequest* request,
                                       v1::GetSgTableResponse* response) override;
  grpc::ServerUnaryReactor* RevokeExport(grpc::CallbackServerContext* context,
                                         const v1::RevokeExportRequest* request,
                                         v1::RevokeExportResponse* response) override;
  grpc::ServerUnaryReactor* MsiCookie(grpc::CallbackServerContext* context,
                                      const v1::MsiCookieRequest* request,
                                      v1::MsiCookieResponse* response) override;
  grpc::ServerUnaryReactor* MapAt(grpc::CallbackServerContext* context,
                                  const v1::MapAtRequest* request,
                                  v1::MapAtResponse* response) override;
  grpc::ServerUnaryReactor* UnmapRange(grpc::CallbackServerContext* context,
                                       const v1::UnmapRangeRequest* request,
                                       v1::UnmapRangeResponse* response) override;
  grpc::ServerUnaryReactor* Sync(grpc::CallbackServerContext* context,
                                 const v1::SyncRequest* request,
                                 v1::SyncResponse* response) override;
  grpc::ServerBidiReactor<v1::BatchRequest, v1::BatchResponse>* Batch(
      grpc::CallbackServerContext* context) override;

 private:
  ServiceEnv env_;
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_DMA_SERVICE_H_
