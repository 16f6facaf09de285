// SPDX-License-Identifier: Apache-2.0
// Exactly-once mutating calls: the request log's rules (window, budgets,
// reuse, racing retries), and every broker operation journaling its reply in
// the commit of its last change, so a restored broker answers a retry.

#include "core/broker/request_log.h"

#include <atomic>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/broker/broker.h"
#include "core/broker/broker_test_util.h"
#include "core/testing/memory_journal.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

using testing::FakeClock;
using ::testing::HasSubstr;
using testing::KiB;
using testing::MemoryJournal;
using testing::MiB;

Caller Dev(const std::string& name, uint64_t session = 0) { return Caller::Device(name, session); }

RequestState Key(const std::string& principal, const std::string& id, uint64_t fingerprint = 7) {
  return RequestState{.principal = principal, .request_id = id, .fingerprint = fingerprint};
}

RequestState Answered(const std::string& principal, const std::string& id, std::string reply,
                      absl::Time at, uint64_t fingerprint = 7) {
  RequestState s = Key(principal, id, fingerprint);
  s.reply = std::move(reply);
  s.recorded = at;
  return s;
}

class RequestLogTest : public ::testing::Test {
 protected:
  RequestLogOptions Options() {
    RequestLogOptions o;
    o.now = clock_.Fn();
    o.window = absl::Minutes(10);
    o.max_per_principal = 3;
    o.max_bytes_per_principal = 100;
    return o;
  }
  // Begins, records `reply` and ends, as a successful call does.
  void Answer(RequestLog& log, const RequestState& key, const std::string& reply,
              std::vector<std::pair<std::string, std::string>>* deletes = nullptr) {
    auto begun = log.Begin(key, clock_.now);
    ASSERT_TRUE(begun.ok()) << begun.status();
    ASSERT_FALSE(begun->has_value());
    RequestState r = key;
    r.reply = reply;
    r.recorded = clock_.now;
    log.Record(r, deletes);
    log.End(key);
  }

  FakeClock clock_;
};

TEST_F(RequestLogTest, ARetryGetsTheRecordedReplyAndAFailedCallRunsAgain) {
  RequestLog log(Options());
  Answer(log, Key("device:nic0", "a1"), "reply-1");
  auto again = log.Begin(Key("device:nic0", "a1"), clock_.now);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE(again->has_value());
  EXPECT_EQ(**again, "reply-1");

  // Begun and ended without a record (the call failed): runs again.
  ASSERT_FALSE(log.Begin(Key("device:nic0", "a2"), clock_.now)->has_value());
  log.End(Key("device:nic0", "a2"));
  auto retry = log.Begin(Key("device:nic0", "a2"), clock_.now);
  ASSERT_TRUE(retry.ok());
  EXPECT_FALSE(retry->has_value());
  log.End(Key("device:nic0", "a2"));
}

TEST_F(RequestLogTest, IdsAreScopedToTheirPrincipal) {
  RequestLog log(Options());
  Answer(log, Key("device:nic0", "shared"), "nic0's");
  // Another principal's id is as unknown as one never sent: a new call.
  auto other = log.Begin(Key("device:gpu0", "shared"), clock_.now);
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(other->has_value());
  log.End(Key("device:gpu0", "shared"));
}

TEST_F(RequestLogTest, ReusingAnIdForAnotherRequestIsRefused) {
  RequestLog log(Options());
  Answer(log, Key("device:nic0", "a1", /*fingerprint=*/1), "r");
  auto reused = log.Begin(Key("device:nic0", "a1", /*fingerprint=*/2), clock_.now);
  EXPECT_EQ(reused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reused.status().message(), HasSubstr("iommu-request-id=\"a1\""));
  EXPECT_THAT(reused.status().message(), HasSubstr("different request"));
}

