// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_STORE_KV_STORE_H_
#define IOMMU_STORE_KV_STORE_H_

// The key-value layer of iommud's durable state store: one small interface
// over three embedded databases (LMDB, SQLite, RocksDB). The databases do all
// the storage; this layer adds atomic batches, sequence numbers, group commit
// for power-loss durability and uniform errors.
//
// A store directory belongs to one engine: Open records the engine in a marker
// file (kMarkerFileName) and refuses a directory another engine made or one
// holding files that are not the engine's (FAILED_PRECONDITION naming the
// file). One KvStore at a time may have a directory open: Open holds an
// exclusive flock on the marker (a second Open, in this process or another,
// fails with FAILED_PRECONDITION).
//
// Keys are non-empty byte strings of at most kMaxKeyBytes, ordered bytewise
// (callers encode integers big-endian). Values are at most kMaxValueBytes.
//
// Durability, per engine (see Durability):
//   kProcessCrash  every engine: a returned Commit is in the OS page cache
//                  (LMDB: the pwrite()n pages; SQLite: the WAL; RocksDB: its
//                  WAL). Nothing is promised across a power loss or kernel
//                  crash: RocksDB then loses a tail of commits, SQLite
//                  (synchronous=NORMAL) loses a tail of commits, and LMDB
//                  (MDB_NOSYNC) may lose the whole environment, since the
//                  disk may hold its meta page without the pages it names.
//   kPowerLoss     WaitDurable(seq) syncs once for every waiter it covers.
//                  LMDB: MDB_NOMETASYNC, so each Commit fdatasyncs its data
//                  pages (LMDB's integrity needs it) and WaitDurable syncs the
//                  meta page under group commit. SQLite: WAL with
//                  synchronous=NORMAL (checkpoints sync the WAL before and
//                  the database after; commits do not sync) and WaitDurable
//                  fdatasyncs the WAL file. RocksDB: WaitDurable calls
//                  SyncWAL().
//
// Sequence numbers count commits since Open: the first Commit of each Open
// returns 1. They are not stored.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace iommu::store {

enum class KvEngine { kLmdb, kSqlite, kRocksdb };

// "lmdb", "sqlite", "rocksdb".
absl::string_view KvEngineName(KvEngine engine);
// The inverse of KvEngineName; nullopt for any other string.
std::optional<KvEngine> ParseKvEngine(absl::string_view name);

enum class Durability {
  // A returned Commit survives a crash or SIGKILL of the process (it is in the
  // OS page cache). WaitDurable returns OK at once.
  kProcessCrash,
  // WaitDurable(seq) returns only once every commit <= seq is on stable
  // storage (fdatasync/msync).
  kPowerLoss,
};

struct KvOptions {
  KvEngine engine = KvEngine::kLmdb;
  // The store's directory: created 0700 if missing (its parent must exist);
  // the files inside are created 0600.
  std::string dir;
  Durability durability = Durability::kProcessCrash;
  // LMDB only: the largest the data may grow (address space reserved, not
  // memory used). A commit that would grow the data past it fails with
  // RESOURCE_EXHAUSTED; a later Open may raise it.
  uint64_t lmdb_map_size_bytes = uint64_t{16} << 30;
  // LMDB only: MDB_WRITEMAP (commits write through the shared file mapping
  // instead of pwrite): a third less time per record on the broker's Batch
  // path (docs/performance.md#store). The data file is then sized sparsely
  // to lmdb_map_size_bytes, and a full disk stops the process with SIGBUS
  // instead of an error (the same fail-stop as a failed write; the last
  // commit is intact, as LMDB writes its meta page last).
  bool lmdb_write_map = true;
};

// One write of a batch: value nullopt deletes the key.
struct KvWrite {
  std::string_view key;
  std::optional<std::string_view> value;
};

inline constexpr size_t kMaxKeyBytes = 511;  // LMDB's default key limit.
// Large enough for every record a request within iommud's limits can make (a
// recorded reply up to --max_message_bytes, a mapping of --max_buffer_runs
// pieces); iommud checks its limits against it when it starts
// (server/limits.h, ValidateLimits).
inline constexpr size_t kMaxValueBytes = size_t{16} << 20;
inline constexpr char kMarkerFileName[] = "IOMMU_KV_ENGINE";

// Thread-safe: every method may be called from any thread concurrently.
class KvStore {
 public:
  // Opens (creating if needed) the store in options.dir with options.engine.
  // INVALID_ARGUMENT for an empty dir or zero map size; FAILED_PRECONDITION
  // for a directory of another engine, with foreign files, or already open;
  // other codes for the database's own errors (the message names the engine,
  // the file or directory and the database's error text).
  static absl::StatusOr<std::unique_ptr<KvStore>> Open(const KvOptions& options);

  virtual ~KvStore() = default;

  // Applies every write atomically (all or none), in order: the last write of
  // a key wins, deleting an absent key is fine. Returns the commit's sequence
  // number, strictly greater than every earlier one of this store. When it
  // returns the commit survives a process crash. Concurrent commits serialise
  // inside. Does not wait for stable storage (but see LMDB kPowerLoss above).
  // INVALID_ARGUMENT (naming the write's index) for an empty or too long key
  // or a too long value, checked before anything is written;
  // RESOURCE_EXHAUSTED when LMDB's map is full.
  virtual absl::StatusOr<uint64_t> Commit(absl::Span<const KvWrite> writes) = 0;

  // kPowerLoss: blocks until every commit <= seq is on stable storage. Group
  // commit: one waiter (the leader) syncs everything committed so far while
  // the others wait; those it covered return without syncing. kProcessCrash:
  // returns OK at once. INVALID_ARGUMENT when seq was not yet returned by
  // Commit.
  virtual absl::Status WaitDurable(uint64_t seq) = 0;

  // The value of key, nullopt when absent.
  virtual absl::StatusOr<std::optional<std::string>> Get(std::string_view key) const = 0;

  // Calls fn(key, value) for every key starting with prefix, in bytewise key
  // order, all from one consistent snapshot (commits made meanwhile, also from
  // fn, are not seen). Stops at and returns fn's first error. fn may call the
  // store's other methods.
  virtual absl::Status Scan(
      std::string_view prefix,
      const std::function<absl::Status(std::string_view key, std::string_view value)>& fn)
      const = 0;

  // Bytes the store's files occupy on disk now (allocated blocks, so a sparse
  // file counts what it holds).
  virtual uint64_t SizeBytes() const = 0;

  // The paths of the files the store owns now, sorted.
  virtual std::vector<std::string> Files() const = 0;
};

}  // namespace iommu::store

#endif  // IOMMU_STORE_KV_STORE_H_
