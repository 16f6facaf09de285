// SPDX-License-Identifier: Apache-2.0
#include "core/broker/request_log.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace iommu::core {

absl::Status CheckRequestId(absl::string_view field, absl::string_view id) {
  auto refuse = [&](absl::string_view why) {
    const absl::string_view shown = id.substr(0, kMaxRequestIdBytes);
    return absl::InvalidArgumentError(absl::StrFormat("%s=\"%s\"%s: %s", field,
                                                      absl::CHexEscape(shown),
                                                      id.size() > shown.size() ? "..." : "", why));
  };
  if (id.empty()) return refuse("empty");
  if (id.size() > kMaxRequestIdBytes) {
    return refuse(absl::StrFormat("%d bytes, at most %d", id.size(), kMaxRequestIdBytes));
  }
  for (const char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) return refuse("characters other than [A-Za-z0-9._:-]");
  }
  return absl::OkStatus();
}

uint64_t RequestFingerprint(absl::string_view method, absl::string_view request_bytes) {
  // Eight bytes at a time, each word multiplied in and folded (a Batch
  // message is tens of KiB); each part closes with its length, so parts
  // cannot slide into each other. Stable across builds and restarts.
  constexpr uint64_t kMul = 0x9e3779b97f4a7c15ull;
  uint64_t h = 0xcbf29ce484222325ull;
  auto word = [&](uint64_t w) {
    h = (h ^ w) * kMul;
    h ^= h >> 29;
  };
  auto mix = [&](absl::string_view bytes) {
    size_t i = 0;
    for (; i + 8 <= bytes.size(); i += 8) {
      uint64_t w;
      std::memcpy(&w, bytes.data() + i, 8);
      word(w);
    }
    uint64_t tail = 0;
    std::memcpy(&tail, bytes.data() + i, bytes.size() - i);
    word(tail);
    word(uint64_t(bytes.size()));
  };
  mix(method);
  mix(request_bytes);
  return h;
}

std::string RequestLog::Key(absl::string_view principal, absl::string_view id) {
  return absl::StrCat(principal, absl::string_view("\0", 1), id);
}

absl::StatusOr<std::optional<std::string>> RequestLog::Begin(const RequestState& key,
                                                             absl::Time deadline) {
  const std::string k = Key(key.principal, key.request_id);
  auto reused = [&] {
    return absl::InvalidArgumentError(absl::StrFormat(
        "iommu-request-id=\"%s\": already used for a different request within the last %s; "
        "use a new id for each call (retries repeat the call exactly)",
        key.request_id, absl::FormatDuration(options_.window)));
  };
  absl::MutexLock l(&mu_);
  while (true) {
    if (auto it = done_.find(k); it != done_.end()) {
      if (options_.now() - it->second.recorded <= options_.window) {
        if (it->second.fingerprint != key.fingerprint) return reused();
        replays_.fetch_add(1, std::memory_order_relaxed);
        return std::optional<std::string>(it->second.reply);
      }
      // Out of the window: as if never seen (the record is evicted, and
      // deleted from the journal, when its principal next records).
    }
    auto running = in_flight_.find(k);
    if (running == in_flight_.end()) break;
    if (running->second != key.fingerprint) return reused();
    // A retry racing its first attempt: wait for it, then look again.
    // (A condition variable rather than Mutex::Await: the sanitizer build
    // models the former's release of the lock.)
    if (finished_.WaitWithDeadline(&mu_, deadline) && in_flight_.contains(k)) {
      return absl::AbortedError(absl::StrFormat(
          "iommu-request-id=\"%s\": an earlier attempt of this call is still running; retry",
          key.request_id));
    }
  }
  in_flight_.emplace(k, key.fingerprint);
  return std::optional<std::string>();
}

void RequestLog::Record(const RequestState& state,
                        std::vector<std::pair<std::string, std::string>>* deletes) {
  absl::MutexLock l(&mu_);
  InsertLocked(state, deletes);
}

void RequestLog::InsertLocked(const RequestState& state,
                              std::vector<std::pair<std::string, std::string>>* deletes) {
  const std::string k = Key(state.principal, state.request_id);
  Principal& p = principals_[state.principal];
  if (auto it = done_.find(k); it != done_.end()) p.bytes -= it->second.reply.size();
  done_[k] = Entry{state.fingerprint, state.reply, state.recorded};
  p.order.emplace_back(state.request_id, state.recorded);
  p.bytes += state.reply.size();
  // Evict the oldest while out of the window or over a budget; never the
  // record just made.
  const absl::Time horizon = options_.now() - options_.window;
  while (p.order.size() > 1) {
    const auto& [id, recorded] = p.order.front();
    const std::string old = Key(state.principal, id);
    auto it = done_.find(old);
    // A stale position: the id was recorded again later.
    if (it == done_.end() || it->second.recorded != recorded) {
      p.order.pop_front();
      continue;
    }
    if (recorded >= horizon && p.order.size() <= options_.max_per_principal &&
        p.bytes <= options_.max_bytes_per_principal) {
      break;
    }
    p.bytes -= it->second.reply.size();
    done_.erase(it);
    if (deletes != nullptr) deletes->emplace_back(state.principal, id);
    p.order.pop_front();
  }
}

void RequestLog::End(const RequestState& key) {
  absl::MutexLock l(&mu_);
  in_flight_.erase(Key(key.principal, key.request_id));
  finished_.SignalAll();
}

void RequestLog::Restore(std::vector<RequestState> records,
                         std::vector<std::pair<std::string, std::string>>* deletes) {
  std::sort(records.begin(), records.end(),
            [](const RequestState& a, const RequestState& b) { return a.recorded < b.recorded; });
  absl::MutexLock l(&mu_);
  const absl::Time horizon = options_.now() - options_.window;
  for (const RequestState& r : records) {
    if (r.recorded < horizon) {
      if (deletes != nullptr) deletes->emplace_back(r.principal, r.request_id);
      continue;
    }
    InsertLocked(r, deletes);
  }
}

std::vector<RequestState> RequestLog::Records() const {
  absl::MutexLock l(&mu_);
  std::vector<RequestState> out;
  out.reserve(done_.size());
  for (const auto& [k, e] : done_) {
    const size_t nul = k.find('\0');
    out.push_back({.principal = k.substr(0, nul),
                   .request_id = k.substr(nul + 1),
                   .fingerprint = e.fingerprint,
                   .reply = e.reply,
                   .recorded = e.recorded});
  }
  return out;
}

size_t RequestLog::size() const {
  absl::MutexLock l(&mu_);
  return done_.size();
}

RequestScope::~RequestScope() {
  if (!begun_) return;
  internal::pending_request = outer_;
  log_.End(record_);
}

absl::StatusOr<std::optional<std::string>> RequestScope::Begin(absl::Time deadline) {
  absl::StatusOr<std::optional<std::string>> r = log_.Begin(record_, deadline);
  if (r.ok() && !r->has_value()) {
    begun_ = true;
    outer_ = internal::pending_request;
    internal::pending_request = this;
  }
  return r;
}

}  // namespace iommu::core
