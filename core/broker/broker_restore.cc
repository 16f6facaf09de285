// SPDX-License-Identifier: Apache-2.0
// Durable state: the journal's commits, a fresh journal's first state, and
// the restore of a journaled state (docs/design.md#durable-state).

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "core/broker/broker.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {

using internal::Domain;
using DeviceState = BrokerImpl::DeviceState;

namespace {

absl::Status Unrestorable(absl::string_view what) {
  return absl::FailedPreconditionError(absl::StrCat("state cannot be restored: ", what));
}

}  // namespace

void BrokerImpl::Commit(StateChanges& changes) {
  if (journal_ == nullptr) return;
  internal::JoinPendingRequest(changes);
  if (changes.empty()) return;
  const uint64_t ticket = journal_->Commit(changes);
  internal::pending_journal_ticket = std::max(internal::pending_journal_ticket, ticket);
}

StateChanges BrokerImpl::InitialState() const {
  StateChanges c;
  absl::ReaderMutexLock l(&registry_mu_);
  for (const auto& [id, d] : domains_) c.domain_puts.push_back(d->State());
  for (const DeviceConfig& cfg : topology_.devices) {
    c.attachment_puts.push_back({cfg.name, devices_.at(cfg.name)->Current()->id()});
  }
  c.counters.push_back({StateCounter::kDomainId, next_domain_id_});
  c.counters.push_back({StateCounter::kSessionSeq, sessions_.next_counter()});
  c.session_key = std::make_pair(sessions_.ids().key0(), sessions_.ids().key1());
  return c;
}

// Reserves ahead, once half a block is left, so that a fault's seq is below
// the journaled reservation before the fault is pushed (unless half a block
// of faults race one reservation).
void BrokerImpl::ReserveFaultSeqs(uint64_t seq) {
  const uint64_t ahead = seq + kFaultSeqBlock / 2;
  if (journal_ == nullptr || ahead < fault_seqs_reserved_.load(std::memory_order_relaxed)) return;
  absl::MutexLock l(&fault_seq_mu_);
  if (ahead < fault_seqs_reserved_.load()) return;
  StateChanges c;
  const uint64_t reserved = seq + kFaultSeqBlock;
  c.counters.push_back({StateCounter::kFaultSeq, reserved});
  // Not Commit: a reservation is not the calling operation's change, so a
  // request's reply never joins it.
  internal::pending_journal_ticket =
      std::max(internal::pending_journal_ticket, journal_->Commit(c));
  fault_seqs_reserved_ = reserved;
}

