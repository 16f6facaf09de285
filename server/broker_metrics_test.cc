// SPDX-License-Identifier: Apache-2.0
#include "server/broker_metrics.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "core/broker/broker.h"
#include "core/broker/topology.h"
#include "server/metrics_test_util.h"

namespace iommu::server {
namespace {

using core::Caller;
using core::FaultType;
using core::Iova;

using testing::FamilyNamed;

// A series' labels as a map (absent labels are absent, not empty).
std::map<std::string, std::string> Labels(const prometheus::ClientMetric& m) {
  std::map<std::string, std::string> out;
  for (const auto& l : m.label) out[l.name] = l.value;
  return out;
}

class BrokerMetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto broker = core::Broker::Create(core::DefaultTopology());
    ASSERT_TRUE(broker.ok()) << broker.status();
    broker_ = *std::move(broker);
  }

  // A device access to an IOVA it has not mapped, as `device` sees it.
  void Fault(const std::string& device, uint64_t iova) {
    auto r = broker_->Translate(Caller::Device(device),
                                {.device = device, .iova = Iova(iova), .access = {}});
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE(r->faulted) << device;
  }

  // iommu_faults_total as {(device or "-", type): value}.
  std::map<std::pair<std::string, std::string>, double> Faults() {
    const BrokerCollector collector(broker_.get());
    std::map<std::pair<std::string, std::string>, double> out;
    const auto families = collector.Collect();
    const auto& faults = FamilyNamed(families, "iommu_faults_total");
    EXPECT_EQ(faults.type, prometheus::MetricType::Counter);
    for (const auto& m : faults.metric) {
      const auto labels = Labels(m);
      const auto device = labels.find("device");
      EXPECT_TRUE(labels.count("type")) << "a series without a type";
      const auto key = std::make_pair(device == labels.end() ? "-" : device->second,
                                      labels.count("type") ? labels.at("type") : "");
      EXPECT_TRUE(out.emplace(key, m.counter.value).second)
          << "two series for " << key.first << " " << key.second;
    }
    return out;
  }

  std::unique_ptr<core::Broker> broker_;
};

TEST_F(BrokerMetricsTest, FaultsAreLabelledByTheDeviceThatRaisedThem) {
  Fault("nic0", 0x1000);             // translation
  Fault("nic0", 0x2000);             // translation
  Fault("nic0", uint64_t{1} << 62);  // beyond the input address size
  Fault("tbt0", 0x1000);             // translation
  auto unknown = broker_->Translate(
      Caller::Admin(), {.smmu = "smmu0", .stream_id = 0xABC, .iova = Iova(0x1000), .access = {}});
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  ASSERT_EQ(unknown->fault_type, FaultType::kUnknownStream);

  const auto faults = Faults();
  EXPECT_EQ(faults.at({"nic0", "translation"}), 2);
  EXPECT_EQ(faults.at({"nic0", "address_size"}), 1);
  EXPECT_EQ(faults.at({"nic0", "permission"}), 0);
  EXPECT_EQ(faults.at({"tbt0", "translation"}), 1);
  EXPECT_EQ(faults.at({"gpu0", "translation"}), 0);
  // A fault of an unknown stream id names no device: one series, no device label.
  EXPECT_EQ(faults.at({"-", "unknown_stream"}), 1);

  // Every device of the topology has a series per type it can raise (not
  // unknown_stream), and nothing else exists: the topology bounds the series.
  std::set<std::pair<std::string, std::string>> want = {{"-", "unknown_stream"}};
  for (const core::DeviceConfig& d : core::DefaultTopology().devices) {
    for (const char* type : {"translation", "permission", "address_size", "blocked"}) {
      want.insert({d.name, type});
    }
  }
  std::set<std::pair<std::string, std::string>> got;
  for (const auto& [key, value] : faults) got.insert(key);
  EXPECT_EQ(got, want);
}

TEST_F(BrokerMetricsTest, FaultsSummedByTypeAreTheFaultRingsCounts) {
  Fault("nic0", 0x1000);
  Fault("tbt0", 0x1000);
  Fault("tbt0", 0x3000);
  Fault("cam0", uint64_t{1} << 40);  // beyond smmu1's 32-bit device's input size
  ASSERT_TRUE(broker_
                  ->Translate(Caller::Admin(),
                              {.smmu = "smmu1", .stream_id = 0x77, .iova = Iova(0), .access = {}})
                  .ok());
  std::map<std::string, double> by_type;
  for (const auto& [key, value] : Faults()) by_type[key.second] += value;
  const core::BrokerStats stats = *broker_->GetStats(Caller::Admin());
  double total = 0;
  for (size_t t = 0; t < core::kNumFaultTypes; ++t) {
    const std::string type(core::FaultTypeName(static_cast<FaultType>(t)));
    EXPECT_EQ(by_type[type], double(stats.faults.pushed_by_type[t])) << type;
    total += by_type[type];
  }
  EXPECT_EQ(total, double(stats.faults.pushed_total));
  EXPECT_EQ(total, 5);
}

}  // namespace
}  // namespace iommu::server
