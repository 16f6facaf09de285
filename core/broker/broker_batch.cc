// SPDX-License-Identifier: Apache-2.0
// Broker::MapUnmapBatch: a run of one device's Map/Unmap operations in one
// transaction on its current domain.

#include <cassert>
#include <variant>

#include "core/broker/broker.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {

using internal::Domain;

void Broker::MapUnmapBatch(const Caller& caller, const std::string& device,
                           absl::Span<const DmaBatchOp> ops, absl::Span<DmaBatchResult> results) {
  BrokerImpl::DurableReply durable(*impl_);
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
  // One transaction for the run. Strict unmaps gather their invalidation in
  // it; it completes (and their IOVAs are freed) before the next Map
  // allocates and at the commit, so every Map sees the allocator
  // one-at-a-time calls would have left. No buffer-table lock is held across
  // the run: references are taken per op.
  BrokerImpl::Buffers::Refs refs(*impl_->buffers_);
  Domain::Transaction txn(*d, refs);
  for (size_t i = 0; i < ops.size(); ++i) {
    DmaBatchResult& out = results[i];
    if (const MapRequest* map = std::get_if<MapRequest>(&ops[i])) {
      absl::StatusOr<MapResult> mapped =
          impl_->MapOne(txn, refs, **dev, caller, map->mem, map->direction, map->attrs);
      if (mapped.ok()) {
        out = {.map = *mapped};
      } else {
        out = {.status = mapped.status()};
      }
    } else {
      const UnmapRequest& unmap = *std::get_if<UnmapRequest>(&ops[i]);
      out = {.status = impl_->UnmapOne(txn, **dev, caller, unmap.dma_addr.value())};
    }
  }
  // The run's results are its request's reply (the transaction commits
  // after this, with it).
  durable.Reply(absl::Span<const DmaBatchResult>(results));
}

}  // namespace iommu::core
