#include "core/iotlb/fault_ring.h"

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "core/base/xorshift.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using ::testing::ElementsAre;

#define EXPECT_INVARIANTS(r) EXPECT_TRUE((r).CheckInvariants().ok()) << (r).CheckInvariants()

std::unique_ptr<FaultRing> MakeOrDie(uint64_t capacity, std::function<absl::Time()> clock = {}) {
  absl::StatusOr<std::unique_ptr<FaultRing>> r = FaultRing::Create({capacity, std::move(clock)});
  EXPECT_TRUE(r.ok()) << r.status();
  return *std::move(r);
}

FaultRecord Fault(FaultType type, uint64_t iova, uint32_t stream_id = 7) {
  FaultRecord f;
  f.type = type;
  f.smmu = "smmu0";
  f.stream_id = stream_id;
  f.device = "nic0";
  f.domain_id = 3;
  f.iova = Iova(iova);
  f.access = {AccessKind::kWrite, false};
  f.seq = 999;  // ignored: Push assigns
  return f;
}

std::vector<uint64_t> Seqs(const FaultReadResult& r) {
  std::vector<uint64_t> seqs;
  for (const FaultRecord& f : r.records) seqs.push_back(f.seq);
  return seqs;
}

TEST(FaultRingTest, TypeNames) {
  EXPECT_EQ(FaultTypeName(FaultType::kTranslation), "translation");
  EXPECT_EQ(FaultTypeName(FaultType::kPermission), "permission");
  EXPECT_EQ(FaultTypeName(FaultType::kAddressSize), "address_size");
  EXPECT_EQ(FaultTypeName(FaultType::kAccessBlocked), "blocked");
  EXPECT_EQ(FaultTypeName(FaultType::kUnknownStream), "unknown_stream");
  EXPECT_EQ(FaultTypeName(FaultType(kNumFaultTypes)), "invalid");
}

