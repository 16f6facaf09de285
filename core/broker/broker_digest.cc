// SPDX-License-Identifier: Apache-2.0
// Broker::StateDigest: the broker's state as one canonical text, for tests
// that must tell whether a call changed anything (the fail-nth sweep, the
// operation fuzzer).

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/broker/broker.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {

using internal::Domain;

namespace {

void AppendRuns(std::string* out, absl::string_view name, const std::vector<PhysRun>& runs) {
  absl::StrAppendFormat(out, " %s=[", name);
  for (const PhysRun& r : runs)
    absl::StrAppendFormat(out, "%#x+%#x,", r.start.value(), r.size_bytes);
  out->append("]");
}

void AppendMapping(std::string* out, const internal::MappingRecord& m) {
  absl::StrAppendFormat(out,
                        "  mapping %#x+%#x id=%d kind=%d device=%s session=%d from_allocator=%d "
                        "dma_offset=%#x prot=%#x mapped=%#x owned_buffer=%d export=%d\n",
                        m.iova.value(), m.iova_size_bytes, m.mapping_id, int(m.kind), m.device,
                        m.session_id, m.iova_from_allocator, m.dma_offset, uint32_t(m.prot),
                        m.mapped_bytes, m.owned_buffer_id, m.export_id);
  for (const auto& [iova, run] : m.pt_ranges) {
    absl::StrAppendFormat(out, "   pt %#x -> %#x+%#x\n", iova.value(), run.start.value(),
                          run.size_bytes);
  }
  for (const internal::MappedPiece& p : m.pieces) {
    absl::StrAppendFormat(out, "   piece %#x -> %#x+%#x\n", p.iova.value(), p.phys.value(),
                          p.size_bytes);
  }
  for (const internal::BufferRef& b : m.buffer_refs)
    absl::StrAppendFormat(out, "   ref %d\n", b.id);
  for (const DmaSegment& s : m.segments) {
    absl::StrAppendFormat(out, "   segment %#x+%#x\n", s.dma_addr.value(), s.length_bytes);
  }
}

}  // namespace

std::string Broker::StateDigest() const {
  std::string out;
  const BrokerImpl& impl = *impl_;
  for (const auto& s : impl.smmus_) {
    absl::MutexLock l(&s->mu);
    absl::StrAppendFormat(&out, "smmu %s contexts=", s->config.name);
    for (const bool used : s->context_in_use) out.push_back(used ? '1' : '0');
    out.push_back('\n');
  }
  for (const PoolStats& p : impl.memory_->Stats()) {
    absl::StrAppendFormat(&out, "pool %s free=%#x allocated=%#x live=%d blocks=[%s]\n", p.name,
                          p.free_pages, p.allocated_pages, p.live_allocations,
                          absl::StrJoin(p.free_blocks_by_order, ","));
  }
  absl::ReaderMutexLock rl(&impl.registry_mu_);
  absl::StrAppendFormat(&out, "sessions %d\n", impl.sessions_.size());
  std::vector<std::string> names;
  for (const auto& [name, dev] : impl.devices_) names.push_back(name);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const internal::DeviceState& dev = *impl.devices_.at(name);
    absl::StrAppendFormat(&out,
                          "device %s current=%d default=%d mapped=%#x mappings=%d buffers=%d "
                          "buffer_bytes=%#x domains=%d exports=%d sessions=%d\n",
                          name, dev.Current()->id(), dev.default_domain->id(),
                          dev.mapped_bytes.load(), dev.mappings.load(), dev.buffers.load(),
                          dev.buffer_bytes.load(), dev.domains.load(), dev.exports.load(),
                          impl.sessions_.CountFor(name));
  }
  for (const auto& [id, d] : impl.domains_) {
    const DomainState st = d->State();
    absl::StrAppendFormat(&out,
                          "domain %d smmu=%s type=%s granule=%#x owner=%s default_of=%s "
                          "granted=[%s] session=%d",
                          id, st.smmu, DomainTypeName(st.type), st.granule_bytes, st.owner,
                          st.default_of, absl::StrJoin(st.granted, ","), st.session_id);
    if (st.msi_window) {
      absl::StrAppendFormat(&out, " msi_window=%#x+%#x", st.msi_window->base.value(),
                            st.msi_window->size_bytes);
    }
    out.push_back('\n');
    Domain::Reader r(*d);
    absl::StrAppendFormat(&out, " mapped=%#x\n", r.mapped_bytes());
    for (const uint64_t start : r.mappings().StartsInOrder()) {
      AppendMapping(&out, *r.mappings().FindStart(start));
    }
    if (const IoPgtableOps* pt = r.pgtable(); pt != nullptr) {
      const PgtableStats ps = pt->Stats();
      absl::StrAppendFormat(&out, " pgtable tables=%d table_bytes=%#x mapped=%#x\n", ps.table_count,
                            ps.table_bytes, ps.mapped_bytes);
      pt->ForEachMapping([&](const PgtableMapping& m) {
        absl::StrAppendFormat(&out, "  leaf %#x -> %#x+%#x prot=%#x\n", m.iova.value(),
                              m.phys.value(), m.size_bytes, uint32_t(m.prot));
      });
    }
    auto msi_pages = [&](const std::map<uint64_t, uint64_t>& pages) {
      for (const auto& [page, iova] : pages) {
        absl::StrAppendFormat(&out, " msi page %#x at %#x\n", page, iova);
      }
    };
    std::visit(internal::Overloaded{
                   [&](const internal::NoCookie&) {},
                   [&](const internal::IovaCookie& c) {
                     // Live allocations and reservations only: a range freed
                     // into a magazine is free space, as it is in the tree.
                     c.iovad->ForEachAllocated([&](uint64_t pfn, uint64_t pages) {
                       absl::StrAppendFormat(&out, " iova pfn=%#x pages=%#x\n", pfn, pages);
                     });
                     c.iovad->ForEachReserved([&](uint64_t lo, uint64_t hi) {
                       absl::StrAppendFormat(&out, " iova reserved %#x..%#x\n", lo, hi);
                     });
                     if (c.fq) absl::StrAppendFormat(&out, " fq depth=%d\n", c.fq->stats().depth);
                     msi_pages(c.msi_pages);
                   },
                   [&](const internal::MsiWindowCookie& w) {
                     absl::StrAppendFormat(&out, " msi next_offset=%#x\n", w.next_offset);
                     msi_pages(w.msi_pages);
                   },
               },
               r.cookie());
  }
  std::vector<std::string> lines;
  impl.buffers_->ForEachBuffer([&](const internal::Buffer& b) {
    std::string line = absl::StrFormat(
        "buffer %d device=%s session=%d pool=%s placement=%s size=%#x backs_alloc=%d refs=%d "
        "waiting=%d",
        b.buffer_id, b.device, b.session_id, b.alloc.pool, PlacementName(b.alloc.placement),
        b.alloc.size_bytes, b.backs_alloc, b.refs(),
        (b.map_refs.load() & internal::Buffer::kWaiting) != 0);
    AppendRuns(&line, "runs", b.alloc.runs);
    std::vector<uint64_t> exports = b.exports;
    std::sort(exports.begin(), exports.end());
    absl::StrAppendFormat(&line, " exports=[%s]\n", absl::StrJoin(exports, ","));
    lines.push_back(std::move(line));
  });
  impl.buffers_->ForEachExport([&](const std::string& token, const internal::ExportRecord& e) {
    std::string line = absl::StrFormat(
        "export %d token=%s exporter=%s granule=%#x buffers=[%s] importers=[%s] writable=%d",
        e.export_id, token, e.exporter, e.exporter_granule, absl::StrJoin(e.buffer_ids, ","),
        absl::StrJoin(e.importers_allowed, ","), e.writable);
    AppendRuns(&line, "chunks", e.chunks);
    std::vector<std::string> imports;
    for (const internal::ExportRecord::Import& i : e.imports) {
      const std::shared_ptr<Domain> d = i.domain.lock();
      imports.push_back(absl::StrFormat("%d:%#x:%d", d ? d->id() : 0, i.iova, i.mapping_id));
    }
    std::sort(imports.begin(), imports.end());
    absl::StrAppendFormat(&line, " imports=[%s]\n", absl::StrJoin(imports, ","));
    lines.push_back(std::move(line));
  });
  std::sort(lines.begin(), lines.end());
  for (const std::string& line : lines) out += line;
  return out;
}

}  // namespace iommu::core
