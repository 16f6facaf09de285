// Buffers (pinned pages), ownership resolution and quotas.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "core/broker/broker.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {
namespace {

// Charges `amount` against `limit` on `counter`; false (and no change) when
// it would pass the limit.
bool TryCharge(std::atomic<uint64_t>& counter, uint64_t amount, uint64_t limit) {
  uint64_t cur = counter.load(std::memory_order_relaxed);
  do {
    if (amount > limit || cur > limit - amount) return false;
  } while (!counter.compare_exchange_weak(cur, cur + amount, std::memory_order_relaxed));
  return true;
}

// Appends `run` to `runs`, merging with the last run when physically adjacent.
template <typename Runs>
void AppendMerged(Runs& runs, PhysRun run) {
  if (!runs.empty() && runs.back().start + runs.back().size_bytes == run.start) {
    runs.back().size_bytes += run.size_bytes;
  } else {
    runs.push_back(run);
  }
}

}  // namespace

absl::Status BrokerImpl::ChargeMapping(DeviceState& dev, uint64_t bytes) {
  if (!TryCharge(dev.mappings, 1, dev.quotas.max_mappings)) {
    return FieldError(
        absl::StatusCode::kResourceExhausted, "device", dev.config.name,
        absl::StrFormat("mapping quota of %d mappings reached", dev.quotas.max_mappings));
  }
  if (!TryCharge(dev.mapped_bytes, bytes, dev.quotas.max_mapped_bytes)) {
    dev.mappings.fetch_sub(1, std::memory_order_relaxed);
    return FieldError(
        absl::StatusCode::kResourceExhausted, "size_bytes", bytes,
        absl::StrFormat("device %s would pass its mapped-bytes quota %#x "
                        "(%#x mapped)",
                        dev.config.name, dev.quotas.max_mapped_bytes, dev.mapped_bytes.load()));
  }
  return absl::OkStatus();
}

void BrokerImpl::RefundMapping(DeviceState& dev, uint64_t bytes) {
  dev.mappings.fetch_sub(1, std::memory_order_relaxed);
  dev.mapped_bytes.fetch_sub(bytes, std::memory_order_relaxed);
}

absl::Status BrokerImpl::ResolveAndRef(const Caller& caller, const DeviceState& dev,
                                       const MemRef& mem, absl::string_view field,
                                       ResolvedMem* out) {
  if (mem.length_bytes == 0 || mem.buffer_id == 0) return ResolvePhys(caller, mem, field, out);
  absl::MutexLock l(&buffers_mu_);
  return ResolveAndRefLocked(caller, dev, mem, field, out, nullptr);
}

absl::Status BrokerImpl::ResolvePhys(const Caller& caller, const MemRef& mem,
                                     absl::string_view field, ResolvedMem* out) const {
  assert(out->runs.empty() && out->buffers.empty());
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
  if (!memory_->IsRam(mem.phys, mem.length_bytes) && !memory_->IsMmio(mem.phys, mem.length_bytes)) {
    return OutOfRangeField(absl::StrCat(field, ".phys_addr"), mem.phys.value(),
                           "not inside one RAM or MMIO region");
  }
  out->runs.push_back({mem.phys, mem.length_bytes});
  return absl::OkStatus();
}

absl::Status BrokerImpl::ResolveAndRefIn(BufferRun* run, const Caller& caller,
                                         const DeviceState& dev, const MemRef& mem,
                                         absl::string_view field, ResolvedMem* out) {
  if (run == nullptr) return ResolveAndRef(caller, dev, mem, field, out);
  buffers_mu_.AssertHeld();
  return ResolveAndRefLocked(caller, dev, mem, field, out, run);
}

