// SPDX-License-Identifier: Apache-2.0
// Sessions (leases) and the periodic Tick that expires them and polls the
// flush queues.

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "core/broker/broker.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {

using internal::Domain;
using internal::Smmu;

// --- sessions -------------------------------------------------------------------

absl::StatusOr<uint64_t> Broker::OpenSession(const Caller& caller, absl::Duration ttl) {
  BrokerImpl::DurableReply durable(*impl_);
  RETURN_IF_ERROR(impl_->CheckCaller(caller));
  const uint64_t limit =
      caller.admin ? UINT64_MAX : impl_->devices_.at(caller.device)->quotas.max_sessions;
  absl::MutexLock l(&impl_->registry_mu_);
  ASSIGN_OR_RETURN(const uint64_t id,
                   impl_->sessions_.Open(caller.device, ttl, impl_->options_.now(), limit));
  durable.Reply(id);
  if (impl_->journal_ != nullptr) {
    StateChanges c;
    c.session_puts.push_back({.session_id = id, .device = caller.device, .ttl = ttl});
    c.counters.push_back({StateCounter::kSessionSeq, impl_->sessions_.next_counter()});
    impl_->Commit(c);
  }
  return id;
}

absl::Status Broker::KeepAlive(const Caller& caller, uint64_t session_id) {
  absl::MutexLock l(&impl_->registry_mu_);
  const SessionInfo* s = impl_->sessions_.Find(session_id);
  if (s == nullptr || (!caller.admin && s->device != caller.device)) {
    return FieldError(absl::StatusCode::kNotFound, "session_id", session_id, "no such session");
  }
  return impl_->sessions_.KeepAlive(session_id, impl_->options_.now());
}

absl::Status Broker::CloseSession(const Caller& caller, uint64_t session_id) {
  BrokerImpl::DurableReply durable(*impl_);
  std::shared_ptr<SessionGate> gate;
  {
    absl::MutexLock l(&impl_->registry_mu_);
    const SessionInfo* s = impl_->sessions_.Find(session_id);
    if (s == nullptr || (!caller.admin && s->device != caller.device)) {
      return FieldError(absl::StatusCode::kNotFound, "session_id", session_id, "no such session");
    }
    gate = s->gate;
    RETURN_IF_ERROR(impl_->sessions_.Close(session_id));
  }
  // Operations pinning the session finish first; none starts after.
  BrokerImpl::CloseGate(*gate);
  impl_->ReleaseSessions({session_id});
  return absl::OkStatus();
}

int Broker::Tick() {
  BrokerImpl::DurableReply durable(*impl_);
  std::vector<uint64_t> expired;
  std::vector<std::shared_ptr<SessionGate>> gates;
  {
    absl::MutexLock l(&impl_->registry_mu_);
    expired = impl_->sessions_.Expire(impl_->options_.now(), &gates);
  }
  for (const auto& gate : gates) BrokerImpl::CloseGate(*gate);
  // Together: each domain they hold mappings in is visited once.
  impl_->ReleaseSessions(expired);
  // Only the lazy domains whose flush queue is due (O(due), not O(domains)).
  for (const uint64_t id : impl_->flush_timer_.TakeDue(impl_->options_.now())) {
    std::shared_ptr<Domain> d;
    {
      absl::ReaderMutexLock l(&impl_->registry_mu_);
      absl::StatusOr<std::shared_ptr<Domain>> found = impl_->FindDomain(id);
      if (!found.ok()) continue;  // destroyed, its queue flushed
      d = *std::move(found);
    }
    impl_->flush_polls_.fetch_add(1, std::memory_order_relaxed);
    BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
    Domain::Transaction txn(*d, refs);
    txn.PollFlushQueue();
  }
  return int(expired.size());
}

uint64_t Broker::SessionReleaseWork() const {
  return impl_->release_work_.load(std::memory_order_relaxed);
}

uint64_t Broker::FlushPolls() const { return impl_->flush_polls_.load(std::memory_order_relaxed); }

