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

class MemoryService final : public v1::Memory::CallbackService {
 public:
  explicit MemoryService(const ServiceEnv& env) : env_(env) {}
  grpc::ServerUnaryReactor* AllocBuffer(grpc::CallbackServerContext* context,
                                        const v1::AllocBufferRequest* request,
                                        v1::AllocBufferResponse* response) override;
  grpc::ServerUnaryReactor* FreeBuffer(grpc::CallbackServerContext* context,
                                       const v1::FreeBufferRequest* request,
                                       v1::FreeBufferResponse* response) override;
  grpc::ServerUnaryReactor* GetBuffer(grpc::CallbackServerContext* context,
                                      const v1::GetBufferRequest* request,
                                      v1::GetBufferResponse* response) override;

 private:
  ServiceEnv env_;
};

class DomainsService final : public v1::Domains::CallbackService {
 public:
  explicit DomainsService(const ServiceEnv& env) : env_(env) {}
  grpc::ServerUnaryReactor* CreateDomain(grpc::CallbackServerContext* context,
                                         const v1::CreateDomainRequest* request,
                                         v1::CreateDomainResponse* response) override;
  grpc::ServerUnaryReactor* DestroyDomain(grpc::CallbackServerContext* context,
                                          const v1::DestroyDomainRequest* request,
                                          v1::DestroyDomainResponse* response) override;
  grpc::ServerUnaryReactor* GetDomain(grpc::CallbackServerContext* context,
                                      const v1::GetDomainRequest* request,
                                      v1::GetDomainResponse* response) override;
  grpc::ServerUnaryReactor* ListDomains(grpc::CallbackServerContext* context,
                                        const v1::ListDomainsRequest* request,
                                        v1::ListDomainsResponse* response) override;
  grpc::ServerUnaryReactor* AttachDevice(grpc::CallbackServerContext* context,
                                         const v1::AttachDeviceRequest* request,
                                         v1::AttachDeviceResponse* response) override;
  grpc::ServerUnaryReactor* DetachDevice(grpc::CallbackServerContext* context,
                                         const v1::DetachDeviceRequest* request,
                                         v1::DetachDeviceResponse* response) override;
  grpc::ServerUnaryReactor* GetIovaRanges(grpc::CallbackServerContext* context,
                                          const v1::GetIovaRangesRequest* request,
                                          v1::GetIovaRangesResponse* response) override;
  grpc::ServerUnaryReactor* WalkDomain(grpc::CallbackServerContext* context,
                                       const v1::WalkDomainRequest* request,
                                       v1::WalkDomainResponse* response) override;

 private:
  ServiceEnv env_;
};

class SessionsService final : public v1::Sessions::CallbackService {
 public:
  explicit SessionsService(const ServiceEnv& env) : env_(env) {}
  // ttl_ms 0 takes the daemon's --session_ttl.
  grpc::ServerUnaryReactor* OpenSession(grpc::CallbackServerContext* context,
                                        const v1::OpenSessionRequest* request,
                                        v1::OpenSessionResponse* response) override;
  grpc::ServerUnaryReactor* KeepAlive(grpc::CallbackServerContext* context,
                                      const v1::KeepAliveRequest* request,
                                      v1::KeepAliveResponse* response) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* context,
                                         const v1::CloseSessionRequest* request,
                                         v1::CloseSessionResponse* response) override;

 private:
  ServiceEnv env_;
};

class StatsService final : public v1::Stats::CallbackService {
 public:
  explicit StatsService(const ServiceEnv& env) : env_(env) {}
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const v1::GetStatsRequest* request,
                                     v1::GetStatsResponse* response) override;

 private:
  ServiceEnv env_;
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_RESOURCE_SERVICES_H_
