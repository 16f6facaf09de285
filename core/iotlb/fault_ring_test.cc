// SPDX-License-Identifier: Apache-2.0
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

TEST(FaultRingTest, CreateRejectsBadFirstSeq) {
  FaultRingOptions o;
  o.first_seq = 0;
  absl::StatusOr<std::unique_ptr<FaultRing>> r = FaultRing::Create(o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "first_seq=0: must be in [1, 2^63]");
  o.first_seq = (uint64_t{1} << 63) + 1;
  r = FaultRing::Create(o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "first_seq=0x8000000000000001: must be in [1, 2^63]");
  o.first_seq = uint64_t{1} << 63;
  r = FaultRing::Create(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->Push(Fault(FaultType::kTranslation, 0)), uint64_t{1} << 63);
  EXPECT_INVARIANTS(**r);
}

std::unique_ptr<FaultRing> Restarted(uint64_t capacity, uint64_t first_seq) {
  FaultRingOptions o;
  o.capacity = capacity;
  o.first_seq = first_seq;
  absl::StatusOr<std::unique_ptr<FaultRing>> r = FaultRing::Create(o);
  EXPECT_TRUE(r.ok()) << r.status();
  return *std::move(r);
}

// The numbering continues past the last seq issued before a restart; the
// records from before it count as lost for every reader that had not read
// them, as overwritten ones do.
TEST(FaultRingTest, FirstSeqContinuesTheNumberingAcrossARestart) {
  std::unique_ptr<FaultRing> before = MakeOrDie(4);
  for (int i = 0; i < 5; ++i) before->Push(Fault(FaultType::kTranslation, 0));
  const uint64_t last = before->newest_seq();  // 5
  std::unique_ptr<FaultRing> ring = Restarted(4, last + 1);
  EXPECT_EQ(ring->first_seq(), 6u);
  EXPECT_EQ(ring->newest_seq(), 5u);
  EXPECT_INVARIANTS(*ring);
  FaultRingStats stats = ring->Stats();
  EXPECT_EQ(stats.first_seq, 6u);
  EXPECT_EQ(stats.pushed_total, 0u);
  EXPECT_EQ(stats.size, 0u);
  // Before any push: a reader that had consumed 3 lost 4 and 5.
  absl::StatusOr<FaultReadResult> r = ring->ReadSince(3, 10);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->records.empty());
  EXPECT_EQ(r->lost, 2u);
  EXPECT_EQ(r->next_after_seq, 5u);
  r = ring->ReadSince(5, 10);
  EXPECT_TRUE(r->records.empty());
  EXPECT_EQ(r->lost, 0u);
  EXPECT_EQ(r->next_after_seq, 5u);
  // A reader from the start lost everything before the restart.
  r = ring->ReadSince(0, 10);
  EXPECT_EQ(r->lost, 5u);
  EXPECT_EQ(r->next_after_seq, 5u);
  // Newer records than 3 exist (issued before the restart); none than 5.
  EXPECT_TRUE(ring->WaitForNewerThan(3, absl::InfinitePast()).ok());
  EXPECT_EQ(ring->WaitForNewerThan(5, absl::InfinitePast()).code(),
            absl::StatusCode::kDeadlineExceeded);
  // Pushes continue the numbering.
  EXPECT_EQ(ring->Push(Fault(FaultType::kPermission, 0x6000)), 6u);
  EXPECT_EQ(ring->Push(Fault(FaultType::kPermission, 0x7000)), 7u);
  EXPECT_INVARIANTS(*ring);
  r = ring->ReadSince(3, 10);
  EXPECT_THAT(Seqs(*r), ElementsAre(6, 7));
  EXPECT_EQ(r->lost, 2u);
  EXPECT_EQ(r->records[0].iova, Iova(0x6000));
  r = ring->ReadSince(0, 10);
  EXPECT_THAT(Seqs(*r), ElementsAre(6, 7));
  EXPECT_EQ(r->lost, 5u);
  // Only this run's records: after_seq = first_seq - 1.
  r = ring->ReadSince(ring->first_seq() - 1, 10);
  EXPECT_THAT(Seqs(*r), ElementsAre(6, 7));
  EXPECT_EQ(r->lost, 0u);
  // Overwriting after the restart counts on top.
  for (int i = 0; i < 5; ++i) ring->Push(Fault(FaultType::kAddressSize, 0));
  EXPECT_INVARIANTS(*ring);
  stats = ring->Stats();
  EXPECT_EQ(stats.pushed_total, 7u);
  EXPECT_EQ(stats.dropped_total, 3u);
  EXPECT_EQ(stats.size, 4u);
  EXPECT_THAT(stats.pushed_by_type, ElementsAre(0, 2, 5, 0, 0));
  r = ring->ReadSince(0, 10);
  EXPECT_THAT(Seqs(*r), ElementsAre(9, 10, 11, 12));
  EXPECT_EQ(r->lost, 8u);  // 1..5 before the restart, 6..8 overwritten
  r = ring->ReadSince(7, 2);
  EXPECT_THAT(Seqs(*r), ElementsAre(9, 10));
  EXPECT_EQ(r->lost, 1u);
  EXPECT_EQ(r->next_after_seq, 10u);
}

// A slow reader across restarts: every seq after the reader's start is read
// exactly once or counted lost, and seqs never repeat.
TEST(FaultRingTest, SlowReaderAccountsForEveryRecordAcrossRestarts) {
  std::unique_ptr<FaultRing> ring = MakeOrDie(16);
  Xorshift64 rng(5);
  uint64_t after = 0, read = 0, lost = 0;
  uint64_t expected_seq = 1;
  int restarts = 0;
  for (int op = 0; op < 20000; ++op) {
    const uint64_t r = rng() % 100;
    if (r < 1) {
      ring = Restarted(1 + rng() % 32, ring->newest_seq() + 1);
      ++restarts;
    } else if (r < 66) {
      const uint64_t seq = ring->Push(Fault(FaultType(rng() % kNumFaultTypes), 0));
      ASSERT_EQ(seq, ring->newest_seq());
    } else {
      absl::StatusOr<FaultReadResult> res = ring->ReadSince(after, 1 + rng() % 8);
      ASSERT_TRUE(res.ok());
      expected_seq += res->lost;
      for (const FaultRecord& f : res->records) ASSERT_EQ(f.seq, expected_seq++);
      read += res->records.size();
      lost += res->lost;
      after = res->next_after_seq;
    }
    ASSERT_TRUE(ring->CheckInvariants().ok()) << ring->CheckInvariants();
  }
  absl::StatusOr<FaultReadResult> res = ring->ReadSince(after, 1000);
  read += res->records.size();
  lost += res->lost;
  EXPECT_GT(restarts, 100);
  EXPECT_EQ(read + lost, ring->newest_seq());
  EXPECT_GT(read, 1000u);
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
