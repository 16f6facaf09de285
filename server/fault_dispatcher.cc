// SPDX-License-Identifier: Apache-2.0
#include "server/fault_dispatcher.h"

namespace iommu::server {

FaultDispatcher::~FaultDispatcher() { Stop(); }

void FaultDispatcher::Start() { thread_ = std::thread(&FaultDispatcher::Run, this); }

void FaultDispatcher::Stop() {
  if (!thread_.joinable()) return;
  broker_->Shutdown();
  thread_.join();
}

bool FaultDispatcher::Arm(FaultWaiter* waiter, const std::string& key, uint64_t after_seq) {
  absl::MutexLock l(&mu_);
  if (dispatched_ > after_seq) return false;
  armed_[key].insert(waiter);
  return true;
}

void FaultDispatcher::Disarm(FaultWaiter* waiter, const std::string& key) {
  absl::MutexLock l(&mu_);
  auto it = armed_.find(key);
  if (it == armed_.end()) return;
  it->second.erase(waiter);
  if (it->second.empty()) armed_.erase(it);
}

size_t FaultDispatcher::armed() const {
  absl::MutexLock l(&mu_);
  size_t n = 0;
  for (const auto& [key, waiters] : armed_) n += waiters.size();
  return n;
}

void FaultDispatcher::Run() {
  const core::Caller admin = core::Caller::Admin();
  uint64_t seen = 0;
  while (true) {
    // Blocks until a record past `seen` exists; CANCELLED once the broker
    // shut down and nothing newer is left.
    if (!broker_->WaitForFaults(seen, absl::InfiniteFuture()).ok()) return;
    absl::flat_hash_set<std::string> keys;
    bool everyone = false;
    while (true) {
      absl::StatusOr<core::FaultReadResult> read = broker_->ReadFaults(admin, seen, kReadBatch);
      if (!read.ok() || read->next_after_seq == seen) break;
      // Records overwritten before they were read name no device we know.
      if (read->lost != 0) everyone = true;
      for (const core::FaultRecord& r : read->records) keys.insert(r.device);
      seen = read->next_after_seq;
      if (read->records.size() < kReadBatch) break;
    }
    keys.insert("");  // the admin's streams see every record
    std::vector<FaultWaiter*> woken;
    {
      absl::MutexLock l(&mu_);
      dispatched_ = seen;
      for (auto it = armed_.begin(); it != armed_.end();) {
        if (!everyone && !keys.contains(it->first)) {
          ++it;
          continue;
        }
        for (FaultWaiter* w : it->second) {
          w->Pin();
          woken.push_back(w);
        }
        armed_.erase(it++);
      }
    }
    for (FaultWaiter* w : woken) {
      w->Wake();
      w->Unpin();
    }
  }
}

}  // namespace iommu::server
