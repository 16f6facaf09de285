// SPDX-License-Identifier: Apache-2.0
#include "core/iotlb/flush_queue.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/base/bits.h"
#include "core/base/errors.h"

namespace iommu::core {
namespace {

// Always on, NDEBUG or not: a callback re-entering the queue would release
// entries before their invalidation or corrupt the ring.
void CheckNotInCallback(bool in_callback) {
  if (in_callback) {
    std::fprintf(stderr, "FlushQueue re-entered from one of its callbacks\n");
    std::abort();
  }
}

}  // namespace

absl::StatusOr<FlushQueue> FlushQueue::Create(const FlushQueueConfig& config,
                                              FlushQueueCallbacks callbacks) {
  if (config.capacity == 0) return InvalidField("capacity", 0, "must be non-zero");
  if (config.timeout <= absl::ZeroDuration() || config.timeout == absl::InfiniteDuration()) {
    return FieldError(absl::StatusCode::kInvalidArgument, "timeout",
                      absl::FormatDuration(config.timeout), "must be positive and finite");
  }
  if (!callbacks.invalidate) {
    return FieldError(absl::StatusCode::kInvalidArgument, "callbacks.invalidate", "",
                      "must be set");
  }
  if (!callbacks.release) {
    return FieldError(absl::StatusCode::kInvalidArgument, "callbacks.release", "", "must be set");
  }
  if (!callbacks.now) callbacks.now = [] { return absl::Now(); };
  return FlushQueue(config.capacity, config.timeout, std::move(callbacks));
}

FlushQueue::FlushQueue(uint32_t capacity, absl::Duration timeout, FlushQueueCallbacks callbacks)
    : capacity_(capacity), timeout_(timeout), callbacks_(std::move(callbacks)), slots_(capacity) {}

bool FlushQueue::TimedOut(absl::Time now) const {
  return stats_.depth > 0 && now - slots_[head_].enqueued_at >= timeout_;
}

absl::Status FlushQueue::Enqueue(const FlushQueueEntry& entry) {
  CheckNotInCallback(in_callback_);
  if (entry.size_bytes == 0) {
    return InvalidField("size_bytes", entry.size_bytes, "must be non-zero");
  }
  if (!LastOfRange(entry.iova.value(), entry.size_bytes).has_value()) {
    return InvalidField("size_bytes", entry.size_bytes,
                        absl::StrCat("range from iova=", entry.iova.Hex(), " passes 2^64"));
  }
  const absl::Time now = callbacks_.now();
  if (stats_.depth == capacity_) {
    FlushFor(FlushReason::kFull);
  } else if (TimedOut(now)) {
    FlushFor(FlushReason::kTimeout);
  }
  const uint32_t tail = uint32_t((head_ + stats_.depth) % capacity_);
  // A clock stepping back (absl::Now is wall time) must not reorder ages.
  absl::Time stamp = now;
  if (stats_.depth > 0) {
    stamp = std::max(stamp, slots_[(tail + capacity_ - 1) % capacity_].enqueued_at);
  }
  slots_[tail] = Slot{entry, stamp};
  ++stats_.depth;
  ++stats_.enqueued;
  if (stats_.depth > stats_.max_depth) stats_.max_depth = stats_.depth;
  return absl::OkStatus();
}

bool FlushQueue::Poll() {
  CheckNotInCallback(in_callback_);
  if (!TimedOut(callbacks_.now())) return false;
  FlushFor(FlushReason::kTimeout);
  return true;
}

uint64_t FlushQueue::Flush() {
  CheckNotInCallback(in_callback_);
  return FlushFor(FlushReason::kExplicit);
}

std::optional<absl::Time> FlushQueue::NextDeadline() const {
  if (stats_.depth == 0) return std::nullopt;
  return slots_[head_].enqueued_at + timeout_;
}

uint64_t FlushQueue::FlushFor(FlushReason reason) {
  const uint64_t n = stats_.depth;
  if (n == 0) return 0;
  switch (reason) {
    case FlushReason::kFull:
      ++stats_.flushes_full;
      break;
    case FlushReason::kTimeout:
      ++stats_.flushes_timeout;
      break;
    case FlushReason::kExplicit:
      ++stats_.flushes_explicit;
      break;
  }
  in_callback_ = true;
  callbacks_.invalidate();
  // The invalidation has completed: from here on no TLB entry can translate
  // any pending range, so releasing (and reusing) them is safe.
  for (uint64_t i = 0; i < n; ++i) {
    callbacks_.release(slots_[(head_ + i) % capacity_].entry);
  }
  in_callback_ = false;
  head_ = 0;
  stats_.depth = 0;
  stats_.entries_released += n;
  return n;
}

void FlushQueue::CheckInvariants() const {
  auto broken = [](const char* what) {
    std::fprintf(stderr, "FlushQueue invariant broken: %s\n", what);
    std::abort();
  };
  if (stats_.depth > capacity_ || head_ >= capacity_) broken("depth or head past capacity");
  if (stats_.depth > stats_.max_depth) broken("depth above max_depth");
  if (stats_.enqueued != stats_.entries_released + stats_.depth) {
    broken("enqueued != entries_released + depth");
  }
  for (uint64_t i = 1; i < stats_.depth; ++i) {
    if (slots_[(head_ + i) % capacity_].enqueued_at <
        slots_[(head_ + i - 1) % capacity_].enqueued_at) {
      broken("pending entries out of enqueue-time order");
    }
  }
}

}  // namespace iommu::core
