// SPDX-License-Identifier: Apache-2.0
// RocksDB engine: WriteBatch commits with WriteOptions.sync=false and the WAL
// on (written with write() at each commit, so a process crash loses nothing);
// kPowerLoss: the group-commit leader calls DB::SyncWAL(). Scans iterate a
// snapshot between prefix bounds. Tuned for small values: no compression, a
// small block cache, a whole-key Bloom filter for Get.

#include <sys/stat.h>

#include <atomic>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"
#include "store/kv_store_internal.h"

namespace iommu::store::internal {
namespace {

constexpr absl::string_view kEngine = "rocksdb";

rocksdb::Slice Sl(std::string_view s) { return rocksdb::Slice(s.data(), s.size()); }
std::string_view View(const rocksdb::Slice& s) { return std::string_view(s.data(), s.size()); }

absl::StatusCode CodeOf(const rocksdb::Status& s) {
  switch (s.code()) {
    case rocksdb::Status::kNotFound:
      return absl::StatusCode::kNotFound;
    case rocksdb::Status::kCorruption:
      return absl::StatusCode::kDataLoss;
    case rocksdb::Status::kInvalidArgument:
      return absl::StatusCode::kInvalidArgument;
    case rocksdb::Status::kBusy:
    case rocksdb::Status::kTryAgain:
    case rocksdb::Status::kTimedOut:
      return absl::StatusCode::kUnavailable;
    case rocksdb::Status::kIOError:
      return s.subcode() == rocksdb::Status::kNoSpace ? absl::StatusCode::kResourceExhausted
                                                      : absl::StatusCode::kInternal;
    default:
      return absl::StatusCode::kInternal;
  }
}

// The default file system, but every file it creates is made 0600 (RocksDB
// creates them 0644 less the umask). The store directory is 0700, so the
// moment between creation and chmod exposes nothing.
class PrivateFileSystem : public rocksdb::FileSystemWrapper {
 public:
  explicit PrivateFileSystem(const std::shared_ptr<rocksdb::FileSystem>& target)
      : FileSystemWrapper(target) {}
  const char* Name() const override { return "IommuPrivateFileSystem"; }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* d) override {
    return Private(f, target()->NewWritableFile(f, o, r, d));
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* d) override {
    return Private(f, target()->ReopenWritableFile(f, o, r, d));
  }
  rocksdb::IOStatus ReuseWritableFile(const std::string& f, const std::string& old,
                                      const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSWritableFile>* r,
                                      rocksdb::IODebugContext* d) override {
    return Private(f, target()->ReuseWritableFile(f, old, o, r, d));
  }
  rocksdb::IOStatus NewRandomRWFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSRandomRWFile>* r,
                                    rocksdb::IODebugContext* d) override {
    return Private(f, target()->NewRandomRWFile(f, o, r, d));
  }
  rocksdb::IOStatus LockFile(const std::string& f, const rocksdb::IOOptions& o,
                             rocksdb::FileLock** l, rocksdb::IODebugContext* d) override {
    return Private(f, target()->LockFile(f, o, l, d));
  }
  rocksdb::IOStatus NewLogger(const std::string& f, const rocksdb::IOOptions& o,
                              std::shared_ptr<rocksdb::Logger>* r,
                              rocksdb::IODebugContext* d) override {
    return Private(f, target()->NewLogger(f, o, r, d));
  }

 private:
  static rocksdb::IOStatus Private(const std::string& path, rocksdb::IOStatus s) {
    if (s.ok() && chmod(path.c_str(), 0600) != 0) {
      return rocksdb::IOStatus::IOError("chmod 0600", path);
    }
    return s;
  }
};

class RocksdbKvStore final : public KvStore {
 public:
  RocksdbKvStore(const KvOptions& options, std::unique_ptr<StoreDir> dir)
      : options_(options), dir_(std::move(dir)) {}

  ~RocksdbKvStore() override {
    if (db_ != nullptr) {
      if (options_.durability == Durability::kPowerLoss) db_->SyncWAL();
      db_->Close();
      db_.reset();
    }
  }