TEST_F(RequestLogTest, TheWindowAndTheBudgetsEvictTheOldestFirst) {
  RequestLog log(Options());
  std::vector<std::pair<std::string, std::string>> deletes;
  Answer(log, Key("device:nic0", "a1"), "1", &deletes);
  clock_.now += absl::Minutes(1);
  Answer(log, Key("device:nic0", "a2"), "2", &deletes);
  Answer(log, Key("device:nic0", "a3"), "3", &deletes);
  EXPECT_TRUE(deletes.empty());
  // A fourth over the count budget of 3 evicts the oldest.
  Answer(log, Key("device:nic0", "a4"), "4", &deletes);
  EXPECT_THAT(deletes, ::testing::ElementsAre(std::make_pair("device:nic0", "a1")));
  EXPECT_EQ(log.size(), 3u);
  // Out of the window: a retry runs again even before eviction.
  clock_.now += absl::Minutes(11);
  auto late = log.Begin(Key("device:nic0", "a2"), clock_.now);
  ASSERT_TRUE(late.ok());
  EXPECT_FALSE(late->has_value());
  log.End(Key("device:nic0", "a2"));
  // The byte budget (100): a large reply pushes the others out.
  deletes.clear();
  Answer(log, Key("device:nic0", "big"), std::string(90, 'x'), &deletes);
  EXPECT_EQ(deletes.size(), 3u);
  EXPECT_EQ(log.size(), 1u);
}

TEST_F(RequestLogTest, ARetryRacingItsFirstAttemptWaitsForIt) {
  RequestLog log(Options());
  const RequestState key = Key("device:nic0", "race");
  ASSERT_FALSE(log.Begin(key, clock_.now)->has_value());
  std::atomic<bool> started{false};
  absl::StatusOr<std::optional<std::string>> seen;
  std::thread retry([&] {
    started = true;
    seen = log.Begin(key, absl::Now() + absl::Seconds(30));
  });
  while (!started) absl::SleepFor(absl::Milliseconds(1));
  absl::SleepFor(absl::Milliseconds(50));
  RequestState r = key;
  r.reply = "first";
  r.recorded = clock_.now;
  log.Record(r, nullptr);
  log.End(key);
  retry.join();
  ASSERT_TRUE(seen.ok()) << seen.status();
  ASSERT_TRUE(seen->has_value());
  EXPECT_EQ(**seen, "first");

  // Still running at the retry's deadline: ABORTED, retry later.
  const RequestState slow = Key("device:nic0", "slow");
  ASSERT_FALSE(log.Begin(slow, clock_.now)->has_value());
  auto timed_out = log.Begin(slow, absl::Now() + absl::Milliseconds(20));
  EXPECT_EQ(timed_out.status().code(), absl::StatusCode::kAborted);
  log.End(slow);
}

TEST_F(RequestLogTest, RestoreKeepsTheWindowAndDeletesTheRest) {
  RequestLog log(Options());
  std::vector<std::pair<std::string, std::string>> deletes;
  const absl::Time now = clock_.now;
  log.Restore({Answered("device:nic0", "old", "o", now - absl::Minutes(11)),
               Answered("device:nic0", "new", "n", now - absl::Minutes(1)),
               Answered("admin", "x", "a", now)},
              &deletes);
  EXPECT_THAT(deletes, ::testing::ElementsAre(std::make_pair("device:nic0", "old")));
  EXPECT_EQ(log.size(), 2u);
  auto replay = log.Begin(Key("device:nic0", "new"), clock_.now);
  ASSERT_TRUE(replay.ok());
  ASSERT_TRUE(replay->has_value());
  EXPECT_EQ(**replay, "n");
}

TEST(RequestIdTest, CheckNamesTheFieldAndValue) {
  EXPECT_TRUE(CheckRequestId("f", "0123456789abcdef0123456789abcdef").ok());
  EXPECT_TRUE(CheckRequestId("f", "job-7:map.3_x").ok());
  for (const std::string& bad : {std::string(), std::string(65, 'a'), std::string("a b"),
                                 std::string("a#1"), std::string("é")}) {
    const absl::Status s = CheckRequestId("iommu-request-id", bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.message(), HasSubstr("iommu-request-id=")) << bad;
  }
  EXPECT_NE(RequestFingerprint("Map", "ab"), RequestFingerprint("Mapa", "b"));
  EXPECT_EQ(RequestFingerprint("Map", "ab"), RequestFingerprint("Map", "ab"));
}

// --- the broker's operations ------------------------------------------------------

// Encodes results as "<type> <n>": enough to tell which call's reply a
// record holds.
class Calls {
 public:
  explicit Calls(Broker& broker) : broker_(broker) {}

  // Runs `call` under request `id` of device principal `who`; returns the
  // reply a retry would get ("" when the call recorded none).
  template <typename Call>
  std::string Run(const std::string& who, const std::string& id, Call&& call) {
    RequestScope scope(broker_.request_log(), Key(who, id),
                       [this](const void*, const std::type_info& type) {
                         return absl::StrCat(type.name(), " ", ++encoded_);
                       });
    auto begun = scope.Begin(absl::Now());
    EXPECT_TRUE(begun.ok() && !begun->has_value()) << id;
    const bool ok = call();
    EXPECT_TRUE(ok) << id;
    return scope.record().reply;
  }

