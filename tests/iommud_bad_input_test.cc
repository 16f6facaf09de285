// SPDX-License-Identifier: Apache-2.0
// Integration: malformed requests to the real iommud, for every RPC family
// (zero, huge, misaligned, overflowing, unknown ids, wrong enums), get the
// right code and a message naming the field, and leave GetStats unchanged.

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <functional>

#include "tests/daemon_harness.h"
#include "tests/test_clients.h"

namespace iommu::testing {
namespace {

using grpc::StatusCode;

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(daemon_.Start()) << daemon_.log();
    stubs_ = std::make_unique<Stubs>(Insecure(daemon_.unix_target()));
    v1::AllocBufferRequest ab;
    ab.set_device("nic0");
    ab.set_size_bytes(16384);
    ab.set_placement(v1::PLACEMENT_CONTIGUOUS);
    v1::AllocBufferResponse buffer;
    ASSERT_OK(stubs_->memory->AllocBuffer(Ctx().get(), ab, &buffer));
    buffer_id_ = buffer.buffer().buffer_id();
  }
  v1::GetStatsResponse Stats() {
    v1::GetStatsResponse stats;
    EXPECT_TRUE(stubs_->stats->GetStats(Ctx().get(), {}, &stats).ok());
    return stats;
  }
  v1::MapRequest GoodMap() {
    v1::MapRequest map;
    map.set_device("nic0");
    *map.mutable_mem() = BufferRef(buffer_id_, 0, 4096);
    map.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
    return map;
  }
  DaemonProcess daemon_;
  std::unique_ptr<Stubs> stubs_;
  uint64_t buffer_id_ = 0;
};

