// SPDX-License-Identifier: Apache-2.0
#include "core/broker/topology.h"

#include <functional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using ::testing::HasSubstr;

TEST(TopologyTest, DefaultTopologyIsValidAndCoversEveryPath) {
  const Topology t = DefaultTopology();
  ASSERT_TRUE(ValidateTopology(t).ok()) << ValidateTopology(t);
  ASSERT_GE(t.smmus.size(), 2u);
  // Two SMMU formats: a 48-bit multi-granule one and a 32-bit 4K-only one.
  EXPECT_EQ(t.smmus[0].ias_bits, 48u);
  EXPECT_EQ(t.smmus[0].granules, kGranule4K | kGranule16K | kGranule64K);
  EXPECT_EQ(t.smmus[1].ias_bits, 32u);
  EXPECT_EQ(t.smmus[1].granules, kGranule4K);
  bool sg_nic = false, nvme_4g = false, dev32 = false, no_sg = false, untrusted = false;
  for (const DeviceConfig& d : t.devices) {
    sg_nic |= d.name == "nic0" && d.scatter_gather;
    nvme_4g |= d.segment_boundary_mask == 0xFFFFFFFF && d.max_segment_size_bytes == 0xFFFFFFFF;
    dev32 |= d.dma_mask_bits == 32;
    no_sg |= !d.scatter_gather;
    untrusted |= !d.trusted;
  }
  EXPECT_TRUE(sg_nic && nvme_4g && dev32 && no_sg && untrusted);
}

TEST(TopologyTest, PgsizeBitmaps) {
  EXPECT_EQ(PgsizeBitmapForGranule(kGranule4K), 0x1000u | 0x200000u | 0x40000000u);
  EXPECT_EQ(PgsizeBitmapForGranule(kGranule16K), 0x4000u | 0x2000000u);
  EXPECT_EQ(PgsizeBitmapForGranule(kGranule64K), 0x10000u | 0x20000000u);
  EXPECT_EQ(PgsizeBitmapForGranule(8192), 0u);
}

TEST(TopologyTest, InvalidTopologiesNameFieldAndValue) {
  struct Case {
    const char* what;
    std::function<void(Topology&)> mutate;
    absl::StatusCode code;
    const char* text;
  };
  const std::vector<Case> cases = {
      {"no smmu", [](Topology& t) { t.smmus.clear(); }, absl::StatusCode::kInvalidArgument,
       "smmus=0"},
      {"dup smmu", [](Topology& t) { t.smmus[1].name = "smmu0"; }, absl::StatusCode::kAlreadyExists,
       "smmus[1].name=\"smmu0\""},
      {"ias", [](Topology& t) { t.smmus[0].ias_bits = 52; }, absl::StatusCode::kInvalidArgument,
       "smmus[0].ias_bits=0x34"},
      {"oas", [](Topology& t) { t.smmus[0].oas_bits = 16; }, absl::StatusCode::kInvalidArgument,
       "smmus[0].oas_bits=0x10"},
      {"granule", [](Topology& t) { t.smmus[1].granules = 8192; },
       absl::StatusCode::kInvalidArgument, "smmus[1].granules=0x2000"},
      {"contexts", [](Topology& t) { t.smmus[1].num_contexts = 0; },
       absl::StatusCode::kInvalidArgument, "smmus[1].num_contexts=0"},
      // smmu1 has two devices, each needing a context for its default domain
      // (found by topology_loader_fuzz: Broker::Create then failed).
      {"contexts for the default domains", [](Topology& t) { t.smmus[1].num_contexts = 1; },
       absl::StatusCode::kInvalidArgument, "smmus[1].num_contexts=0x1: fewer than the 2 devices"},
      // Names travel in proto3 strings, which a client refuses to parse unless
      // they are UTF-8 (found by topology_loader_fuzz).
      {"device name utf-8", [](Topology& t) { t.devices[3].name = "sata\xff"; },
       absl::StatusCode::kInvalidArgument, "devices[3].name=\"\": must be valid UTF-8"},
      {"smmu name utf-8", [](Topology& t) { t.smmus[2].name = "\xc0\xae"; },
       absl::StatusCode::kInvalidArgument, "smmus[2].name=\"\": must be valid UTF-8"},
      {"pool name utf-8", [](Topology& t) { t.memory.pools[1].name = "dr\xed\xa0\x80m"; },
       absl::StatusCode::kInvalidArgument, "memory.pools[1].name=\"\": must be valid UTF-8"},
      {"sets", [](Topology& t) { t.smmus[0].iotlb_sets = 100; }, absl::StatusCode::kInvalidArgument,
       "smmus[0].iotlb_sets=0x64"},
      {"region overlap", [](Topology& t) { t.memory.regions[1].base = PhysAddr(0x0802'1000); },
       absl::StatusCode::kInvalidArgument, "memory.regions[1].base=0x8021000"},
      {"region align", [](Topology& t) { t.memory.regions[2].size_bytes = 100; },
       absl::StatusCode::kInvalidArgument, "memory.regions[2].size_bytes=0x64"},
      {"pool outside ram",
       [](Topology& t) { t.memory.pools[0].ranges[0].base = PhysAddr(0x0802'0000); },
       absl::StatusCode::kInvalidArgument, "memory.pools[0].ranges[0].base=0x8020000"},
      {"pool overlap",
       [](Topology& t) {
         t.memory.pools[1].ranges.push_back({PhysAddr(0x1000'0000), 4096});
       },
       absl::StatusCode::kInvalidArgument, "memory.pools[1].ranges[2].base=0x10000000"},
      {"device smmu", [](Topology& t) { t.devices[0].smmu = "nope"; },
       absl::StatusCode::kInvalidArgument, "devices[0].smmu=\"nope\""},
      {"stream id", [](Topology& t) { t.devices[1].stream_id = t.devices[0].stream_id; },
       absl::StatusCode::kAlreadyExists, "devices[1].stream_id=0x100"},
      {"mask", [](Topology& t) { t.devices[0].dma_mask_bits = 65; },
       absl::StatusCode::kInvalidArgument, "devices[0].dma_mask_bits=0x41"},
      {"boundary", [](Topology& t) { t.devices[0].segment_boundary_mask = 0x1000; },
       absl::StatusCode::kInvalidArgument, "devices[0].segment_boundary_mask=0x1000"},
      {"doorbell", [](Topology& t) { t.devices[0].msi_doorbell = "dram0"; },
       absl::StatusCode::kInvalidArgument, "devices[0].msi_doorbell=\"dram0\""},
      {"dup device", [](Topology& t) { t.devices[2].name = "nic0"; },
       absl::StatusCode::kAlreadyExists, "devices[2].name=\"nic0\""},
  };
  for (const Case& c : cases) {
    Topology t = DefaultTopology();
    c.mutate(t);
    const absl::Status s = ValidateTopology(t);
    EXPECT_EQ(s.code(), c.code) << c.what << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr(c.text)) << c.what;
  }
}

}  // namespace
}  // namespace iommu::core
