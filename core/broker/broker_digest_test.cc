// SPDX-License-Identifier: Apache-2.0
// Broker::StateDigest: what it sees (every kind of state a call can leave
// behind) and what it does not (reads, caches, counters, a failed call).

#include "core/broker/broker_test_util.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using namespace ::iommu::core::testing;  // NOLINT

TEST(BrokerDigestTest, EveryKindOfStateChangesItAndReadsDoNot) {
  std::unique_ptr<Broker> b = MakeBroker();
  ASSERT_NE(b, nullptr);
  const Caller nic = Caller::Device("nic0");
  std::string last = b->StateDigest();
  auto changed = [&] {
    const std::string now = b->StateDigest();
    const bool differs = now != last;
    last = now;
    return differs;
  };
  BufferInfo buf = Value(b->AllocBuffer(nic, "nic0", 16 * KiB, Placement::kContiguous));
  EXPECT_TRUE(changed()) << "a buffer";
  MapResult map =
      Value(b->Map(nic, "nic0", {.mem = {.buffer_id = buf.buffer_id, .length_bytes = 8 * KiB}}));
  EXPECT_TRUE(changed()) << "a mapping";
  // A device access fills the IOTLB: a cache, not state.
  ASSERT_TRUE(b->Translate(nic, {.device = "nic0", .iova = map.dma_addr, .access = Read()}).ok());
  EXPECT_FALSE(changed()) << "an IOTLB entry";
  SgTableResult sg = Value(b->GetSgTable(nic, "nic0", map.dma_addr, ExportGrant{}));
  EXPECT_TRUE(changed()) << "an export";
  Value(b->OpenSession(nic, absl::Seconds(30)));
  EXPECT_TRUE(changed()) << "a session";
  DomainInfo d = Value(b->CreateDomain(nic, {.smmu = "smmu0", .type = DomainType::kUnmanaged}));
  EXPECT_TRUE(changed()) << "a domain";
  ASSERT_TRUE(b->AttachDevice(nic, "nic0", d.domain_id).ok());
  EXPECT_TRUE(changed()) << "an attachment";

  // Reads, and calls that fail, leave it as it was.
  (void)b->GetStats(Caller::Admin());
  (void)b->ListDomains(nic);
  (void)b->WalkDomain(Caller::Admin(), d.domain_id);
  EXPECT_FALSE(b->Map(nic, "nic0", {.mem = {.buffer_id = buf.buffer_id, .length_bytes = 4 * KiB}})
                   .ok());                               // an UNMANAGED domain
  EXPECT_FALSE(b->FreeBuffer(nic, buf.buffer_id).ok());  // still mapped
  EXPECT_FALSE(b->RevokeExport(Caller::Device("gpu0"), sg.export_token).ok());
  EXPECT_FALSE(changed());
  b->CheckInvariants();
}

}  // namespace
}  // namespace iommu::core
