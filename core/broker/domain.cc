// SPDX-License-Identifier: Apache-2.0
#include "core/broker/domain.h"

#include <algorithm>
#include <cassert>

#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/fail_nth.h"
#include "core/base/run_sort.h"
#include "core/base/status_macros.h"
#include "core/broker/request_log.h"

namespace iommu::core::internal {

// --- IOTLB flush ops ---------------------------------------------------------------

void DomainFlushOps::TlbFlushAll() {
  absl::MutexLock l(&smmu_->mu);
  smmu_->iotlb->InvalidateAsid(tag_.asid, tag_.vmid);
}

// The IOTLB model caches leaf entries only (no walk cache), so a walk flush
// for a freed table only has to drop leaves in its range. A table is freed
// only once every leaf in it is gone: in a strict domain each of those leaves
// was (or, for this unmap, is about to be, before the call returns)
// invalidated through the gather, so the flush would find nothing and only
// cost a scan of the IOTLB per freed table. In a lazy domain the stale leaves
// are still cached, and freeing the table ends their window, as a TLBI of
// the walk would on hardware.
void DomainFlushOps::TlbFlushWalk(Iova iova, uint64_t size_bytes, uint64_t /*granule_bytes*/) {
  if (strict_) return;
  absl::MutexLock l(&smmu_->mu);
  const auto r = smmu_->iotlb->InvalidateVa(tag_, iova, size_bytes, VaLevels::kAllLevels);
  assert(r.ok());
  (void)r;
}

void DomainFlushOps::TlbAddPage(IotlbGather* gather, Iova iova, uint64_t granule_bytes) {
  gather->AddRange(iova, granule_bytes);
}

void DomainFlushOps::TlbAddPages(IotlbGather* gather, Iova iova, uint64_t granule_bytes,
                                 uint64_t count) {
  gather->AddRange(iova, granule_bytes * count);
}

// --- Domain ------------------------------------------------------------------------

Domain::Domain(Smmu* smmu, DomainParams params)
    : id_(params.id),
      type_(params.type),
      smmu_(smmu),
      owner_(std::move(params.owner)),
      is_default_(params.is_default),
      default_of_(std::move(params.default_of)),
      granted_(std::move(params.granted)),
      session_id_(params.session_id),
      granule_bytes_(params.granule_bytes),
      pgsize_bitmap_(PgsizeBitmapForGranule(params.granule_bytes)),
      aperture_end_(Iova(LowMask(smmu->config.ias_bits))),
      strict_(params.type != DomainType::kDmaFq),
      journal_(params.journal),
      sessions_(params.sessions),
      flush_timer_(params.flush_timer),
      mappings_(params.granule_bytes, params.type == DomainType::kUnmanaged),
      next_mapping_id_(std::max<uint64_t>(1, params.first_mapping_id)),
      mapping_ids_reserved_(next_mapping_id_) {}

Domain::~Domain() = default;

absl::StatusOr<std::shared_ptr<Domain>> Domain::Create(Smmu* smmu, DomainParams params) {
  const SmmuConfig& cfg = smmu->config;
  uint64_t& granule = params.granule_bytes;
  if (granule == 0) granule = cfg.granules & -cfg.granules;  // smallest
  if (!IsPowerOfTwo(granule) || (cfg.granules & granule) == 0) {
    return InvalidField("granule_bytes", granule,
                        absl::StrFormat("SMMU %s supports granules %#x", cfg.name, cfg.granules));
  }
  std::shared_ptr<Domain> d(new Domain(smmu, params));
  const bool translates = d->type_ != DomainType::kIdentity && d->type_ != DomainType::kBlocked;
  if (translates) {
    absl::MutexLock l(&smmu->mu);
    if (fail_nth::ShouldFail(FailPoint::kSmmuContext)) {
      return fail_nth::Exhausted(FailPoint::kSmmuContext, "smmu", cfg.name,
                                 "no free translation context");
    }
    auto free_ctx = std::find(smmu->context_in_use.begin(), smmu->context_in_use.end(), false);
    if (free_ctx == smmu->context_in_use.end()) {
      return FieldError(
          absl::StatusCode::kResourceExhausted, "smmu", cfg.name,
          absl::StrFormat("all %d translation contexts are in use", cfg.num_contexts));
    }
    *free_ctx = true;
    d->context_ = uint32_t(free_ctx - smmu->context_in_use.begin());
  }
  d->tag_ = cfg.stage == Stage::kStage1 ? TlbTag{.asid = uint16_t(d->context_), .vmid = 0}
                                        : TlbTag{.asid = 0, .vmid = uint16_t(d->context_)};
  absl::MutexLock dl(&d->mu_);
  if (translates) {
    d->flush_ops_ = std::make_unique<DomainFlushOps>(smmu, d->tag_, d->strict_);
    IoPgtableCfg pcfg{.format = cfg.stage == Stage::kStage1 ? IoPgtableFormat::kArm64LpaeS1
                                                            : IoPgtableFormat::kArm64LpaeS2,
                      .pgsize_bitmap = d->pgsize_bitmap_,
                      .ias = cfg.ias_bits,
                      .oas = cfg.oas_bits,
                      .coherent_walk = true};
    auto pgtable = AllocIoPgtableOps(pcfg, d->flush_ops_.get());
    if (!pgtable.ok()) {
      d->ReleaseContext();
      return pgtable.status();
    }
    d->pgtable_ = *std::move(pgtable);
  }
  if (d->has_iova_cookie()) {
    auto iovad = IovaAllocator::Create({.granule_bytes = granule,
                                        .start_pfn = 1,
                                        .end_pfn = d->aperture_end_.value() >> Log2(granule),
                                        .cache = {.max_pages = params.iova_cache_max_pages},
                                        .try_32bit_first = params.try_32bit_first});
    if (!iovad.ok()) {
      d->ReleaseContext();
      return iovad.status();
    }
    IovaCookie cookie;
    cookie.iovad = std::make_unique<IovaAllocator>(*std::move(iovad));
    if (d->type_ == DomainType::kDmaFq) {
      Domain* raw = d.get();
      auto fq = FlushQueue::Create(
          {.capacity = params.flush_queue_capacity, .timeout = params.flush_queue_timeout},
          FlushQueueCallbacks{.invalidate = [raw]() { raw->flush_ops_->TlbFlushAll(); },
                              // Every Enqueue/Flush/Poll runs inside a transaction.
                              .release =
                                  [raw](const FlushQueueEntry& e) {
                                    raw->mu_.AssertHeld();
                                    if (e.payload[1] == 0)
                                      return;  // nothing to release (not allocator IOVA)
                                    raw->FreeIova(Iova(e.payload[0]), e.payload[1]);
                                  },
                              .now = params.now});
      if (!fq.ok()) {
        d->ReleaseContext();
        return fq.status();
      }
      cookie.fq = std::make_unique<FlushQueue>(*std::move(fq));
    }
    d->cookie_ = std::move(cookie);
  }
  return d;
}

absl::Status Domain::NeedsIovaCookie(const char* call) const {
  return FieldError(absl::StatusCode::kFailedPrecondition, "domain_id", id_,
                    absl::StrFormat("%s needs a DMA or DMA_FQ domain; the device's current "
                                    "domain is %s",
                                    call, DomainTypeName(type_)));
}

DomainState Domain::State() const {
  absl::ReaderMutexLock l(&mu_);
  return StateLocked();
}

DomainState Domain::StateLocked() const {
  DomainState s{.domain_id = id_,
                .smmu = smmu_->config.name,
                .type = type_,
                .granule_bytes = granule_bytes_,
                .owner = owner_,
                .default_of = default_of_,
                .granted = granted_,
                .session_id = session_id_,
                .mapping_ids_reserved = mapping_ids_reserved_};
  if (const auto* w = std::get_if<MsiWindowCookie>(&cookie_)) {
    s.msi_window = w->window;
  }
  return s;
}

void Domain::ReleaseContext() {
  if (type_ == DomainType::kIdentity || type_ == DomainType::kBlocked) return;
  absl::MutexLock l(&smmu_->mu);
  smmu_->iotlb->InvalidateAsid(tag_.asid, tag_.vmid);
  smmu_->context_in_use[context_] = false;
}

void Domain::FreeIova(Iova iova, uint64_t size_bytes) {
  auto* c = std::get_if<IovaCookie>(&cookie_);
  assert(c != nullptr);
  const absl::Status s = c->iovad->FreeIova(iova, size_bytes);
  assert(s.ok());
  (void)s;
}

// --- Transaction -------------------------------------------------------------------

void Domain::Transaction::ReserveMappingIds() {
  d_.mapping_ids_reserved_ = d_.next_mapping_id_ + kMappingIdBlock;
  domain_changed_ = true;
}

void Domain::Transaction::JournalChanges() {
  // Each touched start once: present now means put, absent means delete.
  if (touched_.size() > 1) {
    std::sort(touched_.begin(), touched_.end());
    touched_.erase(std::unique(touched_.begin(), touched_.end()), touched_.end());
  }
  for (const uint64_t start : touched_) {
    if (const MappingRecord* m = d_.mappings_.FindStart(start)) {
      changes_.mapping_puts.push_back({d_.id_, m});
    } else {
      changes_.mapping_deletes.push_back({d_.id_, Iova(start)});
    }
  }
  touched_.clear();
  if (domain_changed_ && changes_.domain_deletes.empty()) {
    changes_.domain_puts.push_back(d_.StateLocked());
  }
  domain_changed_ = false;
  JoinPendingRequest(changes_);
  if (changes_.empty()) return;
  const uint64_t ticket = d_.journal_->Commit(changes_);
  pending_journal_ticket = std::max(pending_journal_ticket, ticket);
  changes_ = StateChanges();
}

absl::Status Domain::Transaction::Restore(MappingRecord&& m) {
  d_.mu_.AssertHeld();
  const uint64_t start = m.iova.value();
  auto fail = [&](absl::string_view why) {
    return absl::InternalError(
        absl::StrFormat("domain %d: mapping %d at IOVA %#x: %s", d_.id_, m.mapping_id, start, why));
  };
  if (m.iova_size_bytes == 0 || start + (m.iova_size_bytes - 1) < start ||
      start + (m.iova_size_bytes - 1) > d_.aperture_end_.value()) {
    return fail("outside the aperture");
  }
  if (d_.mappings_.Find(start) != nullptr ||
      d_.mappings_.Find(start + (m.iova_size_bytes - 1)) != nullptr) {
    return fail("overlaps another mapping");
  }
  if (d_.pgtable_ == nullptr) return fail("the domain does not translate");
  // Its page-table ranges lie inside its IOVA range (so that restoring it
  // touches no other mapping's).
  for (const auto& [iova, run] : m.pt_ranges) {
    if (run.size_bytes == 0 || iova.value() < start ||
        iova.value() - start > m.iova_size_bytes - 1 ||
        run.size_bytes - 1 > m.iova_size_bytes - 1 - (iova.value() - start)) {
      return fail(absl::StrFormat("page-table range %#x+%#x outside its IOVA range of %#x bytes",
                                  iova.value(), run.size_bytes, m.iova_size_bytes));
    }
  }
  if (m.kind == MappingKind::kMsi && m.pt_ranges.empty()) return fail("an MSI mapping of no page");
  auto* c = std::get_if<IovaCookie>(&d_.cookie_);
  if (m.iova_from_allocator) {
    if (c == nullptr) return fail("its IOVA came from an allocator the domain lacks");
    if (absl::Status s = c->iovad->ClaimIova(m.iova, m.iova_size_bytes); !s.ok()) {
      return fail(s.message());
    }
  }
  if (absl::Status s = MapRanges(m.pt_ranges, m.prot); !s.ok()) {
    if (m.iova_from_allocator) d_.FreeIova(m.iova, m.iova_size_bytes);
    return fail(s.message());
  }
  // What the device sees translates to the memory the record names.
  for (const MappedPiece& p : m.pieces) {
    bool translates = p.size_bytes != 0;
    for (uint64_t off : {uint64_t{0}, p.size_bytes - 1}) {
      if (!translates) break;
      const std::optional<PhysAddr> pa = d_.pgtable_->IovaToPhys(p.iova + off);
      translates = pa.has_value() && *pa == p.phys + off;
    }
    if (!translates) {
      // Nothing mapped here was ever translated: no IOTLB entry to drop.
      IotlbGather gather;
      for (const auto& [iova, run] : m.pt_ranges) {
        const auto r = d_.pgtable_->Unmap(iova, run.size_bytes, &gather);
        assert(r.ok());
        (void)r;
      }
      if (m.iova_from_allocator) d_.FreeIova(m.iova, m.iova_size_bytes);
      return fail(absl::StrFormat("its piece %#x+%#x does not translate to %#x", p.iova.value(),
                                  p.size_bytes, p.phys.value()));
    }
  }
  if (m.kind == MappingKind::kMsi) {
    const uint64_t page = m.pt_ranges.front().second.start.value();
    std::visit(Overloaded{
                   [&](NoCookie&) {},
                   [&](IovaCookie& ic) { ic.msi_pages[page] = start; },
                   [&](MsiWindowCookie& w) {
                     w.msi_pages[page] = start;
                     w.next_offset =
                         std::max(w.next_offset, start + d_.granule_bytes_ - w.window.base.value());
                   },
               },
               d_.cookie_);
  }
  d_.mapped_bytes_ += m.mapped_bytes;
  d_.next_mapping_id_ = std::max(d_.next_mapping_id_, m.mapping_id + 1);
  d_.mapping_ids_reserved_ = std::max(d_.mapping_ids_reserved_, d_.next_mapping_id_);
  const uint64_t session_id = m.session_id;
  d_.mappings_.Insert(std::move(m));
  if (session_id != 0) SessionEntered(session_id);
  return absl::OkStatus();
}

void Domain::Transaction::CompleteInvalidations() {
  if (!leaf_ranges_.empty()) {
    // Merging only ranges that overlap or touch keeps the invalidation exact:
    // an entry overlaps a merged range iff it overlaps one of its parts. A
    // run's unmaps mostly come in long stretches of IOVA order.
    if (leaf_ranges_.size() > 1) SortByRuns(&leaf_ranges_);
    Smmu& smmu = *d_.smmu_;
    absl::MutexLock l(&smmu.mu);
    uint64_t first = leaf_ranges_.front().first;
    uint64_t last = leaf_ranges_.front().second;
    for (size_t i = 1; i <= leaf_ranges_.size(); ++i) {
      if (i < leaf_ranges_.size() && last != ~uint64_t{0} && leaf_ranges_[i].first <= last + 1) {
        last = std::max(last, leaf_ranges_[i].second);
        continue;
      }
      const auto r =
          smmu.iotlb->InvalidateVa(d_.tag_, Iova(first), last - first + 1, VaLevels::kLeafOnly);
      assert(r.ok());
      (void)r;
      if (i < leaf_ranges_.size()) {
        first = leaf_ranges_[i].first;
        last = leaf_ranges_[i].second;
      }
    }
    leaf_ranges_.clear();
  }
  for (const auto& [iova, size_bytes] : iova_frees_) d_.FreeIova(iova, size_bytes);
  iova_frees_.clear();
}

absl::StatusOr<Iova> Domain::Transaction::AllocIova(uint64_t size_bytes, Iova limit,
                                                    const char* call) {
  d_.mu_.AssertHeld();
  auto* c = std::get_if<IovaCookie>(&d_.cookie_);
  if (c == nullptr) return d_.NeedsIovaCookie(call);
  if (!leaf_ranges_.empty() || !iova_frees_.empty()) CompleteInvalidations();
  if (fail_nth::ShouldFail(FailPoint::kIovaRange)) [[unlikely]] {
    return fail_nth::Exhausted(FailPoint::kIovaRange, "size_bytes", size_bytes,
                               "no IOVA range fits below the limit");
  }
  return c->iovad->AllocIova(size_bytes, limit);
}

absl::Status Domain::Transaction::ReserveRecord() {
  d_.mu_.AssertHeld();
  if (fail_nth::ShouldFail(FailPoint::kMappingRecord)) [[unlikely]] {
    return fail_nth::Exhausted(FailPoint::kMappingRecord, "domain_id", d_.id_,
                               "no memory for a mapping record");
  }
  d_.mappings_.Reserve(d_.mappings_.size() + 1);
  return absl::OkStatus();
}

void Domain::Transaction::FreeIova(Iova iova, uint64_t size_bytes) {
  d_.mu_.AssertHeld();
  d_.FreeIova(iova, size_bytes);
}

absl::Status Domain::Transaction::MapRanges(absl::Span<const std::pair<Iova, PhysRun>> ranges,
                                            Prot prot) {
  d_.mu_.AssertHeld();
  IoPgtableOps& pgtable = *d_.pgtable_;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const auto& [iova, run] = ranges[i];
    absl::Status s = pgtable.Map(iova, run.start, run.size_bytes, prot);
    if (!s.ok()) {
      // Roll back: nothing mapped here was ever translated (translation
      // fills need this domain's lock), so no IOTLB entry can exist.
      IotlbGather gather;
      for (size_t j = 0; j < i; ++j) {
        const auto r = pgtable.Unmap(ranges[j].first, ranges[j].second.size_bytes, &gather);
        assert(r.ok());
        (void)r;
      }
      return s;
    }
  }
  return absl::OkStatus();
}

