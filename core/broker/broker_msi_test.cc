// SPDX-License-Identifier: Apache-2.0
// MSI cookies (docs/design.md#msi-cookie, #typed-cookies): the doorbell goes
// into the device's current domain through the right typed cookie, once,
// bounds-checked.

#include "core/broker/broker.h"
#include "core/broker/broker_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using ::testing::HasSubstr;
using namespace ::iommu::core::testing;  // NOLINT

constexpr uint64_t kDoorbell = 0x0802'0000 + 0x10040;  // GITS_TRANSLATER of the default host

class BrokerMsiTest : public ::testing::Test {
 protected:
  void SetUp() override { broker_ = MakeBroker(); }
  void TearDown() override { broker_->CheckInvariants(); }
  Caller Dev(const std::string& n) { return Caller::Device(n); }
  uint64_t Mappings(uint64_t domain_id) {
    return broker_->GetDomain(Caller::Admin(), domain_id)->mappings;
  }
  std::unique_ptr<Broker> broker_;
};

TEST_F(BrokerMsiTest, DmaDomainUsesItsIovaCookieOnce) {
  auto first = broker_->MsiCookie(Dev("nic0"), "nic0", {});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->newly_mapped);
  EXPECT_EQ(first->msi_addr & 0xfff, kDoorbell & 0xfff);
  EXPECT_NE(first->msi_addr.value(), kDoorbell);  // translated, not bypassed
  // Idempotent: the same address, nothing new mapped.
  auto again = broker_->MsiCookie(Dev("nic0"), "nic0", {});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->msi_addr, first->msi_addr);
  EXPECT_FALSE(again->newly_mapped);
  EXPECT_EQ(Mappings(first->domain_id), 1u);
  // The device can write the doorbell, not execute it. (Stage 1 cannot
  // express write-only: AP grants read with write, as on real SMMUs.)
  auto w = broker_->Translate(
      Dev("nic0"),
      {.device = "nic0", .iova = first->msi_addr, .length_bytes = 4, .access = Write()});
  ASSERT_TRUE(w.ok());
  ASSERT_FALSE(w->faulted);
  EXPECT_EQ(w->pages[0].phys_addr, PhysAddr(kDoorbell));
  auto r = broker_->Translate(Dev("nic0"), {.device = "nic0",
                                            .iova = first->msi_addr,
                                            .length_bytes = 4,
                                            .access = {AccessKind::kExec, false}});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->faulted);
  EXPECT_EQ(r->fault_type, FaultType::kPermission);
  // Broker-owned: the device cannot unmap it.
  EXPECT_EQ(broker_->Unmap(Dev("nic0"), "nic0", {first->msi_addr}).code(),
            absl::StatusCode::kNotFound);
}

