#ifndef IOMMU_CORE_SESSION_TABLE_H_
#define IOMMU_CORE_SESSION_TABLE_H_

// Leases of client sessions, as fd lifetimes in VFIO/iommufd: a session is
// opened with a TTL, kept alive by its client, and expires when the TTL passes
// without a keep-alive. The broker releases what an expired or closed session
// created.
//
// Thread-compatible: the broker serialises calls (under its registry lock).
// Cost: O(log n) per open/keep-alive/close (an ordered deadline index beside
// the table); Expire is O(k log n) for k expired sessions.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace iommu::core {

struct SessionInfo {
  uint64_t session_id = 0;
  std::string device;  // the device it acts as ("" for an admin session)
  absl::Duration ttl;
  absl::Time deadline;
};

class SessionTable {
 public:
  // Ids start at 1 and are never reused (0 means "no session").
  // INVALID_ARGUMENT for ttl <= 0 or above max_ttl.
  absl::StatusOr<uint64_t> Open(const std::string& device, absl::Duration ttl, absl::Time now);
  // Extends the lease to now + ttl. NOT_FOUND for an unknown or expired id.
  absl::Status KeepAlive(uint64_t session_id, absl::Time now);
  // Removes the session. NOT_FOUND for an unknown id.
  absl::Status Close(uint64_t session_id);
  // Removes and returns the sessions whose deadline is <= now.
  std::vector<uint64_t> Expire(absl::Time now);

  const SessionInfo* Find(uint64_t session_id) const;
  size_t size() const { return sessions_.size(); }

  static constexpr absl::Duration kMaxTtl = absl::Hours(24);

 private:
  uint64_t next_id_ = 1;
  absl::flat_hash_map<uint64_t, SessionInfo> sessions_;
  std::set<std::pair<absl::Time, uint64_t>> by_deadline_;
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_SESSION_TABLE_H_
