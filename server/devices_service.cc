// SPDX-License-Identifier: Apache-2.0
#include "server/devices_service.h"

#include "core/base/status_macros.h"
#include "server/fault_watcher.h"
#include "server/proto_convert.h"

namespace iommu::server {

using grpc::ByteBuffer;
using grpc::CallbackServerContext;
using grpc::ServerUnaryReactor;

ServerUnaryReactor* DevicesService::ListIommus(CallbackServerContext* context,
                                               const ByteBuffer* request_bytes,
                                               ByteBuffer* reply_bytes) {
  return ServeUnary<v1::ListIommusRequest, v1::ListIommusResponse>(
      env_, context, Method::kListIommus, request_bytes, reply_bytes,
      [&](const v1::ListIommusRequest&, const core::Caller&, v1::ListIommusResponse* response) {
        for (const core::SmmuConfig& smmu : env_.broker->ListIommus()) {
          ToProto(smmu, response->add_smmus());
        }
        return absl::OkStatus();
      });
}

ServerUnaryReactor* DevicesService::ListDevices(CallbackServerContext* context,
                                                const ByteBuffer* request_bytes,
                                                ByteBuffer* reply_bytes) {
  return ServeUnary<v1::ListDevicesRequest, v1::ListDevicesResponse>(
      env_, context, Method::kListDevices, request_bytes, reply_bytes,
      [&](const v1::ListDevicesRequest&, const core::Caller& caller,
          v1::ListDevicesResponse* response) -> absl::Status {
        ASSIGN_OR_RETURN(std::vector<core::DeviceInfo> devices, env_.broker->ListDevices(caller));
        for (const core::DeviceInfo& d : devices) ToProto(d, response->add_devices());
        return absl::OkStatus();
      });
}

ServerUnaryReactor* DevicesService::Translate(CallbackServerContext* context,
                                              const ByteBuffer* request_bytes,
                                              ByteBuffer* reply_bytes) {
  return ServeUnary<v1::TranslateRequest, v1::TranslateResponse>(
      env_, context, Method::kTranslate, request_bytes, reply_bytes,
      [&](const v1::TranslateRequest& request, const core::Caller& caller,
          v1::TranslateResponse* response) -> absl::Status {
        RETURN_IF_ERROR(
            CheckReplyFits(*env_.limits, "length_bytes", request.length_bytes(),
                           MostTranslateReplyBytes(request.iova(), request.length_bytes())));
        ASSIGN_OR_RETURN(core::TranslateRequest req, FromProto(request, caller.device));
        ASSIGN_OR_RETURN(core::TranslateResult result, env_.broker->Translate(caller, req));
        ToProto(result, response);
        return absl::OkStatus();
      });
}

// Every access acts as its own `device`. All accesses are converted and
// authorised, and the reply they could make is checked to fit, before the
// first is translated, so a malformed one (or too many pages in all) fails
// the call with no trace; its error is prefixed with "accesses[i].". A core
// error part-way (e.g. an unknown device) also fails the call; the accesses
// before it have happened (translations have no undo).
ServerUnaryReactor* DevicesService::TranslateBatch(CallbackServerContext* context,
                                                   const ByteBuffer* request_bytes,
                                                   ByteBuffer* reply_bytes) {
  return ServeUnary<v1::TranslateBatchRequest, v1::TranslateBatchResponse>(
      env_, context, Method::kTranslateBatch, request_bytes, reply_bytes,
      [&](const v1::TranslateBatchRequest& request, const core::Caller& base,
          v1::TranslateBatchResponse* response) -> absl::Status {
        ASSIGN_OR_RETURN(Identity identity, AuthenticateCall(env_, *context));
        std::vector<std::pair<core::Caller, core::TranslateRequest>> accesses;
        accesses.reserve(request.accesses_size());
        uint64_t reply = 0;
        for (int i = 0; i < request.accesses_size(); ++i) {
          const v1::TranslateRequest& access = request.accesses(i);
          absl::StatusOr<core::Caller> caller =
              Authenticator::CallerFor(identity, access.device(), base.session_id);
          if (!caller.ok()) return AtIndex(caller.status(), "accesses", i);
          absl::StatusOr<core::TranslateRequest> req = FromProto(access, caller->device);
          if (!req.ok()) return AtIndex(req.status(), "accesses", i);
          // Saturates: once past the limit the sum is refused anyway.
          if (reply <= env_.limits->max_message_bytes) {
            reply += MostTranslateReplyBytes(access.iova(), access.length_bytes());
          }
          accesses.emplace_back(*std::move(caller), *std::move(req));
        }
        RETURN_IF_ERROR(CheckReplyFits(*env_.limits, "accesses",
                                       static_cast<uint64_t>(request.accesses_size()), reply));
        response->mutable_results()->Reserve(request.accesses_size());
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

grpc::ServerWriteReactor<ByteBuffer>* DevicesService::WatchFaults(CallbackServerContext* context,
                                                                  const ByteBuffer* request) {
  return new FaultWatcher(env_, context, *request);
}

}  // namespace iommu::server
