// SPDX-License-Identifier: Apache-2.0
#include "server/topology_loader.h"

#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>

#include "iommu/v1/topology.pb.h"
#include "server/proto_convert.h"

namespace iommu::server {
namespace {

TEST(TopologyLoaderTest, DefaultTopologyRoundTripsThroughTextFormat) {
  const core::Topology original = core::DefaultTopology();
  v1::Topology proto;
  ToProto(original, &proto);
  std::string text;
  ASSERT_TRUE(google::protobuf::TextFormat::PrintToString(proto, &text));
  absl::StatusOr<core::Topology> parsed = ParseTopology(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->smmus.size(), original.smmus.size());
  for (size_t i = 0; i < original.smmus.size(); ++i) {
    EXPECT_EQ(parsed->smmus[i].name, original.smmus[i].name);
    EXPECT_EQ(parsed->smmus[i].granules, original.smmus[i].granules);
    EXPECT_EQ(parsed->smmus[i].stage, original.smmus[i].stage);
    EXPECT_EQ(parsed->smmus[i].num_contexts, original.smmus[i].num_contexts);
  }
  ASSERT_EQ(parsed->devices.size(), original.devices.size());
  for (size_t i = 0; i < original.devices.size(); ++i) {
    const core::DeviceConfig& a = parsed->devices[i];
    const core::DeviceConfig& b = original.devices[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.stream_id, b.stream_id);
    EXPECT_EQ(a.dma_mask_bits, b.dma_mask_bits);
    EXPECT_EQ(a.max_segment_size_bytes, b.max_segment_size_bytes);
    EXPECT_EQ(a.segment_boundary_mask, b.segment_boundary_mask);
    EXPECT_EQ(a.trusted, b.trusted);
    EXPECT_EQ(a.scatter_gather, b.scatter_gather);
    EXPECT_EQ(a.msi_doorbell, b.msi_doorbell);
  }
  ASSERT_EQ(parsed->memory.regions.size(), original.memory.regions.size());
  ASSERT_EQ(parsed->memory.pools.size(), original.memory.pools.size());
  EXPECT_TRUE(core::ValidateTopology(*parsed).ok());
}

TEST(TopologyLoaderTest, EmptyPathIsTheDefaultHost) {
  absl::StatusOr<core::Topology> t = LoadTopology("");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->devices.size(), core::DefaultTopology().devices.size());
}

TEST(TopologyLoaderTest, ErrorsNameTheField) {
  EXPECT_EQ(LoadTopology("/nonexistent/topo.textproto").status().code(),
            absl::StatusCode::kNotFound);
  absl::Status bad = ParseTopology("smmus { name: \"s\" stage: STAGE_9 }").status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("topology"), absl::string_view::npos) << bad;
  EXPECT_NE(bad.message().find("line 1"), absl::string_view::npos) << bad;
  absl::Status stage = ParseTopology("smmus { name: \"s\" }").status();
  EXPECT_EQ(stage.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(stage.message().find("smmus[0].stage"), absl::string_view::npos) << stage;
  absl::Status granule =
      ParseTopology("smmus { name: \"s\" stage: STAGE_1 granules_bytes: 8192 }").status();
  EXPECT_NE(granule.message().find("smmus[0].granules_bytes=0x2000"), absl::string_view::npos)
      << granule;
  absl::Status kind = ParseTopology("regions { name: \"r\" }").status();
  EXPECT_NE(kind.message().find("regions[0].kind"), absl::string_view::npos) << kind;
}

TEST(TopologyLoaderTest, DeviceDefaultsFollowLinux) {
  absl::StatusOr<core::Topology> t =
      ParseTopology("devices { name: \"d\" smmu: \"s\" untrusted: true no_scatter_gather: true }");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->devices[0].max_segment_size_bytes, 65536u);
  EXPECT_EQ(t->devices[0].segment_boundary_mask, 0xFFFFFFFFu);
  EXPECT_FALSE(t->devices[0].trusted);
  EXPECT_FALSE(t->devices[0].scatter_gather);
}

}  // namespace
}  // namespace iommu::server
