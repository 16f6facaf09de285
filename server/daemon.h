// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_DAEMON_H_
#define IOMMU_SERVER_DAEMON_H_

// iommud's process-level object: the broker, the gRPC server (every iommu.v1
// service on the callback API, health, reflection) on Unix sockets and/or
// TCP, an optional plaintext health-only server for probes, the /metrics
// exposer, the Tick timer (session leases, flush-queue timeouts, the heap
// returned after large calls), the fault
// dispatcher that wakes WatchFaults streams, and the graceful drain.
//
// Thread-compatible: Start, then Shutdown once, from one thread (main's
// signal loop); everything it owns is thread-safe.

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/server.h>

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "core/broker/broker.h"
#include "server/auth.h"
#include "server/fault_dispatcher.h"
#include "server/grpc_metrics.h"
#include "server/heap_trimmer.h"
#include "server/limits.h"
#include "server/request_scan.h"
#include "server/rpc_call.h"
#include "server/stream_limiter.h"
#include "store/state_store.h"

namespace prometheus {
class Exposer;
}

namespace iommu::server {

class BrokerCollector;
class StoreCollector;
class ProcessCollector;

struct ListenOptions {
  // "unix:/path" or "host:port" (port 0: any free port).
  std::vector<std::string> grpc_addresses = {"unix:/tmp/iommud.sock", "127.0.0.1:50051"};
  // "host:port" of /metrics; empty disables the exposer.
  std::string metrics_address = "127.0.0.1:9477";
  // "host:port" of a plaintext server with grpc.health.v1.Health only (the
  // main server's serving status; every other service UNIMPLEMENTED), for
  // probes that speak no TLS, such as Kubernetes' gRPC probe. Empty: none.
  std::string health_address;
  // Permission bits given to every unix: socket once bound (0660: the
  // daemon's user and group may connect; connecting needs write permission).
  // nullopt: left as created, under the process umask.
  std::optional<uint32_t> unix_socket_mode;
};

// Durable state (docs/design.md#durable-state).
struct StateOptions {
  // false: nothing survives the daemon (an explicit choice, warned about).
  bool enabled = true;
  store::KvOptions kv;  // dir, engine, durability
};

struct DaemonOptions {
  ListenOptions listen;
  StateOptions state;
  std::string topology_file;  // empty: the built-in default host
  AuthOptions auth;
  core::BrokerOptions broker;  // quotas, flush queue, fault ring
  Limits limits;  // what a request, stream and device may cost (its max_buffer_runs wins)
  absl::Duration session_ttl = absl::Seconds(30);  // OpenSession with ttl_ms 0
  absl::Duration drain_timeout = absl::Seconds(10);
  absl::Duration tick_interval = absl::Milliseconds(20);
};

class Daemon {
 public:
  // Loads the topology, builds the broker, binds every address and starts
  // serving (health SERVING). Errors name the flag at fault (limits that
  // contradict each other too, ValidateLimits); with
  // --auth=none, a listen address other hosts can reach is refused (naming
  // `listen` and the address) unless auth.none_allow_remote.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const DaemonOptions& options);
  ~Daemon();

  // The bound gRPC addresses, ports resolved ("127.0.0.1:41234").
  const std::vector<std::string>& grpc_addresses() const { return bound_addresses_; }
  // "127.0.0.1:9477", or empty when disabled.
  const std::string& metrics_address() const { return metrics_address_; }
  // The bound health-only address, or empty when there is none.
  const std::string& health_address() const { return health_address_; }
  // What opening the state store found and restored (zero without a store).
  const store::RecoveryInfo& recovery() const { return recovery_; }
  const core::RestoreReport& restore_report() const { return restore_report_; }
  absl::Duration recovery_time() const { return recovery_time_; }

  // Graceful drain: health NOT_SERVING, streams asked to end, no new calls,
  // in-flight calls finish (cancelled at the --drain_timeout deadline), then
  // the broker and the timer stop. OK when everything finished before the
  // deadline, DEADLINE_EXCEEDED otherwise. Idempotent.
  absl::Status Shutdown();

 private:
  Daemon() = default;
  void TickLoop();

  DaemonOptions options_;
  // Declared before the broker, which journals into it: destroyed after.
  std::unique_ptr<store::StateStore> store_;
  store::RecoveryInfo recovery_;
  core::RestoreReport restore_report_;
  absl::Duration recovery_time_;
  std::unique_ptr<core::Broker> broker_;
  std::unique_ptr<Authenticator> auth_;
  std::shared_ptr<GrpcMetrics> grpc_metrics_;
  std::shared_ptr<BrokerCollector> broker_collector_;
  std::shared_ptr<StoreCollector> store_collector_;
  std::shared_ptr<ProcessCollector> process_collector_;
  StreamRegistry streams_;
  std::unique_ptr<RequestScanner> scanner_;
  std::unique_ptr<StreamLimiter> stream_limiter_;
  std::unique_ptr<StreamLimiter> watcher_limiter_;
  // Declared after the broker and before the server: every watcher is gone
  // before it is, and it before the broker.
  std::unique_ptr<FaultDispatcher> fault_dispatcher_;
  HeapTrimmer trimmer_;  // trimmed by the Tick timer after large calls
  std::vector<std::unique_ptr<grpc::Service>> services_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::CallbackGenericService> health_fallback_;  // outlives health_server_
  std::unique_ptr<grpc::Server> health_server_;                    // null without --health_listen
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::vector<std::string> bound_addresses_;
  std::string metrics_address_;
  std::string health_address_;
  absl::Notification stop_ticking_;
  std::thread ticker_;
  bool shut_down_ = false;
};

// `iommud --check_state`: reads the store in options.state.kv.dir and
// restores it, without a journal, against the topology; prints on stdout what
// a start would restore (records per kind, mappings, repairs) or the first
// problem naming the record. Returns whether the store would start.
bool CheckState(const DaemonOptions& options);

}  // namespace iommu::server

#endif  // IOMMU_SERVER_DAEMON_H_
