// SPDX-License-Identifier: Apache-2.0
// iommud: the DMA address-translation authority, served over gRPC.
// Parses flags into the small Options structs of server/, starts the Daemon,
// and drains on SIGTERM/SIGINT. Nothing else lives here.

#include <signal.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/broker/broker_types.h"
#include "server/daemon.h"
#include "server/logging.h"

namespace {
const iommu::core::Quotas kDefaultQuotas;
const iommu::core::BrokerOptions kDefaultBroker;
const iommu::server::Limits kDefaultLimits;
}  // namespace

ABSL_FLAG(std::string, listen, "unix:/tmp/iommud.sock,127.0.0.1:50051",
          "gRPC listen addresses, comma-separated: unix:/path or host:port (port 0 = any)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9477",
          "host:port serving Prometheus /metrics; empty disables it");
ABSL_FLAG(std::string, health_listen, "",
          "host:port of a plaintext listener serving only grpc.health.v1.Health (the main "
          "server's status), for probes without TLS such as Kubernetes' gRPC probe; empty = off");
ABSL_FLAG(std::string, unix_socket_mode, "",
          "permission bits of every unix: listener, octal (0660: iommud's user and group may "
          "connect); empty = as created under the process umask");
ABSL_FLAG(std::string, topology, "",
          "host topology, an iommu.v1.Topology textproto file; empty = the built-in default host");
ABSL_FLAG(std::string, auth, "none",
          "client identity: none (trust the request's device; demos only, plaintext, loopback "
          "and unix: listeners only), token (bearer tokens from --token_file, over TLS) or mtls "
          "(client certificates verified against --tls_ca)");
ABSL_FLAG(std::string, token_file, "",
          "--auth=token: file of `<token> <device-name|admin>` lines, '#' comments; each token "
          "at least 16 characters, each device one of the topology");
ABSL_FLAG(std::string, tls_cert, "",
          "--auth=token and --auth=mtls: the server certificate (PEM); every listener serves TLS");
ABSL_FLAG(std::string, tls_key, "", "--auth=token and --auth=mtls: the server private key (PEM)");
ABSL_FLAG(std::string, tls_ca, "", "--auth=mtls: CA bundle that signs client certificates (PEM)");
ABSL_FLAG(bool, auth_none_allow_remote, false,
          "--auth=none: also listen on addresses other hosts can reach (not loopback, not unix:); "
          "every caller on the network is then trusted");
// Per-device quotas. A device's topology entry overrides them field by
// field; 0 means the fair share of the topology (see docs/security.md).
ABSL_FLAG(uint64_t, quota_mapped_bytes, kDefaultQuotas.max_mapped_bytes,
          "per-device quota: bytes mapped at once (a topology device's quotas override it)");
ABSL_FLAG(uint64_t, quota_mappings, kDefaultQuotas.max_mappings, "per-device quota: live mappings");
ABSL_FLAG(uint64_t, quota_buffers, kDefaultQuotas.max_buffers, "per-device quota: live buffers");
ABSL_FLAG(uint64_t, quota_buffer_bytes, kDefaultQuotas.max_buffer_bytes,
          "per-device quota: bytes of buffers held; 0 = a fair share, the pools' RAM divided by "
          "the number of devices");
ABSL_FLAG(uint64_t, quota_domains, kDefaultQuotas.max_domains,
          "per-device quota: domains a device creates; 0 = a fair share of its SMMU's contexts "
          "(those left after every device's default domain, split evenly)");
ABSL_FLAG(uint64_t, quota_sessions, kDefaultQuotas.max_sessions, "per-device quota: open sessions");
ABSL_FLAG(uint64_t, quota_exports, kDefaultQuotas.max_exports,
          "per-device quota: live export tokens (GetSgTable with export) of its memory");
// Limits (docs/design.md#limits): each checked before any work, a request
// beyond one refused naming the flag and its value.
ABSL_FLAG(uint32_t, max_message_bytes, kDefaultLimits.max_message_bytes,
          "limit: bytes of one gRPC message, each way; every reply is guaranteed to fit (the "
          "SDKs receive up to this much)");
ABSL_FLAG(uint32_t, max_batch_ops, kDefaultLimits.max_batch_ops,
          "limit: operations in one Batch message, a MapSg counting one more per segment");
ABSL_FLAG(uint32_t, max_sg_segments, kDefaultLimits.max_sg_segments,
          "limit: segments of one MapSg");