void Domain::Transaction::RemoveMapping(uint64_t iova_start, bool lazy) {
  d_.mu_.AssertHeld();
  // Erased last: nothing below touches the table.
  MappingRecord* const found = d_.mappings_.FindStart(iova_start);
  assert(found != nullptr);
  const MappingRecord& m = *found;
  d_.mapped_bytes_ -= m.mapped_bytes;

  IotlbGather gather;
  gather.queued = lazy;
  for (const auto& [iova, run] : m.pt_ranges) {
    const auto r = d_.pgtable_->Unmap(iova, run.size_bytes, &gather);
    assert(r.ok() && *r == run.size_bytes);
    (void)r;
  }
  auto* c = std::get_if<IovaCookie>(&d_.cookie_);
  if (lazy) {
    assert(c != nullptr && c->fq != nullptr);
    // Lazy: entries stay usable (and are counted as stale hits) until the
    // queued invalidation; the IOVA is released only after it.
    {
      absl::MutexLock l(&d_.smmu_->mu);
      for (const auto& [iova, run] : m.pt_ranges) {
        const auto r = d_.smmu_->iotlb->MarkStale(d_.tag_, iova, run.size_bytes);
        assert(r.ok());
        (void)r;
      }
    }
    FlushQueueEntry e{.tag = d_.tag_, .iova = m.iova, .size_bytes = m.iova_size_bytes};
    if (m.iova_from_allocator) {
      e.payload[0] = m.iova.value();
      e.payload[1] = m.iova_size_bytes;
    }
    const absl::Status s = c->fq->Enqueue(e);
    assert(s.ok());
    (void)s;
    ArmFlushTimer(*c->fq);
  } else {
    // Strict (UNMANAGED domains always are): the IOTLB forgets the range at
    // commit, before the IOVA can be reused or the memory released.
    if (!gather.empty()) leaf_ranges_.push_back({gather.start, gather.end});
    if (m.iova_from_allocator) iova_frees_.push_back({m.iova, m.iova_size_bytes});
  }
  releaser_.Unmapped(d_, m);
  if (d_.journal_ != nullptr) touched_.push_back(iova_start);
  const uint64_t session_id = m.session_id;
  d_.mappings_.Erase(iova_start);
  if (session_id != 0) SessionLeft(session_id);
}