// 2019: after attaching to an UNMANAGED domain the doorbell must be mapped
// there, through the MSI window — never in the default domain.
TEST_F(BrokerMsiTest, UnmanagedDomainUsesTheMsiWindowOfTheCurrentDomain) {
  auto dom = broker_->CreateDomain(Dev("vf0"), {.smmu = "smmu2", .type = DomainType::kUnmanaged});
  ASSERT_TRUE(dom.ok()) << dom.status();
  const uint64_t default_id = broker_->ListDevices(Dev("vf0")).value()[0].default_domain_id;
  ASSERT_TRUE(broker_->AttachDevice(Dev("vf0"), "vf0", dom->domain_id).ok());
  // No cookie yet: a clear error, nothing mapped anywhere.
  auto none = broker_->MsiCookie(Dev("vf0"), "vf0", {});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(none.status().message(), HasSubstr("no MSI cookie"));
  // The window must be inside the aperture (40-bit stage-2 SMMU) and aligned.
  auto outside =
      broker_->MsiCookie(Dev("vf0"), "vf0",
                         {.domain_id = dom->domain_id,
                          .window = {.base = Iova(uint64_t{1} << 40), .size_bytes = 1 * MiB}});
  EXPECT_EQ(outside.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(outside.status().message(), HasSubstr("window_base=0x10000000000"));
  auto unaligned = broker_->MsiCookie(
      Dev("vf0"), "vf0",
      {.domain_id = dom->domain_id, .window = {.base = Iova(0x800'0800), .size_bytes = 1 * MiB}});
  EXPECT_EQ(unaligned.status().code(), absl::StatusCode::kInvalidArgument);
  // Another device may not set the window (nor learn the domain exists).
  auto other = broker_->MsiCookie(
      Dev("nic0"), "nic0",
      {.domain_id = dom->domain_id, .window = {.base = Iova(0x800'0000), .size_bytes = 1 * MiB}});
  EXPECT_EQ(other.status().code(), absl::StatusCode::kNotFound);

  auto msi = broker_->MsiCookie(
      Dev("vf0"), "vf0",
      {.domain_id = dom->domain_id, .window = {.base = Iova(0x800'0000), .size_bytes = 1 * MiB}});
  ASSERT_TRUE(msi.ok()) << msi.status();
  EXPECT_EQ(msi->domain_id, dom->domain_id);
  EXPECT_GE(msi->msi_addr, Iova(0x800'0000u));
  EXPECT_LT(msi->msi_addr, Iova(0x800'0000u + 1 * MiB));
  EXPECT_EQ(Mappings(dom->domain_id), 1u);
  EXPECT_EQ(Mappings(default_id), 0u);  // not the default domain
  auto again = broker_->MsiCookie(Dev("vf0"), "vf0", {});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->msi_addr, msi->msi_addr);
  // The window is reserved: MapAt cannot land in it, and the ranges say so.
  auto buf = broker_->AllocBuffer(Dev("vf0"), "vf0", 4 * KiB, Placement::kContiguous);
  ASSERT_TRUE(buf.ok());
  auto clash = broker_->MapAt(Dev("vf0"), "vf0",
                              {.iova = Iova(0x800'0000 + 64 * KiB),
                               .mem = {.buffer_id = buf->buffer_id, .length_bytes = 4 * KiB},
                               .direction = DmaDirection::kBidirectional});
  EXPECT_EQ(clash.status().code(), absl::StatusCode::kAlreadyExists);
  auto ranges = broker_->GetIovaRanges(Dev("vf0"), "vf0");
  ASSERT_TRUE(ranges.ok());
  ASSERT_EQ(ranges->reserved.size(), 1u);
  EXPECT_EQ(ranges->reserved[0].kind, ReservedKind::kMsi);
  EXPECT_EQ(ranges->reserved[0].start, Iova(0x800'0000));
  ASSERT_EQ(ranges->usable.size(), 2u);
  EXPECT_EQ(ranges->usable[1].start, Iova(0x810'0000));
  EXPECT_EQ(ranges->usable[1].end, Iova((uint64_t{1} << 40) - 1));
  // A second, different window is refused; the same one is idempotent.
  auto second = broker_->MsiCookie(
      Dev("vf0"), "vf0",
      {.domain_id = dom->domain_id, .window = {.base = Iova(0x900'0000), .size_bytes = 1 * MiB}});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists);
  // Detach: the default domain gets its own doorbell mapping via its IOVA cookie.
  ASSERT_TRUE(broker_->DetachDevice(Dev("vf0"), "vf0").ok());
  auto dflt = broker_->MsiCookie(Dev("vf0"), "vf0", {});
  ASSERT_TRUE(dflt.ok());
  EXPECT_EQ(dflt->domain_id, default_id);
  EXPECT_EQ(Mappings(default_id), 1u);
}

// 2016/2025: a cookie of one type is never used as another.
TEST_F(BrokerMsiTest, CookieTypesNeverMix) {
  const uint64_t nic_domain = broker_->ListDevices(Dev("nic0")).value()[0].current_domain_id;
  // A DMA domain has an IOVA cookie: asking it for an MSI window is refused.
  auto on_dma = broker_->MsiCookie(
      Dev("nic0"), "nic0",
      {.domain_id = nic_domain, .window = {.base = Iova(0x800'0000), .size_bytes = 1 * MiB}});
  EXPECT_EQ(on_dma.status().code(), absl::StatusCode::kPermissionDenied);  // default: no owner
  auto own = broker_->CreateDomain(Dev("nic0"), {.smmu = "smmu0", .type = DomainType::kDma});
  ASSERT_TRUE(own.ok());
  auto on_own_dma = broker_->MsiCookie(
      Dev("nic0"), "nic0",
      {.domain_id = own->domain_id, .window = {.base = Iova(0x800'0000), .size_bytes = 1 * MiB}});
  EXPECT_EQ(on_own_dma.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(on_own_dma.status().message(), HasSubstr("IOVA cookie"));
  // An UNMANAGED domain with a window cannot serve Map (that needs an IOVA cookie).
  auto um = broker_->CreateDomain(Dev("nic0"), {.smmu = "smmu0", .type = DomainType::kUnmanaged});
  ASSERT_TRUE(um.ok());
  ASSERT_TRUE(broker_
                  ->MsiCookie(Dev("nic0"), "nic0",
                              {.domain_id = um->domain_id,
                               .window = {.base = Iova(0x800'0000), .size_bytes = 64 * KiB}})
                  .ok());
  ASSERT_TRUE(broker_->AttachDevice(Dev("nic0"), "nic0", um->domain_id).ok());
  auto buf = broker_->AllocBuffer(Dev("nic0"), "nic0", 4 * KiB, Placement::kContiguous);
  ASSERT_TRUE(buf.ok());
  auto map = broker_->Map(Dev("nic0"), "nic0",
                          {.mem = {.buffer_id = buf->buffer_id, .length_bytes = 4 * KiB}});
  EXPECT_EQ(map.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(map.status().message(), HasSubstr("UNMANAGED"));
  // A full window is RESOURCE_EXHAUSTED, never an overrun: 64 KiB = 16 pages,
  // one doorbell page per domain, so it never fills here; check the bound.
  auto msi = broker_->MsiCookie(Dev("nic0"), "nic0", {});
  ASSERT_TRUE(msi.ok());
  EXPECT_LT(msi->msi_addr, Iova(0x800'0000u + 64 * KiB));
  // Identity domains bypass: the doorbell's physical address.
  auto id =
      broker_->CreateDomain(Caller::Admin(), {.smmu = "smmu0", .type = DomainType::kIdentity});
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(broker_->AttachDevice(Caller::Admin(), "nic0", id->domain_id).ok());
  auto bypass = broker_->MsiCookie(Dev("nic0"), "nic0", {});
  ASSERT_TRUE(bypass.ok());
  EXPECT_EQ(bypass->msi_addr.value(), kDoorbell);
}

TEST_F(BrokerMsiTest, DeviceWithoutDoorbell) {
  auto r = broker_->MsiCookie(Dev("cam0"), "cam0", {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("device=\"cam0\""));
}

}  // namespace
}  // namespace iommu::core
