// SPDX-License-Identifier: Apache-2.0
#include "core/broker/session_table.h"

#include "absl/strings/str_format.h"
#include "core/base/errors.h"
#include "core/base/fail_nth.h"
#include "core/base/secure_random.h"

namespace iommu::core {

absl::StatusOr<uint64_t> SessionTable::Open(const std::string& device, absl::Duration ttl,
                                            absl::Time now, uint64_t max_per_device) {
  if (ttl <= absl::ZeroDuration() || ttl > kMaxTtl) {
    return FieldError(absl::StatusCode::kInvalidArgument, "ttl", absl::FormatDuration(ttl),
                      "must be positive and at most 24h");
  }
  if (CountFor(device) >= max_per_device) {
    return FieldError(absl::StatusCode::kResourceExhausted, "device", device,
                      absl::StrFormat("session quota of %d sessions reached (--quota_sessions, "
                                      "or the device's quotas in the topology); close one first",
                                      max_per_device));
  }
  if (fail_nth::ShouldFail(FailPoint::kSessionRecord)) {
    return fail_nth::Exhausted(FailPoint::kSessionRecord, "device", device,
                               "no memory for a session record");
  }
  uint64_t id;
  do {
    id = ids_.Apply(next_counter_++);
  } while (id == 0);  // 0 means "no session"
  SessionInfo info{.session_id = id,
                   .gate = std::make_shared<SessionGate>(),
                   .device = device,
                   .ttl = ttl,
                   .deadline = now + ttl};
  by_deadline_.insert({info.deadline, id});
  sessions_.emplace(id, std::move(info));
  ++per_device_[device];
  return id;
}

absl::Status SessionTable::Restore(uint64_t session_id, const std::string& device,
                                   absl::Duration ttl, absl::Time now) {
  if (session_id == 0 || sessions_.contains(session_id)) {
    return absl::InternalError(absl::StrFormat("session %d: id 0 or recorded twice", session_id));
  }
  SessionInfo info{.session_id = session_id,
                   .gate = std::make_shared<SessionGate>(),
                   .device = device,
                   .ttl = ttl,
                   .deadline = now + ttl};
  by_deadline_.insert({info.deadline, session_id});
  sessions_.emplace(session_id, std::move(info));
  ++per_device_[device];
  return absl::OkStatus();
}

uint64_t SessionTable::CountFor(const std::string& device) const {
  auto it = per_device_.find(device);
  return it == per_device_.end() ? 0 : it->second;
}

void SessionTable::Remove(absl::flat_hash_map<uint64_t, SessionInfo>::iterator it) {
  auto count = per_device_.find(it->second.device);
  if (--count->second == 0) per_device_.erase(count);
  sessions_.erase(it);
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
  Remove(it);
  return absl::OkStatus();
}

std::vector<uint64_t> SessionTable::Expire(absl::Time now,
                                           std::vector<std::shared_ptr<SessionGate>>* gates) {
  std::vector<uint64_t> expired;
  while (!by_deadline_.empty() && by_deadline_.begin()->first <= now) {
    const uint64_t id = by_deadline_.begin()->second;
    by_deadline_.erase(by_deadline_.begin());
    auto it = sessions_.find(id);
    if (gates != nullptr) gates->push_back(it->second.gate);
    Remove(it);
    expired.push_back(id);
  }
  return expired;
}

const SessionInfo* SessionTable::Find(uint64_t session_id) const {
  auto it = sessions_.find(session_id);
  return it == sessions_.end() ? nullptr : &it->second;
}

}  // namespace iommu::core
