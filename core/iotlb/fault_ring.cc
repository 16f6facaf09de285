// SPDX-License-Identifier: Apache-2.0
#include "core/iotlb/fault_ring.h"

#include <algorithm>
#include <cassert>
#include <utility>

#include "absl/strings/str_format.h"
#include "core/base/errors.h"

namespace iommu::core {
namespace {

inline constexpr uint64_t kMaxCapacity = uint64_t{1} << 24;
inline constexpr uint64_t kMaxFirstSeq = uint64_t{1} << 63;

absl::Status Broken(absl::string_view field, uint64_t value, absl::string_view why) {
  return FieldError(absl::StatusCode::kInternal, field, value, why);
}

}  // namespace

absl::string_view FaultTypeName(FaultType type) {
  switch (type) {
    case FaultType::kTranslation:
      return "translation";
    case FaultType::kPermission:
      return "permission";
    case FaultType::kAddressSize:
      return "address_size";
    case FaultType::kAccessBlocked:
      return "blocked";
    case FaultType::kUnknownStream:
      return "unknown_stream";
  }
  return "invalid";
}

absl::StatusOr<std::unique_ptr<FaultRing>> FaultRing::Create(FaultRingOptions options) {
  if (options.capacity == 0 || options.capacity > kMaxCapacity) {
    return InvalidField("capacity", options.capacity, "must be in [1, 2^24] records");
  }
  if (options.first_seq == 0 || options.first_seq > kMaxFirstSeq) {
    return InvalidField("first_seq", options.first_seq, "must be in [1, 2^63]");
  }
  return std::unique_ptr<FaultRing>(new FaultRing(std::move(options)));
}

FaultRing::FaultRing(FaultRingOptions options)
    : clock_(options.clock ? std::move(options.clock) : [] { return absl::Now(); }),
      first_seq_(options.first_seq),
      slots_(options.capacity),
      newest_seq_(options.first_seq - 1) {}

uint64_t FaultRing::Push(FaultRecord record) {
  const size_t type = size_t(record.type);
  assert(type < kNumFaultTypes && "FaultType out of range");
  // Release builds clamp a (buggy) out-of-range type rather than write out of
  // bounds.
  const size_t type_index = std::min(type, kNumFaultTypes - 1);
  record.timestamp = clock_();
  absl::MutexLock lock(&mu_);
  record.seq = ++newest_seq_;
  if (size_ == slots_.size()) {
    ++dropped_;  // the oldest record, newest_seq_ - capacity, is overwritten
  } else {
    ++size_;
  }
  slots_[SlotLocked(record.seq)] = std::move(record);
  ++pushed_by_type_[type_index];
  newer_.SignalAll();
  return newest_seq_;
}

absl::StatusOr<FaultReadResult> FaultRing::ReadSince(uint64_t after_seq, size_t max_records) const {
  if (max_records == 0) return InvalidField("max_records", 0, "must be non-zero");
  absl::ReaderMutexLock lock(&mu_);
  FaultReadResult result;
  result.next_after_seq = after_seq;
  if (after_seq >= newest_seq_) return result;
  const uint64_t oldest = newest_seq_ - size_ + 1;
  uint64_t first = after_seq + 1;
  if (first < oldest) {
    result.lost = oldest - first;
    first = oldest;
  }
  const uint64_t last = std::min<uint64_t>(newest_seq_, first + (max_records - 1));
  result.records.reserve(last - first + 1);
  for (uint64_t seq = first; seq <= last; ++seq) result.records.push_back(slots_[SlotLocked(seq)]);
  result.next_after_seq = last;
  return result;
}

absl::Status FaultRing::WaitForNewerThan(uint64_t after_seq, absl::Time deadline) const {
  absl::MutexLock lock(&mu_);
  while (newest_seq_ <= after_seq && !shutdown_) {
    if (newer_.WaitWithDeadline(&mu_, deadline) && newest_seq_ <= after_seq && !shutdown_) {
      return FieldError(absl::StatusCode::kDeadlineExceeded, "after_seq", after_seq,
                        "no newer fault record before the deadline");
    }
  }
  if (newest_seq_ > after_seq) return absl::OkStatus();
  return FieldError(absl::StatusCode::kCancelled, "after_seq", after_seq, "fault ring shut down");
}

absl::Status FaultRing::WaitForNewerThan(uint64_t after_seq, absl::Duration timeout) const {
  return WaitForNewerThan(after_seq, absl::Now() + timeout);
}

void FaultRing::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
  newer_.SignalAll();
}

uint64_t FaultRing::newest_seq() const {
  absl::ReaderMutexLock lock(&mu_);
  return newest_seq_;
}

FaultRingStats FaultRing::Stats() const {
  absl::ReaderMutexLock lock(&mu_);
  FaultRingStats stats;
  stats.capacity = slots_.size();
  stats.size = size_;
  stats.pushed_total = newest_seq_ - (first_seq_ - 1);
  stats.dropped_total = dropped_;
  stats.first_seq = first_seq_;
  stats.pushed_by_type = pushed_by_type_;
  return stats;
}

absl::Status FaultRing::CheckInvariants() const {
  absl::ReaderMutexLock lock(&mu_);
  if (size_ > slots_.size()) return Broken("size", size_, "above capacity");
  if (newest_seq_ < first_seq_ - 1) return Broken("newest_seq", newest_seq_, "below first_seq - 1");
  const uint64_t pushed = newest_seq_ - (first_seq_ - 1);
  if (pushed != size_ + dropped_) {
    return Broken("newest_seq", newest_seq_, "pushed differs from size + dropped");
  }
  uint64_t by_type = 0;
  for (uint64_t n : pushed_by_type_) by_type += n;
  if (by_type != pushed) return Broken("pushed_by_type", by_type, "sum differs from pushed");
  for (uint64_t seq = newest_seq_ - size_ + 1; seq <= newest_seq_; ++seq) {
    if (slots_[SlotLocked(seq)].seq != seq) {
      return Broken("slot", SlotLocked(seq),
                    absl::StrFormat("holds seq %#x, not %#x", slots_[SlotLocked(seq)].seq, seq));
    }
  }
  return absl::OkStatus();
}

}  // namespace iommu::core