TEST(FaultRingTest, CreateRejectsBadCapacity) {
  absl::StatusOr<std::unique_ptr<FaultRing>> r = FaultRing::Create({0, {}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "capacity=0: must be in [1, 2^24] records");
  EXPECT_EQ(FaultRing::Create({(uint64_t{1} << 24) + 1, {}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(FaultRingTest, PushAssignsSeqAndTimestampInOrder) {
  absl::Time now = absl::FromUnixSeconds(1000);
  std::unique_ptr<FaultRing> ring = MakeOrDie(8, [&now] { return now += absl::Seconds(1); });
  EXPECT_EQ(ring->newest_seq(), 0u);
  EXPECT_EQ(ring->Push(Fault(FaultType::kTranslation, 0x1000)), 1u);
  EXPECT_EQ(ring->Push(Fault(FaultType::kPermission, 0x2000)), 2u);
  EXPECT_EQ(ring->Push(Fault(FaultType::kUnknownStream, 0, 99)), 3u);
  EXPECT_INVARIANTS(*ring);
  absl::StatusOr<FaultReadResult> r = ring->ReadSince(0, 100);
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(Seqs(*r), ElementsAre(1, 2, 3));
  EXPECT_EQ(r->lost, 0u);
  EXPECT_EQ(r->next_after_seq, 3u);
  EXPECT_EQ(r->records[0].type, FaultType::kTranslation);
  EXPECT_EQ(r->records[1].iova, Iova(0x2000));
  EXPECT_EQ(r->records[1].smmu, "smmu0");
  EXPECT_EQ(r->records[1].device, "nic0");
  EXPECT_EQ(r->records[1].domain_id, 3u);
  EXPECT_EQ(r->records[1].access.kind, AccessKind::kWrite);
  EXPECT_EQ(r->records[2].stream_id, 99u);
  EXPECT_EQ(r->records[0].timestamp, absl::FromUnixSeconds(1001));
  EXPECT_EQ(r->records[2].timestamp, absl::FromUnixSeconds(1003));
  // Reading from the middle, in pages.
  r = ring->ReadSince(1, 1);
  EXPECT_THAT(Seqs(*r), ElementsAre(2));
  EXPECT_EQ(r->next_after_seq, 2u);
  r = ring->ReadSince(3, 10);
  EXPECT_TRUE(r->records.empty());
  EXPECT_EQ(r->next_after_seq, 3u);
  EXPECT_EQ(ring->ReadSince(0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ring->ReadSince(0, 0).status().message(), "max_records=0: must be non-zero");
  const FaultRingStats stats = ring->Stats();
  EXPECT_EQ(stats.pushed_total, 3u);
  EXPECT_EQ(stats.dropped_total, 0u);
  EXPECT_EQ(stats.size, 3u);
  EXPECT_THAT(stats.pushed_by_type, ElementsAre(1, 1, 0, 0, 1));
}

TEST(FaultRingTest, OverflowOverwritesOldestAndCountsLostPerReader) {
  std::unique_ptr<FaultRing> ring = MakeOrDie(4);
  for (int i = 1; i <= 10; ++i) {
    ring->Push(Fault(FaultType::kAddressSize, uint64_t(i) << 12));
    EXPECT_INVARIANTS(*ring);
  }
  const FaultRingStats stats = ring->Stats();
  EXPECT_EQ(stats.pushed_total, 10u);
  EXPECT_EQ(stats.dropped_total, 6u);
  EXPECT_EQ(stats.size, 4u);
  // A reader that saw nothing lost 1..6.
  absl::StatusOr<FaultReadResult> r = ring->ReadSince(0, 100);
  EXPECT_THAT(Seqs(*r), ElementsAre(7, 8, 9, 10));
  EXPECT_EQ(r->lost, 6u);
  EXPECT_EQ(r->records[0].iova, Iova(7 << 12));
  // A reader that had consumed up to 5 lost only 6.
  r = ring->ReadSince(5, 2);
  EXPECT_THAT(Seqs(*r), ElementsAre(7, 8));
  EXPECT_EQ(r->lost, 1u);
  EXPECT_EQ(r->next_after_seq, 8u);
  // An up-to-date reader lost nothing.
  r = ring->ReadSince(6, 100);
  EXPECT_EQ(r->lost, 0u);
  EXPECT_THAT(Seqs(*r), ElementsAre(7, 8, 9, 10));
}

// A slow reader against a reference log: every seq is either read exactly once
// or counted lost, across many wraps.
TEST(FaultRingTest, SlowReaderAccountsForEveryRecord) {
  std::unique_ptr<FaultRing> ring = MakeOrDie(16);
  Xorshift64 rng;
  uint64_t after = 0, read = 0, lost = 0;
  uint64_t expected_seq = 1;
  for (int op = 0; op < 20000; ++op) {
    if (rng() % 3 != 0) {
      const uint64_t seq = ring->Push(Fault(FaultType(rng() % kNumFaultTypes), 0));
      ASSERT_EQ(seq, ring->newest_seq());
    } else {
      absl::StatusOr<FaultReadResult> r = ring->ReadSince(after, 1 + rng() % 8);
      ASSERT_TRUE(r.ok());
      expected_seq += r->lost;
      for (const FaultRecord& f : r->records) {
        ASSERT_EQ(f.seq, expected_seq++);  // contiguous after the gap
      }
      read += r->records.size();
      lost += r->lost;
      after = r->next_after_seq;
    }
    ASSERT_TRUE(ring->CheckInvariants().ok()) << ring->CheckInvariants();
  }
  absl::StatusOr<FaultReadResult> r = ring->ReadSince(after, 1000);
  read += r->records.size();
  lost += r->lost;
  const FaultRingStats stats = ring->Stats();
  EXPECT_EQ(read + lost, stats.pushed_total);
  EXPECT_GT(lost, 0u);
  EXPECT_GE(stats.dropped_total, lost);
  uint64_t by_type = 0;
  for (uint64_t n : stats.pushed_by_type) by_type += n;
  EXPECT_EQ(by_type, stats.pushed_total);
}

TEST(FaultRingTest, WaitTimesOutReturnsOnNewerAndOnShutdown) {
  std::unique_ptr<FaultRing> ring = MakeOrDie(4);
  absl::Status s = ring->WaitForNewerThan(0, absl::Milliseconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(s.message(), "after_seq=0: no newer fault record before the deadline");
  ring->Push(Fault(FaultType::kTranslation, 0));
  EXPECT_TRUE(ring->WaitForNewerThan(0, absl::InfinitePast()).ok());
  EXPECT_EQ(ring->WaitForNewerThan(1, absl::InfinitePast()).code(),
            absl::StatusCode::kDeadlineExceeded);
  // A blocked waiter is woken by a push from another thread.
  std::thread pusher([&ring] {
    absl::SleepFor(absl::Milliseconds(20));
    ring->Push(Fault(FaultType::kPermission, 0));
  });
  EXPECT_TRUE(ring->WaitForNewerThan(1, absl::Seconds(30)).ok());
  pusher.join();
  // ... and by Shutdown.
  std::thread stopper([&ring] {
    absl::SleepFor(absl::Milliseconds(20));
    ring->Shutdown();
  });
  s = ring->WaitForNewerThan(2, absl::InfiniteFuture());
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(s.message(), "after_seq=0x2: fault ring shut down");
  stopper.join();
  // After shutdown: existing newer records still satisfy a wait; pushes work.
  EXPECT_TRUE(ring->WaitForNewerThan(1, absl::InfiniteFuture()).ok());
  EXPECT_EQ(ring->Push(Fault(FaultType::kTranslation, 0)), 3u);
  EXPECT_INVARIANTS(*ring);
}

// Concurrent pushers and a streaming watcher: each record is delivered once or
// counted lost; none vanishes.
TEST(FaultRingTest, ConcurrentPushersAndWatcherLoseNothingUncounted) {
  std::unique_ptr<FaultRing> ring = MakeOrDie(64);
  constexpr int kPushers = 3;
  constexpr int kPerPusher = 20000;
  std::atomic<int> done{0};
  std::vector<std::thread> pushers;
  for (int t = 0; t < kPushers; ++t) {
    pushers.emplace_back([&ring, &done, t] {
      for (int i = 0; i < kPerPusher; ++i) {
        ring->Push(Fault(FaultType(t % kNumFaultTypes), uint64_t(i), uint32_t(t)));
      }
      done.fetch_add(1);
    });
  }
  uint64_t after = 0, delivered = 0, lost = 0;
  bool in_order = true;
  while (true) {
    const bool finished = done.load() == kPushers;
    absl::StatusOr<FaultReadResult> r = ring->ReadSince(after, 16);
    ASSERT_TRUE(r.ok());
    for (const FaultRecord& f : r->records) {
      if (f.seq <= after) in_order = false;
      after = f.seq;
    }
    delivered += r->records.size();
    lost += r->lost;
    after = r->next_after_seq;
    if (finished && after == ring->newest_seq()) break;
    if (r->records.empty()) (void)ring->WaitForNewerThan(after, absl::Milliseconds(50));
  }
  for (std::thread& t : pushers) t.join();
  EXPECT_TRUE(in_order);
  const FaultRingStats stats = ring->Stats();
  EXPECT_EQ(stats.pushed_total, uint64_t{kPushers} * kPerPusher);
  EXPECT_EQ(delivered + lost, stats.pushed_total);
  EXPECT_LE(lost, stats.dropped_total);
  EXPECT_THAT(stats.pushed_by_type, ElementsAre(kPerPusher, kPerPusher, kPerPusher, 0, 0));
  EXPECT_INVARIANTS(*ring);
}

}  // namespace
}  // namespace iommu::core
