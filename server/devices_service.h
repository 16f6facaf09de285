// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_DEVICES_SERVICE_H_
#define IOMMU_SERVER_DEVICES_SERVICE_H_

// iommu.v1.Devices: the topology, device accesses through the IOTLB, and the
// fault event stream (fault_watcher.h). Thread-safe; stateless.

#include "iommu/v1/device.grpc.pb.h"
#include "server/rpc_call.h"

namespace iommu::server {

// Every method is registered raw (bytes in and out), so that each request
// is checked against the limits before it is parsed (rpc_call.h).
class DevicesService final
    : public v1::Devices::WithRawCallbackMethod_ListIommus<
          v1::Devices::WithRawCallbackMethod_ListDevices<
              v1::Devices::WithRawCallbackMethod_Translate<
                  v1::Devices::WithRawCallbackMethod_TranslateBatch<
                      v1::Devices::WithRawCallbackMethod_WatchFaults<v1::Devices::Service>>>>> {
 public:
  explicit DevicesService(const ServiceEnv& env) : env_(env) {}

  grpc::ServerUnaryReactor* ListIommus(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListDevices(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Translate(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* TranslateBatch(grpc::CallbackServerContext* context,
                                           const grpc::ByteBuffer* request,
                                           grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* WatchFaults(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* request) override;

 private:
  ServiceEnv env_;
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_DEVICES_SERVICE_H_