absl::Status BrokerImpl::ResolveAndRefLocked(const Caller& caller, const DeviceState& dev,
                                             const MemRef& mem, absl::string_view field,
                                             ResolvedMem* out, BufferRun* run) {
  if (mem.length_bytes == 0 || mem.buffer_id == 0) return ResolvePhys(caller, mem, field, out);
  assert(out->runs.empty() && out->buffers.empty());
  internal::Buffer* found;
  if (run != nullptr && run->id == mem.buffer_id) {
    found = run->buffer;
  } else {
    auto it = buffers_.find(mem.buffer_id);
    if (it == buffers_.end()) {
      return FieldError(absl::StatusCode::kNotFound, absl::StrCat(field, ".buffer_id"),
                        mem.buffer_id, "no such buffer");
    }
    found = &it->second;
    if (run != nullptr) *run = {.id = mem.buffer_id, .buffer = found};
  }
  internal::Buffer& b = *found;
  if (!caller.admin && b.device != dev.config.name) {
    // Another device's buffer answers as a missing one (no existence oracle).
    return FieldError(absl::StatusCode::kNotFound, absl::StrCat(field, ".buffer_id"), mem.buffer_id,
                      "no such buffer");
  }
  const auto last = LastOfRange(mem.offset_bytes, mem.length_bytes);
  if (!last || *last >= b.alloc.size_bytes) {
    return OutOfRangeField(absl::StrCat(field, ".length_bytes"), mem.length_bytes,
                           absl::StrFormat("offset %#x + length passes the buffer's %#x bytes",
                                           mem.offset_bytes, b.alloc.size_bytes));
  }
  uint64_t pos = 0;  // buffer offset of the current run
  const uint64_t end = mem.offset_bytes + mem.length_bytes;
  for (const PhysRun& r : b.alloc.runs) {
    const uint64_t run_end = pos + r.size_bytes;
    if (run_end > mem.offset_bytes && pos < end) {
      const uint64_t from = std::max(pos, mem.offset_bytes);
      const uint64_t to = std::min(run_end, end);
      AppendMerged(out->runs, {r.start + (from - pos), to - from});
    }
    pos = run_end;
    if (pos >= end) break;
  }
  out->buffers.push_back(mem.buffer_id);
  ++b.map_refs;  // held until the mapping goes, or dropped by the caller on failure
  return absl::OkStatus();
}

void BrokerImpl::AddRefs(absl::Span<const uint64_t> buffers) {
  absl::MutexLock l(&buffers_mu_);
  for (uint64_t id : buffers) ++buffers_.at(id).map_refs;
}

void BrokerImpl::DropRefs(absl::Span<const uint64_t> buffers) {
  absl::MutexLock l(&buffers_mu_);
  DropRefsLocked(buffers, nullptr);
}

void BrokerImpl::DropRefsIn(BufferRun* run, absl::Span<const uint64_t> buffers) {
  if (run == nullptr) return DropRefs(buffers);
  buffers_mu_.AssertHeld();
  DropRefsLocked(buffers, run);
}

void BrokerImpl::DropRefsLocked(absl::Span<const uint64_t> buffers, BufferRun* run) {
  for (uint64_t id : buffers) {
    internal::Buffer& b = run != nullptr && run->id == id ? *run->buffer : buffers_.at(id);
    assert(b.map_refs > 0);
    if (--b.map_refs == 0 && b.free_when_unreferenced) {
      if (run != nullptr && run->id == id) *run = {};
      const absl::Status s = FreeBufferLocked(id);
      assert(s.ok());
      (void)s;
    }
  }
}

