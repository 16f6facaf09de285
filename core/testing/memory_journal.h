// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_TESTING_MEMORY_JOURNAL_H_
#define IOMMU_CORE_TESTING_MEMORY_JOURNAL_H_

// A Journal that keeps the state in memory, applying each commit as a store
// would (puts replace, deletes remove, by key), for tests of the broker's
// commits and restore without a database. Thread-safe.

#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "core/broker/state.h"

namespace iommu::core::testing {

class MemoryJournal final : public Journal {
 public:
  uint64_t Commit(const StateChanges& c) override {
    absl::MutexLock l(&mu_);
    for (const auto& [domain, iova] : c.mapping_deletes) mappings_.erase({domain, iova.value()});
    for (const auto& [domain, m] : c.mapping_puts) {
      MappingState copy = *m;
      copy.owner = nullptr;
      for (auto& ref : copy.buffer_refs) ref.buffer = nullptr;
      mappings_[{domain, m->iova.value()}] = std::move(copy);
    }
    for (uint64_t id : c.domain_deletes) domains_.erase(id);
    for (const DomainState& d : c.domain_puts) domains_[d.domain_id] = d;
    for (const AttachmentState& a : c.attachment_puts) attachments_[a.device] = a;
    for (uint64_t id : c.buffer_deletes) buffers_.erase(id);
    for (const BufferState& b : c.buffer_puts) buffers_[b.buffer_id] = b;
    for (uint64_t id : c.export_deletes) exports_.erase(id);
    for (const ExportState& e : c.export_puts) exports_[e.export_id] = e;
    for (uint64_t id : c.session_deletes) sessions_.erase(id);
    for (const SessionState& s : c.session_puts) sessions_[s.session_id] = s;
    for (const auto& [counter, value] : c.counters) counters_[counter] = value;
    if (c.session_key) session_key_ = c.session_key;
    for (const auto& key : c.request_deletes) requests_.erase(key);
    if (c.request_put != nullptr) {
      requests_[{c.request_put->principal, c.request_put->request_id}] = *c.request_put;
      // Whether the reply shares its commit with the call's changes.
      StateChanges rest = c;
      rest.request_put = nullptr;
      rest.request_deletes.clear();
      (rest.empty() ? replies_alone_ : replies_joined_)++;
    }
    ++commits_;
    return commits_;
  }
  void WaitDurable(uint64_t ticket) override {
    absl::MutexLock l(&mu_);
    waited_ = std::max(waited_, ticket);
  }

  // The state as a store holding every commit so far would hold it.
  DurableState State() const {
    absl::MutexLock l(&mu_);
    DurableState s;
    for (const auto& [c, v] : counters_) s.counters.push_back({c, v});
    s.session_key = session_key_;
    for (const auto& [id, d] : domains_) s.domains.push_back(d);
    for (const auto& [name, a] : attachments_) s.attachments.push_back(a);
    for (const auto& [id, b] : buffers_) s.buffers.push_back(b);
    for (const auto& [id, e] : exports_) s.exports.push_back(e);
    for (const auto& [id, x] : sessions_) s.sessions.push_back(x);
    for (const auto& [key, m] : mappings_) s.mappings.push_back({key.first, m});
    for (const auto& [key, r] : requests_) s.requests.push_back(r);
    return s;
  }
  // Replies of request ids journaled with other changes / in a commit of
  // their own (a call that changed nothing).
  uint64_t replies_joined() const {
    absl::MutexLock l(&mu_);
    return replies_joined_;
  }
  uint64_t replies_alone() const {
    absl::MutexLock l(&mu_);
    return replies_alone_;
  }
  uint64_t commits() const {
    absl::MutexLock l(&mu_);
    return commits_;
  }
  uint64_t waited() const {
    absl::MutexLock l(&mu_);
    return waited_;
  }

 private:
  mutable absl::Mutex mu_;
  uint64_t commits_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t waited_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t replies_joined_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t replies_alone_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::pair<std::string, std::string>, RequestState> requests_ ABSL_GUARDED_BY(mu_);
  std::map<StateCounter, uint64_t> counters_ ABSL_GUARDED_BY(mu_);
  std::optional<std::pair<uint64_t, uint64_t>> session_key_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, DomainState> domains_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, AttachmentState> attachments_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, BufferState> buffers_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, ExportState> exports_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, SessionState> sessions_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<uint64_t, uint64_t>, MappingState> mappings_ ABSL_GUARDED_BY(mu_);
};

}  // namespace iommu::core::testing

#endif  // IOMMU_CORE_TESTING_MEMORY_JOURNAL_H_