void Domain::Transaction::FlushQueue() {
  d_.mu_.AssertHeld();
  if (auto* c = std::get_if<IovaCookie>(&d_.cookie_); c && c->fq) c->fq->Flush();
}

void Domain::Transaction::PollFlushQueue() {
  d_.mu_.AssertHeld();
  d_.flush_armed_ = false;
  if (auto* c = std::get_if<IovaCookie>(&d_.cookie_); c && c->fq) {
    c->fq->Poll();
    ArmFlushTimer(*c->fq);
  }
}

void Domain::Transaction::ArmFlushTimer(const iommu::core::FlushQueue& fq) {
  d_.mu_.AssertHeld();
  if (d_.flush_timer_ == nullptr || d_.flush_armed_) return;
  if (const std::optional<absl::Time> due = fq.NextDeadline()) {
    d_.flush_timer_->Arm(d_.id_, *due);
    d_.flush_armed_ = true;
  }
}

// --- MSI ----------------------------------------------------------------------------

void Domain::Transaction::UnsetMsiWindow() {
  d_.mu_.AssertHeld();
  auto* w = std::get_if<MsiWindowCookie>(&d_.cookie_);
  assert(w != nullptr && w->msi_pages.empty() && w->next_offset == 0);
  (void)w;
  d_.cookie_ = NoCookie{};
}

