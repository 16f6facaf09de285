// SPDX-License-Identifier: Apache-2.0
#include "core/broker/flush_timer.h"

namespace iommu::core::internal {

void FlushTimer::Arm(uint64_t domain_id, absl::Time deadline) {
  absl::MutexLock l(&mu_);
  due_.emplace(deadline, domain_id);
}

std::vector<uint64_t> FlushTimer::TakeDue(absl::Time now) {
  std::vector<uint64_t> ids;
  absl::MutexLock l(&mu_);
  while (!due_.empty() && due_.top().first <= now) {
    ids.push_back(due_.top().second);
    due_.pop();
  }
  return ids;
}

size_t FlushTimer::armed() const {
  absl::MutexLock l(&mu_);
  return due_.size();
}

}  // namespace iommu::core::internal
