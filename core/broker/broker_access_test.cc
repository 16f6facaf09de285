// SPDX-License-Identifier: Apache-2.0
// Ownership, quotas, UNMANAGED ranges and bad input: every error code of
// docs/design.md#errors that the core produces, each naming its field and
// value, and each leaving nothing behind.

#include <functional>

#include "absl/strings/str_cat.h"
#include "core/broker/broker.h"
#include "core/broker/broker_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using ::testing::HasSubstr;
using namespace ::iommu::core::testing;  // NOLINT

class BrokerAccessTest : public ::testing::Test {
 protected:
  void SetUp() override { broker_ = MakeBroker(); }
  void TearDown() override { broker_->CheckInvariants(); }
  Caller Dev(const std::string& n) { return Caller::Device(n); }
  std::unique_ptr<Broker> broker_;
};

TEST_F(BrokerAccessTest, ADeviceActsOnlyAsItselfOnItsOwnMemory) {
  auto gpu_buf = broker_->AllocBuffer(Dev("gpu0"), "gpu0", 8 * KiB, Placement::kContiguous);
  ASSERT_TRUE(gpu_buf.ok());
  // Acting as another device.
  auto as_other = broker_->AllocBuffer(Dev("nic0"), "gpu0", 4 * KiB, Placement::kScattered);
  EXPECT_EQ(as_other.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(as_other.status().message(), HasSubstr("device=\"gpu0\""));
  // Mapping another device's buffer.
  auto steal = broker_->Map(Dev("nic0"), "nic0",
                            {.mem = {.buffer_id = gpu_buf->buffer_id, .length_bytes = 4 * KiB}});
  // Another device's buffer answers as a missing one.
  EXPECT_EQ(steal.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(steal.status().message(), HasSubstr("mem.buffer_id="));
  // Raw physical memory is for admins only.
  auto raw = broker_->Map(Dev("nic0"), "nic0",
                          {.mem = {.phys = gpu_buf->runs[0].start, .length_bytes = 4 * KiB}});
  EXPECT_EQ(raw.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(raw.status().message(), HasSubstr("mem.phys_addr="));
  // A device cannot see or unmap another's mapping, even in a shared domain.
  auto shared = broker_->CreateDomain(Caller::Admin(), {.smmu = "smmu0"});
  ASSERT_TRUE(shared.ok());
  ASSERT_TRUE(broker_->AttachDevice(Caller::Admin(), "gpu0", shared->domain_id).ok());
  ASSERT_TRUE(broker_->AttachDevice(Caller::Admin(), "nic0", shared->domain_id).ok());
  auto m = broker_->Map(Dev("gpu0"), "gpu0",
                        {.mem = {.buffer_id = gpu_buf->buffer_id, .length_bytes = 8 * KiB}});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(broker_->Unmap(Dev("nic0"), "nic0", {m->dma_addr}).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(broker_->GetSgTable(Dev("nic0"), "nic0", m->dma_addr).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(broker_->FreeBuffer(Dev("nic0"), gpu_buf->buffer_id).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(broker_->GetBuffer(Dev("nic0"), gpu_buf->buffer_id).status().code(),
            absl::StatusCode::kNotFound);
  // A device sees domains it owns or is attached to, nothing else.
  auto other = broker_->CreateDomain(Dev("gpu0"), {.smmu = "smmu0"});
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(broker_->GetDomain(Dev("nic0"), other->domain_id).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(broker_->AttachDevice(Dev("nic0"), "nic0", other->domain_id).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(broker_->DestroyDomain(Dev("nic0"), other->domain_id).code(),
            absl::StatusCode::kNotFound);
  // Creating domains on an SMMU the device is not behind.
  EXPECT_EQ(broker_->CreateDomain(Dev("nic0"), {.smmu = "smmu1"}).status().code(),
            absl::StatusCode::kPermissionDenied);
  // An admin may do all of it.
  EXPECT_TRUE(broker_->Unmap(Caller::Admin(), "gpu0", {m->dma_addr}).ok());
}

TEST_F(BrokerAccessTest, QuotasGiveResourceExhausted) {
  BrokerOptions opts;
  opts.default_quotas = {.max_mapped_bytes = 64 * KiB,
                         .max_mappings = 3,
                         .max_buffers = 2,
                         .max_buffer_bytes = 1 * MiB};
  broker_ = MakeBroker(opts);
  auto b1 = broker_->AllocBuffer(Dev("nic0"), "nic0", 512 * KiB, Placement::kContiguous);
  auto b2 = broker_->AllocBuffer(Dev("nic0"), "nic0", 512 * KiB, Placement::kContiguous);
  ASSERT_TRUE(b1.ok() && b2.ok());
  auto b3 = broker_->AllocBuffer(Dev("nic0"), "nic0", 4 * KiB, Placement::kContiguous);
  EXPECT_EQ(b3.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(b3.status().message(), HasSubstr("buffer quota"));
  ASSERT_TRUE(broker_->FreeBuffer(Dev("nic0"), b2->buffer_id).ok());
  auto big = broker_->AllocBuffer(Dev("nic0"), "nic0", 1 * MiB, Placement::kContiguous);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(big.status().message(), HasSubstr("size_bytes=0x100000"));
  auto map = [&](uint64_t len) {
    return broker_->Map(Dev("nic0"), "nic0",
                        {.mem = {.buffer_id = b1->buffer_id, .length_bytes = len}});
  };
  auto too_big = map(128 * KiB);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(too_big.status().message(), HasSubstr("mapped-bytes quota"));
  ASSERT_TRUE(map(4 * KiB).ok());
  ASSERT_TRUE(map(4 * KiB).ok());
  ASSERT_TRUE(map(4 * KiB).ok());
  auto fourth = map(4 * KiB);
  EXPECT_EQ(fourth.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(fourth.status().message(), HasSubstr("mapping quota"));
  EXPECT_EQ(broker_->ListDevices(Dev("nic0")).value()[0].mappings, 3u);
}

TEST_F(BrokerAccessTest, MapAtAndUnmapRangeFollowVirtioIommuRangeSemantics) {
  auto dom = broker_->CreateDomain(Dev("nic0"), {.smmu = "smmu0", .type = DomainType::kUnmanaged});
  ASSERT_TRUE(dom.ok());
  ASSERT_TRUE(broker_->AttachDevice(Dev("nic0"), "nic0", dom->domain_id).ok());
  auto buf = broker_->AllocBuffer(Dev("nic0"), "nic0", 64 * KiB, Placement::kContiguous);
  ASSERT_TRUE(buf.ok());
  auto at = [&](uint64_t iova, uint64_t off, uint64_t len) {
    return broker_->MapAt(
        Dev("nic0"), "nic0",
        {.iova = Iova(iova),
         .mem = {.buffer_id = buf->buffer_id, .offset_bytes = off, .length_bytes = len},
         .direction = DmaDirection::kBidirectional});
  };
  ASSERT_TRUE(at(0x100000, 0, 16 * KiB).ok());
  ASSERT_TRUE(at(0x104000, 16 * KiB, 16 * KiB).ok());
  ASSERT_TRUE(at(0x200000, 32 * KiB, 32 * KiB).ok());
  // Overlap → ALREADY_EXISTS.
  EXPECT_EQ(at(0x106000, 0, 4 * KiB).status().code(), absl::StatusCode::kAlreadyExists);
  // Misaligned, zero, beyond the aperture.
  EXPECT_EQ(at(0x100800, 0, 4 * KiB).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(at(0x300000, 0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  auto beyond = at(uint64_t{1} << 48, 0, 4 * KiB);
  EXPECT_EQ(beyond.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(beyond.status().message(), HasSubstr("iova=0x1000000000000"));
  // A range that would split a mapping fails and changes nothing.
  auto split = broker_->UnmapRange(Dev("nic0"), "nic0", Iova(0x100000), 20 * KiB);
  EXPECT_EQ(split.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(broker_->GetDomain(Dev("nic0"), dom->domain_id)->mappings, 3u);
  // A range covering whole mappings removes them and reports the bytes; the
  // IOTLB forgets them before the call returns (UNMANAGED domains are strict).
  auto read = [&](uint64_t iova) {
    return broker_->Translate(
        Dev("nic0"), {.device = "nic0", .iova = Iova(iova), .length_bytes = 4, .access = Read()});
  };
  ASSERT_FALSE(read(0x104000)->faulted);
  ASSERT_TRUE(read(0x104000)->pages[0].iotlb_hit);
  auto two = broker_->UnmapRange(Dev("nic0"), "nic0", Iova(0xFF000), 0x10000);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(*two, 32 * KiB);
  EXPECT_TRUE(read(0x104000)->faulted);
  auto none = broker_->UnmapRange(Dev("nic0"), "nic0", Iova(0x500000), 4 * KiB);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, 0u);
  // Wrong domain type for the call.
  ASSERT_TRUE(broker_->DetachDevice(Dev("nic0"), "nic0").ok());
  EXPECT_EQ(broker_->UnmapRange(Dev("nic0"), "nic0", Iova(0x200000), 32 * KiB).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(at(0x200000, 0, 4 * KiB).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(broker_->AttachDevice(Dev("nic0"), "nic0", dom->domain_id).ok());
  EXPECT_EQ(*broker_->UnmapRange(Dev("nic0"), "nic0", Iova(0x200000), 32 * KiB), 32 * KiB);
}

// Table-driven bad input: each call fails with the right code, names the
// field, and leaves the broker's statistics unchanged.
TEST_F(BrokerAccessTest, BadInputNamesTheFieldAndChangesNothing) {
  auto buf = broker_->AllocBuffer(Dev("nic0"), "nic0", 16 * KiB, Placement::kContiguous);
  ASSERT_TRUE(buf.ok());
  struct Case {
    const char* what;
    std::function<absl::Status()> call;
    absl::StatusCode code;
    const char* text;
  };
  const uint64_t id = buf->buffer_id;
  Broker& b = *broker_;
  const Caller nic = Dev("nic0");
  const std::vector<Case> cases = {
      {"unknown device", [&] { return b.Map(Caller::Admin(), "nope", {}).status(); },
       absl::StatusCode::kNotFound, "device=\"nope\""},
      {"zero length", [&] { return b.Map(nic, "nic0", {.mem = {.buffer_id = id}}).status(); },
       absl::StatusCode::kInvalidArgument, "mem.length_bytes=0"},
      {"past buffer end",
       [&] {
         return b
             .Map(nic, "nic0",
                  {.mem = {.buffer_id = id, .offset_bytes = 12 * KiB, .length_bytes = 8 * KiB}})
             .status();
       },
       absl::StatusCode::kOutOfRange, "mem.length_bytes=0x2000"},
      {"offset overflow",
       [&] {
         return b
             .Map(nic, "nic0",
                  {.mem = {.buffer_id = id, .offset_bytes = ~uint64_t{0}, .length_bytes = 2}})
             .status();
       },
       absl::StatusCode::kOutOfRange, "mem.length_bytes=0x2"},
      {"unknown buffer",
       [&] { return b.Map(nic, "nic0", {.mem = {.buffer_id = 999, .length_bytes = 1}}).status(); },
       absl::StatusCode::kNotFound, "mem.buffer_id=0x3e7"},
      {"raw outside memory",
       [&] {
         return b
             .Map(Caller::Admin(), "nic0",
                  {.mem = {.phys = PhysAddr(0x4000'0000), .length_bytes = 4096}})
             .status();
       },
       absl::StatusCode::kOutOfRange, "mem.phys_addr=0x40000000"},
      {"unknown dma_addr", [&] { return b.Unmap(nic, "nic0", {Iova(0x1234000)}); },
       absl::StatusCode::kNotFound, "dma_addr=0x1234000"},
      {"empty sg", [&] { return b.MapSg(nic, "nic0", {}).status(); },
       absl::StatusCode::kInvalidArgument, "segments=0"},
      {"zero alloc", [&] { return b.Alloc(nic, "nic0", {}).status(); },
       absl::StatusCode::kInvalidArgument, "size_bytes=0"},
      {"exclusive attrs",
       [&] {
         return b
             .Alloc(nic, "nic0",
                    {.size_bytes = 4096,
                     .attrs = {.force_contiguous = true, .alloc_single_pages = true}})
             .status();
       },
       absl::StatusCode::kInvalidArgument, "attrs"},
      {"unknown pool",
       [&] { return b.AllocBuffer(nic, "nic0", 4096, Placement::kScattered, "flash").status(); },
       absl::StatusCode::kNotFound, "flash"},
      {"zero buffer", [&] { return b.AllocBuffer(nic, "nic0", 0, Placement::kScattered).status(); },
       absl::StatusCode::kInvalidArgument, "size_bytes=0"},
      {"unknown smmu", [&] { return b.CreateDomain(nic, {.smmu = "smmu9"}).status(); },
       absl::StatusCode::kNotFound, "smmu=\"smmu9\""},
      {"bad granule",
       [&] { return b.CreateDomain(nic, {.smmu = "smmu0", .granule_bytes = 8192}).status(); },
       absl::StatusCode::kInvalidArgument, "granule_bytes=0x2000"},
      {"unknown domain", [&] { return b.AttachDevice(nic, "nic0", 777); },
       absl::StatusCode::kNotFound, "domain_id=0x309"},
      {"zero translate",
       [&] {
         return b.Translate(nic, {.device = "nic0", .iova = Iova(0x1000), .length_bytes = 0})
             .status();
       },
       absl::StatusCode::kInvalidArgument, "length_bytes=0"},
      {"wrapping translate",
       [&] {
         return b.Translate(nic, {.device = "nic0", .iova = Iova(~uint64_t{0}), .length_bytes = 2})
             .status();
       },
       absl::StatusCode::kInvalidArgument, "length_bytes=0x2"},
      {"raw stream as device",
       [&] {
         return b.Translate(nic, {.smmu = "smmu0", .stream_id = 0x100, .iova = Iova(0x1000)})
             .status();
       },
       absl::StatusCode::kPermissionDenied, "stream_id=0x100"},
      {"bad ttl", [&] { return b.OpenSession(nic, absl::ZeroDuration()).status(); },
       absl::StatusCode::kInvalidArgument, "ttl="},
      {"unknown session", [&] { return b.KeepAlive(nic, 4242); }, absl::StatusCode::kNotFound,
       "session_id=0x1092"},
      {"window without domain",
       [&] { return b.MsiCookie(nic, "nic0", {.window = {.size_bytes = 4096}}).status(); },
       absl::StatusCode::kInvalidArgument, "window_size_bytes=0x1000"},
  };
  auto snapshot = [&] {
    std::string s;
    BrokerStats st = b.GetStats(Caller::Admin()).value();
    for (const DomainStats& d : st.domains) {
      absl::StrAppend(&s, d.domain_id, ":", d.mappings, ":", d.pgtable.table_count, ":",
                      d.iova ? d.iova->allocated_pages : 0, " ");
    }
    for (const PoolStats& p : st.pools) absl::StrAppend(&s, p.free_pages, " ");
    return s;
  };
  const std::string before = snapshot();
  for (const Case& c : cases) {
    const absl::Status s = c.call();
    EXPECT_EQ(s.code(), c.code) << c.what << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr(c.text)) << c.what;
  }
  EXPECT_EQ(snapshot(), before);
}

}  // namespace
}  // namespace iommu::core
