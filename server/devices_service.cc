#include "server/devices_service.h"

#include "core/base/status_macros.h"
#include "server/fault_watcher.h"
#include "server/proto_convert.h"

namespace iommu::server {

using grpc::CallbackServerContext;
using grpc::ServerUnaryReactor;

ServerUnaryReactor* DevicesService::ListIommus(CallbackServerContext* context,
                                               const v1::ListIommusRequest*,
                                               v1::ListIommusResponse* response) {
  return ServeUnary(env_, context, Method::kListIommus, "", [&](const core::Caller&) {
    for (const core::SmmuConfig& smmu : env_.broker->ListIommus()) {
      ToProto(smmu, response->add_smmus());
    }
    return absl::OkStatus();
  });
}

ServerUnaryReactor* DevicesService::ListDevices(CallbackServerContext* context,
                                                const v1::ListDevicesRequest* request,
                                                v1::ListDevicesResponse* response) {
  return ServeUnary(env_, context, Method::kListDevices, request->device(),
                    [&](const core::Caller& caller) -> absl::Status {
                      ASSIGN_OR_RETURN(std::vector<core::DeviceInfo> devices,
                                       env_.broker->ListDevices(caller));
                      for (const core::DeviceInfo& d : devices) {
                        ToProto(d, response->add_devices());
                      }
                      return absl::OkStatus();
                    });
}

ServerUnaryReactor* DevicesService::Translate(CallbackServerContext* context,
                                              const v1::TranslateRequest* request,
                                              v1::TranslateResponse* response) {
  return ServeUnary(
      env_, context, Method::kTranslate, request->device(),
      [&](const core::Caller& caller) -> absl::Status {
        ASSIGN_OR_RETURN(core::TranslateRequest req, FromProto(*request, caller.device));
        ASSIGN_OR_RETURN(core::TranslateResult result, env_.broker->Translate(caller, req));
        ToProto(result, response);
        return absl::OkStatus();
      });
}

// Every access acts as its own `device`. All accesses are converted and
// authorised before the first is translated, so a malformed one fails the
// call with no trace; its error is prefixed with "accesses[i].". A core error
// part-way (e.g. an unknown device) also fails the call; the accesses before
// it have happened (translations have no undo).
ServerUnaryReactor* DevicesService::TranslateBatch(CallbackServerContext* context,
                                                   const v1::TranslateBatchRequest* request,
                                                   v1::TranslateBatchResponse* response) {
  return ServeUnary(
      env_, context, Method::kTranslateBatch, "", [&](const core::Caller& base) -> absl::Status {
        ASSIGN_OR_RETURN(Identity identity, AuthenticateCall(env_, *context));
        std::vector<std::pair<core::Caller, core::TranslateRequest>> accesses;
        accesses.reserve(request->accesses_size());
        for (int i = 0; i < request->accesses_size(); ++i) {
          const v1::TranslateRequest& access = request->accesses(i);
          absl::StatusOr<core::Caller> caller =
              Authenticator::CallerFor(identity, access.device(), base.session_id);
          if (!caller.ok()) return AtIndex(caller.status(), "accesses", i);
          absl::StatusOr<core::TranslateRequest> req = FromProto(access, caller->device);
          if (!req.ok()) return AtIndex(req.status(), "accesses", i);
          accesses.emplace_back(*std::move(caller), *std::move(req));
        }
        response->mutable_results()->Reserve(request->accesses_size());
        for (size_t i = 0; i < accesses.size(); ++i) {
          absl::StatusOr<core::TranslateResult> result =
              env_.broker->Translate(accesses[i].first, accesses[i].second);
          if (!result.ok()) {
            response->Clear();
            return AtIndex(result.status(), "accesses", static_cast<int>(i));
          }
          ToProto(*result, response->add_results());
        }
        return absl::OkStatus();
      });
}

grpc::ServerWriteReactor<v1::FaultEvent>* DevicesService::WatchFaults(
    CallbackServerContext* context, const v1::WatchFaultsRequest* request) {
  return new FaultWatcher(env_, context, *request);
}

}  // namespace iommu::server