ABSL_FLAG(uint32_t, max_translate_accesses, kDefaultLimits.max_translate_accesses,
          "limit: accesses of one TranslateBatch");
ABSL_FLAG(uint32_t, max_buffer_runs, kDefaultLimits.max_buffer_runs,
          "limit: physical runs of one buffer (AllocBuffer, Alloc), which every reply describing "
          "it lists (a SCATTERED buffer has one per 4 KiB page)");
ABSL_FLAG(uint32_t, max_string_bytes, kDefaultLimits.max_string_bytes,
          "limit: bytes of any string field of a request (names, tokens, request ids)");
ABSL_FLAG(uint32_t, max_streams_per_connection, kDefaultLimits.max_streams_per_connection,
          "limit: calls open at once on one connection (HTTP/2 max concurrent streams); more "
          "wait in the client");
ABSL_FLAG(uint32_t, max_streams_per_device, kDefaultLimits.max_streams_per_device,
          "limit: Batch and WatchFaults streams open at once acting as one device (or the "
          "admin), over all connections");
ABSL_FLAG(uint32_t, max_watchers_per_device, kDefaultLimits.max_watchers_per_device,
          "limit: WatchFaults streams open at once acting as one device (or the admin), each "
          "also holding one of its --max_streams_per_device slots");
ABSL_FLAG(absl::Duration, session_ttl, absl::Seconds(30),
          "session lease when OpenSession asks for ttl_ms 0");
ABSL_FLAG(uint32_t, fq_size, kDefaultBroker.flush_queue_capacity,
          "DMA_FQ domains: invalidations queued before a forced flush");
ABSL_FLAG(absl::Duration, fq_timeout, kDefaultBroker.flush_queue_timeout,
          "DMA_FQ domains: longest an invalidation stays queued");
ABSL_FLAG(uint32_t, fault_ring_size, kDefaultBroker.fault_ring_capacity,
          "fault records kept for WatchFaults before the oldest is overwritten (and counted)");
ABSL_FLAG(std::string, log_level, "info",
          "trace, debug (access lines), info (failed calls), warning, error, critical, off");
ABSL_FLAG(std::string, log_format, "text", "text or json (one JSON object per line)");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(10),
          "on SIGTERM/SIGINT: how long in-flight calls may take before they are cancelled");

ABSL_FLAG(std::string, state_dir, "/var/lib/iommud",
          "directory of the durable state store (created 0700); everything acknowledged "
          "survives a restart or crash of iommud");
ABSL_FLAG(std::string, store_engine, "lmdb",
          "embedded database of the state store: lmdb, "
          "sqlite or rocksdb (a directory keeps the engine that created it)");
ABSL_FLAG(std::string, durability, "process",
          "process: an acknowledged change survives a crash or kill of iommud; power: it "
          "also survives power loss (synced to disk before the reply; concurrent calls share "
          "one sync)");
ABSL_FLAG(uint64_t, store_max_bytes, uint64_t{16} << 30,
          "lmdb: the most the store may grow to (address space, not memory); a start may "
          "raise it");
ABSL_FLAG(absl::Duration, request_id_window, absl::Minutes(10),
          "how long the reply of a call made under an iommu-request-id is remembered, so a "
          "retry of it (after a restart too) is answered instead of applied again");
ABSL_FLAG(uint64_t, request_ids_per_client, 4096,
          "the most request ids remembered per identity (oldest evicted first)");
ABSL_FLAG(bool, no_store, false,
          "run without durable state: a restart forgets every domain, buffer and mapping "
          "(tests and throwaway demos only; warned about on stderr)");
ABSL_FLAG(bool, check_state, false,
          "check the store in --state_dir against --topology without serving it: prints what "
          "a start would restore (or the first problem, naming the record) and exits 0 or 1");

