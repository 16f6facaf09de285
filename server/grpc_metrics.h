// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_GRPC_METRICS_H_
#define IOMMU_SERVER_GRPC_METRICS_H_

// The server-side gRPC metrics of go-grpc-prometheus, with its names, labels
// (grpc_type, grpc_service, grpc_method, grpc_code) and code spellings, so
// existing gRPC dashboards work unchanged:
//   grpc_server_started_total, grpc_server_handled_total,
//   grpc_server_handling_seconds (histogram), grpc_server_msg_received_total,
//   grpc_server_msg_sent_total.
//
// Layout and cost: one cache-line-aligned block of relaxed atomic counters per
// method (the method set is fixed at compile time), every (method, code)
// series pre-created, so the hot path is a handful of uncontended
// fetch_adds and a bucket search over 19 bounds: no lock, no map lookup, no
// allocation. Collect() reads the atomics at scrape time.
//
// Thread-safe.

#include <array>
#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "server/services.h"

namespace iommu::server {

enum class RpcType { kUnary, kServerStream, kBidiStream };

// Every RPC of iommu.v1, in proto order.
enum class Method : int {
  // iommu.v1.Dma
  kMap,
  kUnmap,
  kMapSg,
  kUnmapSg,
  kAlloc,
  kFree,
  kGetSgTable,
  kRevokeExport,
  kMsiCookie,
  kMapAt,
  kUnmapRange,
  kSync,
  kBatch,
  // iommu.v1.Memory
  kAllocBuffer,
  kFreeBuffer,
  kGetBuffer,
  // iommu.v1.Domains
  kCreateDomain,
  kDestroyDomain,
  kGetDomain,
  kListDomains,
  kAttachDevice,
  kDetachDevice,
  kGetIovaRanges,
  kWalkDomain,
  // iommu.v1.Devices
  kListIommus,
  kListDevices,
  kTranslate,
  kTranslateBatch,
  kWatchFaults,
  // iommu.v1.Sessions
  kOpenSession,
  kKeepAlive,
  kCloseSession,
  // iommu.v1.Stats
  kGetStats,
};
inline constexpr int kNumMethods = int(Method::kGetStats) + 1;

struct MethodInfo {
  const char* service;  // "iommu.v1.Dma"
  const char* method;   // "Map"
  RpcType type;
};
const MethodInfo& Describe(Method method);

class GrpcMetrics final : public prometheus::Collectable {
 public:
  // Upper bounds of grpc_server_handling_seconds, in seconds (10 µs .. 10 s).
  static constexpr std::array<double, 19> kLatencyBoundsSeconds = {
      0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
      0.025,   0.05,     0.1,     0.25,   0.5,     1,      2.5,   5,      10};

  GrpcMetrics();

  void Started(Method m) { Block(m).started.fetch_add(1, std::memory_order_relaxed); }
  void Received(Method m, uint64_t n = 1) {
    Block(m).received.fetch_add(n, std::memory_order_relaxed);
  }
  void Sent(Method m, uint64_t n = 1) { Block(m).sent.fetch_add(n, std::memory_order_relaxed); }
  void Handled(Method m, absl::StatusCode code, int64_t elapsed_ns);

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  static constexpr int kNumCodes = 17;
  struct alignas(64) MethodBlock {
    std::atomic<uint64_t> started{0}, received{0}, sent{0};
    std::array<std::atomic<uint64_t>, kNumCodes> handled{};
    // Non-cumulative: bucket i counts latencies <= bound i (and > bound i-1);
    // the last counts those above every bound.
    std::array<std::atomic<uint64_t>, kLatencyBoundsSeconds.size() + 1> latency{};
    std::atomic<uint64_t> latency_sum_ns{0};
  };
  MethodBlock& Block(Method m) { return blocks_[int(m)]; }

  std::array<int64_t, kLatencyBoundsSeconds.size()> bounds_ns_{};
  std::array<MethodBlock, kNumMethods> blocks_;
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_GRPC_METRICS_H_
