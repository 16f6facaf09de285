// Broker::StateDigest: the broker's state as deterministic text, for the
// "a failed call leaves no trace" checks of tests and fuzzers
// (docs/design.md#errors).

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/broker/broker.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {

using internal::Domain;

namespace {

std::string Runs(const std::vector<PhysRun>& runs) {
  return absl::StrJoin(runs, ",", [](std::string* out, const PhysRun& r) {
    absl::StrAppend(out, r.start.Hex(), "+", absl::Hex(r.size_bytes));
  });
}

void AppendMapping(std::string* out, const internal::MappingRecord& m) {
  absl::StrAppend(out, "  m", m.mapping_id, " kind=", int(m.kind), " dev=", m.device,
                  " s=", m.session_id, " iova=", m.iova.Hex(), "+", absl::Hex(m.iova_size_bytes),
                  " alloc=", m.iova_from_allocator, " off=", absl::Hex(m.dma_offset),
                  " prot=", uint32_t(m.prot), " bytes=", absl::Hex(m.mapped_bytes),
                  " owned=", m.owned_buffer_id, " exp=", m.export_id, " pt=");
  for (const auto& [iova, run] : m.pt_ranges) {
    absl::StrAppend(out, iova.Hex(), ">", run.start.Hex(), "+", absl::Hex(run.size_bytes), ",");
  }
  absl::StrAppend(out, " pieces=");
  for (const internal::MappedPiece& p : m.pieces) {
    absl::StrAppend(out, p.iova.Hex(), ">", p.phys.Hex(), "+", absl::Hex(p.size_bytes), ",");
  }
  absl::StrAppend(out, " bufs=");
  for (const internal::BufferRef& b : m.buffer_refs) absl::StrAppend(out, b.id, ",");
  absl::StrAppend(out, " segs=");
  for (const DmaSegment& s : m.segments) {
    absl::StrAppend(out, s.dma_addr.Hex(), "+", absl::Hex(s.length_bytes), ",");
  }
  absl::StrAppend(out, "\n");
}

}  // namespace

std::string Broker::StateDigest() const {
  std::string out;
  const BrokerImpl& impl = *impl_;
  // Devices in topology order: attachment and every quota charge.
  {
    absl::ReaderMutexLock l(&impl.registry_mu_);
    for (const DeviceConfig& cfg : impl.topology_.devices) {
      const internal::DeviceState& dev = *impl.devices_.at(cfg.name);
      absl::StrAppend(&out, "device ", cfg.name, " current=", dev.Current()->id(),
                      " maps=", dev.mappings.load(), " mapped=", absl::Hex(dev.mapped_bytes.load()),
                      " buffers=", dev.buffers.load(), "/", absl::Hex(dev.buffer_bytes.load()),
                      " domains=", dev.domains.load(), " exports=", dev.exports.load(),
                      " sessions=", impl.sessions_.CountFor(cfg.name), "\n");
    }
    absl::StrAppend(&out, "sessions ", impl.sessions_.size(), "\n");
  }
  // Domains in id order: identity, IOVA space, cookie, mappings, leaves.
  for (const std::shared_ptr<Domain>& d : impl.AllDomains()) {
    absl::StrAppend(&out, "domain ", d->id(), " ", DomainTypeName(d->type()), " ",
                    d->smmu().config.name, " owner=", d->owner(), " default=", d->default_of(),
                    " s=", d->session_id(), " granted=", absl::StrJoin(d->granted(), ","),
                    " ctx=", d->tag().Packed(), "\n");
    Domain::Reader r(*d);
    absl::StrAppend(&out, " mapped=", absl::Hex(r.mapped_bytes()), "\n");
    std::visit(internal::Overloaded{
                   [](const internal::NoCookie&) {},
                   [&](const internal::IovaCookie& c) {
                     // Live allocations (their ranges are the records'),
                     // reserved and free space, free as one figure (a range
                     // may move between the tree and the range caches).
                     const IovaStats s = c.iovad->GetStats();
                     absl::StrAppend(&out, " iova free=", s.free_pages + s.cached_pages,
                                     " reserved=", s.reserved_pages,
                                     " allocated=", s.allocated_pages, "/", s.live_allocations);
                     if (c.fq != nullptr) absl::StrAppend(&out, " fq=", c.fq->stats().depth);
                     absl::StrAppend(&out, " msi=");
                     for (const auto& [page, iova] : c.msi_pages) {
                       absl::StrAppend(&out, absl::Hex(page), ">", absl::Hex(iova), ",");
                     }
                     absl::StrAppend(&out, "\n");
                   },
                   [&](const internal::MsiWindowCookie& c) {
                     absl::StrAppend(&out, " window=", c.window.base.Hex(), "+",
                                     absl::Hex(c.window.size_bytes),
                                     " next=", absl::Hex(c.next_offset), " msi=");
                     for (const auto& [page, iova] : c.msi_pages) {
                       absl::StrAppend(&out, absl::Hex(page), ">", absl::Hex(iova), ",");
                     }
                     absl::StrAppend(&out, "\n");
                   },
               },
               r.cookie());
    for (const uint64_t start : r.mappings().StartsInOrder()) {
      AppendMapping(&out, *r.mappings().FindStart(start));
    }
    if (const IoPgtableOps* pgtable = r.pgtable(); pgtable != nullptr) {
      pgtable->ForEachMapping([&](const PgtableMapping& m) {
        absl::StrAppend(&out, "  leaf ", m.iova.Hex(), ">", m.phys.Hex(), "+",
                        absl::Hex(m.size_bytes), " g", m.grant.bits(), " p", uint32_t(m.prot),
                        "\n");
      });
    }
  }
  // Buffers and exports in id order.
  std::vector<std::string> lines;
  impl.buffers_->ForEachBuffer([&](const internal::Buffer& b) {
    std::vector<uint64_t> exports = b.exports;
    std::sort(exports.begin(), exports.end());
    lines.push_back(absl::StrCat("buffer ", b.buffer_id, " dev=", b.device, " s=", b.session_id,
                                 " alloc=", b.backs_alloc, " refs=", b.map_refs.load(),
                                 " pool=", b.alloc.pool, " runs=", Runs(b.alloc.runs),
                                 " exports=", absl::StrJoin(exports, ",")));
  });
  impl.buffers_->ForEachExport([&](const std::string& token, const internal::ExportRecord& e) {
    std::string imports;
    for (const internal::ExportRecord::Import& i : e.imports) {
      const std::shared_ptr<Domain> d = i.domain.lock();
      absl::StrAppend(&imports, d == nullptr ? 0 : d->id(), ":", absl::Hex(i.iova), ":",
                      i.mapping_id, ",");
    }
    lines.push_back(absl::StrCat(
        "export ", e.export_id, " token=", token, " by=", e.exporter,
        " bufs=", absl::StrJoin(e.buffer_ids, ","), " chunks=", Runs(e.chunks),
        " to=", absl::StrJoin(e.importers_allowed, ","), " w=", e.writable, " imports=", imports));
  });
  std::sort(lines.begin(), lines.end());
  for (const std::string& line : lines) absl::StrAppend(&out, line, "\n");
  // Translation contexts and cached translations per SMMU; free pages per pool.
  for (const auto& s : impl.smmus_) {
    absl::MutexLock l(&s->mu);
    absl::StrAppend(&out, "smmu ", s->config.name, " contexts=",
                    std::count(s->context_in_use.begin(), s->context_in_use.end(), true),
                    " iotlb=", s->iotlb->stats().occupancy, "\n");
  }
  for (const PoolStats& p : impl.memory_->Stats()) {
    absl::StrAppend(&out, "pool ", p.name, " free=", p.free_pages, " live=", p.live_allocations,
                    "\n");
  }
  return out;
}

}  // namespace iommu::core
