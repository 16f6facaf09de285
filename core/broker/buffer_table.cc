// SPDX-License-Identifier: Apache-2.0
#include "core/broker/buffer_table.h"

#include <algorithm>
#include <cassert>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/fail_nth.h"
#include "core/base/secure_random.h"
#include "core/base/status_macros.h"
#include "core/broker/broker_internal.h"
#include "core/broker/request_log.h"

namespace iommu::core::internal {
namespace {

// Appends `run` to `runs`, merging with the last run when physically adjacent.
template <typename Runs>
void AppendMerged(Runs& runs, PhysRun run) {
  if (!runs.empty() && runs.back().start + runs.back().size_bytes == run.start) {
    runs.back().size_bytes += run.size_bytes;
  } else {
    runs.push_back(run);
  }
}

absl::Status NoSuchBuffer(absl::string_view field, uint64_t buffer_id) {
  return FieldError(absl::StatusCode::kNotFound, field, buffer_id, "no such buffer");
}

BufferInfo Describe(const Buffer& b) {
  BufferInfo info{.buffer_id = b.buffer_id,
                  .device = b.device,
                  .size_bytes = b.alloc.size_bytes,
                  .pool = b.alloc.pool,
                  .placement = b.alloc.placement,
                  .map_count = b.refs()};
  for (const PhysRun& r : b.alloc.runs) AppendMerged(info.runs, r);
  return info;
}

}  // namespace

// --- buffers ------------------------------------------------------------------------

absl::StatusOr<BufferInfo> BufferTable::Create(DeviceState& dev, uint64_t session_id,
                                               uint64_t size_bytes, Placement placement,
                                               const std::string& pool, bool backs_alloc,
                                               std::vector<PhysRun>* runs) {
  if (size_bytes == 0) return InvalidField("size_bytes", 0, "must be non-zero");
  RETURN_IF_ERROR(dev.ChargeBuffer(size_bytes));
  // The most runs the placement can give (scattered pages are never
  // physically adjacent, so one run each), checked before any page is taken.
  const uint64_t most_runs = placement == Placement::kContiguous ? 1
                             : placement == Placement::kHuge
                                 ? size_bytes / kHugePageBytes + (size_bytes % kHugePageBytes != 0)
                                 : size_bytes / 4096 + (size_bytes % 4096 != 0);
  if (most_runs > max_runs_) {
    dev.RefundBuffer(size_bytes);
    return FieldError(
        absl::StatusCode::kResourceExhausted, "size_bytes", size_bytes,
        absl::StrFormat("a %s buffer of this size has up to %d physical runs, more than "
                        "--max_buffer_runs=%d (every reply describing a buffer lists its runs); "
                        "use fewer bytes, or CONTIGUOUS or HUGE placement",
                        PlacementName(placement), most_runs, max_runs_));
  }
  if (fail_nth::ShouldFail(FailPoint::kBufferRecord)) {
    dev.RefundBuffer(size_bytes);
    return fail_nth::Exhausted(FailPoint::kBufferRecord, "size_bytes", size_bytes,
                               "no memory for a buffer record");
  }
  auto b = std::make_unique<Buffer>();
  b->device = dev.config.name;
  b->owner = &dev;
  b->session_id = session_id;
  b->backs_alloc = backs_alloc;
  {
    absl::MutexLock l(&create_mu_);
    auto alloc = memory_->AllocPages(next_buffer_id_, size_bytes, placement, pool);
    if (!alloc.ok()) {
      dev.RefundBuffer(size_bytes);
      return alloc.status();
    }
    b->buffer_id = next_buffer_id_++;
    b->alloc = *std::move(alloc);
    // AllocBuffer's point of no return: its reply joins the buffer's commit.
    if (!backs_alloc) CaptureReply(Describe(*b));
    if (journal_ != nullptr) {
      StateChanges c;
      c.buffer_puts.push_back(StateOf(*b));
      c.counters.push_back({StateCounter::kBufferId, next_buffer_id_});
      Commit(c);
    }
  }
  // Charge what was really taken (rounded up to pages).
  dev.buffer_bytes.fetch_add(b->alloc.size_bytes - size_bytes, std::memory_order_relaxed);
  BufferInfo info = Describe(*b);
  if (runs != nullptr) *runs = b->alloc.runs;
  Shard& shard = ShardOf(b->buffer_id);
  absl::MutexLock l(&shard.mu);
  LinkLocked(shard, std::move(b));
  return info;
}

void BufferTable::LinkLocked(Shard& shard, std::unique_ptr<Buffer> b) {
  if (b->session_id != 0) shard.by_session[b->session_id].insert(b->buffer_id);
  const uint64_t id = b->buffer_id;
  shard.buffers.emplace(id, std::move(b));
}

absl::StatusOr<BufferInfo> BufferTable::Get(const Caller& caller, uint64_t buffer_id) const {
  Shard& shard = ShardOf(buffer_id);
  absl::MutexLock l(&shard.mu);
  auto it = shard.buffers.find(buffer_id);
  if (it == shard.buffers.end() || (!caller.admin && it->second->device != caller.device)) {
    return NoSuchBuffer("buffer_id", buffer_id);
  }
  return Describe(*it->second);
}

absl::Status BufferTable::CheckFreeLocked(Shard& shard, const Caller& caller,
                                          uint64_t buffer_id) const {
  shard.mu.AssertHeld();
  auto it = shard.buffers.find(buffer_id);
  if (it == shard.buffers.end() || (!caller.admin && it->second->device != caller.device)) {
    return NoSuchBuffer("buffer_id", buffer_id);
  }
  const Buffer& b = *it->second;
  if (b.backs_alloc) {
    return FieldError(absl::StatusCode::kFailedPrecondition, "buffer_id", buffer_id,
                      "backs a DMA allocation; release it with Free");
  }
  // Importers' references do not keep the owner from freeing (their imports
  // are revoked first); the owner's own mappings do.
  uint64_t import_refs = 0;
  for (uint64_t id : b.exports) import_refs += exports_.at(export_tokens_.at(id)).imports.size();
  if (const uint64_t refs = b.refs(); refs > import_refs) {
    return FieldError(
        absl::StatusCode::kFailedPrecondition, "buffer_id", buffer_id,
        absl::StrFormat("still referenced by %d mapping(s); unmap first", refs - import_refs));
  }
  return absl::OkStatus();
}

absl::Status BufferTable::CheckFree(const Caller& caller, uint64_t buffer_id) const {
  absl::MutexLock el(&exports_mu_);
  Shard& shard = ShardOf(buffer_id);
  absl::MutexLock l(&shard.mu);
  return CheckFreeLocked(shard, caller, buffer_id);
}

absl::Status BufferTable::Free(const Caller& caller, uint64_t buffer_id) {
  absl::MutexLock el(&exports_mu_);
  Shard& shard = ShardOf(buffer_id);
  absl::MutexLock l(&shard.mu);
  RETURN_IF_ERROR(CheckFreeLocked(shard, caller, buffer_id));
  if (const uint64_t refs = shard.buffers.at(buffer_id)->refs(); refs != 0) {
    // An import made while the exports were being revoked.
    return FieldError(absl::StatusCode::kFailedPrecondition, "buffer_id", buffer_id,
                      absl::StrFormat("still referenced by %d mapping(s); unmap first", refs));
  }
  CaptureOk();  // FreeBuffer's reply joins the buffer's delete
  FreeLocked(shard, buffer_id);
  return absl::OkStatus();
}

void BufferTable::FreeUnreferenced(uint64_t buffer_id) {
  ReleasePages(UnlinkIfUnreferenced(buffer_id, /*only_if_waiting=*/false));
}

std::unique_ptr<Buffer> BufferTable::UnlinkIfUnreferenced(uint64_t buffer_id,
                                                          bool only_if_waiting) {
  absl::MutexLock el(&exports_mu_);
  Shard& shard = ShardOf(buffer_id);
  absl::MutexLock l(&shard.mu);
  auto it = shard.buffers.find(buffer_id);
  if (it == shard.buffers.end() || it->second->refs() != 0) return nullptr;
  if (only_if_waiting && (it->second->map_refs.load() & Buffer::kWaiting) == 0) return nullptr;
  return UnlinkLocked(shard, buffer_id);
}

std::unique_ptr<Buffer> BufferTable::UnlinkLocked(Shard& shard, uint64_t buffer_id) {
  shard.mu.AssertHeld();
  auto it = shard.buffers.find(buffer_id);
  std::unique_ptr<Buffer> b = std::move(it->second);
  shard.buffers.erase(it);
  if (b->session_id != 0) {
    auto s = shard.by_session.find(b->session_id);
    assert(s != shard.by_session.end());
    s->second.erase(buffer_id);
    if (s->second.empty()) shard.by_session.erase(s);
  }
  StateChanges c;
  c.buffer_deletes.push_back(buffer_id);
  // Its exports go with it (none has a live import: those hold references).
  for (const uint64_t id : std::vector<uint64_t>(b->exports)) {
    const auto imports = EraseExportLocked(id, &c);
    assert(imports.empty());
    (void)imports;
  }
  Commit(c);
  return b;
}

void BufferTable::Commit(StateChanges& changes) {
  if (journal_ == nullptr) return;
  JoinPendingRequest(changes);
  const uint64_t ticket = journal_->Commit(changes);
  pending_journal_ticket = std::max(pending_journal_ticket, ticket);
}

BufferState BufferTable::StateOf(const Buffer& b) {
  return BufferState{.buffer_id = b.buffer_id,
                     .device = b.device,
                     .session_id = b.session_id,
                     .pool = b.alloc.pool,
                     .placement = b.alloc.placement,
                     .runs = b.alloc.runs,
                     .backs_alloc = b.backs_alloc};
}

absl::Status BufferTable::Restore(DeviceState& dev, const BufferState& state) {
  auto fail = [&](absl::string_view why) {
    return absl::InternalError(
        absl::StrFormat("buffer %d of %s: %s", state.buffer_id, state.device, why));
  };
  if (state.buffer_id == 0) return fail("id 0");
  uint64_t size_bytes = 0;
  for (const PhysRun& r : state.runs) size_bytes += r.size_bytes;
  if (size_bytes == 0) return fail("no pages");
  auto b = std::make_unique<Buffer>();
  b->buffer_id = state.buffer_id;
  b->device = state.device;
  b->owner = &dev;
  b->session_id = state.session_id;
  b->backs_alloc = state.backs_alloc;
  Shard& shard = ShardOf(state.buffer_id);
  absl::MutexLock l(&shard.mu);
  if (shard.buffers.contains(state.buffer_id)) return fail("recorded twice");
  auto alloc = memory_->ClaimPages(state.buffer_id, state.pool, state.placement, state.runs);
  if (!alloc.ok()) return fail(alloc.status().message());
  b->alloc = *std::move(alloc);
  // Recovery restores what was admitted: charged past any quota change.
  dev.buffers.fetch_add(1);
  dev.buffer_bytes.fetch_add(b->alloc.size_bytes);
  LinkLocked(shard, std::move(b));
  return absl::OkStatus();
}

absl::Status BufferTable::RestoreExport(DeviceState& exporter, const ExportState& state) {
  absl::MutexLock el(&exports_mu_);
  if (state.export_id == 0 || state.token.empty() || exports_.contains(state.token) ||
      export_tokens_.contains(state.export_id)) {
    return absl::InternalError(absl::StrFormat("export %d of %s: id or token recorded twice",
                                               state.export_id, state.exporter));
  }
  std::vector<BufferRef> buffers;
  for (uint64_t id : state.buffer_ids) {
    Shard& shard = ShardOf(id);
    absl::MutexLock l(&shard.mu);
    auto it = shard.buffers.find(id);
    if (it == shard.buffers.end()) {
      return absl::InternalError(absl::StrFormat("export %d of %s: its buffer %d is missing",
                                                 state.export_id, state.exporter, id));
    }
    buffers.push_back({id, it->second.get()});
  }
  for (const BufferRef& ref : buffers) ref.buffer->exports.push_back(state.export_id);
  ++exporter.exports;
  export_tokens_[state.export_id] = state.token;
  exports_[state.token] = ExportRecord{.export_id = state.export_id,
                                       .exporter = state.exporter,
                                       .exporter_state = &exporter,
                                       .exporter_granule = state.exporter_granule,
                                       .chunks = state.chunks,
                                       .buffer_ids = state.buffer_ids,
                                       .buffers = std::move(buffers),
                                       .importers_allowed = state.importers_allowed,
                                       .writable = state.writable};
  next_export_id_ = std::max(next_export_id_, state.export_id + 1);
  return absl::OkStatus();
}

void BufferTable::RestoreCounters(uint64_t next_buffer_id, uint64_t next_export_id) {
  {
    absl::MutexLock l(&create_mu_);
    next_buffer_id_ = std::max(next_buffer_id_, next_buffer_id);
  }
  absl::MutexLock el(&exports_mu_);
  next_export_id_ = std::max(next_export_id_, next_export_id);
}

bool BufferTable::Contains(uint64_t buffer_id) const {
  Shard& shard = ShardOf(buffer_id);
  absl::MutexLock l(&shard.mu);
  return shard.buffers.contains(buffer_id);
}

bool BufferTable::ContainsExport(uint64_t export_id) const {
  absl::MutexLock el(&exports_mu_);
  return export_tokens_.contains(export_id);
}

std::optional<BufferRef> BufferTable::TryRestoreRef(uint64_t buffer_id) {
  Shard& shard = ShardOf(buffer_id);
  absl::MutexLock l(&shard.mu);
  auto it = shard.buffers.find(buffer_id);
  if (it == shard.buffers.end()) return std::nullopt;
  it->second->map_refs.fetch_add(1);
  return BufferRef{buffer_id, it->second.get()};
}

void BufferTable::ReleasePages(std::unique_ptr<Buffer> b) {
  if (b == nullptr) return;
  const absl::Status s = memory_->FreeAllocation(b->alloc.id);
  assert(s.ok());
  (void)s;
  b->owner->RefundBuffer(b->alloc.size_bytes);
}

void BufferTable::FreeLocked(Shard& shard, uint64_t buffer_id) {
  ReleasePages(UnlinkLocked(shard, buffer_id));
}

uint64_t BufferTable::ReleaseSessions(absl::Span<const uint64_t> session_ids) {
  uint64_t visited = 0;
  for (Shard& shard : shards_) {
    std::vector<uint64_t> doomed;
    {
      absl::MutexLock l(&shard.mu);
      for (const uint64_t session_id : session_ids) {
        const auto it = shard.by_session.find(session_id);
        if (it == shard.by_session.end()) continue;
        visited += it->second.size();
        doomed.insert(doomed.end(), it->second.begin(), it->second.end());
      }
    }
    // In id order, as a scan of the table has always freed them; a few at a
    // time under the locks (another device's map may need this shard), and
    // their pages returned after.
    std::sort(doomed.begin(), doomed.end());
    for (size_t first = 0; first < doomed.size(); first += kReleaseChunk) {
      std::vector<std::unique_ptr<Buffer>> freed;
      {
        absl::MutexLock el(&exports_mu_);
        absl::MutexLock l(&shard.mu);
        for (size_t i = first; i < std::min(doomed.size(), first + kReleaseChunk); ++i) {
          // Still unreferenced: a mapping made without the session may hold it.
          const auto it = shard.buffers.find(doomed[i]);
          if (it == shard.buffers.end() || it->second->refs() != 0) continue;
          freed.push_back(UnlinkLocked(shard, doomed[i]));
        }
      }
      for (std::unique_ptr<Buffer>& b : freed) ReleasePages(std::move(b));
    }
  }
  return visited;
}

std::unique_ptr<Buffer> BufferTable::DropRef(const BufferRef& ref) {
  if (ref.buffer->map_refs.fetch_sub(1) != (Buffer::kWaiting | 1)) return nullptr;
  // The last reference of a buffer waiting for it. Unlinking takes the
  // export lock, which comes before the shard locks, and checks again.
  return UnlinkIfUnreferenced(ref.id, /*only_if_waiting=*/true);
}

std::unique_ptr<Buffer> BufferTable::ReleaseOwned(uint64_t buffer_id) {
  {
    Shard& shard = ShardOf(buffer_id);
    absl::MutexLock l(&shard.mu);
    // Importers still map it: freed when the last reference drops.
    const uint64_t before = shard.buffers.at(buffer_id)->map_refs.fetch_or(Buffer::kWaiting);
    if ((before & ~Buffer::kWaiting) != 0) return nullptr;
  }
  return UnlinkIfUnreferenced(buffer_id, /*only_if_waiting=*/false);
}

void BufferTable::ForEachBuffer(const std::function<void(const Buffer&)>& fn) const {
  absl::MutexLock el(&exports_mu_);
  for (Shard& shard : shards_) {
    absl::MutexLock l(&shard.mu);
    for (const auto& [id, b] : shard.buffers) fn(*b);
  }
}

// --- references ---------------------------------------------------------------------

absl::Status BufferTable::Refs::ResolvePhys(const Caller& caller, const MemRef& mem,
                                            absl::string_view field, ResolvedMem* out) const {
  if (mem.length_bytes == 0) {
    return InvalidField(absl::StrCat(field, ".length_bytes"), 0, "must be non-zero");
  }
  assert(mem.buffer_id == 0);
  if (!caller.admin) {
    return FieldError(absl::StatusCode::kPermissionDenied, absl::StrCat(field, ".phys_addr"),
                      mem.phys.value(),
                      "a device may map only memory it owns: name one of its buffers");
  }
  if (!LastOfRange(mem.phys.value(), mem.length_bytes)) {
    return InvalidField(absl::StrCat(field, ".length_bytes"), mem.length_bytes,
                        "phys_addr + length passes 2^64");
  }
  const PhysMemory& memory = *table_.memory_;
  if (!memory.IsRam(mem.phys, mem.length_bytes) && !memory.IsMmio(mem.phys, mem.length_bytes)) {
    return OutOfRangeField(absl::StrCat(field, ".phys_addr"), mem.phys.value(),
                           "not inside one RAM or MMIO region");
  }
  out->runs.push_back({mem.phys, mem.length_bytes});
  return absl::OkStatus();
}

absl::Status BufferTable::Refs::Resolve(const Caller& caller, const DeviceState& dev,
                                        const MemRef& mem, absl::string_view field,
                                        ResolvedMem* out) {
  assert(out->runs.empty() && out->buffers.empty());
  if (mem.length_bytes == 0 || mem.buffer_id == 0) return ResolvePhys(caller, mem, field, out);
  // The checks read only what is fixed at creation; the reference is taken
  // once they pass.
  auto check = [&](const Buffer& b) -> absl::Status {
    if (!caller.admin && b.owner != &dev) {
      // Another device's buffer answers as a missing one (no existence oracle).
      return NoSuchBuffer(absl::StrCat(field, ".buffer_id"), mem.buffer_id);
    }
    const auto last = LastOfRange(mem.offset_bytes, mem.length_bytes);
    if (!last || *last >= b.alloc.size_bytes) {
      return OutOfRangeField(absl::StrCat(field, ".length_bytes"), mem.length_bytes,
                             absl::StrFormat("offset %#x + length passes the buffer's %#x bytes",
                                             mem.offset_bytes, b.alloc.size_bytes));
    }
    return absl::OkStatus();
  };
  Buffer* b;
  if (last_id_ == mem.buffer_id && balance_ > 0) {
    // This object holds a reference on it: no lookup, no lock.
    b = last_;
    RETURN_IF_ERROR(check(*b));
    b->map_refs.fetch_add(1);
    ++balance_;
  } else {
    Shard& shard = table_.ShardOf(mem.buffer_id);
    absl::MutexLock l(&shard.mu);
    auto it = shard.buffers.find(mem.buffer_id);
    if (it == shard.buffers.end())
      return NoSuchBuffer(absl::StrCat(field, ".buffer_id"), mem.buffer_id);
    b = it->second.get();
    RETURN_IF_ERROR(check(*b));
    b->map_refs.fetch_add(1);
    last_id_ = mem.buffer_id;
    last_ = b;
    balance_ = 1;
  }
  uint64_t pos = 0;  // buffer offset of the current run
  const uint64_t end = mem.offset_bytes + mem.length_bytes;
  for (const PhysRun& r : b->alloc.runs) {
    const uint64_t run_end = pos + r.size_bytes;
    if (run_end > mem.offset_bytes && pos < end) {
      const uint64_t from = std::max(pos, mem.offset_bytes);
      const uint64_t to = std::min(run_end, end);
      AppendMerged(out->runs, {r.start + (from - pos), to - from});
    }
    pos = run_end;
    if (pos >= end) break;
  }
  out->buffers.push_back({mem.buffer_id, b});
  return absl::OkStatus();
}

void BufferTable::Refs::DropNow(const BufferRef& ref) {
  if (ref.id == last_id_ && balance_ > 0 && --balance_ == 0) last_id_ = 0;
  if (std::unique_ptr<Buffer> dead = table_.DropRef(ref)) dead_.push_back(std::move(dead));
}

void BufferTable::Refs::Drop(absl::Span<const BufferRef> buffers) {
  for (const BufferRef& ref : buffers) DropNow(ref);
}

void BufferTable::Refs::Unmapped(const Domain& d, const MappingRecord& m) {
  if (m.owner != nullptr) m.owner->RefundMapping(m.mapped_bytes);
  if (m.export_id != 0) table_.ForgetImport(m.export_id, d, m.mapping_id);
  for (const BufferRef& ref : m.buffer_refs) DropNow(ref);
  if (m.owned_buffer_id != 0) {
    if (std::unique_ptr<Buffer> dead = table_.ReleaseOwned(m.owned_buffer_id)) {
      dead_.push_back(std::move(dead));
    }
  }
}

void BufferTable::Refs::ReleaseDead() {
  for (std::unique_ptr<Buffer>& b : dead_) table_.ReleasePages(std::move(b));
  dead_.clear();
}

// --- exports ------------------------------------------------------------------------

absl::StatusOr<std::string> BufferTable::CreateExport(
    DeviceState& exporter, uint64_t exporter_granule, std::vector<PhysRun> chunks,
    std::vector<uint64_t> buffer_ids, const ExportGrant& grant,
    absl::FunctionRef<void(const std::string&)> on_token) {
  absl::MutexLock el(&exports_mu_);
  if (exporter.exports.load() >= exporter.quotas.max_exports) {
    return FieldError(absl::StatusCode::kResourceExhausted, "device", exporter.config.name,
                      absl::StrFormat("export quota of %d live export tokens reached; revoke "
                                      "some first",
                                      exporter.quotas.max_exports));
  }
  if (fail_nth::ShouldFail(FailPoint::kExportRecord)) {
    return fail_nth::Exhausted(FailPoint::kExportRecord, "device", exporter.config.name,
                               "no memory for an export record");
  }
  ++exporter.exports;
  const uint64_t export_id = next_export_id_++;
  std::string token;
  do {
    token = SecureToken("iexp_", 16);
  } while (exports_.contains(token));
  export_tokens_[export_id] = token;
  std::vector<BufferRef> buffers;
  for (uint64_t id : buffer_ids) {
    Shard& shard = ShardOf(id);
    absl::MutexLock l(&shard.mu);
    buffers.push_back({id, shard.buffers.at(id).get()});
    buffers.back().buffer->exports.push_back(export_id);
  }
  on_token(token);
  if (journal_ != nullptr) {
    StateChanges c;
    c.export_puts.push_back(ExportState{.export_id = export_id,
                                        .token = token,
                                        .exporter = exporter.config.name,
                                        .exporter_granule = exporter_granule,
                                        .chunks = chunks,
                                        .buffer_ids = buffer_ids,
                                        .importers_allowed = grant.importers,
                                        .writable = grant.writable});
    c.counters.push_back({StateCounter::kExportId, next_export_id_});
    Commit(c);
  }
  exports_[token] = ExportRecord{.export_id = export_id,
                                 .exporter = exporter.config.name,
                                 .exporter_state = &exporter,
                                 .exporter_granule = exporter_granule,
                                 .chunks = std::move(chunks),
                                 .buffer_ids = std::move(buffer_ids),
                                 .buffers = std::move(buffers),
                                 .importers_allowed = grant.importers,
                                 .writable = grant.writable};
  return token;
}

absl::Status BufferTable::Import(const std::string& token,
                                 const std::function<absl::Status(const ExportRecord&)>& check,
                                 ImportedExport* out) {
  absl::MutexLock el(&exports_mu_);
  auto it = exports_.find(token);
  if (it == exports_.end()) {
    return FieldError(absl::StatusCode::kNotFound, "import_token", token,
                      "no such export (never made, revoked, or its buffer was freed)");
  }
  const ExportRecord& e = it->second;
  RETURN_IF_ERROR(check(e));
  for (const BufferRef& b : e.buffers) b.buffer->map_refs.fetch_add(1);
  *out = {.export_id = e.export_id,
          .exporter_granule = e.exporter_granule,
          .chunks = e.chunks,
          .buffers = e.buffers};
  return absl::OkStatus();
}

absl::Status BufferTable::RecordImport(uint64_t export_id, ExportRecord::Import import) {
  absl::MutexLock el(&exports_mu_);
  auto token = export_tokens_.find(export_id);
  if (token == export_tokens_.end()) {
    return FieldError(absl::StatusCode::kNotFound, "import_token", "",
                      "no such export (never made, revoked, or its buffer was freed)");
  }
  if (fail_nth::ShouldFail(FailPoint::kImportRecord)) {
    return fail_nth::Exhausted(FailPoint::kImportRecord, "export_id", export_id,
                               "no memory for an import record");
  }
  exports_.at(token->second).imports.push_back(std::move(import));
  return absl::OkStatus();
}

std::optional<uint64_t> BufferTable::FindExport(const std::string& token,
                                                const std::string& exporter) const {
  absl::MutexLock el(&exports_mu_);
  auto it = exports_.find(token);
  if (it == exports_.end() || (!exporter.empty() && it->second.exporter != exporter)) {
    return std::nullopt;
  }
  return it->second.export_id;
}

std::vector<uint64_t> BufferTable::ExportsOf(uint64_t buffer_id) const {
  absl::MutexLock el(&exports_mu_);
  Shard& shard = ShardOf(buffer_id);
  absl::MutexLock l(&shard.mu);
  auto it = shard.buffers.find(buffer_id);
  return it == shard.buffers.end() ? std::vector<uint64_t>{} : it->second->exports;
}

std::vector<ExportRecord::Import> BufferTable::EraseExport(uint64_t export_id) {
  absl::MutexLock el(&exports_mu_);
  StateChanges c;
  auto imports = EraseExportLocked(export_id, &c);
  if (!c.empty()) Commit(c);
  return imports;
}

std::vector<ExportRecord::Import> BufferTable::EraseExportLocked(uint64_t export_id,
                                                                 StateChanges* changes) {
  auto token = export_tokens_.find(export_id);
  if (token == export_tokens_.end()) return {};  // already revoked
  changes->export_deletes.push_back(export_id);
  auto e = exports_.find(token->second);
  std::vector<ExportRecord::Import> imports = std::move(e->second.imports);
  for (const BufferRef& b : e->second.buffers) {
    auto& ids = b.buffer->exports;
    ids.erase(std::remove(ids.begin(), ids.end(), export_id), ids.end());
  }
  --e->second.exporter_state->exports;
  exports_.erase(e);
  export_tokens_.erase(token);
  return imports;
}

void BufferTable::ForgetImport(uint64_t export_id, const Domain& d, uint64_t mapping_id) {
  absl::MutexLock el(&exports_mu_);
  auto token = export_tokens_.find(export_id);
  if (token == export_tokens_.end()) return;  // revoked
  auto& imports = exports_.at(token->second).imports;
  imports.erase(std::remove_if(imports.begin(), imports.end(),
                               [&](const ExportRecord::Import& i) {
                                 // Mapping ids are unique within a domain; this one is alive (the
                                 // mapping is leaving it).
                                 return i.mapping_id == mapping_id && i.domain.lock().get() == &d;
                               }),
                imports.end());
}

void BufferTable::ForEachExport(
    const std::function<void(const std::string&, const ExportRecord&)>& fn) const {
  absl::MutexLock el(&exports_mu_);
  for (const auto& [token, e] : exports_) fn(token, e);
}

absl::Status BufferTable::CheckSessionIndex() const {
  for (Shard& shard : shards_) {
    absl::MutexLock l(&shard.mu);
    size_t indexed = 0;
    for (const auto& [session_id, ids] : shard.by_session) {
      if (session_id == 0 || ids.empty()) {
        return absl::InternalError("buffer session index holds an empty or zero session");
      }
      for (const uint64_t id : ids) {
        const auto it = shard.buffers.find(id);
        if (it == shard.buffers.end() || it->second->session_id != session_id) {
          return absl::InternalError(absl::StrFormat(
              "buffer session index lists buffer %d under session %#x", id, session_id));
        }
      }
      indexed += ids.size();
    }
    const size_t with_session =
        std::count_if(shard.buffers.begin(), shard.buffers.end(),
                      [](const auto& kv) { return kv.second->session_id != 0; });
    if (indexed != with_session) {
      return absl::InternalError(
          absl::StrFormat("buffer session index holds %d buffers, %d were made under sessions",
                          indexed, with_session));
    }
  }
  return absl::OkStatus();
}

absl::Status BufferTable::CheckExportIndex() const {
  absl::MutexLock el(&exports_mu_);
  for (const auto& [token, e] : exports_) {
    auto it = export_tokens_.find(e.export_id);
    if (it == export_tokens_.end() || it->second != token) {
      return absl::InternalError("export id and token disagree");
    }
  }
  if (export_tokens_.size() != exports_.size())
    return absl::InternalError("export index out of step");
  return absl::OkStatus();
}

}  // namespace iommu::core::internal
