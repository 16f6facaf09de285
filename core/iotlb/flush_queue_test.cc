// SPDX-License-Identifier: Apache-2.0
#include "core/iotlb/flush_queue.h"

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "core/iotlb/iotlb.h"
#include "core/workloads/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using ::testing::ElementsAre;
using ::testing::StartsWith;

constexpr uint64_t kPage = 4096;

// A test clock the queue reads through its `now` callback.
struct FakeClock {
  absl::Time t = absl::UnixEpoch();
  void Advance(absl::Duration d) { t += d; }
};

FlushQueueEntry Entry(uint64_t iova, uint64_t payload = 0) {
  FlushQueueEntry e;
  e.tag = TlbTag{1, 0};
  e.iova = Iova(iova);
  e.size_bytes = kPage;
  e.payload[0] = payload;
  e.payload[1] = 1;
  return e;
}

// Records callbacks as events: "inv" for an invalidation, the payload of a
// release otherwise.
class FlushQueueTest : public ::testing::Test {
 protected:
  FlushQueue Make(uint32_t capacity, absl::Duration timeout = absl::Milliseconds(10)) {
    FlushQueueCallbacks cb;
    cb.invalidate = [this] { events_.push_back("inv"); };
    cb.release = [this](const FlushQueueEntry& e) {
      events_.push_back(std::to_string(e.payload[0]));
    };
    cb.now = [this] { return clock_.t; };
    absl::StatusOr<FlushQueue> q = FlushQueue::Create({capacity, timeout}, std::move(cb));
    EXPECT_TRUE(q.ok()) << q.status();
    return *std::move(q);
  }
  void MustEnqueue(FlushQueue& q, uint64_t payload) {
    ASSERT_TRUE(q.Enqueue(Entry(payload * kPage, payload)).ok());
    q.CheckInvariants();
  }

  FakeClock clock_;
  std::vector<std::string> events_;
};

TEST_F(FlushQueueTest, CreateRejectsBadConfigNamingTheField) {
  auto callbacks = [] {
    FlushQueueCallbacks cb;
    cb.invalidate = [] {};
    cb.release = [](const FlushQueueEntry&) {};
    return cb;
  };
  struct Case {
    FlushQueueConfig config;
    FlushQueueCallbacks cb;
    std::string prefix;
  };
  FlushQueueCallbacks no_inv = callbacks();
  no_inv.invalidate = nullptr;
  FlushQueueCallbacks no_rel = callbacks();
  no_rel.release = nullptr;
  std::vector<Case> cases;
  cases.push_back({{0, absl::Milliseconds(1)}, callbacks(), "capacity=0:"});
  cases.push_back({{4, absl::ZeroDuration()}, callbacks(), "timeout=\"0\":"});
  cases.push_back({{4, absl::Milliseconds(-1)}, callbacks(), "timeout=\"-1ms\":"});
  cases.push_back({{4, absl::InfiniteDuration()}, callbacks(), "timeout=\"inf\":"});
  cases.push_back({{4, absl::Milliseconds(1)}, no_inv, "callbacks.invalidate=\"\":"});
  cases.push_back({{4, absl::Milliseconds(1)}, no_rel, "callbacks.release=\"\":"});
  for (Case& c : cases) {
    absl::StatusOr<FlushQueue> q = FlushQueue::Create(c.config, std::move(c.cb));
    ASSERT_FALSE(q.ok()) << c.prefix;
    EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(q.status().message()), StartsWith(c.prefix));
  }
  // The default clock is absl::Now.
  absl::StatusOr<FlushQueue> q = FlushQueue::Create({4, absl::Hours(1)}, callbacks());
  ASSERT_TRUE(q.ok());
  const absl::Time before = absl::Now();
  ASSERT_TRUE(q->Enqueue(Entry(0x1000)).ok());
  EXPECT_GE(*q->NextDeadline(), before + absl::Hours(1));
}

TEST_F(FlushQueueTest, FullQueueFlushesBeforeEnqueueing) {
  FlushQueue q = Make(4);
  for (uint64_t i = 1; i <= 4; ++i) MustEnqueue(q, i);
  EXPECT_TRUE(events_.empty());
  EXPECT_EQ(q.stats().depth, 4u);
  MustEnqueue(q, 5);
  EXPECT_THAT(events_, ElementsAre("inv", "1", "2", "3", "4"));
  EXPECT_EQ(q.stats().flushes_full, 1u);
  EXPECT_EQ(q.stats().flushes_timeout, 0u);
  EXPECT_EQ(q.stats().entries_released, 4u);
  EXPECT_EQ(q.stats().depth, 1u);
  EXPECT_EQ(q.stats().max_depth, 4u);
  EXPECT_EQ(q.stats().enqueued, 5u);
}

