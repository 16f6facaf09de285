// SPDX-License-Identifier: Apache-2.0
#include "client/ctl/output.h"

#include <sstream>

#include "gtest/gtest.h"
#include "iommu/v1/device.pb.h"
#include "iommu/v1/dma.pb.h"
#include "iommu/v1/memory.pb.h"

namespace iommu::client::ctl {
namespace {

TEST(OutputTest, ScalarsAlignedAddressesInHexEnumsShort) {
  iommu::v1::MapResponse map;
  map.set_dma_addr(0xfffff000);
  map.set_mapping_id(3);
  map.set_domain_id(1);
  map.set_iova_size_bytes(4096);
  EXPECT_EQ(ToHuman(map),
            "dma_addr         0xfffff000\n"
            "mapping_id       3\n"
            "domain_id        1\n"
            "iova_size_bytes  4096\n");
}

TEST(OutputTest, WrapperUnwrapsAndRepeatedBecomesATable) {
  iommu::v1::GetBufferResponse response;
  iommu::v1::Buffer* b = response.mutable_buffer();
  b->set_buffer_id(2);
  b->set_device("nic0");
  b->set_size_bytes(8192);
  b->set_placement(iommu::v1::PLACEMENT_SCATTERED);
  b->add_runs()->set_phys_addr(0x80001000);
  b->mutable_runs(0)->set_size_bytes(4096);
  b->add_runs()->set_phys_addr(0x80003000);
  b->mutable_runs(1)->set_size_bytes(4096);
  EXPECT_EQ(ToHuman(response),
            "buffer_id   2\n"
            "device      nic0\n"
            "size_bytes  8192\n"
            "pool        -\n"
            "placement   SCATTERED\n"
            "map_count   0\n"
            "runs (2):\n"
            "PHYS_ADDR   SIZE_BYTES\n"
            "0x80001000  4096\n"
            "0x80003000  4096\n");
}

TEST(OutputTest, NestedMessagesFlattenIntoColumns) {
  iommu::v1::ListDevicesResponse response;
  iommu::v1::DeviceInfo* d = response.add_devices();
  d->mutable_config()->set_name("nic0");
  d->mutable_config()->set_stream_id(0x100);
  const std::string human = ToHuman(response);
  EXPECT_NE(human.find("devices (1):\nNAME  SMMU  STREAM_ID"), std::string::npos) << human;
  EXPECT_NE(human.find("nic0  -     0x100"), std::string::npos) << human;
}

TEST(OutputTest, EmptyResponseIsOkAndJsonPrintsEveryField) {
  EXPECT_EQ(ToHuman(iommu::v1::UnmapResponse()), "OK\n");
  iommu::v1::MapResponse map;
  map.set_dma_addr(16);
  EXPECT_EQ(ToJson(map),
            R"({"dma_addr":"16","mapping_id":"0","domain_id":"0","iova_size_bytes":"0"})");
  std::ostringstream out;
  Printer(out, Format::kJson).Print(map);
  EXPECT_EQ(out.str(), ToJson(map) + "\n");
}

TEST(OutputTest, TablePadsColumns) {
  EXPECT_EQ(FormatTable({"a", "long"}, {{"xyz", "1"}, {"q", "22"}}),
            "A    LONG\n"
            "xyz  1\n"
            "q    22\n");
}

}  // namespace
}  // namespace iommu::client::ctl
