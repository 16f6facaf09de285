#include "core/session_table.h"

#include "absl/strings/str_format.h"
#include "core/errors.h"

namespace iommu::core {

absl::StatusOr<uint64_t> SessionTable::Open(const std::string& device, absl::Duration ttl,
                                            absl::Time now) {
  if (ttl <= absl::ZeroDuration() || ttl > kMaxTtl) {
    return FieldError(absl::StatusCode::kInvalidArgument, "ttl", absl::FormatDuration(ttl),
                      "must be positive and at most 24h");
  }
  const uint64_t id = next_id_++;
  SessionInfo info{.session_id = id, .device = device, .ttl = ttl, .deadline = now + ttl};
  by_deadline_.insert({info.deadline, id});
  sessions_.emplace(id, std::move(info));
  return id;
}

absl::Status SessionTable::KeepAlive(uint64_t session_id, absl::Time now) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end() || it->second.deadline <= now) {
    return FieldError(absl::StatusCode::kNotFound, "session_id", session_id,
                      "no such session (closed or expired)");
  }
  by_deadline_.erase({it->second.deadline, session_id});
  it->second.deadline = now + it->second.ttl;
  by_deadline_.insert({it->second.deadline, session_id});
  return absl::OkStatus();
}

absl::Status SessionTable::Close(uint64_t session_id) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) {
    return FieldError(absl::StatusCode::kNotFound, "session_id", session_id, "no such session");
  }
  by_deadline_.erase({it->second.deadline, session_id});
  sessions_.erase(it);
  return absl::OkStatus();
}

std::vector<uint64_t> SessionTable::Expire(absl::Time now) {
  std::vector<uint64_t> expired;
  while (!by_deadline_.empty() && by_deadline_.begin()->first <= now) {
    const uint64_t id = by_deadline_.begin()->second;
    by_deadline_.erase(by_deadline_.begin());
    sessions_.erase(id);
    expired.push_back(id);
  }
  return expired;
}

const SessionInfo* SessionTable::Find(uint64_t session_id) const {
  auto it = sessions_.find(session_id);
  return it == sessions_.end() ? nullptr : &it->second;
}

}  // namespace iommu::core