TEST_F(FlushQueueTest, PollFlushesOnlyOnceTheOldestTimedOut) {
  FlushQueue q = Make(16, absl::Milliseconds(10));
  EXPECT_FALSE(q.Poll());
  EXPECT_EQ(q.NextDeadline(), std::nullopt);
  MustEnqueue(q, 1);
  clock_.Advance(absl::Milliseconds(4));
  MustEnqueue(q, 2);
  EXPECT_EQ(q.NextDeadline(), absl::UnixEpoch() + absl::Milliseconds(10));
  clock_.Advance(absl::Microseconds(5999));
  EXPECT_FALSE(q.Poll());
  EXPECT_TRUE(events_.empty());
  clock_.Advance(absl::Microseconds(1));
  EXPECT_TRUE(q.Poll());
  q.CheckInvariants();
  EXPECT_THAT(events_, ElementsAre("inv", "1", "2"));
  EXPECT_EQ(q.stats().flushes_timeout, 1u);
  EXPECT_EQ(q.stats().depth, 0u);
  EXPECT_FALSE(q.Poll());
  EXPECT_EQ(q.stats().flushes_timeout, 1u);
}

TEST_F(FlushQueueTest, EnqueueFlushesFirstWhenTheOldestTimedOut) {
  FlushQueue q = Make(16, absl::Milliseconds(10));
  MustEnqueue(q, 1);
  clock_.Advance(absl::Milliseconds(10));
  MustEnqueue(q, 2);
  EXPECT_THAT(events_, ElementsAre("inv", "1"));
  EXPECT_EQ(q.stats().flushes_timeout, 1u);
  EXPECT_EQ(q.stats().depth, 1u);
  // The new entry's age starts at its own enqueue.
  EXPECT_EQ(q.NextDeadline(), absl::UnixEpoch() + absl::Milliseconds(20));
}

TEST_F(FlushQueueTest, ExplicitFlushAndEmptyFlush) {
  FlushQueue q = Make(8);
  EXPECT_EQ(q.Flush(), 0u);
  EXPECT_TRUE(events_.empty());
  EXPECT_EQ(q.stats().flushes_explicit, 0u);
  MustEnqueue(q, 7);
  MustEnqueue(q, 8);
  EXPECT_EQ(q.Flush(), 2u);
  q.CheckInvariants();
  EXPECT_THAT(events_, ElementsAre("inv", "7", "8"));
  EXPECT_EQ(q.stats().flushes_explicit, 1u);
  EXPECT_EQ(q.stats().entries_released, 2u);
}

TEST_F(FlushQueueTest, ClockSteppingBackDoesNotReorderAges) {
  FlushQueue q = Make(8, absl::Milliseconds(10));
  clock_.Advance(absl::Milliseconds(5));
  MustEnqueue(q, 1);
  clock_.Advance(absl::Milliseconds(-3));
  MustEnqueue(q, 2);
  EXPECT_EQ(q.NextDeadline(), absl::UnixEpoch() + absl::Milliseconds(15));
}

TEST_F(FlushQueueTest, EnqueueErrorsLeaveNoTrace) {
  FlushQueue q = Make(2);
  MustEnqueue(q, 1);
  MustEnqueue(q, 2);  // full: the next valid Enqueue would flush
  FlushQueueEntry bad = Entry(0x1000);
  bad.size_bytes = 0;
  absl::Status s = q.Enqueue(bad);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), StartsWith("size_bytes=0:"));
  bad = Entry(0xffff'ffff'ffff'f000);
  bad.size_bytes = 0x2000;
  s = q.Enqueue(bad);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), StartsWith("size_bytes=0x2000:"));
  EXPECT_TRUE(events_.empty());
  EXPECT_EQ(q.stats().enqueued, 2u);
  EXPECT_EQ(q.stats().depth, 2u);
  EXPECT_EQ(q.stats().flushes_full, 0u);
  q.CheckInvariants();
}

TEST(FlushQueueDeathTest, CallbackReenteringTheQueueAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        FlushQueue* self = nullptr;
        FlushQueueCallbacks cb;
        cb.invalidate = [&self] { self->Flush(); };
        cb.release = [](const FlushQueueEntry&) {};
        absl::StatusOr<FlushQueue> q = FlushQueue::Create({4, absl::Seconds(1)}, cb);
        self = &*q;
        (void)q->Enqueue(Entry(0x1000));
        q->Flush();
      },
      "re-entered");
}

