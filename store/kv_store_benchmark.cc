// SPDX-License-Identifier: Apache-2.0
// Commit, group-commit and scan costs of the three engines on a workload
// shaped like the broker's mappings: key = 'm' + 8-byte big-endian domain id
// + 8-byte big-endian IOVA (17 bytes), value = 120 random bytes.
//
// The stores live under $KV_BENCH_DIR (default /tmp), one directory per run,
// removed afterwards.

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "store/kv_store.h"

namespace iommu::store {
namespace {

constexpr size_t kValueBytes = 120;

// Engine argument: 0 lmdb, 1 sqlite, 2 rocksdb, 3 lmdb with MDB_WRITEMAP.
KvEngine EngineOf(int64_t engine_arg) {
  return engine_arg == 1   ? KvEngine::kSqlite
         : engine_arg == 2 ? KvEngine::kRocksdb
                           : KvEngine::kLmdb;
}

std::string Label(int64_t engine_arg) {
  return engine_arg == 3 ? "lmdb+writemap" : std::string(KvEngineName(EngineOf(engine_arg)));
}

// Options for a new store in a fresh directory.
KvOptions OptionsFor(int64_t engine_arg, Durability durability) {
  static std::atomic<int> counter{0};
  const char* base = std::getenv("KV_BENCH_DIR");
  KvOptions o;
  o.engine = EngineOf(engine_arg);
  o.lmdb_write_map = engine_arg == 3;
  o.durability = durability;
  o.dir = absl::StrCat(base != nullptr ? base : "/tmp", "/kv_bench_", getpid(), "_", counter++);
  std::filesystem::remove_all(o.dir);
  return o;
}

void PutBigEndian(std::string& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>(v >> shift));
}

std::string MappingKey(uint64_t domain, uint64_t iova) {
  std::string key;
  key.reserve(17);
  key.push_back('m');
  PutBigEndian(key, domain);
  PutBigEndian(key, iova);
  return key;
}

// Values drawn from a pool of random 120-byte strings.
class Values {
 public:
  Values() {
    std::mt19937_64 rng(1);
    pool_.resize(1024);
    for (std::string& v : pool_) {
      v.resize(kValueBytes);
      for (char& c : v) c = static_cast<char>(rng());
    }
  }
  const std::string& operator[](uint64_t i) const { return pool_[i % pool_.size()]; }

