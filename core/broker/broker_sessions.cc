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
  impl_->ReleaseSession(session_id);
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
  for (uint64_t id : expired) impl_->ReleaseSession(id);
  for (const auto& d : impl_->AllDomains()) {
    if (d->type() != DomainType::kDmaFq) continue;
    BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
    Domain::Transaction txn(*d, refs);
    txn.PollFlushQueue();
  }
  return int(expired.size());
}

void BrokerImpl::ReleaseSession(uint64_t session_id) {
  // Mappings first (they hold buffer references), then buffers, then domains.
  for (const auto& d : AllDomains()) {
    Buffers::Refs refs(*buffers_);
    Domain::Transaction txn(*d, refs);
    std::vector<uint64_t> doomed;
    txn.mappings().ForEach([&](const internal::MappingRecord& m) {
      if (m.session_id == session_id) doomed.push_back(m.iova.value());
    });
    // In IOVA order, as the IOVA frees have always been made.
    std::sort(doomed.begin(), doomed.end());
    for (uint64_t iova : doomed) txn.Remove(iova);
  }
  buffers_->ReleaseSession(session_id);
  std::vector<uint64_t> session_domains;
  {
    absl::MutexLock l(&registry_mu_);
    for (const auto& [id, d] : domains_) {
      if (d->session_id() != session_id) continue;
      // Devices still attached go back to their default domains.
      for (const auto& [name, dev] : devices_) {
        if (dev->current == d) {
          dev->SetCurrent(dev->default_domain);
          JournalAttachment(*dev);
        }
      }
      session_domains.push_back(id);
    }
  }
  {
    // Steps of the release, not the reply of a CloseSession that runs it.
    internal::WithoutReply steps;
    for (uint64_t id : session_domains) {
      const absl::Status s = DestroyDomain(Caller::Admin(), id);
      assert(s.ok());
      (void)s;
    }
  }
  // Last: until this commit, a restart finds the session with whatever it
  // still holds, and its release can be finished by closing it again (the
  // reply of CloseSession joins it).
  internal::CaptureOk();
  StateChanges c;
  c.session_deletes.push_back(session_id);
  Commit(c);
}

}  // namespace iommu::core
