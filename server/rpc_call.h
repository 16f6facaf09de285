// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_RPC_CALL_H_
#define IOMMU_SERVER_RPC_CALL_H_

// The one wrapper around every handler: check the request against the
// limits and parse it, authenticate, resolve the core Caller, run the body,
// serialize the reply, map the status once, count the call in the gRPC
// metrics and log it. Services are thin: they convert, call core, and leave
// everything else to ServeUnary (unary) or to the stream reactors, which use
// the same pieces (ParseRequest, ResolveCaller, GrpcMetrics, LogCall).
// Every method is registered raw (its messages are bytes to gRPC), so that
// no request is parsed before the limits have been checked
// (docs/design.md#limits).

#include <google/protobuf/arena.h>
#include <google/protobuf/message.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/server_callback.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/broker/broker.h"
#include "server/auth.h"
#include "server/grpc_metrics.h"
#include "server/heap_trimmer.h"
#include "server/limits.h"
#include "server/logging.h"
#include "server/request_scan.h"
#include "server/status_convert.h"
#include "server/stream_limiter.h"

namespace iommu::server {

// A message's bytes in one contiguous piece: its one slice, or a copy of
// its slices (scanning and parsing a flat array is several times cheaper
// than walking slices). Holds a reference to the bytes while alive.
class FlatBytes {
 public:
  explicit FlatBytes(const grpc::ByteBuffer& bytes);
  absl::string_view view() const {
    return absl::string_view(reinterpret_cast<const char*>(slice_.begin()), slice_.size());
  }

 private:
  grpc::Slice slice_;
};

// A server stream the daemon can end when it drains (the Batch and
// WatchFaults reactors). Reference-counted so that a drain can reach a stream
// without holding the registry's lock while the stream finishes (gRPC may run
// OnDone inline in the thread that calls Finish): the reactor holds one
// reference until its OnDone, the registry pins it for the duration of Drain.
class DrainableStream {
 public:
  // Asks the stream to finish soon. Called at most once, with a pin held and
  // no registry lock held, so it may call into gRPC.
  virtual void Drain() = 0;

  void Pin() { refs_.fetch_add(1, std::memory_order_relaxed); }
  // Drops a reference; the last one deletes the stream.
  void Unpin() {
    // acq_rel: the deleting thread sees every write of the other holders.
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

 protected:
  virtual ~DrainableStream() = default;

 private:
  std::atomic<int> refs_{1};
};

// The live streams, so a drain can reach them. Thread-safe.
class StreamRegistry {
 public:
  // Registers `stream`; false (not registered) when draining already began.
  bool Add(DrainableStream* stream) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock l(&mu_);
    if (draining_) return false;
    streams_.insert(stream);
    return true;
  }
  void Remove(DrainableStream* stream) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock l(&mu_);
    streams_.erase(stream);
  }
  // Drains every live stream and refuses new ones.
  void DrainAll() ABSL_LOCKS_EXCLUDED(mu_) {
    std::vector<DrainableStream*> pinned;
    {
      absl::MutexLock l(&mu_);
      draining_ = true;
      for (DrainableStream* s : streams_) {
        s->Pin();
        pinned.push_back(s);
      }
    }
    for (DrainableStream* s : pinned) {
      s->Drain();
      s->Unpin();
    }
  }
  // Waits until every stream has removed itself, or the deadline.
  bool AwaitEmpty(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock l(&mu_);
    return mu_.AwaitWithDeadline(absl::Condition(this, &StreamRegistry::EmptyLocked), deadline);
  }
  size_t size() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock l(&mu_);
    return streams_.size();
  }

 private:
  bool EmptyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return streams_.empty(); }

  absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<DrainableStream*> streams_ ABSL_GUARDED_BY(mu_);
};

class FaultDispatcher;

// What every service needs. Owned by the Daemon, outliving the gRPC server.
struct ServiceEnv {
  core::Broker* broker = nullptr;
  const Authenticator* auth = nullptr;
  GrpcMetrics* metrics = nullptr;
  StreamRegistry* streams = nullptr;
  absl::Duration default_session_ttl = absl::Seconds(30);
  const Limits* limits = nullptr;
  const RequestScanner* scanner = nullptr;
  StreamLimiter* stream_limiter = nullptr;
  StreamLimiter* watcher_limiter = nullptr;  // WatchFaults streams per device
  FaultDispatcher* faults = nullptr;         // wakes WatchFaults streams
  HeapTrimmer* trimmer = nullptr;            // told of large calls (none when null)
};