absl::Status BrokerImpl::RestoreState(DurableState& state, RestoreReport* report) {
  RestoreReport local;
  RestoreReport& rep = report != nullptr ? *report : local;
  auto completed = [&](std::string note) {
    ++rep.completed;
    rep.notes.push_back(std::move(note));
  };
  uint64_t counter[6] = {};
  for (const auto& [c, value] : state.counters) {
    if (size_t(c) < 6) counter[size_t(c)] = value;
  }
  if (!state.session_key) return Unrestorable("no session id key recorded");
  auto device = [&](const std::string& name,
                    absl::string_view what) -> absl::StatusOr<DeviceState*> {
    auto it = devices_.find(name);
    if (it == devices_.end()) {
      return Unrestorable(
          absl::StrFormat("%s names device \"%s\", which is not in the topology", what, name));
    }
    return it->second.get();
  };

  absl::MutexLock l(&registry_mu_);
  sessions_ = SessionTable(IdPermutation(state.session_key->first, state.session_key->second));
  sessions_.set_next_counter(counter[size_t(StateCounter::kSessionSeq)]);

  // Domains, in id order (contexts are handed out in that order).
  std::vector<const DomainState*> domains;
  for (const DomainState& d : state.domains) domains.push_back(&d);
  std::sort(domains.begin(), domains.end(),
            [](const DomainState* a, const DomainState* b) { return a->domain_id < b->domain_id; });
  uint64_t max_domain_id = 0;
  for (const DomainState* ds : domains) {
    const std::string what = absl::StrFormat("domain %d", ds->domain_id);
    auto smmu = smmu_by_name_.find(ds->smmu);
    if (smmu == smmu_by_name_.end()) {
      return Unrestorable(
          absl::StrFormat("%s is on SMMU \"%s\", which is not in the topology", what, ds->smmu));
    }
    if (ds->domain_id == 0 || domains_.contains(ds->domain_id)) {
      return Unrestorable(absl::StrFormat("%s: id 0 or recorded twice", what));
    }
    DeviceState* default_of = nullptr;
    if (!ds->default_of.empty()) {
      ASSIGN_OR_RETURN(default_of, device(ds->default_of, what));
      if (default_of->default_domain != nullptr) {
        return Unrestorable(
            absl::StrFormat("%s: device %s has two default domains", what, ds->default_of));
      }
    }
    DeviceState* owner = nullptr;
    if (!ds->owner.empty()) {
      ASSIGN_OR_RETURN(owner, device(ds->owner, what));
      if (default_of != nullptr) {
        return Unrestorable(absl::StrFormat("%s: the default domain of %s has an owner (%s)", what,
                                            ds->default_of, ds->owner));
      }
    }
    for (const std::string& g : ds->granted) RETURN_IF_ERROR(device(g, what).status());
    internal::DomainParams params{
        .id = ds->domain_id,
        .type = ds->type,
        .granule_bytes = ds->granule_bytes,
        .owner = ds->owner,
        .is_default = default_of != nullptr,
        .default_of = ds->default_of,
        .granted = ds->granted,
        .session_id = ds->session_id,
        .try_32bit_first = default_of != nullptr && default_of->config.pci,
        .iova_cache_max_pages = options_.iova_cache_max_pages,
        .flush_queue_capacity = options_.flush_queue_capacity,
        .flush_queue_timeout = options_.flush_queue_timeout,
        .now = options_.now,
        .journal = journal_,
        .first_mapping_id = ds->mapping_ids_reserved,
        .sessions = &session_index_,
        .flush_timer = &flush_timer_};
    auto d = Domain::Create(smmu->second, std::move(params));
    if (!d.ok()) return Unrestorable(absl::StrFormat("%s: %s", what, d.status().message()));
    if (ds->msi_window) {
      Buffers::Refs refs(*buffers_);
      Domain::Transaction txn(**d, refs);
      if (absl::Status s = txn.SetMsiWindow(*ds->msi_window); !s.ok()) {
        return Unrestorable(absl::StrFormat("%s: MSI window: %s", what, s.message()));
      }
    }
    if (default_of != nullptr) default_of->default_domain = *d;
    if (owner != nullptr && default_of == nullptr) owner->domains.fetch_add(1);
    domains_[ds->domain_id] = *d;
    if (ds->session_id != 0) session_domains_[ds->session_id].push_back(ds->domain_id);
    max_domain_id = std::max(max_domain_id, ds->domain_id);
    ++rep.records;
  }
  next_domain_id_ = std::max(counter[size_t(StateCounter::kDomainId)], max_domain_id + 1);

  // Devices: a device the state does not know (added to the topology since)
  // gets a fresh default domain; every other one its recorded attachment.
  StateChanges fresh;
  for (const DeviceConfig& cfg : topology_.devices) {
    DeviceState& dev = *devices_.at(cfg.name);
    if (dev.default_domain == nullptr) {
      ASSIGN_OR_RETURN(dev.default_domain, NewDefaultDomain(dev));
      fresh.domain_puts.push_back(dev.default_domain->State());
      fresh.attachment_puts.push_back({cfg.name, dev.default_domain->id()});
      fresh.counters.push_back({StateCounter::kDomainId, next_domain_id_});
    }
    dev.SetCurrent(dev.default_domain);
  }
  for (const AttachmentState& a : state.attachments) {
    const std::string what = absl::StrFormat("the attachment of %s", a.device);
    ASSIGN_OR_RETURN(DeviceState * dev, device(a.device, what));
    auto d = domains_.find(a.domain_id);
    if (d == domains_.end() || &d->second->smmu() != dev->smmu) {
      return Unrestorable(
          absl::StrFormat("%s names domain %d, which is not on its SMMU", what, a.domain_id));
    }
    dev->SetCurrent(d->second);
    ++rep.records;
  }
  // An untrusted device never leaves a strict translated domain (see
  // AttachDevice).
  for (const DeviceConfig& cfg : topology_.devices) {
    const DomainType t = devices_.at(cfg.name)->Current()->type();
    if (!cfg.trusted && t != DomainType::kDma && t != DomainType::kUnmanaged) {
      return Unrestorable(
          absl::StrFormat("untrusted device %s is in a %s domain", cfg.name, DomainTypeName(t)));
    }
  }

  // Buffers, then exports of them.
  uint64_t max_buffer_id = 0;
  for (const BufferState& b : state.buffers) {
    ASSIGN_OR_RETURN(DeviceState * dev, device(b.device, absl::StrCat("buffer ", b.buffer_id)));
    if (absl::Status s = buffers_->Restore(*dev, b); !s.ok()) return Unrestorable(s.message());
    max_buffer_id = std::max(max_buffer_id, b.buffer_id);
    ++rep.records;
  }
  uint64_t max_export_id = 0;
  for (const ExportState& e : state.exports) {
    ASSIGN_OR_RETURN(DeviceState * dev, device(e.exporter, absl::StrCat("export ", e.export_id)));
    if (absl::Status s = buffers_->RestoreExport(*dev, e); !s.ok()) {
      return Unrestorable(s.message());
    }
    max_export_id = std::max(max_export_id, e.export_id);
    ++rep.records;
  }
  buffers_->RestoreCounters(std::max(counter[size_t(StateCounter::kBufferId)], max_buffer_id + 1),
                            std::max(counter[size_t(StateCounter::kExportId)], max_export_id + 1));

  // Sessions: leases restart in full, so that clients have time to come back.
  const absl::Time now = options_.now();
  for (const SessionState& s : state.sessions) {
    if (!s.device.empty()) {
      RETURN_IF_ERROR(device(s.device, absl::StrCat("session ", s.session_id)).status());
    }
    if (absl::Status st = sessions_.Restore(s.session_id, s.device, s.ttl, now); !st.ok()) {
      return Unrestorable(st.message());
    }
    ++rep.records;
  }

  // Mappings, by domain, each at its IOVA and pages (a store returns them in
  // that order already: then the IOVA claims run in ascending order).
  std::vector<std::pair<uint64_t, MappingState>*> mappings;
  mappings.reserve(state.mappings.size());
  for (auto& m : state.mappings) mappings.push_back(&m);
  // By domain, then IOVA: a mapping that overlaps an earlier one then has its
  // start inside it, which Transaction::Restore refuses. (A store returns
  // them in that order already; then the IOVA claims run in ascending order.)
  auto by_address = [](const auto* a, const auto* b) {
    return std::pair(a->first, a->second.iova.value()) <
           std::pair(b->first, b->second.iova.value());
  };
  if (!std::is_sorted(mappings.begin(), mappings.end(), by_address)) {
    std::stable_sort(mappings.begin(), mappings.end(), by_address);
  }
  absl::flat_hash_set<uint64_t> alloc_buffers_mapped;
  for (size_t i = 0; i < mappings.size();) {
    const uint64_t domain_id = mappings[i]->first;
    auto d = domains_.find(domain_id);
    if (d == domains_.end()) {
      return Unrestorable(absl::StrFormat(
          "mapping %d at IOVA %#x is in domain %d, which does "
          "not exist",
          mappings[i]->second.mapping_id, mappings[i]->second.iova.value(), domain_id));
    }
    Buffers::Refs refs(*buffers_);
    Domain::Transaction txn(*d->second, refs);
    size_t end = i;
    while (end < mappings.size() && mappings[end]->first == domain_id) ++end;
    txn.ReserveMappings(end - i);
    for (; i < end; ++i) {
      MappingState& m = mappings[i]->second;
      auto what = [&] {
        return absl::StrFormat("domain %d: mapping %d at IOVA %#x", domain_id, m.mapping_id,
                               m.iova.value());
      };
      // A crash between an operation's commits: finish it. (References are
      // taken as the buffers are checked, and dropped if one is missing.)
      bool gone = m.owned_buffer_id != 0 && !buffers_->Contains(m.owned_buffer_id);
      size_t taken = 0;
      for (; !gone && taken < m.buffer_refs.size(); ++taken) {
        std::optional<internal::BufferRef> ref = buffers_->TryRestoreRef(m.buffer_refs[taken].id);
        if (!ref) {
          gone = true;
          break;
        }
        m.buffer_refs[taken] = *ref;
      }
      if (gone) {
        refs.Drop(absl::MakeSpan(m.buffer_refs.data(), taken));
        completed(absl::StrCat(what(), ": its buffer was freed; unmapped"));
        fresh.mapping_deletes.push_back({domain_id, m.iova});
        continue;
      }
      if (m.export_id != 0 && !buffers_->ContainsExport(m.export_id)) {
        refs.Drop(m.buffer_refs);
        completed(absl::StrCat(what(), ": its export was revoked; unmapped"));
        fresh.mapping_deletes.push_back({domain_id, m.iova});
        continue;
      }
      DeviceState* owner = nullptr;
      if (!m.device.empty()) {
        auto it = devices_.find(m.device);
        if (it == devices_.end()) {
          refs.Drop(m.buffer_refs);
          return device(m.device, what()).status();
        }
        owner = it->second.get();
      }
      m.owner = owner;
      const uint64_t mapping_id = m.mapping_id;
      const Iova iova = m.iova;
      const uint64_t export_id = m.export_id;
      const uint64_t owned = m.owned_buffer_id;
      const uint64_t mapped_bytes = m.mapped_bytes;
      const auto held = m.buffer_refs;
      if (absl::Status s = txn.Restore(std::move(m)); !s.ok()) {
        refs.Drop(held);
        return Unrestorable(s.message());
      }
      if (owner != nullptr) {
        owner->mappings.fetch_add(1);
        owner->mapped_bytes.fetch_add(mapped_bytes);
      }
      if (owned != 0) alloc_buffers_mapped.insert(owned);
      if (export_id != 0) {
        buffers_->RestoreImport(
            export_id, {.domain = d->second, .iova = iova.value(), .mapping_id = mapping_id});
      }
      ++rep.mappings;
      ++rep.records;
    }
  }

  // An Alloc's buffer whose mapping never committed (or whose Free did not
  // finish) goes as Free would have released it. One still referenced by
  // other mappings or exports is no repair: its Free committed and the
  // buffer waits for their last reference, as it did before the restart.
  std::vector<uint64_t> orphans;
  for (const BufferState& b : state.buffers) {
    if (b.backs_alloc && !alloc_buffers_mapped.contains(b.buffer_id)) {
      orphans.push_back(b.buffer_id);
    }
  }
  for (uint64_t id : orphans) {
    if (buffers_->ReleaseAllocBuffer(id)) {
      completed(absl::StrFormat("buffer %d: its Alloc mapping is gone; released", id));
    }
  }
  // Replies of requests, those out of the window or over a budget dropped.
  requests_.Restore(std::move(state.requests), &fresh.request_deletes);
  Commit(fresh);
  return absl::OkStatus();
}

}  // namespace iommu::core
