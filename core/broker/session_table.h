// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_SESSION_TABLE_H_
#define IOMMU_CORE_BROKER_SESSION_TABLE_H_

// Leases of client sessions, as fd lifetimes in VFIO/iommufd: a session is
// opened with a TTL, kept alive by its client, and expires when the TTL passes
// without a keep-alive. The broker releases what an expired or closed session
// created.
//
// Ids are a counter passed through a secret keyed permutation
// (IdPermutation): never reused, since the counter never repeats, and not
// guessable from the ids a client has seen. A session id is also bound to
// the device that opened it: the broker refuses it from any other caller.
//
// Each session has a gate: an operation that creates resources under the
// session holds the gate shared for its duration, and Close/Expire mark the
// gate closed under its exclusive lock before the broker releases what the
// session owns, so no resource can be created under a session after its
// release began (see Broker's session pins).
//
// Thread-compatible: the broker serialises calls (under its registry lock);
// the gates are thread-safe.
// Cost: O(log n) per open/keep-alive/close (an ordered deadline index beside
// the table); Expire is O(k log n) for k expired sessions.

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/base/secure_random.h"

namespace iommu::core {

// Whether a session still accepts new resources. Thread-safe.
struct SessionGate {
  absl::Mutex mu;
  bool closed ABSL_GUARDED_BY(mu) = false;
};

struct SessionInfo {
  uint64_t session_id = 0;
  std::shared_ptr<SessionGate> gate;
  std::string device;  // the device it acts as ("" for an admin session)
  absl::Duration ttl;
  absl::Time deadline;
};

class SessionTable {
 public:
  // Ids from `ids` (a fresh random key by default).
  explicit SessionTable(IdPermutation ids = IdPermutation()) : ids_(ids) {}

  // A new session of `device` with an unguessable id (0 means "no
  // session"). INVALID_ARGUMENT for ttl <= 0 or above kMaxTtl;
  // RESOURCE_EXHAUSTED when `device` already holds `max_per_device` sessions,
  // or no record can be had (the session.record injection point).
  absl::StatusOr<uint64_t> Open(const std::string& device, absl::Duration ttl, absl::Time now,
                                uint64_t max_per_device = UINT64_MAX);
  // Extends the lease to now + ttl. NOT_FOUND for an unknown or expired id.
  absl::Status KeepAlive(uint64_t session_id, absl::Time now);
  // Removes the session. NOT_FOUND for an unknown id.
  absl::Status Close(uint64_t session_id);
  // Removes and returns the sessions whose deadline is <= now (and, with
  // `gates`, appends their gates for the caller to close).
  std::vector<uint64_t> Expire(absl::Time now,
                               std::vector<std::shared_ptr<SessionGate>>* gates = nullptr);

  // Recovery: a journaled session, its lease restarted at now + ttl.
  // INTERNAL for an id 0 or entered twice.
  absl::Status Restore(uint64_t session_id, const std::string& device, absl::Duration ttl,
                       absl::Time now);
  // The id permutation and the next counter it will permute (journaled so
  // that ids continue, never repeat, after a restart).
  const IdPermutation& ids() const { return ids_; }
  uint64_t next_counter() const { return next_counter_; }
  void set_next_counter(uint64_t next) { next_counter_ = std::max(next_counter_, next); }

  const SessionInfo* Find(uint64_t session_id) const;
  size_t size() const { return sessions_.size(); }
  // Live sessions opened by `device`.
  uint64_t CountFor(const std::string& device) const;

  static constexpr absl::Duration kMaxTtl = absl::Hours(24);

 private:
  void Remove(absl::flat_hash_map<uint64_t, SessionInfo>::iterator it);

  IdPermutation ids_;
  uint64_t next_counter_ = 1;
  absl::flat_hash_map<uint64_t, SessionInfo> sessions_;
  absl::flat_hash_map<std::string, uint64_t> per_device_;
  std::set<std::pair<absl::Time, uint64_t>> by_deadline_;
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_BROKER_SESSION_TABLE_H_
