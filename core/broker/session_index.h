// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_SESSION_INDEX_H_
#define IOMMU_CORE_BROKER_SESSION_INDEX_H_

// Which domains hold mappings of each session, so that releasing a session
// (its close or its lease's expiry) visits only what the session owns
// (docs/design.md#sessions). Each domain indexes its own mappings by session
// (MappingTable::AppendStartsOf) and tells this index when a session's first
// mapping enters it and when its last one leaves; buffers are indexed by
// their table's shards, domains made under a session by the broker's
// registry.
//
// Invariant: (session, domain) is present iff that domain holds at least
// one mapping made under that session.
//
// Cost: O(1) expected per Add/Remove; DomainsOf is O(domains returned).
// Thread-safe: 16 shards by session id, each with its own lock. A shard's
// lock is a leaf (taken with a domain's lock held; nothing is taken under
// it), so sessions rarely share one and a Map under a session pays for it
// only when its session enters or leaves the domain.

#include <array>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace iommu::core::internal {

class SessionIndex {
 public:
  // Domain `domain_id` now holds a mapping of `session_id` (not 0).
  void Add(uint64_t session_id, uint64_t domain_id);
  // Its last mapping of `session_id` left domain `domain_id`.
  void Remove(uint64_t session_id, uint64_t domain_id);
  // The domains holding mappings of `session_id`, ascending.
  std::vector<uint64_t> DomainsOf(uint64_t session_id) const;
  // fn(session_id, domain_id) for every pair (the invariants check).
  void ForEach(absl::FunctionRef<void(uint64_t, uint64_t)> fn) const;

 private:
  static constexpr size_t kShards = 16;
  struct alignas(64) Shard {
    mutable absl::Mutex mu;
    absl::flat_hash_map<uint64_t, absl::flat_hash_set<uint64_t>> domains ABSL_GUARDED_BY(mu);
  };
  Shard& ShardOf(uint64_t session_id) const { return shards_[session_id % kShards]; }

  mutable std::array<Shard, kShards> shards_;
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_BROKER_SESSION_INDEX_H_