TEST_F(BadInputTest, EveryFamilyGetsItsCodeAndLeavesNoTrace) {
  Stubs& s = *stubs_;
  const v1::GetStatsResponse before = Stats();
  struct Case {
    std::string name;
    std::function<grpc::Status()> call;
    StatusCode code;
  };
  std::vector<Case> cases;
  auto map_case = [&](std::string name, std::function<void(v1::MapRequest&)> edit,
                      StatusCode code) {
    cases.push_back({name,
                     [&s, this, edit] {
                       v1::MapRequest r = GoodMap();
                       edit(r);
                       v1::MapResponse out;
                       return s.dma->Map(Ctx().get(), r, &out);
                     },
                     code});
  };
  map_case(
      "map zero length", [](auto& r) { r.mutable_mem()->set_length_bytes(0); },
      StatusCode::INVALID_ARGUMENT);
  map_case(
      "map beyond buffer", [](auto& r) { r.mutable_mem()->set_length_bytes(1 << 20); },
      StatusCode::OUT_OF_RANGE);
  map_case(
      "map overflowing offset",
      [](auto& r) { r.mutable_mem()->set_offset_bytes(~uint64_t{0} - 100); },
      StatusCode::OUT_OF_RANGE);
  map_case(
      "map no direction", [](auto& r) { r.set_direction(v1::DMA_DIRECTION_UNSPECIFIED); },
      StatusCode::INVALID_ARGUMENT);
  map_case(
      "map wrong enum", [](auto& r) { r.set_direction(static_cast<v1::DmaDirection>(99)); },
      StatusCode::INVALID_ARGUMENT);
  map_case(
      "map no memory", [](auto& r) { r.clear_mem(); }, StatusCode::INVALID_ARGUMENT);
  map_case(
      "map unknown buffer", [](auto& r) { r.mutable_mem()->set_buffer_id(987654); },
      StatusCode::NOT_FOUND);
  map_case(
      "map unknown device", [](auto& r) { r.set_device("nosuch0"); }, StatusCode::NOT_FOUND);
  // Another device's buffer answers as a missing one.
  map_case(
      "map another's buffer", [](auto& r) { r.set_device("nvme0"); }, StatusCode::NOT_FOUND);
  cases.push_back({"unmap unknown dma_addr",
                   [&] {
                     v1::UnmapRequest r;
                     r.set_device("nic0");
                     r.set_dma_addr(0x1234000);
                     v1::UnmapResponse out;
                     return s.dma->Unmap(Ctx().get(), r, &out);
                   },
                   StatusCode::NOT_FOUND});
  cases.push_back({"map_sg no mode",
                   [&] {
                     v1::MapSgRequest r;
                     r.set_device("nic0");
                     *r.add_segments() = BufferRef(buffer_id_, 0, 4096);
                     r.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
                     v1::MapSgResponse out;
                     return s.dma->MapSg(Ctx().get(), r, &out);
                   },
                   StatusCode::INVALID_ARGUMENT});
  cases.push_back({"alloc zero size",
                   [&] {
                     v1::AllocRequest r;
                     r.set_device("nic0");
                     r.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
                     v1::AllocResponse out;
                     return s.dma->Alloc(Ctx().get(), r, &out);
                   },
                   StatusCode::INVALID_ARGUMENT});
  cases.push_back({"get_sgtable unknown",
                   [&] {
                     v1::GetSgTableRequest r;
                     r.set_device("nic0");
                     r.set_dma_addr(0x777000);
                     v1::GetSgTableResponse out;
                     return s.dma->GetSgTable(Ctx().get(), r, &out);
                   },
                   StatusCode::NOT_FOUND});
  cases.push_back({"map_at on a DMA domain",
                   [&] {
                     v1::MapAtRequest r;
                     r.set_device("nic0");
                     r.set_iova(0x100000);
                     *r.mutable_mem() = BufferRef(buffer_id_, 0, 4096);
                     r.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
                     v1::MapAtResponse out;
                     return s.dma->MapAt(Ctx().get(), r, &out);
                   },
                   StatusCode::FAILED_PRECONDITION});
  cases.push_back({"unmap_range on a DMA domain",
                   [&] {
                     v1::UnmapRangeRequest r;
                     r.set_device("nic0");
                     r.set_iova(0x100000);
                     v1::UnmapRangeResponse out;
                     return s.dma->UnmapRange(Ctx().get(), r, &out);
                   },
                   StatusCode::FAILED_PRECONDITION});
  cases.push_back({"alloc_buffer zero",
                   [&] {
                     v1::AllocBufferRequest r;
                     r.set_device("nic0");
                     r.set_placement(v1::PLACEMENT_SCATTERED);
                     v1::AllocBufferResponse out;
                     return s.memory->AllocBuffer(Ctx().get(), r, &out);
                   },
                   StatusCode::INVALID_ARGUMENT});
  cases.push_back({"alloc_buffer no placement",
                   [&] {
                     v1::AllocBufferRequest r;
                     r.set_device("nic0");
                     r.set_size_bytes(4096);
                     v1::AllocBufferResponse out;
                     return s.memory->AllocBuffer(Ctx().get(), r, &out);
                   },
                   StatusCode::INVALID_ARGUMENT});
  cases.push_back({"free_buffer unknown",
                   [&] {
                     v1::FreeBufferRequest r;
                     r.set_device("nic0");
                     r.set_buffer_id(424242);
                     v1::FreeBufferResponse out;
                     return s.memory->FreeBuffer(Ctx().get(), r, &out);
                   },
                   StatusCode::NOT_FOUND});
  cases.push_back({"create_domain no type",
                   [&] {
                     v1::CreateDomainRequest r;
                     r.set_device("nic0");
                     r.set_smmu("smmu0");
                     v1::CreateDomainResponse out;
                     return s.domains->CreateDomain(Ctx().get(), r, &out);
                   },
                   StatusCode::INVALID_ARGUMENT});
  cases.push_back({"create_domain bad granule",
                   [&] {
                     v1::CreateDomainRequest r;
                     r.set_device("nic0");
                     r.set_smmu("smmu0");
                     r.set_type(v1::DOMAIN_TYPE_DMA);
                     r.set_granule_bytes(12345);
                     v1::CreateDomainResponse out;
                     return s.domains->CreateDomain(Ctx().get(), r, &out);
                   },
                   StatusCode::INVALID_ARGUMENT});
  cases.push_back({"destroy unknown domain",
                   [&] {
                     v1::DestroyDomainRequest r;
                     r.set_domain_id(999999);
                     v1::DestroyDomainResponse out;
                     return s.domains->DestroyDomain(Ctx().get(), r, &out);
                   },
                   StatusCode::NOT_FOUND});
  cases.push_back({"attach unknown domain",
                   [&] {
                     v1::AttachDeviceRequest r;
                     r.set_device("nic0");
                     r.set_domain_id(999999);
                     v1::AttachDeviceResponse out;
                     return s.domains->AttachDevice(Ctx().get(), r, &out);
                   },
                   StatusCode::NOT_FOUND});
  cases.push_back({"translate zero length",
                   [&] {
                     v1::TranslateRequest r;
                     r.set_device("nic0");
                     r.set_iova(0x1000);
                     r.set_access(v1::ACCESS_KIND_READ);
                     v1::TranslateResponse out;
                     return s.devices->Translate(Ctx().get(), r, &out);
                   },
                   StatusCode::INVALID_ARGUMENT});
  cases.push_back({"translate no access",
                   [&] {
                     v1::TranslateRequest r;
                     r.set_device("nic0");
                     r.set_iova(0x1000);
                     r.set_length_bytes(4);
                     v1::TranslateResponse out;
                     return s.devices->Translate(Ctx().get(), r, &out);
                   },
                   StatusCode::INVALID_ARGUMENT});
  cases.push_back({"translate_batch one bad access",
                   [&] {
                     v1::TranslateBatchRequest r;
                     v1::TranslateRequest* a = r.add_accesses();
                     a->set_device("nic0");
                     a->set_iova(0x1000);
                     a->set_length_bytes(4);
                     a->set_access(v1::ACCESS_KIND_READ);
                     *r.add_accesses() = *a;
                     r.mutable_accesses(1)->set_access(v1::ACCESS_KIND_UNSPECIFIED);
                     v1::TranslateBatchResponse out;
                     return s.devices->TranslateBatch(Ctx().get(), r, &out);
                   },
                   StatusCode::INVALID_ARGUMENT});
  cases.push_back({"keepalive unknown session",
                   [&] {
                     v1::KeepAliveRequest r;
                     r.set_device("nic0");
                     r.set_session_id(31337);
                     v1::KeepAliveResponse out;
                     return s.sessions->KeepAlive(Ctx().get(), r, &out);
                   },
                   StatusCode::NOT_FOUND});
  cases.push_back({"open_session ttl too long",
                   [&] {
                     v1::OpenSessionRequest r;
                     r.set_device("nic0");
                     r.set_ttl_ms(uint64_t{25} * 3600 * 1000);
                     v1::OpenSessionResponse out;
                     return s.sessions->OpenSession(Ctx().get(), r, &out);
                   },
                   StatusCode::INVALID_ARGUMENT});
  cases.push_back({"malformed session metadata",
                   [&] {
                     grpc::ClientContext ctx;
                     ctx.AddMetadata("iommu-session-id", "twelve");
                     v1::MapRequest r = GoodMap();
                     v1::MapResponse out;
                     return s.dma->Map(&ctx, r, &out);
                   },
                   StatusCode::INVALID_ARGUMENT});
  cases.push_back({"get_domain unknown",
                   [&] {
                     v1::GetDomainRequest r;
                     r.set_domain_id(999999);
                     v1::GetDomainResponse out;
                     return s.domains->GetDomain(Ctx().get(), r, &out);
                   },
                   StatusCode::NOT_FOUND});
  cases.push_back({"walk_domain unknown",
                   [&] {
                     v1::WalkDomainRequest r;
                     r.set_domain_id(999999);
                     v1::WalkDomainResponse out;
                     return s.domains->WalkDomain(Ctx().get(), r, &out);
                   },
                   StatusCode::NOT_FOUND});
  cases.push_back({"walk_domain too many leaves",
                   [&] {
                     v1::WalkDomainRequest r;
                     r.set_domain_id(1);
                     r.set_max_leaves(65537);
                     v1::WalkDomainResponse out;
                     return s.domains->WalkDomain(Ctx().get(), r, &out);
                   },
                   StatusCode::INVALID_ARGUMENT});
  cases.push_back({"get_iova_ranges unknown device",
                   [&] {
                     v1::GetIovaRangesRequest r;
                     r.set_device("nosuch0");
                     v1::GetIovaRangesResponse out;
                     return s.domains->GetIovaRanges(Ctx().get(), r, &out);
                   },
                   StatusCode::NOT_FOUND});

  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const grpc::Status status = c.call();
    EXPECT_EQ(status.error_code(), c.code) << status.error_message();
    // Every message names a field and its value: "field=value: why".
    EXPECT_NE(status.error_message().find('='), std::string::npos) << status.error_message();
  }
  const v1::GetStatsResponse after = Stats();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(before, after))
      << "before:\n"
      << before.DebugString() << "\nafter:\n"
      << after.DebugString();
  EXPECT_EQ(daemon_.Stop(), 0);
}

}  // namespace
}  // namespace iommu::testing