inline int64_t MonotonicNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The identity behind `context` (UNAUTHENTICATED without a valid credential).
inline absl::StatusOr<Identity> AuthenticateCall(const ServiceEnv& env,
                                                 const grpc::ServerContextBase& context) {
  return env.auth->Authenticate(context);
}

// The core Caller for a call acting as `request_device`: its identity, the
// device it may act as, and the session from the `iommu-session-id` metadata.
inline absl::StatusOr<core::Caller> ResolveCaller(const ServiceEnv& env,
                                                  const grpc::ServerContextBase& context,
                                                  const std::string& request_device) {
  absl::StatusOr<Identity> identity = AuthenticateCall(env, context);
  if (!identity.ok()) return identity.status();
  absl::StatusOr<uint64_t> session = Authenticator::SessionId(context);
  if (!session.ok()) return session.status();
  return Authenticator::CallerFor(*identity, request_device, *session);
}

// Every method's request arrives as bytes (the services register raw
// handlers), so that nothing is parsed before the limits are checked:
// ParseRequest scans the bytes against them (RequestScanner) and only then
// parses them into `request` (on the caller's arena). A request that is not
// a well-formed message of its type is INVALID_ARGUMENT saying so and
// naming the method, with libprotobuf's reason when it gave one.
absl::Status ParseRequest(const ServiceEnv& env, Method method, const grpc::ByteBuffer& bytes,
                          google::protobuf::Message* request);

// Serializes a reply into `out`, replacing what it held. The limits guarantee that every reply fits
// in --max_message_bytes; one that does not is a bug, refused (with an error
// logged) rather than sent to a client that would refuse it.
absl::Status SerializeReply(const ServiceEnv& env, Method method,
                            const google::protobuf::Message& reply, grpc::ByteBuffer* out);

// A request's `device` (empty for requests without one).
template <typename Request>
const std::string& DeviceOf(const Request& request) {
  if constexpr (requires { request.device(); }) {
    return request.device();
  } else {
    static const std::string* const kNone = new std::string();
    return *kNone;
  }
}

// The first block of a unary call's arena, on the handler's stack: the
// request and response of most calls fit, so they cost no heap allocation.
inline constexpr size_t kUnaryArenaBlockBytes = 2048;

