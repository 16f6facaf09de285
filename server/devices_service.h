#ifndef IOMMU_SERVER_DEVICES_SERVICE_H_
#define IOMMU_SERVER_DEVICES_SERVICE_H_

// iommu.v1.Devices: the topology, device accesses through the IOTLB, and the
// fault event stream (fault_watcher.h). Thread-safe; stateless.

#include "iommu/v1/device.grpc.pb.h"
#include "server/rpc_call.h"

namespace iommu::server {

class DevicesService final : public v1::Devices::CallbackService {
 public:
  explicit DevicesService(const ServiceEnv& env) : env_(env) {}

  grpc::ServerUnaryReactor* ListIommus(grpc::CallbackServerContext* context,
                                       const v1::ListIommusRequest* request,
                                       v1::ListIommusResponse* response) override;
  grpc::ServerUnaryReactor* ListDevices(grpc::CallbackServerContext* context,
                                        const v1::ListDevicesRequest* request,
                                        v1::ListDevicesResponse* response) override;
  grpc::ServerUnaryReactor* Translate(grpc::CallbackServerContext* context,
                                      const v1::TranslateRequest* request,
                                      v1::TranslateResponse* response) override;
  grpc::ServerUnaryReactor* TranslateBatch(grpc::CallbackServerContext* context,
                                           const v1::TranslateBatchRequest* request,
                                           v1::TranslateBatchResponse* response) override;
  grpc::ServerWriteReactor<v1::FaultEvent>* WatchFaults(
      grpc::CallbackServerContext* context, const v1::WatchFaultsRequest* request) override;

 private:
  ServiceEnv env_;
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_DEVICES_SERVICE_H_
