// SPDX-License-Identifier: Apache-2.0
#include "store/kv_store.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "store/kv_store_internal.h"

namespace iommu::store {
namespace {

using ::testing::HasSubstr;
using ::testing::Optional;

using Map = std::map<std::string, std::string>;

std::string NewDir(absl::string_view tag) {
  static std::atomic<int> counter{0};
  const std::string base =
      absl::StrCat(::testing::TempDir(), "/kv_", tag, "_", getpid(), "_", counter++);
  std::filesystem::remove_all(base);
  return base;
}

class KvStoreTest : public ::testing::TestWithParam<std::tuple<KvEngine, Durability>> {
 protected:
  void SetUp() override { dir_ = NewDir(KvEngineName(engine())); }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  KvEngine engine() const { return std::get<0>(GetParam()); }
  Durability durability() const { return std::get<1>(GetParam()); }
  KvOptions Options() const {
    KvOptions o;
    o.engine = engine();
    o.dir = dir_;
    o.durability = durability();
    o.lmdb_map_size_bytes = uint64_t{1} << 30;
    return o;
  }
  void OpenStore() {
    store_.reset();
    auto s = KvStore::Open(Options());
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
  }
  uint64_t MustCommit(const std::vector<KvWrite>& writes) {
    auto seq = store_->Commit(writes);
    EXPECT_TRUE(seq.ok()) << seq.status();
    return seq.ok() ? *seq : 0;
  }
  Map ScanAll(std::string_view prefix) {
    Map m;
    std::string last;
    bool first = true;
    absl::Status s = store_->Scan(prefix, [&](std::string_view k, std::string_view v) {
      EXPECT_TRUE(first || std::string(k) > last) << "scan out of order";
      first = false;
      last = std::string(k);
      EXPECT_TRUE(m.emplace(k, v).second);
      return absl::OkStatus();
    });
    EXPECT_TRUE(s.ok()) << s;
    return m;
  }
  std::vector<std::string> ScanKeys(std::string_view prefix) {
    std::vector<std::string> keys;
    absl::Status s = store_->Scan(prefix, [&](std::string_view k, std::string_view) {
      keys.emplace_back(k);
      return absl::OkStatus();
    });
    EXPECT_TRUE(s.ok()) << s;
    return keys;
  }
  std::optional<std::string> MustGet(std::string_view key) {
    auto v = store_->Get(key);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : std::nullopt;
  }

