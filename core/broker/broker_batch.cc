// Broker::MapUnmapBatch: a run of one device's Map/Unmap operations under one
// device lookup, one domain reference and one hold of the domain's lock.

#include <cassert>

#include "core/broker/broker.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {

using internal::Domain;

void Broker::MapUnmapBatch(const Caller& caller, const std::string& device,
                           absl::Span<const DmaBatchOp> ops, absl::Span<DmaBatchResult> results) {
  assert(results.size() == ops.size());
  // Map and Unmap look the device up first; its result is the same for every op.
  absl::StatusOr<BrokerImpl::DeviceState*> dev = impl_->ActAs(caller, device);
  absl::StatusOr<BrokerImpl::SessionPin> pin =
      dev.ok() ? impl_->PinSession(caller) : absl::StatusOr<BrokerImpl::SessionPin>(dev.status());
  if (!pin.ok()) {
    for (DmaBatchResult& r : results) r = {.status = pin.status()};
    return;
  }
  std::shared_ptr<Domain> d = impl_->CurrentDomain(**dev);
  absl::MutexLock l(&d->mu);
  // One hold of the buffer table for the run (ownership checks, references).
  absl::MutexLock bl(&impl_->buffers_mu_);
  BrokerImpl::BufferRun run;
  // Strict unmaps queue their invalidation here; it completes (and their
  // IOVAs are freed) before the next Map allocates and before the lock goes,
  // so every Map sees the allocator one-at-a-time calls would have left.
  BrokerImpl::DeferredInvalidation deferred;
  for (size_t i = 0; i < ops.size(); ++i) {
    const DmaBatchOp& op = ops[i];
    DmaBatchResult& out = results[i];
    switch (op.kind) {
      case DmaBatchOp::Kind::kMap: {
        if (!deferred.empty()) impl_->CompleteInvalidationLocked(*d, &deferred);
        absl::StatusOr<MapResult> mapped =
            impl_->MapLocked(*d, **dev, caller, device, op.mem, op.direction, op.attrs, &run);
        if (mapped.ok()) {
          out = {.map = *mapped};
        } else {
          out = {.status = mapped.status()};
        }
        break;
      }
      case DmaBatchOp::Kind::kUnmap:
        out = {.status =
                   impl_->UnmapLocked(*d, **dev, caller, device, op.dma_addr, &deferred, &run)};
        break;
    }
  }
  if (!deferred.empty()) impl_->CompleteInvalidationLocked(*d, &deferred);
}

}  // namespace iommu::core
