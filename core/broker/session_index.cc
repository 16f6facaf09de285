// SPDX-License-Identifier: Apache-2.0
#include "core/broker/session_index.h"

#include <algorithm>
#include <cassert>

namespace iommu::core::internal {

void SessionIndex::Add(uint64_t session_id, uint64_t domain_id) {
  assert(session_id != 0);
  Shard& shard = ShardOf(session_id);
  absl::MutexLock l(&shard.mu);
  const bool inserted = shard.domains[session_id].insert(domain_id).second;
  assert(inserted);
  (void)inserted;
}

void SessionIndex::Remove(uint64_t session_id, uint64_t domain_id) {
  Shard& shard = ShardOf(session_id);
  absl::MutexLock l(&shard.mu);
  auto it = shard.domains.find(session_id);
  assert(it != shard.domains.end() && it->second.contains(domain_id));
  if (it == shard.domains.end()) return;
  it->second.erase(domain_id);
  if (it->second.empty()) shard.domains.erase(it);
}

std::vector<uint64_t> SessionIndex::DomainsOf(uint64_t session_id) const {
  Shard& shard = ShardOf(session_id);
  std::vector<uint64_t> out;
  {
    absl::MutexLock l(&shard.mu);
    auto it = shard.domains.find(session_id);
    if (it == shard.domains.end()) return out;
    out.assign(it->second.begin(), it->second.end());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void SessionIndex::ForEach(absl::FunctionRef<void(uint64_t, uint64_t)> fn) const {
  for (Shard& shard : shards_) {
    absl::MutexLock l(&shard.mu);
    for (const auto& [session_id, domains] : shard.domains) {
      for (const uint64_t domain_id : domains) fn(session_id, domain_id);
    }
  }
}

}  // namespace iommu::core::internal