// Random operations against a FIFO reference, checking the safety property
// with a real IOTLB behind it: lazy unmaps mark the range stale and enqueue
// it; the flush invalidates the domain's ASID; when a release runs, the
// invalidation has completed and the IOTLB holds nothing for the range; the
// released IOVA then becomes reusable, and only then.
TEST(FlushQueueModel, RandomLazyUnmapsNeverReleaseBeforeInvalidation) {
  absl::StatusOr<Iotlb> tlb_or = Iotlb::Create({16, 4, {12}});
  ASSERT_TRUE(tlb_or.ok());
  Iotlb& tlb = *tlb_or;
  const TlbTag tag{3, 1};
  constexpr uint64_t kPages = 64;
  FakeClock clock;
  workloads::Rng rng(0xf1a5);
  auto rand = [&](uint64_t n) { return rng.Next() % n; };

  // Page state: free (may be mapped), mapped, or pending (unmapped lazily,
  // not reusable until released).
  enum class Page { kFree, kMapped, kPending };
  std::vector<Page> pages(kPages, Page::kFree);
  std::deque<uint64_t> reference;  // pending pfns, enqueue order
  uint64_t invalidations = 0, releases = 0, pending_at_last_inv = 0;
  bool in_invalidate = false;

  FlushQueueCallbacks cb;
  cb.invalidate = [&] {
    in_invalidate = true;
    tlb.InvalidateAsid(tag.asid, tag.vmid);
    ++invalidations;
    pending_at_last_inv = reference.size();
    in_invalidate = false;
  };
  cb.release = [&](const FlushQueueEntry& e) {
    ASSERT_FALSE(in_invalidate);
    ASSERT_FALSE(reference.empty());
    ASSERT_EQ(e.payload[0], reference.front()) << "release out of order";
    ASSERT_GT(pending_at_last_inv, 0u) << "release not covered by an invalidation";
    --pending_at_last_inv;
    reference.pop_front();
    tlb.ForEachEntry([&](const IotlbEntryView& v) {
      EXPECT_FALSE(v.tag == e.tag && v.iova == e.iova) << "TLB entry survives its release";
    });
    ASSERT_EQ(pages[e.payload[0]], Page::kPending);
    pages[e.payload[0]] = Page::kFree;
    ++releases;
  };
  cb.now = [&] { return clock.t; };
  absl::StatusOr<FlushQueue> q_or = FlushQueue::Create({8, absl::Milliseconds(10)}, cb);
  ASSERT_TRUE(q_or.ok());
  FlushQueue& q = *q_or;

  for (int op = 0; op < 20000; ++op) {
    const uint64_t pfn = rand(kPages);
    const Iova iova(0x100000 + pfn * kPage);
    switch (rand(6)) {
      case 0:  // map
        if (pages[pfn] == Page::kFree) pages[pfn] = Page::kMapped;
        break;
      case 1:
      case 2: {  // device access: walk on miss, stale hits only on pending
                 // pages
        const std::optional<IotlbHit> hit = tlb.Lookup(tag, iova);
        if (hit.has_value()) {
          ASSERT_NE(pages[pfn], Page::kFree) << "translation for a released IOVA";
          EXPECT_EQ(hit->stale, pages[pfn] == Page::kPending);
        } else if (pages[pfn] == Page::kMapped) {
          ASSERT_TRUE(tlb.Insert(tag, iova, 12, PhysAddr(pfn * kPage), Grant(1)).ok());
        }
        break;
      }
      case 3: {  // lazy unmap
        if (pages[pfn] != Page::kMapped) break;
        ASSERT_TRUE(tlb.MarkStale(tag, iova, kPage).ok());
        pages[pfn] = Page::kPending;
        FlushQueueEntry e;
        e.tag = tag;
        e.iova = iova;
        e.size_bytes = kPage;
        e.payload[0] = pfn;
        // Pages enqueued now wait for the next invalidation, not a past one.
        const uint64_t flushes =
            q.stats().flushes_full + q.stats().flushes_timeout + q.stats().flushes_explicit;
        ASSERT_TRUE(q.Enqueue(e).ok());
        if (q.stats().flushes_full + q.stats().flushes_timeout + q.stats().flushes_explicit ==
            flushes) {
          EXPECT_EQ(pending_at_last_inv, 0u);
        }
        reference.push_back(pfn);
        break;
      }
      case 4:
        clock.Advance(absl::Milliseconds(rand(4)));
        q.Poll();
        break;
      case 5:
        if (rand(8) == 0) q.Flush();
        break;
    }
    q.CheckInvariants();
    tlb.CheckInvariants();
    ASSERT_EQ(q.stats().depth, reference.size());
    if (HasFatalFailure()) FAIL() << "after op " << op;
  }
  const FlushQueueStats& s = q.stats();
  EXPECT_EQ(s.enqueued, s.entries_released + s.depth);
  EXPECT_EQ(releases, s.entries_released);
  EXPECT_EQ(invalidations, s.flushes_full + s.flushes_timeout + s.flushes_explicit);
  EXPECT_GT(s.flushes_full, 10u);
  EXPECT_GT(s.flushes_timeout, 10u);
  EXPECT_GT(s.flushes_explicit, 10u);
  EXPECT_GT(tlb.stats().stale_hits, 10u);
  EXPECT_LE(s.max_depth, 8u);
}

}  // namespace
}  // namespace iommu::core