 private:
  std::vector<std::string> pool_;
};

const Values& TheValues() {
  static const Values* values = new Values();
  return *values;
}

std::unique_ptr<KvStore> MustOpen(const KvOptions& o, benchmark::State& state) {
  auto store = KvStore::Open(o);
  if (!store.ok()) {
    state.SkipWithError(store.status().ToString().c_str());
    return nullptr;
  }
  return *std::move(store);
}

// Each commit puts `batch` new mappings and deletes the `batch` the previous
// commit put. Items = put+delete pairs.
void BM_CommitPutDelete(benchmark::State& state) {
  const int64_t engine_arg = state.range(0);
  const int64_t batch = state.range(1);
  state.SetLabel(Label(engine_arg));
  const KvOptions o = OptionsFor(engine_arg, Durability::kProcessCrash);
  {
    std::unique_ptr<KvStore> store = MustOpen(o, state);
    if (store == nullptr) return;
    const Values& values = TheValues();
    constexpr uint64_t kDomain = 7;
    uint64_t next_iova = 0;
    std::vector<std::string> keys;
    std::vector<KvWrite> writes;
    for (auto _ : state) {
      writes.clear();
      const uint64_t first_new = next_iova;
      keys.resize(2 * batch);
      for (int64_t i = 0; i < batch; ++i) {
        keys[i] = MappingKey(kDomain, (first_new + i) << 12);
        writes.push_back({keys[i], values[first_new + i]});
      }
      if (first_new >= static_cast<uint64_t>(batch)) {
        for (int64_t i = 0; i < batch; ++i) {
          keys[batch + i] = MappingKey(kDomain, (first_new - batch + i) << 12);
          writes.push_back({keys[batch + i], std::nullopt});
        }
      }
      next_iova += batch;
      auto seq = store->Commit(writes);
      if (!seq.ok()) {
        state.SkipWithError(seq.status().ToString().c_str());
        break;
      }
    }
    state.SetItemsProcessed(state.iterations() * batch);
  }
  std::filesystem::remove_all(o.dir);
}
BENCHMARK(BM_CommitPutDelete)
    ->ArgNames({"engine", "batch"})
    ->ArgsProduct({{0, 3, 1, 2}, {1, 64, 512}})
    ->UseRealTime();

// kPowerLoss commits of one put each, every one waited for with WaitDurable
// (group commit across threads). Items = durable commits.
KvStore* g_power_store = nullptr;
std::string g_power_dir;

void PowerSetup(const benchmark::State& state) {
  const KvOptions o = OptionsFor(state.range(0), Durability::kPowerLoss);
  g_power_dir = o.dir;
  auto store = KvStore::Open(o);
  if (store.ok()) g_power_store = store->release();
}
void PowerTeardown(const benchmark::State&) {
  delete g_power_store;
  g_power_store = nullptr;
  std::filesystem::remove_all(g_power_dir);
}

void BM_CommitPowerLoss(benchmark::State& state) {
  state.SetLabel(Label(state.range(0)));
  if (g_power_store == nullptr) {
    state.SkipWithError("open failed");
    return;
  }
  const Values& values = TheValues();
  const uint64_t domain = static_cast<uint64_t>(state.thread_index());
  uint64_t iova = 0;
  for (auto _ : state) {
    const std::string key = MappingKey(domain, iova << 12);
    auto seq = g_power_store->Commit({{key, values[iova]}});
    ++iova;
    if (!seq.ok()) {
      state.SkipWithError(seq.status().ToString().c_str());
      break;
    }
    if (absl::Status s = g_power_store->WaitDurable(*seq); !s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CommitPowerLoss)
    ->ArgNames({"engine"})
    ->Args({0})
    ->Args({3})
    ->Args({1})
    ->Args({2})
    ->Setup(PowerSetup)
    ->Teardown(PowerTeardown)
    ->Threads(1)
    ->Threads(8)
    ->UseRealTime();

// A scan of 10^6 live mappings (120-byte values) over 64 domains. The store
// is loaded once per engine (outside the timing) and kept for the run.
constexpr uint64_t kScanKeys = 1'000'000;

// Loaded stores stay open for the whole run (never closed: the process ends
// right after); their directories are removed at exit.
std::vector<std::string>& LoadedDirs() {
  static auto* dirs = new std::vector<std::string>();
  return *dirs;
}

KvStore* LoadedStore(int64_t engine_arg, benchmark::State& state) {
  static auto* loaded = new std::map<int64_t, KvStore*>();
  auto it = loaded->find(engine_arg);
  if (it != loaded->end()) return it->second;
  const KvOptions o = OptionsFor(engine_arg, Durability::kProcessCrash);
  if (LoadedDirs().empty()) {
    std::atexit([] {
      for (const std::string& dir : LoadedDirs()) std::filesystem::remove_all(dir);
    });
  }
  LoadedDirs().push_back(o.dir);
  std::unique_ptr<KvStore> store = MustOpen(o, state);
  if (store == nullptr) return nullptr;
  const Values& values = TheValues();
  constexpr uint64_t kBatch = 10'000;
  std::vector<std::string> keys(kBatch);
  std::vector<KvWrite> writes(kBatch);
  for (uint64_t first = 0; first < kScanKeys; first += kBatch) {
    for (uint64_t i = 0; i < kBatch; ++i) {
      const uint64_t n = first + i;
      keys[i] = MappingKey(n % 64, (n / 64) << 12);
      writes[i] = {keys[i], values[n]};
    }
    if (auto seq = store->Commit(writes); !seq.ok()) {
      state.SkipWithError(seq.status().ToString().c_str());
      return nullptr;
    }
  }
  return (*loaded)[engine_arg] = store.release();
}

void BM_ScanMillion(benchmark::State& state) {
  state.SetLabel(Label(state.range(0)));
  KvStore* store = LoadedStore(state.range(0), state);
  if (store == nullptr) return;
  for (auto _ : state) {
    uint64_t count = 0, bytes = 0;
    absl::Status s = store->Scan("m", [&](std::string_view k, std::string_view v) {
      ++count;
      bytes += k.size() + v.size();
      return absl::OkStatus();
    });
    if (!s.ok() || count != kScanKeys) {
      state.SkipWithError(s.ok() ? "wrong count" : s.ToString().c_str());
      break;
    }
    benchmark::DoNotOptimize(bytes);
  }
  state.SetItemsProcessed(state.iterations() * kScanKeys);
  state.counters["size_bytes"] = static_cast<double>(store->SizeBytes());
}
BENCHMARK(BM_ScanMillion)
    ->ArgNames({"engine"})
    ->Args({0})
    ->Args({1})
    ->Args({2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace iommu::store
