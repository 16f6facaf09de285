// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_IOTLB_FLUSH_QUEUE_H_
#define IOMMU_CORE_IOTLB_FLUSH_QUEUE_H_

// The flush queue of one DMA_FQ domain: unmapped ranges whose IOTLB
// invalidation is deferred and batched, as Linux's IOVA flush queue
// (drivers/iommu/dma-iommu.c, queue_iova / fq_flush_iotlb / fq_flush_timeout).
//
// Lazy unmap (InvalidationPolicy::kLazy, see core/iotlb/iotlb.h): the owner clears
// the page table, marks the range stale in the IOTLB (Iotlb::MarkStale) and
// Enqueues it with a payload saying what to release afterwards (typically the
// IOVA allocation). Flush then
//   1. calls the invalidation callback ONCE -- the domain-wide invalidation,
//      as Linux's flush_iotlb_all (e.g. Iotlb::InvalidateAsid of the domain),
//   2. only after it returned, calls the release callback for every pending
//      entry, oldest first,
// so an IOVA is never handed out again while a TLB entry for it may survive.
//
// Flush triggers: Enqueue flushes first when the queue is full (reason kFull)
// or its oldest entry has waited at least `timeout` (kTimeout); Poll, called
// from the owner's timer, flushes on timeout; Flush() is the explicit /
// Sync path (kExplicit). A Flush of an empty queue does nothing and is not
// counted: nothing was pending.
//
// Unlike Linux, which keeps one ring per CPU and releases an entry once a
// global flush counter shows an invalidation started after it was queued,
// the model has one ring per domain and its invalidation completes
// synchronously inside Flush, so every pending entry is released by the
// flush that invalidated it.
//
// Layout and cost: a ring of `capacity` entries allocated once; Enqueue O(1)
// amortised (a flush costs one invalidation plus one release per entry), Poll
// O(1), no allocation after Create.
//
// Thread safety: thread-compatible; the owning domain serialises every call
// with its own lock. The callbacks run on the caller's thread inside Enqueue,
// Poll or Flush and must not call back into this queue (checked by an
// always-on guard that aborts).

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/base/types.h"
#include "core/iotlb/iotlb.h"

namespace iommu::core {

// An unmapped range whose invalidation is pending.
struct FlushQueueEntry {
  TlbTag tag;
  Iova iova;
  uint64_t size_bytes = 0;
  // Opaque to the queue: what the owner releases once the invalidation has
  // completed (e.g. the IOVA allocation's first pfn and its number of pages).
  uint64_t payload[2] = {0, 0};
};

enum class FlushReason : uint8_t { kFull, kTimeout, kExplicit };

struct FlushQueueConfig {
  uint32_t capacity = 256;                          // entries, >= 1
  absl::Duration timeout = absl::Milliseconds(10);  // > 0 (Linux IOVA_FQ_TIMEOUT)
};

struct FlushQueueCallbacks {
  // The domain-wide invalidation; called once per flush, before any release.
  std::function<void()> invalidate;
  // Releases one entry's payload; called in enqueue order after invalidate.
  std::function<void(const FlushQueueEntry&)> release;
  // The clock timeouts are measured on; absl::Now when empty.
  std::function<absl::Time()> now;
};

// Counters, O(1) to read.
struct FlushQueueStats {
  uint64_t enqueued = 0;
  uint64_t flushes_full = 0;
  uint64_t flushes_timeout = 0;
  uint64_t flushes_explicit = 0;
  uint64_t entries_released = 0;
  uint64_t depth = 0;      // entries pending now
  uint64_t max_depth = 0;  // high-water mark of depth
};

class FlushQueue {
 public:
  // Errors: INVALID_ARGUMENT naming `capacity` (zero), `timeout` (not
  // positive, or infinite), `callbacks.invalidate` or `callbacks.release`
  // (unset).
  static absl::StatusOr<FlushQueue> Create(const FlushQueueConfig& config,
                                           FlushQueueCallbacks callbacks);

  FlushQueue(FlushQueue&&) = default;
  FlushQueue& operator=(FlushQueue&&) = default;
  FlushQueue(const FlushQueue&) = delete;
  FlushQueue& operator=(const FlushQueue&) = delete;

  // Queues `entry`, first flushing when the queue is full or its oldest entry
  // timed out. Errors (nothing queued, nothing flushed): INVALID_ARGUMENT
  // naming `size_bytes` (zero, or the range passes 2^64).
  absl::Status Enqueue(const FlushQueueEntry& entry);

  // Flushes if the oldest entry has waited at least `timeout`; returns
  // whether it flushed.
  bool Poll();

  // Completes every pending invalidation now (the Sync path); returns the
  // number of entries released.
  uint64_t Flush();

  // When the oldest pending entry times out, or nullopt when empty: when the
  // owner's timer should next call Poll.
  std::optional<absl::Time> NextDeadline() const;

  const FlushQueueStats& stats() const { return stats_; }
  uint32_t capacity() const { return capacity_; }

  // Aborts with a message naming the broken invariant unless: depth <=
  // capacity and depth <= max_depth; enqueued == entries_released + depth;
  // pending entries are in enqueue-time order (Enqueue clamps a clock that
  // steps back).
  void CheckInvariants() const;

 private:
  struct Slot {
    FlushQueueEntry entry;
    absl::Time enqueued_at;
  };

  FlushQueue(uint32_t capacity, absl::Duration timeout, FlushQueueCallbacks callbacks);

  bool TimedOut(absl::Time now) const;
  uint64_t FlushFor(FlushReason reason);

  uint32_t capacity_ = 0;
  absl::Duration timeout_;
  FlushQueueCallbacks callbacks_;
  // Ring: pending entries are slots_[(head_ + i) % capacity_], i < depth,
  // oldest first. Invariant: stats_.depth <= capacity_.
  std::vector<Slot> slots_;
  uint32_t head_ = 0;
  bool in_callback_ = false;  // re-entrancy guard
  FlushQueueStats stats_;
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_IOTLB_FLUSH_QUEUE_H_
