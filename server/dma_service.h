// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_DMA_SERVICE_H_
#define IOMMU_SERVER_DMA_SERVICE_H_

// iommu.v1.Dma: the DMA API as a thin translator over core::Broker. Each
// handler converts (proto_convert), calls core and returns through
// ServeUnary; Batch is a bidirectional stream (batch_reactor.h).
// Thread-safe: stateless beyond the ServiceEnv it shares.

#include "iommu/v1/dma.grpc.pb.h"
#include "server/rpc_call.h"

namespace iommu::server {

// Every method registered raw (bytes in and out), so that ServeUnary and
// the Batch reactor check each request against the limits before parsing it
// (rpc_call.h).
using DmaRawService = v1::Dma::WithRawCallbackMethod_Map<v1::Dma::WithRawCallbackMethod_Unmap<
    v1::Dma::WithRawCallbackMethod_MapSg<v1::Dma::WithRawCallbackMethod_UnmapSg<
        v1::Dma::WithRawCallbackMethod_Alloc<v1::Dma::WithRawCallbackMethod_Free<
            v1::Dma::WithRawCallbackMethod_GetSgTable<v1::Dma::WithRawCallbackMethod_RevokeExport<
                v1::Dma::WithRawCallbackMethod_MsiCookie<v1::Dma::WithRawCallbackMethod_MapAt<
                    v1::Dma::WithRawCallbackMethod_UnmapRange<v1::Dma::WithRawCallbackMethod_Sync<
                        v1::Dma::WithRawCallbackMethod_Batch<v1::Dma::Service>>>>>>>>>>>>>;

class DmaService final : public DmaRawService {
 public:
  explicit DmaService(const ServiceEnv& env) : env_(env) {}

  grpc::ServerUnaryReactor* Map(grpc::CallbackServerContext* context,
                                const grpc::ByteBuffer* request,
                                grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Unmap(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* MapSg(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* UnmapSg(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Alloc(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Free(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetSgTable(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* RevokeExport(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* MsiCookie(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* MapAt(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* UnmapRange(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Sync(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Batch(
      grpc::CallbackServerContext* context) override;

 private:
  ServiceEnv env_;
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_DMA_SERVICE_H_