void BrokerImpl::ReleaseSessions(absl::Span<const uint64_t> session_ids) {
  if (session_ids.empty()) return;
  // Their gates are closed: nothing is created under them any more, so what
  // the indexes list only shrinks while this runs.
  const absl::flat_hash_set<uint64_t> releasing(session_ids.begin(), session_ids.end());
  uint64_t visited = 0;
  // Mappings first (they hold buffer references), then buffers, then
  // domains; each domain once for all the sessions, in id order.
  std::vector<uint64_t> mapped_in;
  for (const uint64_t id : session_ids) {
    const std::vector<uint64_t> domains = session_index_.DomainsOf(id);
    mapped_in.insert(mapped_in.end(), domains.begin(), domains.end());
  }
  std::sort(mapped_in.begin(), mapped_in.end());
  mapped_in.erase(std::unique(mapped_in.begin(), mapped_in.end()), mapped_in.end());
  for (const uint64_t domain_id : mapped_in) {
    std::shared_ptr<Domain> d;
    {
      absl::ReaderMutexLock l(&registry_mu_);
      absl::StatusOr<std::shared_ptr<Domain>> found = FindDomain(domain_id);
      if (!found.ok()) continue;  // destroyed meanwhile, with its mappings
      d = *std::move(found);
    }
    ++visited;
    visited += ReleaseMappingsIn(*d, session_ids, releasing);
  }
  visited += buffers_->ReleaseSessions(session_ids);
  std::vector<uint64_t> session_domains;
  {
    absl::MutexLock l(&registry_mu_);
    for (const uint64_t id : session_ids) {
      const auto it = session_domains_.find(id);
      if (it == session_domains_.end()) continue;
      for (const uint64_t domain_id : it->second) {
        ++visited;
        const std::shared_ptr<Domain>& d = domains_.at(domain_id);
        // Devices still attached go back to their default domains.
        for (const auto& [name, dev] : devices_) {
          if (dev->current == d) {
            dev->SetCurrent(dev->default_domain);
            JournalAttachment(*dev);
          }
        }
        session_domains.push_back(domain_id);
      }
    }
  }
  std::sort(session_domains.begin(), session_domains.end());
  {
    // Steps of the release, not the reply of a CloseSession that runs it.
    internal::WithoutReply steps;
    for (uint64_t id : session_domains) {
      const absl::Status s = DestroyDomain(Caller::Admin(), id);
      assert(s.ok());
      (void)s;
    }
  }
  release_work_.fetch_add(visited, std::memory_order_relaxed);
  // Last: until this commit, a restart finds the sessions with whatever they
  // still hold, and a release can be finished by closing the session again
  // (the reply of CloseSession joins it).
  internal::CaptureOk();
  StateChanges c;
  c.session_deletes.assign(session_ids.begin(), session_ids.end());
  Commit(c);
}

uint64_t BrokerImpl::ReleaseMappingsIn(Domain& d, absl::Span<const uint64_t> session_ids,
                                       const absl::flat_hash_set<uint64_t>& releasing) {
  std::vector<uint64_t> starts;
  {
    Domain::Reader r(d);
    for (const uint64_t id : session_ids) r.mappings().AppendStartsOf(id, &starts);
  }
  // In IOVA order, as the IOVA frees have always been made; a session that
  // owns very many lets others in between chunks.
  std::sort(starts.begin(), starts.end());
  for (size_t first = 0; first < starts.size(); first += kReleaseChunk) {
    const size_t last = std::min(starts.size(), first + kReleaseChunk);
    Buffers::Refs refs(*buffers_);
    Domain::Transaction txn(d, refs);
    for (size_t i = first; i < last; ++i) {
      // Unmapped by its device meanwhile, its IOVA perhaps reused by a
      // mapping no releasing session can have made.
      const internal::MappingRecord* m = txn.FindStart(starts[i]);
      if (m == nullptr || !releasing.contains(m->session_id)) continue;
      txn.Remove(starts[i]);
    }
  }
  return starts.size();
}

}  // namespace iommu::core
