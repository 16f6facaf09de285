// SPDX-License-Identifier: Apache-2.0
// LMDB engine: one environment, its unnamed database. Commits serialise on
// write_mu_ (LMDB has one writer anyway); reads take a read-only transaction
// each (MDB_NOTLS, so any thread may read and a Scan callback may commit).

#include <lmdb.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "store/kv_store_internal.h"

namespace iommu::store::internal {
namespace {

constexpr absl::string_view kEngine = "lmdb";
constexpr unsigned kMaxReaders = 1024;

MDB_val Val(std::string_view s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
std::string_view View(const MDB_val& v) {
  return std::string_view(static_cast<const char*>(v.mv_data), v.mv_size);
}

class LmdbKvStore final : public KvStore {
 public:
  LmdbKvStore(const KvOptions& options, std::unique_ptr<StoreDir> dir)
      : options_(options), dir_(std::move(dir)) {}

  ~LmdbKvStore() override {
    if (env_ != nullptr) {
      // Commits already written stay in the page cache; make the last meta
      // page durable too in kPowerLoss so a clean close loses nothing.
      if (options_.durability == Durability::kPowerLoss) mdb_env_sync(env_, 1);
      mdb_env_close(env_);
    }
  }

  absl::Status Init() {
    if (options_.lmdb_map_size_bytes == 0) {
      return absl::InvalidArgumentError("lmdb: KvOptions.lmdb_map_size_bytes is 0");
    }
    if (int rc = mdb_env_create(&env_); rc != 0) return Error("mdb_env_create", rc);
    if (int rc = mdb_env_set_mapsize(env_, options_.lmdb_map_size_bytes); rc != 0) {
      return Error(absl::StrCat("mdb_env_set_mapsize(KvOptions.lmdb_map_size_bytes=",
                                options_.lmdb_map_size_bytes, ")"),
                   rc);
    }
    if (int rc = mdb_env_set_maxreaders(env_, kMaxReaders); rc != 0) {
      return Error("mdb_env_set_maxreaders", rc);
    }
    // kProcessCrash: no syncs at all. kPowerLoss: each commit syncs its data
    // pages but not the meta page; with MDB_NOSYNC a power loss could leave a
    // durable meta page naming pages never written (or pages a later commit
    // reused), which loses the whole environment, not just recent commits.
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD;
    flags |= options_.durability == Durability::kPowerLoss ? MDB_NOMETASYNC : MDB_NOSYNC;
    if (options_.lmdb_write_map) flags |= MDB_WRITEMAP;
    if (int rc = mdb_env_open(env_, dir_->dir().c_str(), flags, 0600); rc != 0) {
      return Error("mdb_env_open", rc);
    }
    int dead = 0;
    if (int rc = mdb_reader_check(env_, &dead); rc != 0) return Error("mdb_reader_check", rc);
    MDB_txn* txn = nullptr;
    if (int rc = mdb_txn_begin(env_, nullptr, 0, &txn); rc != 0) return Error("mdb_txn_begin", rc);
    if (int rc = mdb_dbi_open(txn, nullptr, 0, &dbi_); rc != 0) {
      mdb_txn_abort(txn);
      return Error("mdb_dbi_open", rc);
    }
    if (int rc = mdb_txn_commit(txn); rc != 0) return Error("mdb_txn_commit", rc);
    if (options_.durability == Durability::kPowerLoss) {
      if (int rc = mdb_env_sync(env_, 1); rc != 0) return Error("mdb_env_sync", rc);
      return dir_->SyncDir();
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Commit(absl::Span<const KvWrite> writes) override {
    if (absl::Status s = ValidateWrites(kEngine, writes); !s.ok()) return s;
    absl::MutexLock lock(&write_mu_);
    MDB_txn* txn = nullptr;
    if (int rc = mdb_txn_begin(env_, nullptr, 0, &txn); rc != 0) return Error("mdb_txn_begin", rc);
    for (size_t i = 0; i < writes.size(); ++i) {
      MDB_val key = Val(writes[i].key);
      int rc;
      if (writes[i].value.has_value()) {
        MDB_val value = Val(*writes[i].value);
        rc = mdb_put(txn, dbi_, &key, &value, 0);
      } else {
        rc = mdb_del(txn, dbi_, &key, nullptr);
        if (rc == MDB_NOTFOUND) rc = 0;
      }
      if (rc != 0) {
        mdb_txn_abort(txn);
        return Error(
            absl::StrCat("Commit: writes[", i, "] of ", writes.size(), " (nothing written)"), rc);
      }
    }
    if (int rc = mdb_txn_commit(txn); rc != 0) {
      return Error("Commit: mdb_txn_commit (nothing written)", rc);
    }
    const uint64_t seq = ++last_seq_;
    committed_.store(seq, std::memory_order_release);
    return seq;
  }

  absl::Status WaitDurable(uint64_t seq) override {
    if (options_.durability == Durability::kProcessCrash) return absl::OkStatus();
    return group_.Wait(kEngine, seq, committed_, [this]() -> absl::Status {
      if (int rc = mdb_env_sync(env_, 1); rc != 0) return Error("WaitDurable: mdb_env_sync", rc);
      return absl::OkStatus();
    });
  }

  absl::StatusOr<std::optional<std::string>> Get(std::string_view key) const override {
    if (key.empty() || key.size() > kMaxKeyBytes) return std::optional<std::string>();
    MDB_txn* txn = nullptr;
    if (int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn); rc != 0) {
      return Error("Get: mdb_txn_begin", rc);
    }
    MDB_val k = Val(key);
    MDB_val v;
    const int rc = mdb_get(txn, dbi_, &k, &v);
    std::optional<std::string> result;
    if (rc == 0) result.emplace(View(v));
    mdb_txn_abort(txn);
    if (rc != 0 && rc != MDB_NOTFOUND) return Error("Get: mdb_get", rc);
    return result;
  }

  absl::Status Scan(
      std::string_view prefix,
      const std::function<absl::Status(std::string_view, std::string_view)>& fn) const override {
    MDB_txn* txn = nullptr;
    if (int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn); rc != 0) {
      return Error("Scan: mdb_txn_begin", rc);
    }
    MDB_cursor* cursor = nullptr;
    if (int rc = mdb_cursor_open(txn, dbi_, &cursor); rc != 0) {
      mdb_txn_abort(txn);
      return Error("Scan: mdb_cursor_open", rc);
    }
    absl::Status status;
    MDB_val k = Val(prefix);
    MDB_val v;
    int rc = prefix.empty() ? mdb_cursor_get(cursor, &k, &v, MDB_FIRST)
                            : mdb_cursor_get(cursor, &k, &v, MDB_SET_RANGE);
    while (rc == 0) {
      const std::string_view key = View(k);
      if (key.substr(0, prefix.size()) != prefix) break;
      status = fn(key, View(v));
      if (!status.ok()) break;
      rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT);
    }
    if (status.ok() && rc != 0 && rc != MDB_NOTFOUND) status = Error("Scan: mdb_cursor_get", rc);
    mdb_cursor_close(cursor);
    mdb_txn_abort(txn);
    return status;
  }

  uint64_t SizeBytes() const override { return dir_->SizeBytes(); }
  std::vector<std::string> Files() const override { return dir_->Files(); }

 private:
  absl::Status Error(absl::string_view what, int rc) const {
    const std::string text =
        absl::StrCat("lmdb: ", what, " in ", dir_->dir(), ": ", mdb_strerror(rc));
    switch (rc) {
      case MDB_MAP_FULL:
        return absl::ResourceExhaustedError(
            absl::StrCat(text, " (the map is full: raise KvOptions.lmdb_map_size_bytes, now ",
                         options_.lmdb_map_size_bytes, ")"));
      case MDB_TXN_FULL:
        return absl::ResourceExhaustedError(absl::StrCat(text, " (batch too large)"));
      case MDB_READERS_FULL:
        return absl::ResourceExhaustedError(text);
      case MDB_VERSION_MISMATCH:
      case MDB_INVALID:
      case MDB_CORRUPTED:
        return absl::DataLossError(text);
      default:
        if (rc > 0) return absl::Status(absl::ErrnoToStatusCode(rc), text);
        return absl::InternalError(text);
    }
  }

  const KvOptions options_;
  const std::unique_ptr<StoreDir> dir_;  // Outlives env_ (declared first).
  MDB_env* env_ = nullptr;
  MDB_dbi dbi_ = 0;
  absl::Mutex write_mu_;
  uint64_t last_seq_ ABSL_GUARDED_BY(write_mu_) = 0;
  std::atomic<uint64_t> committed_{0};
  GroupSync group_;
};

}  // namespace

bool LmdbOwnsFile(std::string_view name) { return name == "data.mdb" || name == "lock.mdb"; }

absl::StatusOr<std::unique_ptr<KvStore>> OpenLmdb(const KvOptions& options,
                                                  std::unique_ptr<StoreDir> dir) {
  auto store = std::make_unique<LmdbKvStore>(options, std::move(dir));
  if (absl::Status s = store->Init(); !s.ok()) return s;
  return store;
}

}  // namespace iommu::store::internal