absl::Status BrokerImpl::FreeBufferLocked(uint64_t buffer_id) {
  auto it = buffers_.find(buffer_id);
  if (it == buffers_.end()) {
    return FieldError(absl::StatusCode::kNotFound, "buffer_id", buffer_id, "no such buffer");
  }
  internal::Buffer& b = it->second;
  if (b.map_refs != 0) {
    return FieldError(
        absl::StatusCode::kFailedPrecondition, "buffer_id", buffer_id,
        absl::StrFormat("still referenced by %d mapping(s); unmap first", b.map_refs));
  }
  RETURN_IF_ERROR(memory_->FreeAllocation(b.alloc.id));
  for (const PhysRun& r : b.alloc.runs) runs_.erase(r.start.value());
  // Its exports go with it (none has a live import: those hold references).
  for (const uint64_t id : std::vector<uint64_t>(b.exports)) {
    const auto imports = EraseExportLocked(id);
    assert(imports.empty());
    (void)imports;
  }
  DeviceState& dev = *devices_.at(b.device);
  dev.buffers.fetch_sub(1, std::memory_order_relaxed);
  dev.buffer_bytes.fetch_sub(b.alloc.size_bytes, std::memory_order_relaxed);
  buffers_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<internal::Buffer*> BrokerImpl::NewBufferLocked(DeviceState& dev, uint64_t session_id,
                                                              uint64_t size_bytes,
                                                              Placement placement,
                                                              const std::string& pool) {
  if (size_bytes == 0) return InvalidField("size_bytes", 0, "must be non-zero");
  if (!TryCharge(dev.buffers, 1, dev.quotas.max_buffers)) {
    return FieldError(
        absl::StatusCode::kResourceExhausted, "device", dev.config.name,
        absl::StrFormat("buffer quota of %d buffers reached", dev.quotas.max_buffers));
  }
  if (!TryCharge(dev.buffer_bytes, size_bytes, dev.quotas.max_buffer_bytes)) {
    dev.buffers.fetch_sub(1, std::memory_order_relaxed);
    return FieldError(absl::StatusCode::kResourceExhausted, "size_bytes", size_bytes,
                      absl::StrFormat("device %s would pass its buffer-bytes quota %#x",
                                      dev.config.name, dev.quotas.max_buffer_bytes));
  }
  const uint64_t id = next_buffer_id_;
  auto alloc = memory_->AllocPages(id, size_bytes, placement, pool);
  if (!alloc.ok()) {
    dev.buffers.fetch_sub(1, std::memory_order_relaxed);
    dev.buffer_bytes.fetch_sub(size_bytes, std::memory_order_relaxed);
    return alloc.status();
  }
  // Charge what was really taken (rounded up to pages).
  dev.buffer_bytes.fetch_add(alloc->size_bytes - size_bytes, std::memory_order_relaxed);
  ++next_buffer_id_;
  internal::Buffer& b = buffers_[id];
  b.buffer_id = id;
  b.device = dev.config.name;
  b.session_id = session_id;
  b.alloc = *std::move(alloc);
  for (const PhysRun& r : b.alloc.runs) {
    runs_[r.start.value()] = {r.start.value() + r.size_bytes, id};
  }
  return &b;
}

BufferInfo BrokerImpl::DescribeBuffer(const internal::Buffer& b) const {
  BufferInfo info{.buffer_id = b.buffer_id,
                  .device = b.device,
                  .size_bytes = b.alloc.size_bytes,
                  .pool = b.alloc.pool,
                  .placement = b.alloc.placement,
                  .map_count = b.map_refs};
  for (const PhysRun& r : b.alloc.runs) AppendMerged(info.runs, r);
  return info;
}

absl::StatusOr<BufferInfo> Broker::AllocBuffer(const Caller& caller, const std::string& device,
                                               uint64_t size_bytes, Placement placement,
                                               const std::string& pool) {
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  ASSIGN_OR_RETURN(BrokerImpl::SessionPin pin, impl_->PinSession(caller));
  absl::MutexLock l(&impl_->buffers_mu_);
  ASSIGN_OR_RETURN(internal::Buffer * b,
                   impl_->NewBufferLocked(*dev, caller.session_id, size_bytes, placement, pool));
  return impl_->DescribeBuffer(*b);
}

absl::Status Broker::FreeBuffer(const Caller& caller, uint64_t buffer_id) {
  auto check = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(impl_->buffers_mu_) -> absl::Status {
    auto it = impl_->buffers_.find(buffer_id);
    if (it == impl_->buffers_.end() || (!caller.admin && it->second.device != caller.device)) {
      return FieldError(absl::StatusCode::kNotFound, "buffer_id", buffer_id, "no such buffer");
    }
    if (it->second.backs_alloc) {
      return FieldError(absl::StatusCode::kFailedPrecondition, "buffer_id", buffer_id,
                        "backs a DMA allocation; release it with Free");
    }
    // Importers' references do not keep the owner from freeing (their
    // imports are revoked); the owner's own mappings do.
    uint64_t import_refs = 0;
    for (uint64_t id : it->second.exports) {
      import_refs += impl_->exports_.at(impl_->export_tokens_.at(id)).imports.size();
    }
    if (it->second.map_refs > import_refs) {
      return FieldError(absl::StatusCode::kFailedPrecondition, "buffer_id", buffer_id,
                        absl::StrFormat("still referenced by %d mapping(s); unmap first",
                                        it->second.map_refs - import_refs));
    }
    return absl::OkStatus();
  };
  {
    absl::MutexLock l(&impl_->buffers_mu_);
    RETURN_IF_ERROR(check());
  }
  impl_->RevokeExports(impl_->ExportsOf(buffer_id));
  absl::MutexLock l(&impl_->buffers_mu_);
  RETURN_IF_ERROR(check());
  return impl_->FreeBufferLocked(buffer_id);
}

absl::StatusOr<BufferInfo> Broker::GetBuffer(const Caller& caller, uint64_t buffer_id) const {
  absl::ReaderMutexLock l(&impl_->buffers_mu_);
  auto it = impl_->buffers_.find(buffer_id);
  if (it == impl_->buffers_.end() || (!caller.admin && it->second.device != caller.device)) {
    return FieldError(absl::StatusCode::kNotFound, "buffer_id", buffer_id, "no such buffer");
  }
  return impl_->DescribeBuffer(it->second);
}

}  // namespace iommu::core
