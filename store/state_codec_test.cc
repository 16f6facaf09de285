// SPDX-License-Identifier: Apache-2.0
// The state records' encoding: every record kind round-trips through the
// key-value entries, the hand-written mapping record is what the generated
// parser reads field by field, and damage is caught naming the record.

#include "store/state_codec.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iommu/state/v1/records.pb.h"

namespace iommu::store {
namespace {

using ::testing::HasSubstr;

core::MappingState Mapping() {
  core::MappingState m;
  m.mapping_id = 77;
  m.kind = core::internal::MappingKind::kMapSg;
  m.device = "nic0";
  m.session_id = 0x1234'5678'9abc'def0;
  m.iova = core::Iova(0xffff'f000'0000);
  m.iova_size_bytes = 3 * 4096;
  m.iova_from_allocator = true;
  m.dma_offset = 0x40;
  m.prot = core::Prot::kRead | core::Prot::kWrite;
  m.pt_ranges.push_back({core::Iova(0xffff'f000'0000), {core::PhysAddr(0x1000'0000), 4096}});
  m.pt_ranges.push_back({core::Iova(0xffff'f000'1000), {core::PhysAddr(0x8'8000'0000), 8192}});
  m.pieces.push_back({core::Iova(0xffff'f000'0040), core::PhysAddr(0x1000'0040), 100});
  m.pieces.push_back({core::Iova(0xffff'f000'1000), core::PhysAddr(0x8'8000'0000), 8192});
  m.buffer_refs.push_back({.id = 5});
  m.buffer_refs.push_back({.id = 1ull << 40});
  m.export_id = 9;
  m.mapped_bytes = 8292;
  m.segments.push_back({core::Iova(0xffff'f000'0040), 100});
  m.segments.push_back({core::Iova(0xffff'f000'1000), 8192});
  return m;
}

core::DurableState Decode(const EncodedChanges& e) {
  core::DurableState state;
  uint32_t version = 0;
  for (const KvWrite& w : e.writes()) {
    EXPECT_TRUE(w.value.has_value());
    const absl::Status s = DecodeEntry(w.key, *w.value, &state, &version);
    EXPECT_TRUE(s.ok()) << s;
  }
  return state;
}

TEST(StateCodecTest, HandWrittenMappingRecordIsWhatTheGeneratedParserReads) {
  const core::MappingState m = Mapping();
  std::string bytes;
  AppendMappingRecord(m, &bytes);
  state::v1::MappingRecord r;
  ASSERT_TRUE(r.ParseFromString(bytes));
  EXPECT_EQ(r.mapping_id(), 77u);
  EXPECT_EQ(r.kind(), state::v1::MAPPING_KIND_MAP_SG);
  EXPECT_EQ(r.device(), "nic0");
  EXPECT_EQ(r.session_id(), 0x1234'5678'9abc'def0u);
  EXPECT_EQ(r.iova(), 0xffff'f000'0000u);
  EXPECT_EQ(r.iova_size_bytes(), 3u * 4096);
  EXPECT_TRUE(r.iova_from_allocator());
  EXPECT_EQ(r.dma_offset(), 0x40u);
  EXPECT_EQ(r.prot(), uint32_t(core::Prot::kRead | core::Prot::kWrite));
  EXPECT_THAT(r.pt_ranges(), ::testing::ElementsAre(0xffff'f000'0000u, 0x1000'0000u, 4096u,
                                                    0xffff'f000'1000u, 0x8'8000'0000u, 8192u));
  EXPECT_THAT(r.pieces(), ::testing::ElementsAre(0xffff'f000'0040u, 0x1000'0040u, 100u,
                                                 0xffff'f000'1000u, 0x8'8000'0000u, 8192u));
  EXPECT_THAT(r.buffer_ids(), ::testing::ElementsAre(5u, 1ull << 40));
  EXPECT_EQ(r.owned_buffer_id(), 0u);
  EXPECT_EQ(r.export_id(), 9u);
  EXPECT_EQ(r.mapped_bytes(), 8292u);
  EXPECT_THAT(r.segments(),
              ::testing::ElementsAre(0xffff'f000'0040u, 100u, 0xffff'f000'1000u, 8192u));
  // And the generated serializer writes the very same bytes (proto3's
  // canonical form: fields in order, zeros omitted, repeated scalars packed).
  EXPECT_EQ(r.SerializeAsString(), bytes);
}

TEST(StateCodecTest, EveryRecordKindRoundTrips) {
  const core::MappingState m = Mapping();
  core::StateChanges c;
  c.mapping_puts.push_back({3, &m});
  c.domain_puts.push_back(
      {.domain_id = 3,
       .smmu = "smmu2",
       .type = core::DomainType::kUnmanaged,
       .granule_bytes = 16384,
       .owner = "vf0",
       .granted = {"nic0", "gpu0"},
       .session_id = 4,
       .mapping_ids_reserved = 8192,
       .msi_window = core::IovaWindow{.base = core::Iova(0x800'0000), .size_bytes = 1 << 20}});
  c.attachment_puts.push_back({"vf0", 3});
  c.buffer_puts.push_back({.buffer_id = 5,
                           .device = "nic0",
                           .pool = "dram",
                           .placement = core::Placement::kHuge,
                           .runs = {{core::PhysAddr(0x8'8000'0000), 2 << 20}},
                           .backs_alloc = true});
  c.export_puts.push_back({.export_id = 9,
                           .token = "iexp_0123",
                           .exporter = "gpu0",
                           .exporter_granule = 4096,
                           .chunks = {{core::PhysAddr(0x1000'0000), 4096}},
                           .buffer_ids = {5},
                           .importers_allowed = {"sata0"},
                           .writable = true});
  c.session_puts.push_back({.session_id = 0xdead'beef, .device = "cam0", .ttl = absl::Seconds(30)});
  c.counters.push_back({core::StateCounter::kBufferId, 6});
  c.session_key = std::make_pair(0x1111ull, 0x2222ull);
  EncodedChanges e;
  e.Encode(c);
  const core::DurableState s = Decode(e);
  ASSERT_EQ(s.mappings.size(), 1u);
  EXPECT_EQ(s.mappings[0].first, 3u);
  const core::MappingState& got = s.mappings[0].second;
  EXPECT_EQ(got.mapping_id, m.mapping_id);
  EXPECT_EQ(got.iova, m.iova);
  EXPECT_EQ(got.pt_ranges, m.pt_ranges);
  ASSERT_EQ(got.pieces.size(), 2u);
  EXPECT_EQ(got.pieces[1].phys, m.pieces[1].phys);
  ASSERT_EQ(got.buffer_refs.size(), 2u);
  EXPECT_EQ(got.buffer_refs[1].id, 1ull << 40);
  ASSERT_EQ(got.segments.size(), 2u);
  EXPECT_EQ(got.segments[1].length_bytes, 8192u);
  ASSERT_EQ(s.domains.size(), 1u);
  EXPECT_EQ(s.domains[0].granted, (std::vector<std::string>{"nic0", "gpu0"}));
  EXPECT_EQ(s.domains[0].msi_window, c.domain_puts[0].msi_window);
  EXPECT_EQ(s.domains[0].type, core::DomainType::kUnmanaged);
  ASSERT_EQ(s.buffers.size(), 1u);
  EXPECT_EQ(s.buffers[0].runs, c.buffer_puts[0].runs);
  EXPECT_TRUE(s.buffers[0].backs_alloc);
  ASSERT_EQ(s.exports.size(), 1u);
  EXPECT_EQ(s.exports[0].token, "iexp_0123");
  EXPECT_EQ(s.exports[0].importers_allowed, (std::vector<std::string>{"sata0"}));
  ASSERT_EQ(s.sessions.size(), 1u);
  EXPECT_EQ(s.sessions[0].ttl, absl::Seconds(30));
  ASSERT_EQ(s.attachments.size(), 1u);
  EXPECT_EQ(s.attachments[0].domain_id, 3u);
  ASSERT_EQ(s.counters.size(), 1u);
  EXPECT_EQ(s.counters[0].second, 6u);
  EXPECT_EQ(s.session_key, c.session_key);
}

TEST(StateCodecTest, DamageIsCaughtNamingTheRecord) {
  const core::MappingState m = Mapping();
  core::StateChanges c;
  c.mapping_puts.push_back({3, &m});
  EncodedChanges e;
  e.Encode(c);
  const std::string key(e.writes()[0].key);
  const std::string value(*e.writes()[0].value);
  core::DurableState state;
  uint32_t version = 0;
  // A flipped bit anywhere in the value.
  for (size_t i = 0; i < value.size(); ++i) {
    std::string bad = value;
    bad[i] ^= 0x10;
    const absl::Status s = DecodeEntry(key, bad, &state, &version);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << i;
    EXPECT_THAT(s.message(), HasSubstr("m/3/0xfffff0000000 (mapping)"));
  }
  // The record moved under another key.
  std::string other = key;
  other[16] ^= 1;
  EXPECT_EQ(DecodeEntry(other, value, &state, &version).code(), absl::StatusCode::kDataLoss);
  // Truncated.
  EXPECT_EQ(DecodeEntry(key, value.substr(0, 3), &state, &version).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_TRUE(state.mappings.empty());
  // An unknown kind of record.
  EXPECT_EQ(DecodeEntry("z", value, &state, &version).code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace iommu::store