std::optional<IovaWindow> Domain::Transaction::MsiWindow() const {
  d_.mu_.AssertHeld();
  if (const auto* w = std::get_if<MsiWindowCookie>(&d_.cookie_)) return w->window;
  return std::nullopt;
}

absl::Status Domain::Transaction::SetMsiWindow(IovaWindow window) {
  d_.mu_.AssertHeld();
  bool already = false;
  absl::Status st = std::visit(
      Overloaded{
          [&](NoCookie&) -> absl::Status {
            d_.mu_.AssertHeld();
            if (absl::Status s = d_.pgtable_->CheckUnmapped(window.base, window.size_bytes);
                !s.ok()) {
              return FieldError(
                  absl::StatusCode::kAlreadyExists, "window_base", window.base.value(),
                  absl::StrFormat("window overlaps existing mappings: %s", s.message()));
            }
            return absl::OkStatus();
          },
          [&](MsiWindowCookie& w) -> absl::Status {
            if (w.window == window) {
              already = true;  // idempotent
              return absl::OkStatus();
            }
            return FieldError(absl::StatusCode::kAlreadyExists, "domain_id", d_.id_,
                              absl::StrFormat("already has the MSI window [%#x, +%#x)",
                                              w.window.base.value(), w.window.size_bytes));
          },
          [&](IovaCookie&) -> absl::Status {
            assert(false && "UNMANAGED domains never hold an IOVA cookie");
            return absl::InternalError("UNMANAGED domain with an IOVA cookie");
          },
      },
      d_.cookie_);
  RETURN_IF_ERROR(st);
  if (!already) {
    d_.cookie_ = MsiWindowCookie{.window = window};
    domain_changed_ = true;
  }
  return absl::OkStatus();
}

