// SPDX-License-Identifier: Apache-2.0
// The reply bounds of server/limits.h against messages with every field at
// its largest, and the checks that derive from them.

#include "server/limits.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "iommu/v1/device.pb.h"
#include "iommu/v1/dma.pb.h"
#include "iommu/v1/domain.pb.h"
#include "iommu/v1/memory.pb.h"
#include "store/kv_store.h"
#include "store/state_codec.h"

namespace iommu::server {
namespace {

using ::testing::HasSubstr;
namespace rb = reply_bytes;

constexpr uint64_t kMax = UINT64_MAX;

// The bytes `n` more entries add to a repeated field, framing included.
template <typename Message, typename Add>
size_t BytesPerEntry(Message m, Add add, int n) {
  const size_t before = m.ByteSizeLong();
  for (int i = 0; i < n; ++i) add(&m);
  return (m.ByteSizeLong() - before + n - 1) / n;
}

TEST(ReplyBytesTest, BatchResultsStayWithinTheirBoundPerUnitOfWeight) {
  v1::BatchResponse response;
  response.set_sequence(kMax);
  EXPECT_LE(response.ByteSizeLong(), rb::kBatchResponseFixed);
  // An error with the longest message a result carries, the largest code.
  const std::string message(rb::kMaxResultMessageBytes, 'm');
  EXPECT_LE(BytesPerEntry(
                v1::BatchResponse(),
                [&](v1::BatchResponse* r) {
                  v1::BatchResult* e = r->add_results();
                  e->set_code(16);
                  e->set_message(message);
                },
                1),
            rb::kBatchErrorResult);
  // A Map, a Translate.
  v1::BatchResult map;
  v1::MapResponse* m = map.mutable_map();
  m->set_dma_addr(kMax);
  m->set_mapping_id(kMax);
  m->set_domain_id(kMax);
  m->set_iova_size_bytes(kMax);
  v1::BatchResult translate;
  translate.mutable_translate()->set_phys_addr(kMax);
  translate.mutable_translate()->set_faulted(true);
  translate.mutable_translate()->set_fault_type(v1::FAULT_TYPE_UNKNOWN_STREAM);
  for (const v1::BatchResult& r : {map, translate}) {
    v1::BatchResponse one;
    *one.add_results() = r;
    EXPECT_LE(one.ByteSizeLong(), rb::kBatchResultPerOp);
  }
  // A MapSg of n segments weighs 1 + n.
  for (int n : {0, 1, 7, 1000}) {
    v1::BatchResponse one;
    v1::MapSgResponse* sg = one.add_results()->mutable_map_sg();
    sg->set_mapping_id(kMax);
    sg->set_domain_id(kMax);
    sg->set_iova(kMax);
    sg->set_iova_size_bytes(kMax);
    sg->set_segment_count(UINT32_MAX);
    for (int i = 0; i < n; ++i) {
      v1::DmaSegment* s = sg->add_segments();
      s->set_dma_addr(kMax);
      s->set_length_bytes(kMax);
    }
    EXPECT_LE(one.ByteSizeLong(), rb::kBatchResultPerOp * (1 + n)) << n;
    EXPECT_LE(sg->ByteSizeLong(), rb::kMapSgFixed + rb::kDmaSegment * n) << n;
  }
}

TEST(ReplyBytesTest, BufferTranslateAndWalkRepliesStayWithinTheirBounds) {
  const std::string name(256, 'n');  // device and pool names as long as a request's
  for (int runs : {0, 1, 1000}) {
    v1::AllocBufferResponse buffer;
    v1::Buffer* b = buffer.mutable_buffer();
    b->set_buffer_id(kMax);
    b->set_device(name);
    b->set_size_bytes(kMax);
    b->set_pool(name);
    b->set_placement(v1::PLACEMENT_HUGE);
    b->set_map_count(kMax);
    v1::AllocResponse alloc;
    alloc.set_dma_addr(kMax);
    alloc.set_mapping_id(kMax);
    alloc.set_domain_id(kMax);
    alloc.set_buffer_id(kMax);
    alloc.set_size_bytes(kMax);
    for (uint64_t p : {uint64_t{1} << 30, uint64_t{2} << 20, uint64_t{4} << 10}) {
      alloc.add_page_sizes_bytes(p);
    }
    v1::GetSgTableResponse table;
    table.set_size_bytes(kMax);
    table.set_export_token(std::string(37, 't'));
    for (int i = 0; i < runs; ++i) {
      for (v1::PhysRun* r : {b->add_runs(), alloc.add_runs(), table.add_chunks()}) {
        r->set_phys_addr(kMax);
        r->set_size_bytes(kMax);
      }
    }
    const size_t bound = rb::kBufferFixed + 2 * name.size() + rb::kPhysRun * runs;
    EXPECT_LE(buffer.ByteSizeLong(), bound) << runs;
    EXPECT_LE(alloc.ByteSizeLong(), bound) << runs;
    EXPECT_LE(table.ByteSizeLong(), bound) << runs;
  }
  for (int pieces : {0, 1, 3, 1000}) {
    v1::TranslateBatchResponse batch;
    v1::TranslateResponse* t = batch.add_results();
    t->set_faulted(true);
    t->set_fault_type(v1::FAULT_TYPE_UNKNOWN_STREAM);
    t->set_fault_iova(kMax);
    t->set_fault_seq(kMax);
    for (int i = 0; i < pieces; ++i) {
      v1::TranslatedPage* p = t->add_pages();
      p->set_iova(kMax);
      p->set_phys_addr(kMax);
      p->set_length_bytes(kMax);
      p->set_iotlb_hit(true);
      p->set_stale(true);
    }
    EXPECT_LE(batch.ByteSizeLong(), rb::kTranslateFixed + rb::kTranslatedPage * pieces);
  }
  v1::WalkDomainResponse walk;
  walk.set_domain_id(kMax);
  walk.set_next_iova(kMax);
  EXPECT_LE(walk.ByteSizeLong(), rb::kWalkFixed);
  EXPECT_LE(
      BytesPerEntry(
          walk,
          [](v1::WalkDomainResponse* w) {
            v1::PageTableLeaf* l = w->add_leaves();
            l->set_iova(kMax);
            l->set_phys_addr(kMax);
            l->set_size_bytes(kMax);
            for (auto set :
                 {&v1::PageTableLeaf::set_read, &v1::PageTableLeaf::set_write,
                  &v1::PageTableLeaf::set_exec, &v1::PageTableLeaf::set_privileged_read,
                  &v1::PageTableLeaf::set_privileged_write, &v1::PageTableLeaf::set_privileged_exec,
                  &v1::PageTableLeaf::set_mmio, &v1::PageTableLeaf::set_cacheable}) {
              (l->*set)(true);
            }
          },
          100),
      rb::kPageTableLeaf);
}

// The records a request writes, through the store's own codec, with every
// number at its largest: within record_bytes.
TEST(ReplyBytesTest, DurableRecordsStayWithinTheirBounds) {
  namespace rec = record_bytes;
  const std::string name(256, 'n');
  for (int n : {1, 100, 1000}) {
    SCOPED_TRACE(n);
    core::MappingState m;
    m.mapping_id = kMax;
    m.kind = core::internal::MappingKind::kImport;
    m.device = name;
    m.session_id = kMax;
    m.iova = core::Iova(kMax);
    m.iova_size_bytes = kMax;
    m.dma_offset = kMax;
    m.owned_buffer_id = kMax;
    m.export_id = kMax;
    m.mapped_bytes = kMax;
    m.pt_ranges.clear();
    m.pieces.clear();
    for (int i = 0; i < n; ++i) {
      m.pt_ranges.push_back({core::Iova(kMax), {core::PhysAddr(kMax), kMax}});
      m.pieces.push_back({core::Iova(kMax), core::PhysAddr(kMax), kMax});
      m.buffer_refs.push_back({.id = kMax});
      m.segments.push_back({core::Iova(kMax), kMax});
    }
    core::BufferState b{.buffer_id = kMax, .device = name, .session_id = kMax, .pool = name};
    core::ExportState e{.export_id = kMax,
                        .token = std::string(37, 't'),
                        .exporter = name,
                        .exporter_granule = kMax};
    for (int i = 0; i < n; ++i) {
      b.runs.push_back({core::PhysAddr(kMax), kMax});
      e.chunks.push_back({core::PhysAddr(kMax), kMax});
      e.buffer_ids.push_back(kMax);
    }
    const core::RequestState request{.principal = "device:" + name,
                                     .request_id = std::string(64, 'r'),
                                     .fingerprint = kMax,
                                     .reply = std::string(size_t(n) * 1000, 'x'),
                                     .recorded = absl::InfiniteFuture()};
    core::StateChanges changes;
    changes.mapping_puts.push_back({kMax, &m});
    changes.buffer_puts.push_back(b);
    changes.export_puts.push_back(e);
    changes.request_put = &request;
    store::EncodedChanges encoded;
    encoded.Encode(changes);
    ASSERT_EQ(encoded.size(), 4u);
    size_t largest_record = 0, reply_record = 0;
    for (const store::KvWrite& w : encoded.writes()) {
      ASSERT_TRUE(w.value.has_value());
      if (w.key[0] == 'r') {
        reply_record = w.value->size();
      } else {
        largest_record = std::max(largest_record, w.value->size());
      }
    }
    EXPECT_LE(largest_record, rec::kRecordFixed + rec::kPerPiece * n);
    EXPECT_LE(reply_record, rec::kRecordFixed + request.reply.size());
  }
}

TEST(LimitValuesTest, TheDefaultsAreConsistentAndEachFlagIsChecked) {
  const Limits defaults;
  EXPECT_TRUE(ValidateLimits(defaults).ok()) << ValidateLimits(defaults);
  // The largest WalkDomain (65536 leaves) fits under the defaults too.
  EXPECT_LE(rb::kWalkFixed + 65536 * rb::kPageTableLeaf, defaults.max_message_bytes);

  Limits zero = defaults;
  zero.max_streams_per_device = 0;
  EXPECT_THAT(ValidateLimits(zero).message(), HasSubstr("max_streams_per_device=0"));
  Limits tiny = defaults;
  tiny.max_message_bytes = 1000;
  EXPECT_THAT(ValidateLimits(tiny).message(), HasSubstr("max_message_bytes=1000"));
  // Counts whose replies could not fit are refused, naming both flags.
  Limits ops = defaults;
  ops.max_batch_ops = 1 << 20;
  const absl::Status s = ValidateLimits(ops);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("max_batch_ops=1048576"));
  EXPECT_THAT(s.message(), HasSubstr("--max_message_bytes=4194304"));
  Limits runs = defaults;
  runs.max_buffer_runs = 1 << 20;
  EXPECT_THAT(ValidateLimits(runs).message(), HasSubstr("max_buffer_runs=1048576"));
  Limits segments = defaults;
  segments.max_sg_segments = 1 << 20;
  EXPECT_THAT(ValidateLimits(segments).message(), HasSubstr("max_sg_segments=1048576"));