  std::string dir_;
  std::unique_ptr<KvStore> store_;
};

TEST_P(KvStoreTest, CommitThenGetAndScanSeeExactlyTheWrites) {
  OpenStore();
  EXPECT_EQ(MustGet("a"), std::nullopt);
  EXPECT_TRUE(ScanAll("").empty());
  MustCommit({{"a", "1"}, {"b", "2"}, {std::string_view("c\0d", 3), "3"}});
  EXPECT_THAT(MustGet("a"), Optional(std::string("1")));
  EXPECT_THAT(MustGet("b"), Optional(std::string("2")));
  EXPECT_THAT(MustGet(std::string_view("c\0d", 3)), Optional(std::string("3")));
  EXPECT_EQ(MustGet("c"), std::nullopt);
  EXPECT_EQ(ScanAll(""), (Map{{"a", "1"}, {"b", "2"}, {std::string("c\0d", 3), "3"}}));
}

TEST_P(KvStoreTest, LastWriteOfAKeyInOneCommitWins) {
  OpenStore();
  MustCommit({{"b", "old"}, {"c", "old"}});
  MustCommit({{"a", "1"},
              {"a", "2"},
              {"b", std::nullopt},
              {"b", "3"},
              {"c", "4"},
              {"c", std::nullopt},
              {"d", std::nullopt}});
  EXPECT_EQ(ScanAll(""), (Map{{"a", "2"}, {"b", "3"}}));
}

TEST_P(KvStoreTest, DeleteRemovesAndDeletingAnAbsentKeyIsFine) {
  OpenStore();
  MustCommit({{"k1", "v1"}, {"k2", "v2"}});
  MustCommit({{"k1", std::nullopt}, {"never", std::nullopt}});
  EXPECT_EQ(MustGet("k1"), std::nullopt);
  EXPECT_EQ(ScanAll("k"), (Map{{"k2", "v2"}}));
  MustCommit({{"k1", std::nullopt}});  // Again: still fine.
  EXPECT_EQ(ScanAll(""), (Map{{"k2", "v2"}}));
}

TEST_P(KvStoreTest, EmptyAndBinaryValuesRoundTrip) {
  OpenStore();
  std::string binary;
  for (int i = 0; i < 256; ++i) binary.push_back(static_cast<char>(i));
  const std::string big(4000, 'x');
  MustCommit({{"empty", ""}, {"bin", binary}, {"big", big}});
  EXPECT_THAT(MustGet("empty"), Optional(std::string()));
  EXPECT_THAT(MustGet("bin"), Optional(binary));
  EXPECT_THAT(MustGet("big"), Optional(big));
  EXPECT_EQ(ScanAll(""), (Map{{"big", big}, {"bin", binary}, {"empty", ""}}));
}

TEST_P(KvStoreTest, ScanHonoursPrefixBoundsAndBytewiseOrder) {
  OpenStore();
  const std::vector<std::string> keys = {std::string("\x00", 1),
                                         "\x01",
                                         "a",
                                         "a\x7f",
                                         "a\x80",
                                         "a\xff",
                                         std::string("a\xff\x00", 3),
                                         "a\xff\xff",
                                         "a\xff\xff\xff",
                                         "b",
                                         "\x7f",
                                         "\x80",
                                         "\xfe\xff",
                                         "\xff",
                                         std::string("\xff\x00", 2),
                                         "\xff\xff",
                                         "\xff\xff\x01"};
  std::vector<KvWrite> writes;
  for (const std::string& k : keys) writes.push_back({k, k});
  MustCommit(writes);
  std::vector<std::string> sorted = keys;
  std::sort(sorted.begin(), sorted.end(), [](const std::string& x, const std::string& y) {
    return std::string_view(x).compare(y) < 0;  // char_traits<char> compares as unsigned.
  });
  EXPECT_EQ(ScanKeys(""), sorted);
  EXPECT_EQ(ScanKeys("a"),
            (std::vector<std::string>{"a", "a\x7f", "a\x80", "a\xff", std::string("a\xff\x00", 3),
                                      "a\xff\xff", "a\xff\xff\xff"}));
  EXPECT_EQ(ScanKeys("a\xff"), (std::vector<std::string>{"a\xff", std::string("a\xff\x00", 3),
                                                         "a\xff\xff", "a\xff\xff\xff"}));
  EXPECT_EQ(ScanKeys("a\xff\xff"), (std::vector<std::string>{"a\xff\xff", "a\xff\xff\xff"}));
  EXPECT_EQ(ScanKeys("\xff"), (std::vector<std::string>{"\xff", std::string("\xff\x00", 2),
                                                        "\xff\xff", "\xff\xff\x01"}));
  EXPECT_EQ(ScanKeys("\xff\xff"), (std::vector<std::string>{"\xff\xff", "\xff\xff\x01"}));
  EXPECT_EQ(ScanKeys("\xff\xff\xff"), std::vector<std::string>{});
  EXPECT_EQ(ScanKeys(std::string("\x00", 1)), (std::vector<std::string>{std::string("\x00", 1)}));
  EXPECT_EQ(ScanKeys("c"), std::vector<std::string>{});
  EXPECT_EQ(ScanKeys("ab"), std::vector<std::string>{});
}

TEST_P(KvStoreTest, ScanStopsAtTheFirstErrorAndReturnsIt) {
  OpenStore();
  MustCommit({{"p1", "1"}, {"p2", "2"}, {"p3", "3"}});
  int calls = 0;
  absl::Status s = store_->Scan("p", [&](std::string_view k, std::string_view) {
    ++calls;
    if (k == "p2") return absl::CancelledError("stop at p2");
    return absl::OkStatus();
  });
  EXPECT_EQ(s, absl::CancelledError("stop at p2"));
  EXPECT_EQ(calls, 2);
}

TEST_P(KvStoreTest, ScanReadsOneSnapshotEvenWhenTheCallbackCommits) {
  OpenStore();
  std::vector<KvWrite> writes;
  std::vector<std::string> keys;
  for (int i = 0; i < 100; ++i) keys.push_back(absl::StrFormat("s%04d", i));
  for (const std::string& k : keys) writes.push_back({k, "before"});
  MustCommit(writes);
  int seen = 0;
  absl::Status s = store_->Scan("s", [&](std::string_view k, std::string_view v) {
    EXPECT_EQ(v, "before") << k;
    if (seen == 10) {
      // Overwrite what is ahead, delete what is ahead, add inside the prefix.
      EXPECT_TRUE(
          store_->Commit({{"s0050", "after"}, {"s0060", std::nullopt}, {"s0070x", "new"}}).ok());
      EXPECT_THAT(MustGet("s0050"), Optional(std::string("after")));
    }
    ++seen;
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(seen, 100);
  EXPECT_EQ(ScanAll("s").size(), 100u);  // 100 - 1 deleted + 1 added.
}

TEST_P(KvStoreTest, SequenceNumbersStrictlyIncrease) {
  OpenStore();
  uint64_t last = 0;
  for (int i = 0; i < 50; ++i) {
    const uint64_t seq = MustCommit({{absl::StrCat("k", i), "v"}});
    EXPECT_GT(seq, last);
    last = seq;
  }
  const uint64_t empty = MustCommit({});
  EXPECT_GT(empty, last);
}

TEST_P(KvStoreTest, AnInvalidWriteLeavesNothingOfItsBatch) {
  OpenStore();
  MustCommit({{"keep", "1"}});
  const std::string long_key(kMaxKeyBytes + 1, 'k');
  const std::string long_value(kMaxValueBytes + 1, 'v');
  for (const std::vector<KvWrite>& bad :
       std::vector<std::vector<KvWrite>>{{{"x1", "1"}, {"keep", std::nullopt}, {long_key, "v"}},
                                         {{"x1", "1"}, {"", "v"}},
                                         {{"x1", "1"}, {"keep", "2"}, {"x2", long_value}},
                                         {{"x1", "1"}, {long_key, std::nullopt}}}) {
    auto seq = store_->Commit(bad);
    EXPECT_EQ(seq.status().code(), absl::StatusCode::kInvalidArgument) << seq.status();
    EXPECT_THAT(seq.status().message(), HasSubstr("writes["));
    EXPECT_EQ(ScanAll(""), (Map{{"keep", "1"}}));
  }
  // Reopening shows all of the last good commit and none of the bad ones.
  MustCommit({{"y1", "1"}, {"y2", "2"}, {"keep", std::nullopt}});
  OpenStore();
  EXPECT_EQ(ScanAll(""), (Map{{"y1", "1"}, {"y2", "2"}}));
}

TEST_P(KvStoreTest, ReopenAfterCloseShowsTheData) {
  OpenStore();
  Map expected;
  for (int c = 0; c < 20; ++c) {
    std::vector<std::string> keys, values;
    for (int i = 0; i < 500; ++i) {
      keys.push_back(absl::StrFormat("r%03d/%04d", c, i));
      values.push_back(std::string(100, static_cast<char>('a' + c)));
    }
    std::vector<KvWrite> writes;
    for (int i = 0; i < 500; ++i) {
      writes.push_back({keys[i], values[i]});
      expected[keys[i]] = values[i];
    }
    MustCommit(writes);
  }
  MustCommit({{"r000/0000", std::nullopt}});
  expected.erase("r000/0000");
  ASSERT_TRUE(store_->WaitDurable(21).ok());
  OpenStore();
  EXPECT_EQ(ScanAll(""), expected);
  // Sequence numbers restart with each Open.
  EXPECT_EQ(MustCommit({{"z", "z"}}), 1u);
}

TEST_P(KvStoreTest, AProcessCrashLosesNothingCommitted) {
  constexpr int kKeysPerBatch = 50;
  std::mt19937 rng(std::random_device{}());
  for (int round = 0; round < 3; ++round) {
    store_.reset();
    std::filesystem::remove_all(dir_);
    int fds[2];
    ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      dup2(fds[1], 3);  // dup2 clears O_CLOEXEC on the copy.
      const std::string engine_name(KvEngineName(engine()));
      execl(KV_STORE_CRASH_CHILD, KV_STORE_CRASH_CHILD, engine_name.c_str(),
            durability() == Durability::kPowerLoss ? "power" : "process", dir_.c_str(), "3",
            std::to_string(kKeysPerBatch).c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    close(fds[1]);
    const uint64_t kill_after = std::uniform_int_distribution<uint64_t>(1, 400)(rng);
    uint64_t acked = 0;
    bool killed = false;
    while (true) {
      uint64_t i;
      const ssize_t n = read(fds[0], &i, sizeof(i));
      if (n != sizeof(i)) break;
      EXPECT_EQ(i, acked + 1);
      acked = i;
      if (!killed && acked >= kill_after) {
        std::this_thread::sleep_for(
            std::chrono::microseconds(std::uniform_int_distribution<int>(0, 2000)(rng)));
        kill(pid, SIGKILL);
        killed = true;
      }
    }
    close(fds[0]);
    int wstatus = 0;
    ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL)
        << "the child ended by itself (status " << wstatus << ") after " << acked << " batches";
    ASSERT_GE(acked, kill_after);

    OpenStore();
    // Every acknowledged batch is whole; at most one more (committed, not yet
    // acknowledged) is present, and wholly; none is partial.
    std::map<uint64_t, int> keys_of_batch;
    absl::Status s = store_->Scan("b", [&](std::string_view k, std::string_view v) {
      const uint64_t batch = std::stoull(std::string(k.substr(1, 8)));
      EXPECT_EQ(v, absl::StrFormat("batch %08d %0100d", batch, batch)) << k;
      ++keys_of_batch[batch];
      return absl::OkStatus();
    });
    ASSERT_TRUE(s.ok()) << s;
    uint64_t present = 0;
    for (const auto& [batch, count] : keys_of_batch) {
      EXPECT_EQ(count, kKeysPerBatch) << "batch " << batch << " is partial";
      EXPECT_EQ(batch, present + 1) << "batches present are not a prefix";
      present = batch;
    }
    EXPECT_GE(present, acked) << "an acknowledged batch was lost";
    EXPECT_LE(present, acked + 1);
    EXPECT_THAT(MustGet("last"), Optional(absl::StrFormat("batch %08d %0100d", present, present)));
  }
}

TEST_P(KvStoreTest, ConcurrentCommitsAndWaitDurableAllCompleteAndArePresent) {
  OpenStore();
  constexpr int kThreads = 4;
  constexpr int kCommits = 100;
  std::vector<std::vector<uint64_t>> seqs(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCommits; ++i) {
        const std::string k1 = absl::StrFormat("t%d/%04d/a", t, i);
        const std::string k2 = absl::StrFormat("t%d/%04d/b", t, i);
        auto seq = store_->Commit({{k1, k1}, {k2, k2}});
        ASSERT_TRUE(seq.ok()) << seq.status();
        ASSERT_TRUE(store_->WaitDurable(*seq).ok());
        seqs[t].push_back(*seq);
        ASSERT_THAT(MustGet(k1), Optional(k1));
      }
    });
  }
  for (std::thread& th : threads) th.join();
  std::set<uint64_t> all;
  for (const auto& s : seqs) {
    for (size_t i = 1; i < s.size(); ++i) EXPECT_LT(s[i - 1], s[i]);
    all.insert(s.begin(), s.end());
  }
  EXPECT_EQ(all.size(), size_t{kThreads * kCommits});
  EXPECT_EQ(*all.rbegin(), uint64_t{kThreads * kCommits});
  EXPECT_EQ(ScanAll("t").size(), size_t{2 * kThreads * kCommits});
  if (durability() == Durability::kPowerLoss) {
    EXPECT_EQ(store_->WaitDurable(kThreads * kCommits + 1).code(),
              absl::StatusCode::kInvalidArgument);
  }
  OpenStore();
  EXPECT_EQ(ScanAll("t").size(), size_t{2 * kThreads * kCommits});
}

TEST_P(KvStoreTest, AnotherEnginesDirectoryIsRefusedNamingTheFile) {
  OpenStore();
  MustCommit({{"k", "v"}});
  store_.reset();
  for (KvEngine other : {KvEngine::kLmdb, KvEngine::kSqlite, KvEngine::kRocksdb}) {
    if (other == engine()) continue;
    KvOptions o = Options();
    o.engine = other;
    auto s = KvStore::Open(o);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
    EXPECT_THAT(s.status().message(), HasSubstr(absl::StrCat(dir_, "/", kMarkerFileName)));
    EXPECT_THAT(s.status().message(), HasSubstr(KvEngineName(engine())));
  }
  // Without the marker the engine's files are foreign to every engine.
  ASSERT_EQ(unlink(absl::StrCat(dir_, "/", kMarkerFileName).c_str()), 0);
  for (KvEngine any : {KvEngine::kLmdb, KvEngine::kSqlite, KvEngine::kRocksdb}) {
    KvOptions o = Options();
    o.engine = any;
    auto s = KvStore::Open(o);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
    EXPECT_THAT(s.status().message(), HasSubstr(dir_ + "/"));
  }
}

TEST_P(KvStoreTest, ForeignFilesAndASecondOpenAreRefused) {
  OpenStore();
  auto again = KvStore::Open(Options());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition) << again.status();
  EXPECT_THAT(again.status().message(), HasSubstr("open by another KvStore"));
  store_.reset();
  const std::string foreign = dir_ + "/notes.txt";
  {
    const int fd = open(foreign.c_str(), O_CREAT | O_WRONLY, 0600);
    close(fd);
  }
  auto s = KvStore::Open(Options());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
  EXPECT_THAT(s.status().message(), HasSubstr(foreign));
  // A directory of foreign files without a marker.
  const std::string other = NewDir("foreign");
  ASSERT_EQ(mkdir(other.c_str(), 0700), 0);
  {
    const int fd = open((other + "/data.bin").c_str(), O_CREAT | O_WRONLY, 0600);
    close(fd);
  }
  KvOptions o = Options();
  o.dir = other;
  s = KvStore::Open(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
  EXPECT_THAT(s.status().message(), HasSubstr(other + "/data.bin"));
  std::filesystem::remove_all(other);
}

TEST_P(KvStoreTest, DirectoryIs0700AndFilesAre0600) {
  OpenStore();
  std::vector<KvWrite> writes;
  std::vector<std::string> keys;
  for (int i = 0; i < 1000; ++i) keys.push_back(absl::StrFormat("p%06d", i));
  for (const std::string& k : keys) writes.push_back({k, std::string(200, 'v')});
  MustCommit(writes);
  struct stat st;
  ASSERT_EQ(stat(dir_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  const std::vector<std::string> files = store_->Files();
  EXPECT_GE(files.size(), 2u);
  for (const std::string& f : files) {
    ASSERT_EQ(stat(f.c_str(), &st), 0) << f;
    EXPECT_EQ(st.st_mode & 07777, 0600u) << f;
  }
}

TEST_P(KvStoreTest, SizeBytesGrowsWithTenMegabytesAndFilesExist) {
  OpenStore();
  const uint64_t before = store_->SizeBytes();
  const std::string value(1000, 'q');
  std::vector<std::string> keys;
  for (int i = 0; i < 10000; ++i) keys.push_back(absl::StrFormat("size/%08d", i));
  for (int c = 0; c < 100; ++c) {
    std::vector<KvWrite> writes;
    for (int i = 0; i < 100; ++i) writes.push_back({keys[c * 100 + i], value});
    MustCommit(writes);
  }
  const uint64_t after = store_->SizeBytes();
  EXPECT_GT(after, before + (8u << 20)) << "before " << before << " after " << after;
  const std::vector<std::string> files = store_->Files();
  EXPECT_TRUE(std::is_sorted(files.begin(), files.end()));
  EXPECT_THAT(files, ::testing::Contains(absl::StrCat(dir_, "/", kMarkerFileName)));
  for (const std::string& f : files) EXPECT_TRUE(std::filesystem::is_regular_file(f)) << f;
}

INSTANTIATE_TEST_SUITE_P(
    Engines, KvStoreTest,
    ::testing::Combine(::testing::Values(KvEngine::kLmdb, KvEngine::kSqlite, KvEngine::kRocksdb),
                       ::testing::Values(Durability::kProcessCrash, Durability::kPowerLoss)),
    [](const ::testing::TestParamInfo<KvStoreTest::ParamType>& info) {
      return absl::StrCat(
          KvEngineName(std::get<0>(info.param)),
          std::get<1>(info.param) == Durability::kPowerLoss ? "_PowerLoss" : "_ProcessCrash");
    });

TEST(KvEngineTest, NamesRoundTrip) {
  for (KvEngine e : {KvEngine::kLmdb, KvEngine::kSqlite, KvEngine::kRocksdb}) {
    EXPECT_EQ(ParseKvEngine(KvEngineName(e)), e);
  }
  EXPECT_EQ(KvEngineName(KvEngine::kLmdb), "lmdb");
  EXPECT_EQ(KvEngineName(KvEngine::kSqlite), "sqlite");
  EXPECT_EQ(KvEngineName(KvEngine::kRocksdb), "rocksdb");
  EXPECT_EQ(ParseKvEngine("LMDB"), std::nullopt);
  EXPECT_EQ(ParseKvEngine(""), std::nullopt);
}

TEST(KvOpenTest, EmptyDirIsInvalidAndMissingParentFails) {
  KvOptions o;
  EXPECT_EQ(KvStore::Open(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.dir = NewDir("noparent") + "/child";
  auto s = KvStore::Open(o);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr(o.dir));
}

TEST(GroupSyncTest, ConcurrentWaitersShareSyncsAndReturnOnlyWhenCovered) {
  internal::GroupSync group;
  std::atomic<uint64_t> committed{0};
  std::atomic<uint64_t> durable{0};
  std::atomic<uint64_t> waits{0};
  const auto sync = [&]() -> absl::Status {
    const uint64_t covered = committed.load();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    uint64_t d = durable.load();
    while (d < covered && !durable.compare_exchange_weak(d, covered)) {
    }
    return absl::OkStatus();
  };
  absl::Mutex commit_mu;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        uint64_t seq;
        {
          absl::MutexLock lock(&commit_mu);
          seq = committed.load() + 1;
          committed.store(seq);
        }
        ASSERT_TRUE(group.Wait("test", seq, committed, sync).ok());
        EXPECT_GE(durable.load(), seq);
        ++waits;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(waits.load(), 400u);
  EXPECT_LT(group.syncs(), 400u);
  EXPECT_EQ(group.Wait("test", 401, committed, sync).code(), absl::StatusCode::kInvalidArgument);
}

TEST(LmdbTest, AFullMapIsResourceExhaustedNamingTheOptionAndWritesNothing) {
  KvOptions o;
  o.engine = KvEngine::kLmdb;
  o.dir = NewDir("lmdb_full");
  o.lmdb_map_size_bytes = 1 << 20;
  auto store = KvStore::Open(o);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->Commit({{"small", "1"}}).ok());
  const std::string value(2000, 'v');
  std::vector<std::string> keys;
  for (int i = 0; i < 2000; ++i) keys.push_back(absl::StrFormat("full%06d", i));
  std::vector<KvWrite> writes{{"small", std::nullopt}};
  for (const std::string& k : keys) writes.push_back({k, value});
  auto seq = (*store)->Commit(writes);
  EXPECT_EQ(seq.status().code(), absl::StatusCode::kResourceExhausted) << seq.status();
  EXPECT_THAT(seq.status().message(), HasSubstr("KvOptions.lmdb_map_size_bytes"));
  EXPECT_THAT((*store)->Get("small").value(), Optional(std::string("1")));
  EXPECT_EQ((*store)->Get("full000000").value(), std::nullopt);
  // The store still works after the failed commit.
  EXPECT_TRUE((*store)->Commit({{"after", "x"}}).ok());
  store->reset();
  std::filesystem::remove_all(o.dir);
}

}  // namespace
}  // namespace iommu::store