 private:
  Broker& broker_;
  int encoded_ = 0;
};

class BrokerRequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_.now = clock_.Fn();
    options_.requests.now = clock_.Fn();
    options_.journal = &journal_;
    broker_ = testing::MakeBroker(options_);
  }

  FakeClock clock_;
  MemoryJournal journal_;
  BrokerOptions options_;
  std::unique_ptr<Broker> broker_;
  std::map<std::string, std::string> replies_;
};

TEST_F(BrokerRequestTest, EveryOperationJournalsItsReplyWithItsLastChange) {
  Calls calls(*broker_);
  auto joined = [&](const std::string& id, auto&& call, bool alone = false) {
    const uint64_t j = journal_.replies_joined(), a = journal_.replies_alone();
    const std::string reply = calls.Run("device:any", id, call);
    EXPECT_FALSE(reply.empty()) << id;
    EXPECT_EQ(journal_.replies_joined() - j, alone ? 0u : 1u) << id;
    EXPECT_EQ(journal_.replies_alone() - a, alone ? 1u : 0u) << id;
    replies_[id] = reply;
  };
  BufferInfo buf;
  joined("alloc-buffer", [&] {
    auto b = broker_->AllocBuffer(Dev("nic0"), "nic0", 64 * KiB, Placement::kScattered);
    if (b.ok()) buf = *b;
    return b.ok();
  });
  MapResult map;
  joined("map", [&] {
    auto m = broker_->Map(Dev("nic0"), "nic0",
                          {.mem = {.buffer_id = buf.buffer_id, .length_bytes = 4 * KiB}});
    if (m.ok()) map = *m;
    return m.ok();
  });
  joined("unmap",
         [&] { return broker_->Unmap(Dev("nic0"), "nic0", {.dma_addr = map.dma_addr}).ok(); });
  MapSgResult sg;
  joined("map-sg", [&] {
    auto r = broker_->MapSg(
        Dev("nic0"), "nic0",
        {.segments = {
             {.buffer_id = buf.buffer_id, .length_bytes = 4 * KiB},
             {.buffer_id = buf.buffer_id, .offset_bytes = 16 * KiB, .length_bytes = 4 * KiB}}});
    if (r.ok()) sg = *r;
    return r.ok();
  });
  joined("unmap-sg", [&] { return broker_->UnmapSg(Dev("nic0"), "nic0", sg.iova).ok(); });
  joined("batch", [&] {
    std::vector<DmaBatchOp> ops = {
        MapRequest{.mem = {.buffer_id = buf.buffer_id, .length_bytes = 4 * KiB}},
        MapRequest{
            .mem = {.buffer_id = buf.buffer_id, .offset_bytes = 8 * KiB, .length_bytes = 4 * KiB}}};
    std::vector<DmaBatchResult> results(ops.size());
    broker_->MapUnmapBatch(Dev("nic0"), "nic0", ops, absl::MakeSpan(results));
    return results[0].status.ok() && results[1].status.ok();
  });
  AllocResult alloc;
  joined("alloc", [&] {
    auto a = broker_->Alloc(Dev("gpu0"), "gpu0", {.size_bytes = 64 * KiB});
    if (a.ok()) alloc = *a;
    return a.ok();
  });
  std::string token;
  joined("export", [&] {
    auto t = broker_->GetSgTable(Dev("gpu0"), "gpu0", alloc.dma_addr, ExportGrant{});
    if (t.ok()) token = t->export_token;
    return t.ok();
  });
  // Revocation unmaps each import in a commit of its own after the
  // export's: its reply comes last, alone.
  joined(
      "revoke", [&] { return broker_->RevokeExport(Dev("gpu0"), token).ok(); },
      /*alone=*/true);
  joined("free", [&] { return broker_->Free(Dev("gpu0"), "gpu0", alloc.dma_addr).ok(); });
  DomainInfo dom;
  joined("create-domain", [&] {
    auto d = broker_->CreateDomain(Dev("vf0"), {.smmu = "smmu2", .type = DomainType::kUnmanaged});
    if (d.ok()) dom = *d;
    return d.ok();
  });
  joined("attach", [&] { return broker_->AttachDevice(Dev("vf0"), "vf0", dom.domain_id).ok(); });
  joined("msi-window", [&] {
    return broker_
        ->MsiCookie(Dev("vf0"), "vf0",
                    {.domain_id = dom.domain_id,
                     .window = {.base = Iova(0x800'0000), .size_bytes = 1 * MiB}})
        .ok();
  });
  BufferInfo huge;
  joined("alloc-huge", [&] {
    auto b = broker_->AllocBuffer(Dev("vf0"), "vf0", 2 * MiB, Placement::kHuge);
    if (b.ok()) huge = *b;
    return b.ok();
  });
  joined("map-at", [&] {
    return broker_
        ->MapAt(Dev("vf0"), "vf0",
                {.iova = Iova(0x4000'0000),
                 .mem = {.buffer_id = huge.buffer_id, .length_bytes = 2 * MiB},
                 .direction = DmaDirection::kBidirectional})
        .ok();
  });
  joined("unmap-range",
         [&] { return broker_->UnmapRange(Dev("vf0"), "vf0", Iova(0x4000'0000), 2 * MiB).ok(); });
  joined("detach", [&] { return broker_->DetachDevice(Dev("vf0"), "vf0").ok(); });
  joined("destroy-domain", [&] { return broker_->DestroyDomain(Dev("vf0"), dom.domain_id).ok(); });
  joined("free-buffer", [&] { return broker_->FreeBuffer(Dev("vf0"), huge.buffer_id).ok(); });
  uint64_t session = 0;
  joined("open-session", [&] {
    auto s = broker_->OpenSession(Dev("cam0"), absl::Seconds(30));
    if (s.ok()) session = *s;
    return s.ok();
  });
  joined("session-buffer", [&] {
    return broker_->AllocBuffer(Dev("cam0", session), "cam0", 16 * KiB, Placement::kContiguous)
        .ok();
  });
  joined("close-session", [&] { return broker_->CloseSession(Dev("cam0"), session).ok(); });

  // A broker restored from the journal answers every id with its reply.
  BrokerOptions o = options_;
  o.journal = nullptr;
  auto restored = Broker::Restore(testing::TestTopology(), o, journal_.State());
  ASSERT_TRUE(restored.ok()) << restored.status();
  for (const auto& [id, reply] : replies_) {
    auto replay = (*restored)->request_log().Begin(Key("device:any", id), absl::Now());
    ASSERT_TRUE(replay.ok()) << id << ": " << replay.status();
    ASSERT_TRUE(replay->has_value()) << id;
    EXPECT_EQ(**replay, reply) << id;
  }
}

TEST_F(BrokerRequestTest, AFailedCallRecordsNothing) {
  RequestScope scope(broker_->request_log(), Key("device:nic0", "bad"),
                     [](const void*, const std::type_info&) { return std::string("x"); });
  ASSERT_FALSE(scope.Begin(absl::Now())->has_value());
  auto m = broker_->Map(Dev("nic0"), "nic0", {.mem = {.buffer_id = 999, .length_bytes = 4 * KiB}});
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(scope.record().reply.empty());
  EXPECT_EQ(journal_.replies_joined() + journal_.replies_alone(), 0u);
  EXPECT_TRUE(journal_.State().requests.empty());
}

TEST_F(BrokerRequestTest, ReleasingASessionDoesNotCaptureItsInnerSteps) {
  // CloseSession destroys the session's domains on the way: those steps are
  // not its reply, which joins the session's own last commit.
  const uint64_t session = broker_->OpenSession(Dev("vf0"), absl::Seconds(30)).value();
  auto dom =
      broker_->CreateDomain(Dev("vf0", session), {.smmu = "smmu2", .type = DomainType::kUnmanaged});
  ASSERT_TRUE(dom.ok()) << dom.status();
  Calls calls(*broker_);
  const uint64_t joined = journal_.replies_joined();
  const std::string reply = calls.Run(
      "device:vf0", "close", [&] { return broker_->CloseSession(Dev("vf0"), session).ok(); });
  EXPECT_FALSE(reply.empty());
  EXPECT_EQ(journal_.replies_joined() - joined, 1u);
  EXPECT_EQ(journal_.replies_alone(), 0u);
  // The session's record and the reply went in the same (last) commit: a
  // state with the reply has no session.
  const DurableState state = journal_.State();
  ASSERT_EQ(state.requests.size(), 1u);
  EXPECT_TRUE(state.sessions.empty());
}

}  // namespace
}  // namespace iommu::core
