// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_RESOURCE_SERVICES_H_
#define IOMMU_SERVER_RESOURCE_SERVICES_H_

// The small services: iommu.v1.Memory (buffers), iommu.v1.Domains,
// iommu.v1.Sessions (leases) and iommu.v1.Stats. Thin translators over
// core::Broker through ServeUnary. Thread-safe; stateless.

#include "iommu/v1/domain.grpc.pb.h"
#include "iommu/v1/memory.grpc.pb.h"
#include "iommu/v1/session.grpc.pb.h"
#include "iommu/v1/stats.grpc.pb.h"
#include "server/rpc_call.h"

namespace iommu::server {

// Every method is registered raw (bytes in and out), so that ServeUnary
// checks each request against the limits before parsing it (rpc_call.h).

class MemoryService final
    : public v1::Memory::WithRawCallbackMethod_AllocBuffer<
          v1::Memory::WithRawCallbackMethod_FreeBuffer<
              v1::Memory::WithRawCallbackMethod_GetBuffer<v1::Memory::Service>>> {
 public:
  explicit MemoryService(const ServiceEnv& env) : env_(env) {}
  grpc::ServerUnaryReactor* AllocBuffer(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* FreeBuffer(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetBuffer(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;

 private:
  ServiceEnv env_;
};

class DomainsService final
    : public v1::Domains::WithRawCallbackMethod_CreateDomain<
          v1::Domains::WithRawCallbackMethod_DestroyDomain<
              v1::Domains::WithRawCallbackMethod_GetDomain<
                  v1::Domains::WithRawCallbackMethod_ListDomains<
                      v1::Domains::WithRawCallbackMethod_AttachDevice<
                          v1::Domains::WithRawCallbackMethod_DetachDevice<
                              v1::Domains::WithRawCallbackMethod_GetIovaRanges<
                                  v1::Domains::WithRawCallbackMethod_WalkDomain<
                                      v1::Domains::Service>>>>>>>> {
 public:
  explicit DomainsService(const ServiceEnv& env) : env_(env) {}
  grpc::ServerUnaryReactor* CreateDomain(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* DestroyDomain(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetDomain(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListDomains(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* AttachDevice(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* DetachDevice(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetIovaRanges(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* WalkDomain(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;

 private:
  ServiceEnv env_;
};

class SessionsService final
    : public v1::Sessions::WithRawCallbackMethod_OpenSession<
          v1::Sessions::WithRawCallbackMethod_KeepAlive<
              v1::Sessions::WithRawCallbackMethod_CloseSession<v1::Sessions::Service>>> {
 public:
  explicit SessionsService(const ServiceEnv& env) : env_(env) {}
  // ttl_ms 0 takes the daemon's --session_ttl.
  grpc::ServerUnaryReactor* OpenSession(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* KeepAlive(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;

 private:
  ServiceEnv env_;
};

class StatsService final : public v1::Stats::WithRawCallbackMethod_GetStats<v1::Stats::Service> {
 public:
  explicit StatsService(const ServiceEnv& env) : env_(env) {}
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;

 private:
  ServiceEnv env_;
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_RESOURCE_SERVICES_H_