namespace {

using iommu::server::AuthMode;
using iommu::server::DaemonOptions;
using iommu::server::LogFormat;
using iommu::server::LogOptions;

int Fail(const std::string& message) {
  std::fprintf(stderr, "iommud: %s\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "server/main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.version_string = [] { return std::string("iommud " IOMMU_VERSION "\n"); };
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "the single authority for DMA address translation on a host, served over gRPC.\n"
      "Usage: iommud [--listen=ADDR[,ADDR]] [--metrics_listen=HOST:PORT] [--topology=FILE]\n"
      "              [--auth=none|token|mtls ...]   (every flag has a default; plain `iommud` "
      "runs)\n"
      "  --auth=token needs --token_file, --tls_cert and --tls_key; --auth=mtls needs --tls_cert,\n"
      "  --tls_key and --tls_ca; --health_listen=HOST:PORT adds a plaintext health-only port.");
  absl::ParseCommandLine(argc, argv);
  // Debian's abseil is built without NDEBUG, so every Mutex acquisition would
  // also record the lock in a process-wide graph under one global spinlock
  // (docs/performance.md#broker). The lock order (core/broker/broker.h) is checked
  // by the tests, which keep the detector, and by the TSan and clang
  // thread-safety builds; the daemon runs without it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  LogOptions log{.level = absl::GetFlag(FLAGS_log_level)};
  const std::string log_format = absl::GetFlag(FLAGS_log_format);
  if (log_format == "json") {
    log.format = LogFormat::kJson;
  } else if (log_format != "text") {
    return Fail(absl::StrCat("log_format=\"", log_format, "\": must be text or json"));
  }
  if (absl::Status s = iommu::server::InitLogging(log); !s.ok()) return Fail(s.ToString());

  DaemonOptions options;
  options.listen.grpc_addresses =
      absl::StrSplit(absl::GetFlag(FLAGS_listen), ',', absl::SkipWhitespace());
  options.listen.metrics_address = absl::GetFlag(FLAGS_metrics_listen);
  options.listen.health_address = absl::GetFlag(FLAGS_health_listen);
  if (const std::string mode = absl::GetFlag(FLAGS_unix_socket_mode); !mode.empty()) {
    if (mode.size() < 3 || mode.size() > 4 || mode.find_first_not_of("01234567") != mode.npos ||
        (mode.size() == 4 && mode[0] != '0')) {
      return Fail(absl::StrCat("unix_socket_mode=\"", mode,
                               "\": must be octal permission bits such as 0660"));
    }
    options.listen.unix_socket_mode = static_cast<uint32_t>(std::stoul(mode, nullptr, 8));
  }
  options.topology_file = absl::GetFlag(FLAGS_topology);
  const std::string auth = absl::GetFlag(FLAGS_auth);
  if (auth == "none") {
    options.auth.mode = AuthMode::kNone;
  } else if (auth == "token") {
    options.auth.mode = AuthMode::kToken;
  } else if (auth == "mtls") {
    options.auth.mode = AuthMode::kMtls;
  } else {
    return Fail(absl::StrCat("auth=\"", auth, "\": must be none, token or mtls"));
  }
  options.auth.token_file = absl::GetFlag(FLAGS_token_file);
  options.auth.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.auth.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.auth.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  options.auth.none_allow_remote = absl::GetFlag(FLAGS_auth_none_allow_remote);
  options.broker.default_quotas = {.max_mapped_bytes = absl::GetFlag(FLAGS_quota_mapped_bytes),
                                   .max_mappings = absl::GetFlag(FLAGS_quota_mappings),
                                   .max_buffers = absl::GetFlag(FLAGS_quota_buffers),
                                   .max_buffer_bytes = absl::GetFlag(FLAGS_quota_buffer_bytes),
                                   .max_domains = absl::GetFlag(FLAGS_quota_domains),
                                   .max_sessions = absl::GetFlag(FLAGS_quota_sessions),
                                   .max_exports = absl::GetFlag(FLAGS_quota_exports)};
  options.limits = {.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes),
                    .max_batch_ops = absl::GetFlag(FLAGS_max_batch_ops),
                    .max_sg_segments = absl::GetFlag(FLAGS_max_sg_segments),
                    .max_translate_accesses = absl::GetFlag(FLAGS_max_translate_accesses),
                    .max_buffer_runs = absl::GetFlag(FLAGS_max_buffer_runs),
                    .max_string_bytes = absl::GetFlag(FLAGS_max_string_bytes),
                    .max_streams_per_connection = absl::GetFlag(FLAGS_max_streams_per_connection),
                    .max_streams_per_device = absl::GetFlag(FLAGS_max_streams_per_device),
                    .max_watchers_per_device = absl::GetFlag(FLAGS_max_watchers_per_device)};
  if (options.limits.max_message_bytes > (1u << 30)) {
    return Fail("max_message_bytes: at most 1 GiB");
  }
  options.broker.flush_queue_capacity = absl::GetFlag(FLAGS_fq_size);
  options.broker.flush_queue_timeout = absl::GetFlag(FLAGS_fq_timeout);
  options.broker.fault_ring_capacity = absl::GetFlag(FLAGS_fault_ring_size);
  options.broker.requests.window = absl::GetFlag(FLAGS_request_id_window);
  options.broker.requests.max_per_principal = absl::GetFlag(FLAGS_request_ids_per_client);
  if (options.broker.requests.window <= absl::ZeroDuration()) {
    return Fail("request_id_window: must be positive");
  }
  if (options.broker.requests.max_per_principal == 0) {
    return Fail("request_ids_per_client: must be at least 1");
  }
  options.session_ttl = absl::GetFlag(FLAGS_session_ttl);
  options.drain_timeout = absl::GetFlag(FLAGS_drain_timeout);
  if (options.session_ttl <= absl::ZeroDuration()) {
    return Fail("session_ttl: must be positive");
  }
  options.state.enabled = !absl::GetFlag(FLAGS_no_store);
  options.state.kv.dir = absl::GetFlag(FLAGS_state_dir);
  options.state.kv.lmdb_map_size_bytes = absl::GetFlag(FLAGS_store_max_bytes);
  if (options.state.kv.lmdb_map_size_bytes < (uint64_t{1} << 20)) {
    return Fail("store_max_bytes: must be at least 1 MiB");
  }
  const std::string engine = absl::GetFlag(FLAGS_store_engine);
  if (auto e = iommu::store::ParseKvEngine(engine)) {
    options.state.kv.engine = *e;
  } else {
    return Fail(absl::StrCat("store_engine=\"", engine, "\": must be lmdb, sqlite or rocksdb"));
  }
  const std::string durability = absl::GetFlag(FLAGS_durability);
  if (durability == "process") {
    options.state.kv.durability = iommu::store::Durability::kProcessCrash;
  } else if (durability == "power") {
    options.state.kv.durability = iommu::store::Durability::kPowerLoss;
  } else {
    return Fail(absl::StrCat("durability=\"", durability, "\": must be process or power"));
  }
  if (options.state.enabled && options.state.kv.dir.empty()) {
    return Fail("state_dir: empty; name a directory, or run with --no_store");
  }
  if (absl::GetFlag(FLAGS_check_state)) {
    return iommu::server::CheckState(options) ? 0 : 1;
  }

