// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_FAULT_DISPATCHER_H_
#define IOMMU_SERVER_FAULT_DISPATCHER_H_

// Wakes the WatchFaults streams when the fault ring gains records for their
// device (docs/design.md#watch-faults), so that no stream holds a thread or
// polls. One thread waits on the ring (Broker::WaitForFaults: woken by every
// record appended and by the broker's Shutdown), reads what was appended as
// the admin (each record names its device) and wakes the streams armed for
// those devices, and every admin stream (an admin sees all records); when
// records were overwritten before it read them, every armed stream.
//
// A stream arms itself when it has sent everything up to its after_seq, and
// a wake disarms it. Arm refuses (false) when records past after_seq were
// already dispatched: the stream reads again, so a record appended between
// its last read and its arming is never missed.
//
// Cost: one thread for every stream; an idle stream costs an entry in a
// set; a fault wakes only the streams of its device and the admin's.
//
// Lifetime: a stream is pinned (DrainableStream::Pin) from the moment a
// dispatch takes it until its Wake returns, and disarms itself before its
// last reference goes (FaultWatcher::OnDone), so a wake never reaches a
// deleted stream.
//
// Thread-safe. Lock order: a stream's own lock, then mu_ (a stream arms and
// disarms under its lock); Wake is called with no lock held.

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "core/broker/broker.h"
#include "server/rpc_call.h"

namespace iommu::server {

// A stream the dispatcher wakes.
class FaultWaiter : public DrainableStream {
 public:
  // Reads and sends what is new, or arms again. Called pinned, on the
  // dispatcher's thread, with no lock held.
  virtual void Wake() = 0;
};

class FaultDispatcher {
 public:
  explicit FaultDispatcher(core::Broker* broker) : broker_(broker) {}
  // Stops the thread (see Stop).
  ~FaultDispatcher();
  FaultDispatcher(const FaultDispatcher&) = delete;
  FaultDispatcher& operator=(const FaultDispatcher&) = delete;

  // Starts the thread. Once.
  void Start();
  // Shuts the broker's fault ring down (which wakes the thread) and joins
  // the thread; later arms are still accepted and never woken. Idempotent.
  void Stop();

  // Arms `waiter` under `key` (a device, or "" for an admin stream, which
  // every record wakes) to be woken by the next record past after_seq;
  // false, not armed, when records past after_seq were dispatched already.
  bool Arm(FaultWaiter* waiter, const std::string& key, uint64_t after_seq)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Forgets `waiter` if it is armed.
  void Disarm(FaultWaiter* waiter, const std::string& key) ABSL_LOCKS_EXCLUDED(mu_);
  // Streams armed now.
  size_t armed() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  static constexpr size_t kReadBatch = 1024;
  void Run();

  core::Broker* const broker_;
  std::thread thread_;
  mutable absl::Mutex mu_;
  // The last seq whose records have been dispatched.
  uint64_t dispatched_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, absl::flat_hash_set<FaultWaiter*>> armed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_FAULT_DISPATCHER_H_