// Runs one unary RPC: parses the request (ParseRequest), resolves the
// caller, runs `body(const Request&, const core::Caller&, Response*) ->
// absl::Status`, which fills the response and returns the core's status,
// serializes the response, maps the status once, counts the call in the
// gRPC metrics and logs it. A failed body leaves the response unsent.
template <typename Request, typename Response, typename Body>
grpc::ServerUnaryReactor* ServeUnary(const ServiceEnv& env, grpc::CallbackServerContext* context,
                                     Method method, const grpc::ByteBuffer* request_bytes,
                                     grpc::ByteBuffer* reply_bytes, Body&& body) {
  const int64_t start_ns = MonotonicNanos();
  env.metrics->Started(method);
  env.metrics->Received(method);
  alignas(16) char block[kUnaryArenaBlockBytes];
  google::protobuf::ArenaOptions arena_options;
  arena_options.initial_block = block;
  arena_options.initial_block_size = sizeof(block);
  google::protobuf::Arena arena(arena_options);
  Request* request = google::protobuf::Arena::CreateMessage<Request>(&arena);
  Response* response = google::protobuf::Arena::CreateMessage<Response>(&arena);
  absl::StatusOr<core::Caller> caller = absl::UnknownError("not resolved");
  absl::Status status = ParseRequest(env, method, *request_bytes, request);
  if (status.ok()) {
    caller = ResolveCaller(env, *context, DeviceOf(*request));
    status = caller.ok() ? body(std::as_const(*request), *caller, response) : caller.status();
  }
  if (status.ok()) status = SerializeReply(env, method, *response, reply_bytes);
  if (env.trimmer != nullptr) {
    env.trimmer->Finished(std::max(request_bytes->Length(), reply_bytes->Length()));
  }
  const int64_t elapsed_ns = MonotonicNanos() - start_ns;
  if (status.ok()) env.metrics->Sent(method);
  env.metrics->Handled(method, status.code(), elapsed_ns);
  const MethodInfo& info = Describe(method);
  LogCall(info.service, info.method, caller.ok() ? caller->device : DeviceOf(*request), status,
          elapsed_ns);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// The metadata key of a mutating call's request id, and the trailing
// metadata a replayed reply carries (docs/design.md#request-ids).
inline constexpr char kRequestIdMetadataKey[] = "iommu-request-id";
inline constexpr char kReplayedMetadataKey[] = "iommu-request-replayed";

// The request id the call carries: none, or INVALID_ARGUMENT naming the key
// for a malformed or repeated one.
absl::StatusOr<std::optional<std::string>> RequestIdOf(const grpc::ServerContextBase& context);

// Who a request id belongs to: ids are scoped to the caller's identity.
std::string RequestPrincipal(const core::Caller& caller);

// The latest a retry waits for an earlier attempt still running.
absl::Time RequestDeadline(const grpc::ServerContextBase& context);

// A core result, turned into the reply's bytes by `fill` into a response of
// its own (see core::RequestScope::Encoder); absl::Status results fill
// nothing.
template <typename Result, typename Response, typename Fill>
core::RequestScope::Encoder ReplyEncoder(const Fill& fill) {
  return [&fill](const void* result, const std::type_info& type) {
    if (type != typeid(Result)) {
      // A broker operation captured another type than its RPC converts: a
      // bug that every operation's test reaches.
      std::fprintf(stderr, "request reply: captured %s, expected %s\n", type.name(),
                   typeid(Result).name());
      std::abort();
    }
    Response response;
    if constexpr (!std::is_same_v<Result, absl::Status>) {
      fill(*static_cast<const Result*>(result), &response);
    } else {
      static_cast<void>(fill);  // an absl::Status result fills nothing
    }
    return response.SerializeAsString();
  };
}

// Runs one mutating unary RPC: as ServeUnary, and exactly once per request
// id. `call(const Request&, const core::Caller&)` returns the core's
// absl::StatusOr<Result> (or absl::Status when Result is absl::Status);
// `fill(result, response)` turns a result into the response. A call without
// a request id runs as before; with one, a retry of an answered id gets the
// recorded response (and the trailing metadata iommu-request-replayed: 1)
// without running again. A request refused by a limit or by the core
// records nothing.
template <typename Request, typename Response, typename Result, typename Call, typename Fill>
grpc::ServerUnaryReactor* ServeMutating(const ServiceEnv& env, grpc::CallbackServerContext* context,
                                        Method method, const grpc::ByteBuffer* request_bytes,
                                        grpc::ByteBuffer* reply_bytes, Call&& call, Fill&& fill) {
  return ServeUnary<Request, Response>(
      env, context, method, request_bytes, reply_bytes,
      [&](const Request& request, const core::Caller& caller, Response* response) -> absl::Status {
        auto run = [&]() -> absl::Status {
          if constexpr (std::is_same_v<Result, absl::Status>) {
            return call(request, caller);
          } else {
            absl::StatusOr<Result> result = call(request, caller);
            if (!result.ok()) return result.status();
            fill(*result, response);
            return absl::OkStatus();
          }
        };
        absl::StatusOr<std::optional<std::string>> id = RequestIdOf(*context);
        if (!id.ok()) return id.status();
        if (!id->has_value()) return run();
        const MethodInfo& info = Describe(method);
        core::RequestState key{
            .principal = RequestPrincipal(caller),
            .request_id = **id,
            .fingerprint = core::RequestFingerprint(info.method, request.SerializeAsString())};
        core::RequestScope scope(env.broker->request_log(), std::move(key),
                                 ReplyEncoder<Result, Response>(fill));
        absl::StatusOr<std::optional<std::string>> replay = scope.Begin(RequestDeadline(*context));
        if (!replay.ok()) return replay.status();
        if (!replay->has_value()) return run();
        if (!response->ParseFromString(**replay)) {
          return absl::DataLossError(absl::StrFormat("%s=\"%s\": the recorded reply does not parse",
                                                     kRequestIdMetadataKey, **id));
        }
        context->AddTrailingMetadata(kReplayedMetadataKey, "1");
        return absl::OkStatus();
      });
}

// Fills nothing: for calls whose response has no fields.
inline constexpr auto kNoFill = [](const auto&, auto*) {};

// Prefixes a status message with the index of the element that failed
// ("accesses[3]." + "iova=0x...: why"), keeping the code.
inline absl::Status AtIndex(const absl::Status& status, const char* list, int index) {
  if (status.ok()) return status;
  return absl::Status(status.code(), std::string(list) + "[" + std::to_string(index) + "]." +
                                         std::string(status.message()));
}

}  // namespace iommu::server

#endif  // IOMMU_SERVER_RPC_CALL_H_
