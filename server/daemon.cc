// SPDX-License-Identifier: Apache-2.0
#include "server/daemon.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/base/errors.h"
#include "prometheus/exposer.h"
#include "server/broker_metrics.h"
#include "server/devices_service.h"
#include "server/dma_service.h"
#include "server/logging.h"
#include "server/resource_services.h"
#include "server/topology_loader.h"

namespace iommu::server {
namespace {

constexpr absl::Duration kShutdownGrace = absl::Milliseconds(500);

// Removes a stale socket left by a previous run (never any other file).
absl::Status PrepareUnixSocket(absl::string_view flag, const std::string& address) {
  const std::string path = address.substr(5);
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return absl::OkStatus();
  if (!S_ISSOCK(st.st_mode)) {
    return core::FieldError(absl::StatusCode::kAlreadyExists, flag, address,
                            "the path exists and is not a socket");
  }
  unlink(path.c_str());
  return absl::OkStatus();
}

// Gives a bound Unix socket the mode of --unix_socket_mode (gRPC creates it
// under the process umask).
absl::Status SetSocketMode(const std::string& address, std::optional<uint32_t> mode) {
  if (!mode.has_value()) return absl::OkStatus();
  const std::string path = address.substr(5);
  if (chmod(path.c_str(), *mode) != 0) {
    return core::FieldError(absl::StatusCode::kPermissionDenied, "unix_socket_mode",
                            absl::StrFormat("%04o", *mode),
                            absl::StrCat("cannot chmod ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

void SetServing(grpc::Server* server, bool serving) {
  if (server == nullptr) return;
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus("", serving);
  for (const char* service : ServiceNames()) health->SetServingStatus(service, serving);
}

// "host:port" with the port the server bound (unix: addresses unchanged).
std::string BoundAddress(const std::string& address, int port) {
  if (absl::StartsWith(address, "unix:")) return address;
  return absl::StrCat(address.substr(0, address.rfind(':')), ":", port);
}

// Drops every builder plugin (server reflection), so that the server serves
// only its registered services and the default health service.
class NoPluginsOption final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->clear();
  }
};

// --auth=none trusts every caller: refuse listeners other hosts can reach
// unless the operator forced it.
absl::Status CheckUnauthenticatedListeners(const DaemonOptions& options) {
  if (options.auth.mode != AuthMode::kNone || options.auth.none_allow_remote) {
    return absl::OkStatus();
  }
  for (const std::string& address : options.listen.grpc_addresses) {
    if (!IsLocalListenAddress(address)) {
      return core::FieldError(
          absl::StatusCode::kInvalidArgument, "listen", address,
          "is reachable from other hosts, and --auth=none trusts every caller: listen on "
          "unix:, 127.0.0.1 or [::1], use --auth=token or --auth=mtls, or force it with "
          "--auth_none_allow_remote");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const DaemonOptions& options) {
  std::unique_ptr<Daemon> d(new Daemon());
  d->options_ = options;
  HeapTrimmer::ConfigureAllocator();
  if (options.listen.grpc_addresses.empty()) {
    return core::FieldError(absl::StatusCode::kInvalidArgument, "listen", "",
                            "needs at least one address");
  }
  if (absl::Status s = CheckUnauthenticatedListeners(options); !s.ok()) return s;
  if (absl::Status s =
          ValidateLimits(options.limits, options.state.enabled ? store::kMaxValueBytes : 0);
      !s.ok()) {
    return s;
  }

  absl::StatusOr<core::Topology> topology = LoadTopology(options.topology_file);
  if (!topology.ok()) return topology.status();
  // The topology is checked before the store is opened, so that its errors
  // name the topology, and a store's name the store.
  if (absl::Status s = core::ValidateTopology(*topology); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("topology: ", s.message()));
  }
  absl::StatusOr<std::unique_ptr<core::Broker>> broker;
  if (options.state.enabled) {
    const absl::Time start = absl::Now();
    core::DurableState state;
    absl::StatusOr<std::unique_ptr<store::StateStore>> store = store::StateStore::Open(
        {.kv = options.state.kv,
         .written_by = "iommud " IOMMU_VERSION,
         .on_fatal = [](const absl::Status& s) { LogError("store_failed", s.ToString()); }},
        &state, &d->recovery_);
    if (!store.ok()) {
      return absl::Status(store.status().code(),
                          absl::StrCat("state_dir: ", store.status().message()));
    }
    d->store_ = *std::move(store);
    core::BrokerOptions broker_options = options.broker;
    broker_options.max_buffer_runs = options.limits.max_buffer_runs;
    broker_options.journal = d->store_.get();
    broker =
        core::Broker::Restore(*topology, broker_options, std::move(state), &d->restore_report_);
    d->recovery_time_ = absl::Now() - start;
    if (broker.ok()) {
      for (const std::string& note : d->restore_report_.notes)
        LogWarning("restore_completed", note);
      LogInfo("state_restored",
              absl::StrCat(
                  "state_dir=", options.state.kv.dir,
                  " engine=", store::KvEngineName(options.state.kv.engine), " durability=",
                  options.state.kv.durability == store::Durability::kPowerLoss ? "power_loss"
                                                                               : "process_crash",
                  " fresh=", d->recovery_.fresh ? "true" : "false",
                  " records=", d->recovery_.records, " mappings=", d->restore_report_.mappings,
                  " completed=", d->restore_report_.completed,
                  " seconds=", absl::ToDoubleSeconds(d->recovery_time_)));
    }
  } else {
    core::BrokerOptions broker_options = options.broker;
    broker_options.max_buffer_runs = options.limits.max_buffer_runs;
    broker = core::Broker::Create(*topology, broker_options);
  }
  if (!broker.ok()) {
    return absl::Status(broker.status().code(),
                        absl::StrCat(options.state.enabled ? "state_dir: " : "topology: ",
                                     broker.status().message()));
  }
  d->broker_ = *std::move(broker);
  absl::flat_hash_set<std::string> devices;
  for (const core::DeviceConfig& device : topology->devices) devices.insert(device.name);
  absl::StatusOr<std::unique_ptr<Authenticator>> auth =
      Authenticator::Create(options.auth, devices);
  if (!auth.ok()) return auth.status();
  d->auth_ = *std::move(auth);
  d->grpc_metrics_ = std::make_shared<GrpcMetrics>();
  d->scanner_ = std::make_unique<RequestScanner>(options.limits, devices.size());
  d->stream_limiter_ =
      std::make_unique<StreamLimiter>(options.limits.max_streams_per_device, devices);
  d->watcher_limiter_ =
      std::make_unique<StreamLimiter>(options.limits.max_watchers_per_device, devices,
                                      "max_watchers_per_device", "WatchFaults streams");
  d->fault_dispatcher_ = std::make_unique<FaultDispatcher>(d->broker_.get());

  const ServiceEnv env{.broker = d->broker_.get(),
                       .auth = d->auth_.get(),
                       .metrics = d->grpc_metrics_.get(),
                       .streams = &d->streams_,
                       .default_session_ttl = options.session_ttl,
                       .limits = &d->options_.limits,
                       .scanner = d->scanner_.get(),
                       .stream_limiter = d->stream_limiter_.get(),
                       .watcher_limiter = d->watcher_limiter_.get(),
                       .faults = d->fault_dispatcher_.get(),
                       .trimmer = &d->trimmer_};
  d->services_.push_back(std::make_unique<DmaService>(env));
  d->services_.push_back(std::make_unique<MemoryService>(env));
  d->services_.push_back(std::make_unique<DomainsService>(env));
  d->services_.push_back(std::make_unique<DevicesService>(env));
  d->services_.push_back(std::make_unique<SessionsService>(env));
  d->services_.push_back(std::make_unique<StatsService>(env));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // docs/design.md#limits: a message each way, and the streams (calls) one
  // connection may have open at once, advertised in its HTTP/2 settings.
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.limits.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.limits.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             static_cast<int>(options.limits.max_streams_per_connection));
  const std::shared_ptr<grpc::ServerCredentials> credentials = d->auth_->ServerCredentials();
  std::vector<int> ports(options.listen.grpc_addresses.size(), 0);
  for (size_t i = 0; i < options.listen.grpc_addresses.size(); ++i) {
    const std::string& address = options.listen.grpc_addresses[i];
    if (absl::StartsWith(address, "unix:")) {
      absl::Status prepared = PrepareUnixSocket("listen", address);
      if (!prepared.ok()) return prepared;
    }
    builder.AddListeningPort(address, credentials, &ports[i]);
  }
  for (const auto& service : d->services_) builder.RegisterService(service.get());
  // gRPC reports a certificate its TLS library rejects (a key that does not
  // match it, say) only as a listener it could not start.
  const std::string cannot_bind =
      d->auth_->mode() == AuthMode::kNone
          ? "cannot bind (address in use or not permitted?)"
          : "cannot bind (address in use or not permitted, or --tls_cert and --tls_key not a "
            "matching certificate and key?)";
  d->server_ = builder.BuildAndStart();
  if (d->server_ == nullptr) {
    return core::FieldError(absl::StatusCode::kUnavailable, "listen",
                            absl::StrJoin(options.listen.grpc_addresses, ","), cannot_bind);
  }
  for (size_t i = 0; i < options.listen.grpc_addresses.size(); ++i) {
    const std::string& address = options.listen.grpc_addresses[i];
    if (ports[i] == 0) {
      return core::FieldError(absl::StatusCode::kUnavailable, "listen", address, cannot_bind);
    }
    d->bound_addresses_.push_back(BoundAddress(address, ports[i]));
    if (absl::StartsWith(address, "unix:")) {
      absl::Status mode = SetSocketMode(address, options.listen.unix_socket_mode);
      if (!mode.ok()) return mode;
    }
  }

  if (!options.listen.health_address.empty()) {
    const std::string& address = options.listen.health_address;
    if (absl::StartsWith(address, "unix:")) {
      absl::Status prepared = PrepareUnixSocket("health_listen", address);
      if (!prepared.ok()) return prepared;
    }
    grpc::ServerBuilder health;
    health.SetOption(std::make_unique<NoPluginsOption>());
    // Every method but the health service's answers UNIMPLEMENTED (the
    // generic service's default); it also gives gRPC the callback queue a
    // server needs before it adds the default health service.
    d->health_fallback_ = std::make_unique<grpc::CallbackGenericService>();
    health.RegisterCallbackGenericService(d->health_fallback_.get());
    int port = 0;
    health.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
    d->health_server_ = health.BuildAndStart();
    if (d->health_server_ == nullptr || port == 0) {
      return core::FieldError(absl::StatusCode::kUnavailable, "health_listen", address,
                              "cannot bind (address in use or not permitted?)");
    }
    d->health_address_ = BoundAddress(address, port);
    if (absl::StartsWith(address, "unix:")) {
      absl::Status mode = SetSocketMode(address, options.listen.unix_socket_mode);
      if (!mode.ok()) return mode;
    }
  }
  SetServing(d->server_.get(), true);
  SetServing(d->health_server_.get(), true);

  if (!options.listen.metrics_address.empty()) {
    d->broker_collector_ = std::make_shared<BrokerCollector>(d->broker_.get());
    d->process_collector_ = std::make_shared<ProcessCollector>();
    // prometheus-cpp reports a failed bind by throwing; this is the only
    // exception we catch, at the edge, and it becomes a Status.
    try {
      d->exposer_ = std::make_unique<prometheus::Exposer>(options.listen.metrics_address);
    } catch (const std::exception& e) {
      return core::FieldError(absl::StatusCode::kUnavailable, "metrics_listen",
                              options.listen.metrics_address, e.what());
    }
    d->exposer_->RegisterCollectable(d->grpc_metrics_);
    d->exposer_->RegisterCollectable(d->broker_collector_);
    if (d->store_ != nullptr) {
      d->store_collector_ = std::make_shared<StoreCollector>(
          d->store_.get(),
          StoreCollector::Recovery{.seconds = absl::ToDoubleSeconds(d->recovery_time_),
                                   .records = d->recovery_.records,
                                   .mappings = d->restore_report_.mappings,
                                   .completed = d->restore_report_.completed});
      d->exposer_->RegisterCollectable(d->store_collector_);
    }
    d->exposer_->RegisterCollectable(d->process_collector_);
    const std::vector<int> metrics_ports = d->exposer_->GetListeningPorts();
    const std::string& m = options.listen.metrics_address;
    d->metrics_address_ =
        metrics_ports.empty() ? m : absl::StrCat(m.substr(0, m.rfind(':')), ":", metrics_ports[0]);
  }

  d->fault_dispatcher_->Start();
  d->ticker_ = std::thread(&Daemon::TickLoop, d.get());
  return d;
}

Daemon::~Daemon() { (void)Shutdown(); }

void Daemon::TickLoop() {
  while (!stop_ticking_.WaitForNotificationWithTimeout(options_.tick_interval)) {
    trimmer_.MaybeTrim();
    const int released = broker_->Tick();
    if (released > 0) {
      LogInfo("sessions_expired",
              absl::StrCat("count=", released, " (lease ran out; their resources were released)"));
    }
  }
}

absl::Status Daemon::Shutdown() {
  if (shut_down_ || server_ == nullptr) return absl::OkStatus();  // never started
  shut_down_ = true;
  const absl::Time deadline = absl::Now() + options_.drain_timeout;
  LogInfo("draining", absl::StrCat("streams=", streams_.size(),
                                   " deadline_s=", absl::ToDoubleSeconds(options_.drain_timeout)));
  SetServing(server_.get(), false);
  SetServing(health_server_.get(), false);
  // 1. End the streams (Batch between two requests, watchers at once) and
  //    wait for them, up to the deadline. Unary calls run to completion
  //    inline in their handlers, so they need no tracking.
  streams_.DrainAll();
  broker_->Shutdown();        // wakes the fault dispatcher's thread...
  fault_dispatcher_->Stop();  // ...which ends
  const bool streams_done = streams_.AwaitEmpty(deadline);
  // 2. Stop accepting. gRPC's Shutdown waits for every client channel to
  //    close after its GOAWAY, which an idle client may never do; the short
  //    grace bounds that, after which remaining calls are cancelled and the
  //    channels dropped.
  server_->Shutdown(absl::ToChronoTime(std::min(deadline, absl::Now() + kShutdownGrace)));
  server_->Wait();
  // Probes see NOT_SERVING for as long as the main server drains.
  if (health_server_ != nullptr) {
    health_server_->Shutdown(absl::ToChronoTime(absl::Now() + kShutdownGrace));
    health_server_->Wait();
  }
  stop_ticking_.Notify();
  if (ticker_.joinable()) ticker_.join();
  exposer_.reset();
  for (const std::string& address : bound_addresses_) {
    if (absl::StartsWith(address, "unix:")) unlink(address.substr(5).c_str());
  }
  if (absl::StartsWith(health_address_, "unix:")) unlink(health_address_.substr(5).c_str());
  const bool in_time = streams_done && absl::Now() <= deadline;
  LogInfo("stopped", in_time ? "drained=true" : "drained=false (deadline passed; calls cancelled)");
  if (!in_time) {
    return core::FieldError(absl::StatusCode::kDeadlineExceeded, "drain_timeout",
                            absl::FormatDuration(options_.drain_timeout),
                            "calls were still running and were cancelled");
  }
  return absl::OkStatus();
}

}  // namespace iommu::server

namespace iommu::server {

bool CheckState(const DaemonOptions& options) {
  auto fail = [](const absl::Status& s) {
    std::printf("state: NOT OK: %s\n", std::string(s.message()).c_str());
    return false;
  };
  absl::StatusOr<core::Topology> topology = LoadTopology(options.topology_file);
  if (!topology.ok()) return fail(topology.status());
  store::RecoveryInfo info;
  absl::StatusOr<core::DurableState> state = store::ReadStore(options.state.kv, &info);
  if (!state.ok()) return fail(state.status());
  core::RestoreReport report;
  absl::StatusOr<std::unique_ptr<core::Broker>> broker =
      core::Broker::Restore(*topology, options.broker, *state, &report);
  if (!broker.ok()) return fail(broker.status());
  (*broker)->CheckInvariants();
  std::printf(
      "state: OK: %s (%s, schema version %u, %llu bytes): %llu records in %.3f s: %zu domains, "
      "%zu attachments, %zu buffers, %zu exports, %zu sessions, %zu mappings; a start restores "
      "%llu mappings and completes %llu interrupted operations\n",
      options.state.kv.dir.c_str(),
      std::string(store::KvEngineName(options.state.kv.engine)).c_str(), info.schema_version,
      static_cast<unsigned long long>(info.size_bytes),
      static_cast<unsigned long long>(info.records), absl::ToDoubleSeconds(info.read_time),
      state->domains.size(), state->attachments.size(), state->buffers.size(),
      state->exports.size(), state->sessions.size(), state->mappings.size(),
      static_cast<unsigned long long>(report.mappings),
      static_cast<unsigned long long>(report.completed));
  for (const std::string& note : report.notes) std::printf("  completes: %s\n", note.c_str());
  return true;
}

}  // namespace iommu::server