  // Signals are taken synchronously by this thread: block them before any
  // other thread starts, so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<iommu::server::Daemon>> daemon =
      iommu::server::Daemon::Start(options);
  if (!daemon.ok()) {
    iommu::server::LogError("start_failed", daemon.status().ToString());
    return 1;
  }
  if (!options.state.enabled) {
    const std::string warning =
        "--no_store: nothing is durable; a restart or crash of iommud forgets every domain, "
        "buffer and mapping while devices may still use their DMA addresses.";
    std::fprintf(stderr, "iommud: WARNING: %s\n", warning.c_str());
    std::fflush(stderr);
    iommu::server::LogWarning("NO_STORE", warning);
  }
  if (options.auth.mode == AuthMode::kNone) {
    // On stderr whatever --log_level says, and in the structured log.
    const std::string warning = absl::StrCat(
        "--auth=none: every caller is trusted to name its device, and a request with an empty "
        "device acts as the ADMIN. For demos only; use --auth=token or --auth=mtls.",
        options.auth.none_allow_remote
            ? " --auth_none_allow_remote: callers on other hosts are trusted too."
            : "");
    std::fprintf(stderr, "iommud: INSECURE: %s\n", warning.c_str());
    std::fflush(stderr);
    iommu::server::LogWarning("INSECURE", warning);
  }
  const iommu::server::Daemon& d = **daemon;
  iommu::server::LogInfo(
      "serving", absl::StrCat("grpc=", absl::StrJoin(d.grpc_addresses(), ","), " metrics=",
                              d.metrics_address().empty()
                                  ? "off"
                                  : absl::StrCat("http://", d.metrics_address(), "/metrics"),
                              " health=", d.health_address().empty() ? "off" : d.health_address(),
                              " auth=", iommu::server::AuthModeName(options.auth.mode)));

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  iommu::server::LogInfo("signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  const absl::Status drained = (*daemon)->Shutdown();
  if (!drained.ok()) {
    iommu::server::LogWarning("drain", drained.ToString());
    return 1;
  }
  return 0;
}
