// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_STORE_STATE_STORE_H_
#define IOMMU_STORE_STATE_STORE_H_

// iommud's durable state: the broker's Journal over an embedded database
// (docs/design.md#durable-state).
//
// Every commit of the broker becomes one atomic write of the database, made
// before the operation is acknowledged: with Durability::kProcessCrash it is
// in the operating system's page cache when Commit returns (a crash or kill of
// the daemon loses nothing); with kPowerLoss WaitDurable also syncs it to
// disk, concurrent waiters sharing one sync. A write that fails stops the
// daemon (fail-stop): the broker's memory is already ahead of the store, and
// the restart serves the last state written.
//
// Thread-safe: commits come from many domain transactions at once; each
// encodes on its own thread, and the database serialises the writes.

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/broker/state.h"
#include "store/kv_store.h"

namespace iommu::store {

struct StateStoreOptions {
  KvOptions kv;
  std::string written_by;  // recorded in the schema record, e.g. "iommud 0.1.0"
  // Called with the error when a commit fails, before the process aborts
  // (the daemon logs it). Default: a line on stderr.
  std::function<void(const absl::Status&)> on_fatal;
};

// What opening found.
struct RecoveryInfo {
  bool fresh = false;           // an empty store, now initialised
  uint32_t schema_version = 0;  // of the store as found
  bool upgraded = false;        // an earlier version's store, now marked current
  uint64_t records = 0;
  uint64_t size_bytes = 0;
  absl::Duration read_time;  // reading and checking every record
};

// Commit latency buckets (seconds, upper bounds) of StoreStats.
inline constexpr std::array<double, 12> kCommitLatencyBounds = {1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4,
                                                                1e-3, 3e-3, 1e-2, 3e-2, 0.1,  1.0};

struct StoreStats {
  uint64_t commits = 0;
  uint64_t writes = 0;  // records put or deleted
  uint64_t size_bytes = 0;
  // Commit latency: counts per bucket of kCommitLatencyBounds (+Inf last), sum.
  std::array<uint64_t, kCommitLatencyBounds.size() + 1> latency_buckets{};
  double latency_sum_seconds = 0;
};

class StateStore final : public core::Journal {
 public:
  // Opens the store in options.kv.dir (creating it, 0700, when missing) and
  // reads every record into `state`, checking each one. Errors name the
  // directory and the record: DATA_LOSS for a damaged record (a checksum
  // mismatch, an unparseable or inconsistent record); FAILED_PRECONDITION
  // for a store of a newer schema version or without a schema record, or a
  // directory of another engine; the database's own errors as it reports
  // them. A torn last write (an unacknowledged commit) is the database's to
  // drop: none of it appears.
  static absl::StatusOr<std::unique_ptr<StateStore>> Open(const StateStoreOptions& options,
                                                          core::DurableState* state,
                                                          RecoveryInfo* info = nullptr);

  uint64_t Commit(const core::StateChanges& changes) override;
  void WaitDurable(uint64_t ticket) override;

  StoreStats Stats() const;
  const KvOptions& kv_options() const { return options_.kv; }

 private:
  StateStore(StateStoreOptions options, std::unique_ptr<KvStore> kv)
      : options_(std::move(options)), kv_(std::move(kv)) {}
  [[noreturn]] void Fatal(const absl::Status& status);

  const StateStoreOptions options_;
  const std::unique_ptr<KvStore> kv_;
  std::atomic<uint64_t> commits_{0};
  std::atomic<uint64_t> writes_{0};
  std::array<std::atomic<uint64_t>, kCommitLatencyBounds.size() + 1> latency_buckets_{};
  std::atomic<uint64_t> latency_sum_ns_{0};
};

// Reads every record of a store without serving it, for `iommud
// --check_state`: the state it holds and what opening it would report, or
// the first error. Never writes (an empty or missing directory is an error).
absl::StatusOr<core::DurableState> ReadStore(const KvOptions& options, RecoveryInfo* info);

}  // namespace iommu::store

#endif  // IOMMU_STORE_STATE_STORE_H_
