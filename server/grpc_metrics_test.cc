// SPDX-License-Identifier: Apache-2.0
#include "server/grpc_metrics.h"

#include <gtest/gtest.h>

#include <string>

#include "server/metrics_test_util.h"

namespace iommu::server {
namespace {

using testing::FamilyNamed;

std::string Label(const prometheus::ClientMetric& m, const std::string& name) {
  for (const auto& l : m.label) {
    if (l.name == name) return l.value;
  }
  return "";
}

TEST(GrpcMetricsTest, EverySeriesExistsFromStartUp) {
  GrpcMetrics metrics;
  const auto families = metrics.Collect();
  EXPECT_EQ(FamilyNamed(families, "grpc_server_started_total").metric.size(), size_t(kNumMethods));
  EXPECT_EQ(FamilyNamed(families, "grpc_server_msg_received_total").metric.size(),
            size_t(kNumMethods));
  EXPECT_EQ(FamilyNamed(families, "grpc_server_msg_sent_total").metric.size(), size_t(kNumMethods));
  EXPECT_EQ(FamilyNamed(families, "grpc_server_handling_seconds").metric.size(),
            size_t(kNumMethods));
  // Every code for every method, as go-grpc-prometheus pre-registers them.
  const auto& handled = FamilyNamed(families, "grpc_server_handled_total");
  EXPECT_EQ(handled.metric.size(), size_t(kNumMethods) * 17);
  int ok_series = 0;
  for (const auto& m : handled.metric) ok_series += Label(m, "grpc_code") == "OK";
  EXPECT_EQ(ok_series, kNumMethods);
}

TEST(GrpcMetricsTest, CountsLandOnTheirMethodCodeAndBucket) {
  GrpcMetrics metrics;
  metrics.Started(Method::kMap);
  metrics.Received(Method::kMap);
  metrics.Sent(Method::kMap);
  metrics.Handled(Method::kMap, absl::StatusCode::kOk, 7'000);                 // 7 µs
  metrics.Handled(Method::kMap, absl::StatusCode::kNotFound, 300'000);         // 300 µs
  metrics.Handled(Method::kMap, absl::StatusCode::kNotFound, 20'000'000'000);  // 20 s
  const auto families = metrics.Collect();
  for (const auto& m : FamilyNamed(families, "grpc_server_handled_total").metric) {
    const bool map = Label(m, "grpc_method") == "Map";
    const std::string code = Label(m, "grpc_code");
    const double want = !map ? 0 : code == "OK" ? 1 : code == "NotFound" ? 2 : 0;
    EXPECT_EQ(m.counter.value, want) << Label(m, "grpc_method") << " " << code;
    EXPECT_EQ(Label(m, "grpc_type"), Label(m, "grpc_method") == "Batch"         ? "bidi_stream"
                                     : Label(m, "grpc_method") == "WatchFaults" ? "server_stream"
                                                                                : "unary");
  }
  for (const auto& m : FamilyNamed(families, "grpc_server_handling_seconds").metric) {
    if (Label(m, "grpc_method") != "Map") {
      EXPECT_EQ(m.histogram.sample_count, 0u);
      continue;
    }
    EXPECT_EQ(Label(m, "grpc_service"), "iommu.v1.Dma");
    EXPECT_EQ(m.histogram.sample_count, 3u);
    EXPECT_NEAR(m.histogram.sample_sum, 20.000307, 1e-9);
    // Cumulative: le=1e-5 holds the 7 µs call, le=5e-4 the 300 µs one too,
    // only +Inf the 20 s one.
    for (const auto& b : m.histogram.bucket) {
      const uint64_t want = b.upper_bound < 7e-6   ? 0
                            : b.upper_bound < 3e-4 ? 1
                            : b.upper_bound < 20   ? 2
                                                   : 3;
      EXPECT_EQ(b.cumulative_count, want) << b.upper_bound;
    }
  }
  for (const char* name : {"grpc_server_started_total", "grpc_server_msg_received_total",
                           "grpc_server_msg_sent_total"}) {
    for (const auto& m : FamilyNamed(families, name).metric) {
      EXPECT_EQ(m.counter.value, Label(m, "grpc_method") == "Map" ? 1 : 0) << name;
    }
  }
}

}  // namespace
}  // namespace iommu::server