  // With a state store, what a request records must fit in one of its values.
  EXPECT_TRUE(ValidateLimits(defaults, store::kMaxValueBytes).ok());
  const absl::Status small_store = ValidateLimits(defaults, size_t{1} << 20);
  EXPECT_EQ(small_store.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(small_store.message(), HasSubstr("max_message_bytes=4194304: a reply recorded"));
  Limits big = defaults;
  big.max_message_bytes = 64u << 20;
  big.max_buffer_runs = 1 << 20;
  EXPECT_TRUE(ValidateLimits(big).ok());  // no store: nothing is recorded
  EXPECT_THAT(ValidateLimits(big, store::kMaxValueBytes).message(),
              HasSubstr("more than the state store's"));
}

TEST(LimitValuesTest, TranslatedPiecesAreThePagesTouched) {
  EXPECT_EQ(MostTranslatedPieces(0x1000, 1), 1u);
  EXPECT_EQ(MostTranslatedPieces(0x1000, 0x1000), 1u);
  EXPECT_EQ(MostTranslatedPieces(0x1fff, 2), 2u);  // straddles a page boundary
  EXPECT_EQ(MostTranslatedPieces(0x1800, 0x2000), 3u);
  EXPECT_EQ(MostTranslatedPieces(0, uint64_t{1} << 30), uint64_t{1} << 18);
  EXPECT_EQ(MostTranslatedPieces(0, kMax), uint64_t{1} << 52);
  // The core refuses these; they cost one piece here.
  EXPECT_EQ(MostTranslatedPieces(0x1000, 0), 1u);
  EXPECT_EQ(MostTranslatedPieces(kMax, 2), 1u);

  const Limits limits;
  EXPECT_TRUE(CheckReplyFits(limits, "length_bytes", 4096, MostTranslateReplyBytes(0, 4096)).ok());
  const absl::Status big = CheckReplyFits(limits, "length_bytes", uint64_t{1} << 30,
                                          MostTranslateReplyBytes(0, uint64_t{1} << 30));
  EXPECT_EQ(big.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(big.message(), HasSubstr("length_bytes=0x40000000"));
  EXPECT_THAT(big.message(), HasSubstr("--max_message_bytes=4194304"));
}

TEST(LimitValuesTest, BoundedMessagesAreCutAtACharacterAndMarked) {
  EXPECT_EQ(BoundedMessage("short", 10), "short");
  const std::string cut = BoundedMessage(std::string(5000, 'a'), 64);
  EXPECT_LE(cut.size(), 64u);
  EXPECT_THAT(cut, ::testing::EndsWith("...(5000 bytes)"));
  // Never inside a two-byte character.
  std::string accents;
  for (int i = 0; i < 100; ++i) accents += "\xc3\xa9";
  const std::string shown = BoundedMessage(accents, 40);
  const std::string kept = shown.substr(0, shown.find("..."));
  EXPECT_EQ(kept.size() % 2, 0u);
}

}  // namespace
}  // namespace iommu::server
