// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_FLUSH_TIMER_H_
#define IOMMU_CORE_BROKER_FLUSH_TIMER_H_

// When each lazy (DMA_FQ) domain's flush queue next times out, so that the
// broker's periodic Tick visits only the domains whose queue is due, not
// every domain it has (docs/design.md#sessions). A domain arms the timer
// when an unmap queues into its empty queue, or finds one still pending
// after a poll; the Tick takes what is due and polls each.
//
// Invariant (Broker::CheckInvariants): a domain whose flush queue holds
// entries is armed, at a time no later than its oldest entry's deadline
// (a queue flushed early, by Sync or because it filled, leaves an entry due
// too soon: its poll finds nothing to do and disarms or re-arms it). At
// most one entry per domain.
//
// Cost: O(log armed) per Arm; TakeDue O(due · log armed).
// Thread-safe. Its lock is a leaf, taken with a domain's lock held.

#include <cstdint>
#include <functional>
#include <queue>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace iommu::core::internal {

class FlushTimer {
 public:
  // Domain `domain_id`'s queue is due at `deadline` (the domain arms once
  // until its entry is taken).
  void Arm(uint64_t domain_id, absl::Time deadline);
  // Removes and returns the domains due at `now`, earliest first.
  std::vector<uint64_t> TakeDue(absl::Time now);
  // The number of domains armed.
  size_t armed() const;

 private:
  using Entry = std::pair<absl::Time, uint64_t>;
  mutable absl::Mutex mu_;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> due_ ABSL_GUARDED_BY(mu_);
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_BROKER_FLUSH_TIMER_H_
