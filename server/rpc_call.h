#ifndef IOMMU_SERVER_RPC_CALL_H_
#define IOMMU_SERVER_RPC_CALL_H_

// The one wrapper around every handler: authenticate, resolve the core
// Caller, run the body, map the status once, count the call in the gRPC
// metrics and log it. Services are thin: they convert, call core, and leave
// everything else to ServeUnary (unary) or to the stream reactors, which use
// the same pieces (ResolveCaller, GrpcMetrics, LogCall).

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_callback.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/broker/broker.h"
#include "server/auth.h"
#include "server/grpc_metrics.h"
#include "server/logging.h"
#include "server/status_convert.h"

namespace iommu::server {

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

// What every service needs. Owned by the Daemon, outliving the gRPC server.
struct ServiceEnv {
  core::Broker* broker = nullptr;
  const Authenticator* auth = nullptr;
  GrpcMetrics* metrics = nullptr;
  StreamRegistry* streams = nullptr;
  absl::Duration default_session_ttl = absl::Seconds(30);
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

// Runs one unary RPC. `body(const core::Caller&) -> absl::Status` fills the
// response and returns the core's status; a failed body leaves the response
// unsent.
template <typename Body>
grpc::ServerUnaryReactor* ServeUnary(const ServiceEnv& env, grpc::CallbackServerContext* context,
                                     Method method, const std::string& request_device,
                                     Body&& body) {
  const int64_t start_ns = MonotonicNanos();
  env.metrics->Started(method);
  env.metrics->Received(method);
  absl::Status status;
  absl::StatusOr<core::Caller> caller = ResolveCaller(env, *context, request_device);
  if (caller.ok()) {
    status = body(*caller);
  } else {
    status = caller.status();
  }
  const int64_t elapsed_ns = MonotonicNanos() - start_ns;
  if (status.ok()) env.metrics->Sent(method);
  env.metrics->Handled(method, status.code(), elapsed_ns);
  const MethodInfo& info = Describe(method);
  LogCall(info.service, info.method, caller.ok() ? caller->device : request_device, status,
          elapsed_ns);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// Prefixes a status message with the index of the element that failed
// ("accesses[3]." + "iova=0x...: why"), keeping the code.
inline absl::Status AtIndex(const absl::Status& status, const char* list, int index) {
  if (status.ok()) return status;
  return absl::Status(status.code(), std::string(list) + "[" + std::to_string(index) + "]." +
                                         std::string(status.message()));
}

}  // namespace iommu::server

#endif  // IOMMU_SERVER_RPC_CALL_H_
