// SPDX-License-Identifier: Apache-2.0
#include "server/grpc_metrics.h"

#include <iterator>
#include <limits>
#include <string>

namespace iommu::server {
namespace {

constexpr MethodInfo kMethods[kNumMethods] = {
    {"iommu.v1.Dma", "Map", RpcType::kUnary},
    {"iommu.v1.Dma", "Unmap", RpcType::kUnary},
    {"iommu.v1.Dma", "MapSg", RpcType::kUnary},
    {"iommu.v1.Dma", "UnmapSg", RpcType::kUnary},
    {"iommu.v1.Dma", "Alloc", RpcType::kUnary},
    {"iommu.v1.Dma", "Free", RpcType::kUnary},
    {"iommu.v1.Dma", "GetSgTable", RpcType::kUnary},
    {"iommu.v1.Dma", "RevokeExport", RpcType::kUnary},
    {"iommu.v1.Dma", "MsiCookie", RpcType::kUnary},
    {"iommu.v1.Dma", "MapAt", RpcType::kUnary},
    {"iommu.v1.Dma", "UnmapRange", RpcType::kUnary},
    {"iommu.v1.Dma", "Sync", RpcType::kUnary},
    {"iommu.v1.Dma", "Batch", RpcType::kBidiStream},
    {"iommu.v1.Memory", "AllocBuffer", RpcType::kUnary},
    {"iommu.v1.Memory", "FreeBuffer", RpcType::kUnary},
    {"iommu.v1.Memory", "GetBuffer", RpcType::kUnary},
    {"iommu.v1.Domains", "CreateDomain", RpcType::kUnary},
    {"iommu.v1.Domains", "DestroyDomain", RpcType::kUnary},
    {"iommu.v1.Domains", "GetDomain", RpcType::kUnary},
    {"iommu.v1.Domains", "ListDomains", RpcType::kUnary},
    {"iommu.v1.Domains", "AttachDevice", RpcType::kUnary},
    {"iommu.v1.Domains", "DetachDevice", RpcType::kUnary},
    {"iommu.v1.Domains", "GetIovaRanges", RpcType::kUnary},
    {"iommu.v1.Domains", "WalkDomain", RpcType::kUnary},
    {"iommu.v1.Devices", "ListIommus", RpcType::kUnary},
    {"iommu.v1.Devices", "ListDevices", RpcType::kUnary},
    {"iommu.v1.Devices", "Translate", RpcType::kUnary},
    {"iommu.v1.Devices", "TranslateBatch", RpcType::kUnary},
    {"iommu.v1.Devices", "WatchFaults", RpcType::kServerStream},
    {"iommu.v1.Sessions", "OpenSession", RpcType::kUnary},
    {"iommu.v1.Sessions", "KeepAlive", RpcType::kUnary},
    {"iommu.v1.Sessions", "CloseSession", RpcType::kUnary},
    {"iommu.v1.Stats", "GetStats", RpcType::kUnary},
};

// grpc-go's codes.Code.String(), the grpc_code label of go-grpc-prometheus.
constexpr const char* kCodeNames[] = {
    "OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
    "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
    "DataLoss", "Unauthenticated"};
static_assert(std::size(kCodeNames) == 17);

const char* TypeName(RpcType type) {
  switch (type) {
    case RpcType::kUnary:
      return "unary";
    case RpcType::kServerStream:
      return "server_stream";
    case RpcType::kBidiStream:
      return "bidi_stream";
  }
  return "unary";
}

std::vector<prometheus::ClientMetric::Label> Labels(const MethodInfo& info) {
  return {{"grpc_method", info.method},
          {"grpc_service", info.service},
          {"grpc_type", TypeName(info.type)}};
}

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  family.metric.reserve(kNumMethods);
  return family;
}

}  // namespace

const MethodInfo& Describe(Method method) { return kMethods[int(method)]; }

GrpcMetrics::GrpcMetrics() {
  for (size_t i = 0; i < kLatencyBoundsSeconds.size(); ++i) {
    bounds_ns_[i] = static_cast<int64_t>(kLatencyBoundsSeconds[i] * 1e9 + 0.5);
  }
}

void GrpcMetrics::Handled(Method m, absl::StatusCode code, int64_t elapsed_ns) {
  MethodBlock& b = Block(m);
  const int c = static_cast<int>(code);
  b.handled[(c >= 0 && c < kNumCodes) ? c : int(absl::StatusCode::kUnknown)].fetch_add(
      1, std::memory_order_relaxed);
  size_t bucket = 0;
  while (bucket < bounds_ns_.size() && elapsed_ns > bounds_ns_[bucket]) ++bucket;
  b.latency[bucket].fetch_add(1, std::memory_order_relaxed);
  b.latency_sum_ns.fetch_add(static_cast<uint64_t>(elapsed_ns > 0 ? elapsed_ns : 0),
                             std::memory_order_relaxed);
}

std::vector<prometheus::MetricFamily> GrpcMetrics::Collect() const {
  using prometheus::MetricType;
  auto started = Family("grpc_server_started_total", "Total number of RPCs started on the server.",
                        MetricType::Counter);
  auto handled = Family("grpc_server_handled_total",
                        "Total number of RPCs completed on the server, regardless of success "
                        "or failure.",
                        MetricType::Counter);
  auto received =
      Family("grpc_server_msg_received_total",
             "Total number of RPC stream messages received on the server.", MetricType::Counter);
  auto sent =
      Family("grpc_server_msg_sent_total",
             "Total number of gRPC stream messages sent by the server.", MetricType::Counter);
  auto seconds = Family("grpc_server_handling_seconds",
                        "Histogram of response latency (seconds) of gRPC that had been "
                        "application-level handled by the server.",
                        MetricType::Histogram);
  for (int i = 0; i < kNumMethods; ++i) {
    const MethodBlock& b = blocks_[i];
    const auto labels = Labels(kMethods[i]);
    auto counter = [&](prometheus::MetricFamily& f, const std::atomic<uint64_t>& v) {
      prometheus::ClientMetric metric;
      metric.label = labels;
      metric.counter.value = static_cast<double>(v.load(std::memory_order_relaxed));
      f.metric.push_back(std::move(metric));
    };
    counter(started, b.started);
    counter(received, b.received);
    counter(sent, b.sent);
    for (int c = 0; c < kNumCodes; ++c) {
      prometheus::ClientMetric metric;
      metric.label = labels;
      metric.label.insert(metric.label.begin(), {"grpc_code", kCodeNames[c]});
      metric.counter.value = static_cast<double>(b.handled[c].load(std::memory_order_relaxed));
      handled.metric.push_back(std::move(metric));
    }
    prometheus::ClientMetric hist;
    hist.label = labels;
    uint64_t cumulative = 0;
    for (size_t k = 0; k < kLatencyBoundsSeconds.size(); ++k) {
      cumulative += b.latency[k].load(std::memory_order_relaxed);
      hist.histogram.bucket.push_back({cumulative, kLatencyBoundsSeconds[k]});
    }
    cumulative += b.latency.back().load(std::memory_order_relaxed);
    hist.histogram.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
    hist.histogram.sample_count = cumulative;
    hist.histogram.sample_sum =
        static_cast<double>(b.latency_sum_ns.load(std::memory_order_relaxed)) * 1e-9;
    seconds.metric.push_back(std::move(hist));
  }
  std::vector<prometheus::MetricFamily> out;
  out.push_back(std::move(started));
  out.push_back(std::move(handled));
  out.push_back(std::move(seconds));
  out.push_back(std::move(received));
  out.push_back(std::move(sent));
  return out;
}

}  // namespace iommu::server
