// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_STREAM_LIMITER_H_
#define IOMMU_SERVER_STREAM_LIMITER_H_

// The Batch and WatchFaults streams open at once per device
// (--max_streams_per_device, docs/design.md#limits), and of them the
// WatchFaults streams (--max_watchers_per_device): one limiter each. A
// stream holds memory for as long as it lives (a Batch stream its message
// buffers, a watcher its reactor and the event it writes), and the number of
// connections is not the daemon's to bound, so the count that bounds the
// daemon's memory is per device: whatever the connections, a device (and the
// admin) has at most this many streams.
//
// A stream is counted against the device it acts as: a device credential's
// device; for the admin and --auth=none the device its request names (a
// Batch stream: its first message's `device`, else that message's first
// operation's), the admin's own slots when it names none. A name that is
// not a device of the topology is NOT_FOUND, so made-up names buy no slots.
//
// Thread-safe.

#include <cstdint>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace iommu::server {

class StreamLimiter {
 public:
  // `flag` names the limit in refusals, `what` the streams it counts.
  StreamLimiter(uint32_t max_per_device, absl::flat_hash_set<std::string> devices,
                std::string flag = "max_streams_per_device",
                std::string what = "Batch and WatchFaults streams")
      : max_per_device_(max_per_device),
        devices_(std::move(devices)),
        flag_(std::move(flag)),
        what_(std::move(what)) {}

  // Takes one of `device`'s slots ("": the admin's). NOT_FOUND naming the
  // device when the topology has no such device; RESOURCE_EXHAUSTED naming
  // it, the flag and its value when its slots are all taken.
  absl::Status Acquire(const std::string& device) ABSL_LOCKS_EXCLUDED(mu_);
  // Returns a slot Acquire took.
  void Release(const std::string& device) ABSL_LOCKS_EXCLUDED(mu_);
  // Streams `device` holds now.
  uint32_t open(const std::string& device) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const uint32_t max_per_device_;
  const absl::flat_hash_set<std::string> devices_;
  const std::string flag_;
  const std::string what_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, uint32_t> open_ ABSL_GUARDED_BY(mu_);
};

// One slot of a StreamLimiter, returned when the holder is destroyed.
// Movable; thread-compatible.
class StreamSlot {
 public:
  StreamSlot() = default;
  StreamSlot(StreamLimiter* limiter, std::string device)
      : limiter_(limiter), device_(std::move(device)) {}
  StreamSlot(StreamSlot&& other) noexcept
      : limiter_(std::exchange(other.limiter_, nullptr)), device_(std::move(other.device_)) {}
  StreamSlot& operator=(StreamSlot&& other) noexcept {
    if (this != &other) {
      Reset();
      limiter_ = std::exchange(other.limiter_, nullptr);
      device_ = std::move(other.device_);
    }
    return *this;
  }
  ~StreamSlot() { Reset(); }

  bool held() const { return limiter_ != nullptr; }
  // The device whose slot this is ("": the admin's); kept after Reset.
  const std::string& device() const { return device_; }
  void Reset() {
    if (limiter_ != nullptr) limiter_->Release(device_);
    limiter_ = nullptr;
  }

 private:
  StreamLimiter* limiter_ = nullptr;
  std::string device_;
};

// Acquires a slot of `device` from `limiter` into `slot`.
inline absl::Status AcquireSlot(StreamLimiter* limiter, const std::string& device,
                                StreamSlot* slot) {
  if (absl::Status s = limiter->Acquire(device); !s.ok()) return s;
  *slot = StreamSlot(limiter, device);
  return absl::OkStatus();
}

}  // namespace iommu::server

#endif  // IOMMU_SERVER_STREAM_LIMITER_H_