absl::StatusOr<Domain::Transaction::MsiPage> Domain::Transaction::MapMsiPage(uint64_t page,
                                                                             uint64_t doorbell,
                                                                             Iova limit) {
  d_.mu_.AssertHeld();
  const uint64_t g = d_.granule_bytes_;
  const Prot prot = Prot::kWrite | Prot::kNoExec | Prot::kMmio;
  // Maps the page at `iova` and records it in the cookie's `pages`.
  auto map_page = [&](std::map<uint64_t, uint64_t>& pages, Iova iova,
                      bool from_allocator) -> absl::StatusOr<MsiPage> {
    if (absl::Status s = MapRanges({{iova, {PhysAddr(page), g}}}, prot); !s.ok()) {
      if (from_allocator) FreeIova(iova, g);
      return s;
    }
    pages[page] = iova.value();
    MappingRecord& rec = Insert(iova, g, 0);
    rec.kind = MappingKind::kMsi;
    rec.iova_from_allocator = from_allocator;
    rec.dma_offset = doorbell - page;
    rec.prot = prot;
    rec.pt_ranges = {{iova, {PhysAddr(page), g}}};
    rec.pieces = {{iova + (doorbell - page), PhysAddr(doorbell), 4}};
    return MsiPage{.iova = iova, .newly_mapped = true};
  };
  return std::visit(
      Overloaded{
          [&](NoCookie&) -> absl::StatusOr<MsiPage> {
            return FieldError(absl::StatusCode::kFailedPrecondition, "domain_id", d_.id_,
                              "UNMANAGED domain has no MSI cookie: its owner must first set "
                              "an MSI window (MsiCookie with domain_id and window)");
          },
          [&](IovaCookie& c) -> absl::StatusOr<MsiPage> {
            if (auto it = c.msi_pages.find(page); it != c.msi_pages.end()) {
              return MsiPage{.iova = Iova(it->second), .newly_mapped = false};
            }
            RETURN_IF_ERROR(ReserveRecord());
            ASSIGN_OR_RETURN(Iova iova, AllocIova(g, limit, "MsiCookie"));
            return map_page(c.msi_pages, iova, true);
          },
          [&](MsiWindowCookie& w) -> absl::StatusOr<MsiPage> {
            if (auto it = w.msi_pages.find(page); it != w.msi_pages.end()) {
              return MsiPage{.iova = Iova(it->second), .newly_mapped = false};
            }
            // Linear allocation inside the bounds-checked window.
            if (w.next_offset + g > w.window.size_bytes) {
              return FieldError(absl::StatusCode::kResourceExhausted, "domain_id", d_.id_,
                                absl::StrFormat("MSI window [%#x, +%#x) is full",
                                                w.window.base.value(), w.window.size_bytes));
            }
            RETURN_IF_ERROR(ReserveRecord());
            auto r = map_page(w.msi_pages, w.window.base + w.next_offset, false);
            if (r.ok()) w.next_offset += g;
            return r;
          },
      },
      d_.cookie_);
}

}  // namespace iommu::core::internal
