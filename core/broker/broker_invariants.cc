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
  for (const auto& [id, d] : impl_->domains_) {
    absl::ReaderMutexLock dl(&d->mu);
    if (d->pgtable) check(d->pgtable->CheckInvariants(), "page table");
    if (const auto* c = std::get_if<internal::IovaCookie>(&d->cookie)) {
      check(c->iovad->CheckInvariants(), "IOVA allocator");
    }
    uint64_t bytes = 0;
    uint64_t pt_bytes = 0;
    if (absl::Status s = d->mappings.CheckInvariants(); !s.ok()) {
      check(absl::InternalError(absl::StrFormat("domain %d: %s", id, s.message())), "mappings");
    }
    for (const uint64_t iova : d->mappings.StartsInOrder()) {
      const internal::MappingRecord& m = *d->mappings.FindStart(iova);
      bytes += m.mapped_bytes;
      for (uint64_t b : m.buffer_refs) ++refs[b];
      if (!m.device.empty()) {
        auto& [n, by] = charged[m.device];
        ++n;
        by += m.mapped_bytes;
      }
      // Every piece translates to its memory.
      for (const internal::MappedPiece& p : m.pieces) {
        for (uint64_t off : {uint64_t{0}, p.size_bytes - 1}) {
          const auto pa = d->pgtable->IovaToPhys(p.iova + off);
          if (!pa || *pa != p.phys + off) {
            check(absl::InternalError(absl::StrFormat("domain %d: %#x does not translate to %#x",
                                                      id, (p.iova + off).value(),
                                                      (p.phys + off).value())),
                  "mappings vs page table");
          }
        }
      }
      for (const auto& [pt_iova, size] : m.pt_ranges) pt_bytes += size;
    }
    if (bytes != d->mapped_bytes) {
      check(absl::InternalError(
                absl::StrFormat("domain %d: mapped_bytes %d != %d", id, d->mapped_bytes, bytes)),
            "domain accounting");
    }
    if (d->pgtable && d->pgtable->Stats().mapped_bytes != pt_bytes) {
      check(absl::InternalError(absl::StrFormat("domain %d: page table maps %#x, records %#x", id,
                                                d->pgtable->Stats().mapped_bytes, pt_bytes)),
            "page table vs records");
    }
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
    if (std::find(dev->current->attached.begin(), dev->current->attached.end(), name) ==
        dev->current->attached.end()) {
      check(absl::InternalError("device missing from its domain's attached list"), "attach");
    }
    const DomainType t = dev->current->type;
    if (!dev->config.trusted && t != DomainType::kDma && t != DomainType::kUnmanaged) {
      check(absl::InternalError(
                absl::StrFormat("untrusted device %s is in a %s domain", name, DomainTypeName(t))),
            "isolation");
    }
    const std::string& device = name;  // a structured binding cannot be captured
    const auto owned = std::count_if(impl_->domains_.begin(), impl_->domains_.end(),
                                     [&](const auto& kv) { return kv.second->owner == device; });
    if (uint64_t(owned) != dev->domains.load()) {
      check(absl::InternalError(absl::StrFormat("device %s owns %d domains, charged %d", name,
                                                owned, dev->domains.load())),
            "domain quota");
    }
  }
  absl::ReaderMutexLock bl(&impl_->buffers_mu_);
  // Every live import is registered with exactly the live export it imports.
  for (const auto& [token, e] : impl_->exports_) {
    if (impl_->export_tokens_.at(e.export_id) != token) {
      check(absl::InternalError("export id and token disagree"), "exports");
    }
  }
  if (impl_->export_tokens_.size() != impl_->exports_.size()) {
    check(absl::InternalError("export index out of step"), "exports");
  }
  // Each buffer lists exactly the exports of its memory.
  size_t links = 0;
  for (const auto& [token, e] : impl_->exports_) {
    for (uint64_t b : e.buffer_ids) {
      const auto& ids = impl_->buffers_.at(b).exports;
      if (std::count(ids.begin(), ids.end(), e.export_id) != 1) {
        check(absl::InternalError(
                  absl::StrFormat("buffer %d does not list export %d once", b, e.export_id)),
              "exports");
      }
      ++links;
    }
  }
  for (const auto& [id, b] : impl_->buffers_) links -= b.exports.size();
  if (links != 0) check(absl::InternalError("a buffer lists a dead export"), "exports");
  absl::flat_hash_map<std::string, uint64_t> per_exporter;
  for (const auto& [token, e] : impl_->exports_) ++per_exporter[e.exporter];
  for (const auto& [name, dev] : impl_->devices_) {
    if (dev->exports != per_exporter[name]) {
      check(absl::InternalError(absl::StrFormat("device %s charged %d exports, holds %d", name,
                                                dev->exports, per_exporter[name])),
            "export quota");
    }
  }
  for (const auto& [id, b] : impl_->buffers_) {
    const auto it = refs.find(id);
    const uint64_t want = it == refs.end() ? 0 : it->second;
    if (b.map_refs != want) {
      check(absl::InternalError(
                absl::StrFormat("buffer %d: map_refs %d, mappings hold %d", id, b.map_refs, want)),
            "buffer references");
    }
  }
}

}  // namespace iommu::core
