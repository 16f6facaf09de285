// SPDX-License-Identifier: Apache-2.0
// Broker::CheckInvariants: every engine's own check plus the cross-references
// between them (records vs page tables, buffer references, quotas).

#include <algorithm>
#include <cstdio>
#include <cstdlib>
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

// --- invariants -----------------------------------------------------------------

void Broker::CheckInvariants() const {
  auto check = [](const absl::Status& s, const char* what) {
    if (!s.ok()) {
      std::fprintf(stderr, "broker invariant broken (%s): %s\n", what,
                   std::string(s.message()).c_str());
      std::abort();
    }
  };
  check(impl_->memory_->CheckInvariants(), "physical memory");
  check(impl_->faults_->CheckInvariants(), "fault ring");
  for (const auto& s : impl_->smmus_) {
    absl::MutexLock l(&s->mu);
    s->iotlb->CheckInvariants();
  }
  // Recount what mappings reference and charge, and compare.
  absl::flat_hash_map<uint64_t, uint64_t> refs;  // buffer -> mapping refs
  absl::flat_hash_map<std::string, std::pair<uint64_t, uint64_t>>
      charged;  // device -> (maps, bytes)
  absl::ReaderMutexLock rl(&impl_->registry_mu_);
  // (session, domain) for every mapping made under a session, and every
  // domain made under one: what the session indexes must list.
  absl::flat_hash_set<std::pair<uint64_t, uint64_t>> session_mapped;
  absl::flat_hash_map<uint64_t, std::vector<uint64_t>> session_domains;
  size_t flush_armed = 0;
  for (const auto& [id, d] : impl_->domains_) {
    if (d->session_id() != 0) session_domains[d->session_id()].push_back(id);
    Domain::Reader r(*d);
    const IoPgtableOps* pgtable = r.pgtable();
    if (pgtable != nullptr) check(pgtable->CheckInvariants(), "page table");
    if (const auto* c = std::get_if<internal::IovaCookie>(&r.cookie())) {
      check(c->iovad->CheckInvariants(), "IOVA allocator");
      // A queue with entries is polled when they time out.
      if (c->fq != nullptr && c->fq->stats().depth > 0 && !r.flush_armed()) {
        check(
            absl::InternalError(absl::StrFormat(
                "domain %d: %d flush-queue entries and no flush timer", id, c->fq->stats().depth)),
            "flush timer");
      }
      if (r.flush_armed()) ++flush_armed;
    }
    uint64_t bytes = 0;
    uint64_t pt_bytes = 0;
    if (absl::Status s = r.mappings().CheckInvariants(); !s.ok()) {
      check(absl::InternalError(absl::StrFormat("domain %d: %s", id, s.message())), "mappings");
    }
    for (const uint64_t iova : r.mappings().StartsInOrder()) {
      const internal::MappingRecord& m = *r.mappings().FindStart(iova);
      bytes += m.mapped_bytes;
      for (const internal::BufferRef& b : m.buffer_refs) ++refs[b.id];
      if (m.session_id != 0) session_mapped.insert({m.session_id, id});
      if (!m.device.empty()) {
        auto& [n, by] = charged[m.device];
        ++n;
        by += m.mapped_bytes;
      }
      // Every piece translates to its memory.
      for (const internal::MappedPiece& p : m.pieces) {
        for (uint64_t off : {uint64_t{0}, p.size_bytes - 1}) {
          const auto pa = pgtable->IovaToPhys(p.iova + off);
          if (!pa || *pa != p.phys + off) {
            check(absl::InternalError(absl::StrFormat("domain %d: %#x does not translate to %#x",
                                                      id, (p.iova + off).value(),
                                                      (p.phys + off).value())),
                  "mappings vs page table");
          }
        }
      }
      for (const auto& [pt_iova, run] : m.pt_ranges) pt_bytes += run.size_bytes;
    }
    if (bytes != r.mapped_bytes()) {
      check(absl::InternalError(
                absl::StrFormat("domain %d: mapped_bytes %d != %d", id, r.mapped_bytes(), bytes)),
            "domain accounting");
    }
    if (pgtable != nullptr && pgtable->Stats().mapped_bytes != pt_bytes) {
      check(absl::InternalError(absl::StrFormat("domain %d: page table maps %#x, records %#x", id,
                                                pgtable->Stats().mapped_bytes, pt_bytes)),
            "page table vs records");
    }
  }
  // (Entries of domains destroyed while armed stay until they come due.)
  if (impl_->flush_timer_.armed() < flush_armed) {
    check(absl::InternalError(absl::StrFormat("%d domains armed, the flush timer holds %d",
                                              flush_armed, impl_->flush_timer_.armed())),
          "flush timer");
  }
  for (const auto& [name, dev] : impl_->devices_) {
    const auto it = charged.find(name);
    const uint64_t n = it == charged.end() ? 0 : it->second.first;
    const uint64_t by = it == charged.end() ? 0 : it->second.second;
    if (dev->mappings.load() != n || dev->mapped_bytes.load() != by) {
      check(absl::InternalError(absl::StrFormat("device %s charged %d/%#x, holds %d/%#x", name,
                                                dev->mappings.load(), dev->mapped_bytes.load(), n,
                                                by)),
            "quota accounting");
    }
    const DomainType t = dev->current->type();
    if (!dev->config.trusted && t != DomainType::kDma && t != DomainType::kUnmanaged) {
      check(absl::InternalError(
                absl::StrFormat("untrusted device %s is in a %s domain", name, DomainTypeName(t))),
            "isolation");
    }
    const std::string& device = name;  // a structured binding cannot be captured
    const auto owned = std::count_if(impl_->domains_.begin(), impl_->domains_.end(),
                                     [&](const auto& kv) { return kv.second->owner() == device; });
    if (uint64_t(owned) != dev->domains.load()) {
      check(absl::InternalError(absl::StrFormat("device %s owns %d domains, charged %d", name,
                                                owned, dev->domains.load())),
            "domain quota");
    }
  }
  size_t indexed = 0;
  impl_->session_index_.ForEach([&](uint64_t session_id, uint64_t domain_id) {
    ++indexed;
    if (!session_mapped.contains({session_id, domain_id})) {
      check(absl::InternalError(absl::StrFormat(
                "session %#x is indexed in domain %d, which holds none of its mappings", session_id,
                domain_id)),
            "session index");
    }
  });
  if (indexed != session_mapped.size()) {
    check(absl::InternalError(absl::StrFormat("session index lists %d (session, domain) pairs "
                                              "for %d",
                                              indexed, session_mapped.size())),
          "session index");
  }
  for (auto& [session_id, ids] : impl_->session_domains_) {
    std::vector<uint64_t> listed = ids;
    std::sort(listed.begin(), listed.end());
    const auto made = session_domains.find(session_id);
    const std::vector<uint64_t> want =
        made == session_domains.end() ? std::vector<uint64_t>() : made->second;
    if (listed != want) {
      check(absl::InternalError(absl::StrFormat("session %#x lists domains [%s], made [%s]",
                                                session_id, absl::StrJoin(listed, ","),
                                                absl::StrJoin(want, ","))),
            "session domains");
    }
  }
  if (impl_->session_domains_.size() != session_domains.size()) {
    check(absl::InternalError("a session made domains its index does not list"), "session domains");
  }
  check(impl_->buffers_->CheckSessionIndex(), "buffer session index");
  check(impl_->buffers_->CheckExportIndex(), "exports");
  // Each buffer lists exactly the exports of its memory; each export charges
  // its exporter.
  absl::flat_hash_map<uint64_t, std::vector<uint64_t>> listed;  // buffer -> export ids
  absl::flat_hash_map<std::string, uint64_t> per_exporter;
  impl_->buffers_->ForEachExport([&](const std::string&, const internal::ExportRecord& e) {
    ++per_exporter[e.exporter];
    for (uint64_t b : e.buffer_ids) listed[b].push_back(e.export_id);
  });
  impl_->buffers_->ForEachBuffer([&](const internal::Buffer& b) {
    std::vector<uint64_t> have = b.exports;
    std::vector<uint64_t> want = listed[b.buffer_id];
    std::sort(have.begin(), have.end());
    std::sort(want.begin(), want.end());
    if (have != want) {
      check(absl::InternalError(
                absl::StrFormat("buffer %d lists exports [%s], its exports are [%s]", b.buffer_id,
                                absl::StrJoin(have, ","), absl::StrJoin(want, ","))),
            "exports");
    }
    const auto it = refs.find(b.buffer_id);
    const uint64_t want_refs = it == refs.end() ? 0 : it->second;
    if (b.refs() != want_refs) {
      check(absl::InternalError(absl::StrFormat("buffer %d: map_refs %d, mappings hold %d",
                                                b.buffer_id, b.refs(), want_refs)),
            "buffer references");
    }
  });
  for (const auto& [name, dev] : impl_->devices_) {
    if (dev->exports.load() != per_exporter[name]) {
      check(absl::InternalError(absl::StrFormat("device %s charged %d exports, holds %d", name,
                                                dev->exports.load(), per_exporter[name])),
            "export quota");
    }
  }
}

}  // namespace iommu::core
