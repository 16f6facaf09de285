// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_STORE_KV_STORE_INTERNAL_H_
#define IOMMU_STORE_KV_STORE_INTERNAL_H_

// Pieces the three engines share: the store directory (marker, lock, file
// listing), group commit and the checks of a batch. Not part of the API.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "store/kv_store.h"

namespace iommu::store::internal {

// A store directory held open: its marker names the engine and carries an
// exclusive flock for as long as this object lives. Thread-safe (immutable
// after Acquire).
class StoreDir {
 public:
  // True for the names of files the engine creates in its directory.
  using OwnsFile = bool (*)(std::string_view name);

  // Creates dir (0700) if missing and marks it for engine if it is empty;
  // FAILED_PRECONDITION when the marker names another engine, the directory
  // holds a file that is neither the marker nor owned by the engine, or
  // another KvStore holds it.
  static absl::StatusOr<std::unique_ptr<StoreDir>> Acquire(const std::string& dir, KvEngine engine,
                                                           OwnsFile owns);
  ~StoreDir();
  StoreDir(const StoreDir&) = delete;
  StoreDir& operator=(const StoreDir&) = delete;

  const std::string& dir() const { return dir_; }
  std::string Path(std::string_view name) const;
  // The regular files in the directory, full paths, sorted.
  std::vector<std::string> Files() const;
  // Allocated bytes of Files().
  uint64_t SizeBytes() const;
  // fsync of the directory itself (makes file creations durable).
  absl::Status SyncDir() const;

 private:
  StoreDir(std::string dir, int lock_fd) : dir_(std::move(dir)), lock_fd_(lock_fd) {}
  const std::string dir_;
  const int lock_fd_;
};

// Group commit for WaitDurable. Thread-safe.
class GroupSync {
 public:
  // Blocks until a sync that began after commit `seq` completed has finished.
  // `committed` is the highest seq whose commit has completed; `sync` makes
  // every completed commit durable. One caller at a time runs `sync` (the
  // leader) for everything committed when it starts; the others wait and
  // return when it covered them. INVALID_ARGUMENT when seq > committed.
  absl::Status Wait(absl::string_view engine, uint64_t seq, const std::atomic<uint64_t>& committed,
                    const std::function<absl::Status()>& sync);

  // How many syncs ran (for tests of the grouping).
  uint64_t syncs() const;

 private:
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  bool syncing_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t durable_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t syncs_ ABSL_GUARDED_BY(mu_) = 0;
};

// OK when every write has a key of 1..kMaxKeyBytes bytes and a value of at
// most kMaxValueBytes; else INVALID_ARGUMENT naming the engine and index.
absl::Status ValidateWrites(absl::string_view engine, absl::Span<const KvWrite> writes);

// The smallest string greater than every string starting with prefix, or
// nullopt when there is none (prefix empty or all 0xff).
std::optional<std::string> PrefixSuccessor(std::string_view prefix);

// "<engine>: <what> <path>: <strerror(err)>" with the code errno maps to.
absl::Status ErrnoError(absl::string_view engine, absl::string_view what, std::string_view path,
                        int err);

absl::StatusOr<std::unique_ptr<KvStore>> OpenLmdb(const KvOptions& options,
                                                  std::unique_ptr<StoreDir> dir);
absl::StatusOr<std::unique_ptr<KvStore>> OpenSqlite(const KvOptions& options,
                                                    std::unique_ptr<StoreDir> dir);
absl::StatusOr<std::unique_ptr<KvStore>> OpenRocksdb(const KvOptions& options,
                                                     std::unique_ptr<StoreDir> dir);
bool LmdbOwnsFile(std::string_view name);
bool SqliteOwnsFile(std::string_view name);
bool RocksdbOwnsFile(std::string_view name);

}  // namespace iommu::store::internal

#endif  // IOMMU_STORE_KV_STORE_INTERNAL_H_