  absl::Status Init() {
    env_ = rocksdb::NewCompositeEnv(
        std::make_shared<PrivateFileSystem>(rocksdb::FileSystem::Default()));
    rocksdb::Options o;
    o.env = env_.get();
    o.create_if_missing = true;
    o.compression = rocksdb::kNoCompression;
    o.bottommost_compression = rocksdb::kNoCompression;
    o.write_buffer_size = 32 << 20;
    o.max_write_buffer_number = 3;
    o.target_file_size_base = 32 << 20;
    o.max_bytes_for_level_base = 256 << 20;
    o.max_background_jobs = 2;
    o.keep_log_file_num = 2;
    o.max_log_file_size = 4 << 20;
    o.info_log_level = rocksdb::WARN_LEVEL;
    o.max_manifest_file_size = 16 << 20;
    rocksdb::BlockBasedTableOptions t;
    t.block_cache = rocksdb::NewLRUCache(32 << 20);
    t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
    t.cache_index_and_filter_blocks = true;
    t.pin_l0_filter_and_index_blocks_in_cache = true;
    o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
    rocksdb::DB* db = nullptr;
    const rocksdb::Status s = rocksdb::DB::Open(o, dir_->dir(), &db);
    if (!s.ok()) return Error("DB::Open", s);
    db_.reset(db);
    if (options_.durability == Durability::kPowerLoss) return dir_->SyncDir();
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Commit(absl::Span<const KvWrite> writes) override {
    if (absl::Status s = ValidateWrites(kEngine, writes); !s.ok()) return s;
    rocksdb::WriteBatch batch;
    for (size_t i = 0; i < writes.size(); ++i) {
      const KvWrite& w = writes[i];
      const rocksdb::Status s =
          w.value.has_value() ? batch.Put(Sl(w.key), Sl(*w.value)) : batch.Delete(Sl(w.key));
      if (!s.ok()) return Error(absl::StrCat("Commit: writes[", i, "] (nothing written)"), s);
    }
    rocksdb::WriteOptions wo;
    wo.sync = false;
    absl::MutexLock lock(&write_mu_);
    if (const rocksdb::Status s = db_->Write(wo, &batch); !s.ok()) {
      return Error("Commit: DB::Write (nothing written)", s);
    }
    const uint64_t seq = ++last_seq_;
    committed_.store(seq, std::memory_order_release);
    return seq;
  }

  absl::Status WaitDurable(uint64_t seq) override {
    if (options_.durability == Durability::kProcessCrash) return absl::OkStatus();
    return group_.Wait(kEngine, seq, committed_, [this]() -> absl::Status {
      if (const rocksdb::Status s = db_->SyncWAL(); !s.ok()) {
        return Error("WaitDurable: SyncWAL", s);
      }
      return absl::OkStatus();
    });
  }

  absl::StatusOr<std::optional<std::string>> Get(std::string_view key) const override {
    std::string value;
    const rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), Sl(key), &value);
    if (s.IsNotFound()) return std::optional<std::string>();
    if (!s.ok()) return Error("Get", s);
    return std::optional<std::string>(std::move(value));
  }

  absl::Status Scan(
      std::string_view prefix,
      const std::function<absl::Status(std::string_view, std::string_view)>& fn) const override {
    const std::optional<std::string> end = PrefixSuccessor(prefix);
    rocksdb::Slice upper;
    rocksdb::ReadOptions ro;
    if (end.has_value()) {
      upper = Sl(*end);
      ro.iterate_upper_bound = &upper;
    }
    // An iterator reads one implicit snapshot taken when it is created.
    ro.fill_cache = false;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
    absl::Status status;
    for (it->Seek(Sl(prefix)); it->Valid(); it->Next()) {
      const std::string_view key = View(it->key());
      if (key.substr(0, prefix.size()) != prefix) break;
      status = fn(key, View(it->value()));
      if (!status.ok()) return status;
    }
    if (!it->status().ok()) return Error("Scan", it->status());
    return status;
  }

  uint64_t SizeBytes() const override { return dir_->SizeBytes(); }
  std::vector<std::string> Files() const override { return dir_->Files(); }

 private:
  absl::Status Error(absl::string_view what, const rocksdb::Status& s) const {
    return absl::Status(CodeOf(s),
                        absl::StrCat("rocksdb: ", what, " in ", dir_->dir(), ": ", s.ToString()));
  }

  const KvOptions options_;
  const std::unique_ptr<StoreDir> dir_;  // Outlives the DB (declared first).
  std::unique_ptr<rocksdb::Env> env_;    // Outlives the DB.
  std::unique_ptr<rocksdb::DB> db_;
  absl::Mutex write_mu_;
  uint64_t last_seq_ ABSL_GUARDED_BY(write_mu_) = 0;
  std::atomic<uint64_t> committed_{0};
  GroupSync group_;
};

bool HasPrefix(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool HasSuffix(std::string_view s, std::string_view x) {
  return s.size() >= x.size() && s.substr(s.size() - x.size()) == x;
}

}  // namespace

bool RocksdbOwnsFile(std::string_view name) {
  return name == "CURRENT" || name == "IDENTITY" || name == "LOCK" || name == "LOG" ||
         HasPrefix(name, "LOG.old.") || HasPrefix(name, "MANIFEST-") ||
         HasPrefix(name, "OPTIONS-") || HasSuffix(name, ".log") || HasSuffix(name, ".sst") ||
         HasSuffix(name, ".blob") || HasSuffix(name, ".dbtmp");
}

absl::StatusOr<std::unique_ptr<KvStore>> OpenRocksdb(const KvOptions& options,
                                                     std::unique_ptr<StoreDir> dir) {
  auto store = std::make_unique<RocksdbKvStore>(options, std::move(dir));
  if (absl::Status s = store->Init(); !s.ok()) return s;
  return store;
}

}  // namespace iommu::store::internal
