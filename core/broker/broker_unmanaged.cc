// SPDX-License-Identifier: Apache-2.0
// UNMANAGED domains: iommu_map at the caller's IOVA and range unmaps with
// virtio-iommu semantics (never split a mapping).

#include <algorithm>

#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "core/broker/broker.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {

using internal::Domain;
using internal::MappingKind;
using internal::MappingRecord;

// --- MapAt / UnmapRange (UNMANAGED) --------------------------------------------------

absl::StatusOr<MapResult> Broker::MapAt(const Caller& caller, const std::string& device,
                                        const MapAtRequest& request) {
  const Iova iova = request.iova;
  const MemRef& mem = request.mem;
  BrokerImpl::DurableReply durable(*impl_);
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  ASSIGN_OR_RETURN(BrokerImpl::SessionPin pin, impl_->PinSession(caller));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  if (d->type() != DomainType::kUnmanaged) {
    return FieldError(absl::StatusCode::kFailedPrecondition, "domain_id", d->id(),
                      absl::StrFormat("MapAt needs an UNMANAGED domain; the device's current "
                                      "domain is %s",
                                      DomainTypeName(d->type())));
  }
  const uint64_t g = d->granule_bytes();
  if (!IsAligned(iova.value(), g)) {
    return InvalidField("iova", iova.value(),
                        absl::StrFormat("must be aligned to the %#x-byte granule", g));
  }
  if (!IsAligned(mem.length_bytes, g) || mem.length_bytes == 0) {
    return InvalidField("mem.length_bytes", mem.length_bytes,
                        absl::StrFormat("must be a non-zero multiple of the %#x-byte granule", g));
  }
  const auto last = LastOfRange(iova.value(), mem.length_bytes);
  if (!last) return InvalidField("mem.length_bytes", mem.length_bytes, "iova + length passes 2^64");
  const Iova limit = impl_->DeviceLimit(*d, *dev);
  if (iova < d->aperture_start() || *last > limit.value()) {
    return OutOfRangeField("iova", iova.value(),
                           absl::StrFormat("range must lie in [%#x, %#x] (aperture and DMA mask)",
                                           d->aperture_start().value(), limit.value()));
  }
  BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
  internal::ResolvedMem res;
  RETURN_IF_ERROR(refs.Resolve(caller, *dev, mem, "mem", &res));
  auto fail = [&](absl::Status s) {
    refs.Drop(res.buffers);
    return s;
  };
  for (const PhysRun& r : res.runs) {
    if (!IsAligned(r.start.value(), g) || !IsAligned(r.size_bytes, g)) {
      return fail(InvalidField("mem.offset_bytes", mem.offset_bytes,
                               absl::StrFormat("physical run at %#x is not aligned to the "
                                               "%#x-byte granule",
                                               r.start.value(), g)));
    }
  }
  if (absl::Status s = dev->ChargeMapping(mem.length_bytes); !s.ok()) return fail(s);
  Domain::Transaction txn(*d, refs);
  if (const auto window = txn.MsiWindow(); window.has_value()) {
    const Iova window_last = window->base + (window->size_bytes - 1);
    if (iova <= window_last && window->base.value() <= *last) {
      dev->RefundMapping(mem.length_bytes);
      return fail(FieldError(absl::StatusCode::kAlreadyExists, "iova", iova.value(),
                             absl::StrFormat("overlaps the domain's MSI window [%#x, %#x]",
                                             window->base.value(), window_last.value())));
    }
  }
  if (absl::Status s = txn.ReserveRecord(); !s.ok()) {
    dev->RefundMapping(mem.length_bytes);
    return fail(s);
  }
  std::vector<std::pair<Iova, PhysRun>> ranges;
  Iova at = iova;
  for (const PhysRun& r : res.runs) {
    ranges.push_back({at, r});
    at += r.size_bytes;
  }
  const Prot prot = impl_->ProtFor(*dev, request.direction, request.attrs);
  if (absl::Status s = txn.MapRanges(ranges, prot); !s.ok()) {
    dev->RefundMapping(mem.length_bytes);
    return fail(s);
  }
  MappingRecord& rec = txn.Insert(iova, mem.length_bytes, mem.length_bytes, caller.session_id);
  rec.kind = MappingKind::kMapAt;
  rec.device = device;
  rec.owner = dev;
  rec.prot = prot;
  rec.buffer_refs = res.buffers;
  for (const auto& [pt_iova, r] : ranges) {
    rec.pt_ranges.push_back({pt_iova, r});
    rec.pieces.push_back({pt_iova, r.start, r.size_bytes});
  }
  return durable.Reply(MapResult{.dma_addr = iova,
                                 .mapping_id = rec.mapping_id,
                                 .domain_id = d->id(),
                                 .iova_size_bytes = mem.length_bytes});
}

absl::StatusOr<uint64_t> Broker::UnmapRange(const Caller& caller, const std::string& device,
                                            Iova iova, uint64_t size_bytes) {
  BrokerImpl::DurableReply durable(*impl_);
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  std::shared_ptr<Domain> d = impl_->CurrentDomain(*dev);
  if (d->type() != DomainType::kUnmanaged) {
    return FieldError(absl::StatusCode::kFailedPrecondition, "domain_id", d->id(),
                      absl::StrFormat("UnmapRange needs an UNMANAGED domain; the device's "
                                      "current domain is %s",
                                      DomainTypeName(d->type())));
  }
  const uint64_t first = iova.value();
  const auto last = LastOfRange(first, size_bytes);
  if (!last) return InvalidField("size_bytes", size_bytes, "zero, or iova + size passes 2^64");
  BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
  Domain::Transaction txn(*d, refs);
  // virtio-iommu RANGE semantics: every mapping inside goes; one that would
  // be split fails the whole call and changes nothing.
  std::vector<uint64_t> doomed;
  uint64_t bytes = 0;
  absl::Status refused;
  txn.mappings().ForEachOverlapping(first, *last, [&](const MappingRecord& m) {
    const uint64_t m_last = m.iova.value() + m.iova_size_bytes - 1;
    if (m.iova.value() < first || m_last > *last) {
      refused = FieldError(
          absl::StatusCode::kFailedPrecondition, "size_bytes", size_bytes,
          absl::StrFormat("the range would split the mapping [%#x, %#x]", m.iova.value(), m_last));
      return false;
    }
    if (m.device != device && !caller.admin) {
      refused = FieldError(absl::StatusCode::kPermissionDenied, "iova", m.iova.value(),
                           "the range covers a mapping this device does not own");
      return false;
    }
    doomed.push_back(m.iova.value());
    bytes += m.iova_size_bytes;
    return true;
  });
  if (!refused.ok()) return refused;
  for (uint64_t start : doomed) txn.Remove(start);
  return durable.Reply(bytes);
}

}  // namespace iommu::core
