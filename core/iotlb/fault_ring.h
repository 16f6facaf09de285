// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_IOTLB_FAULT_RING_H_
#define IOMMU_CORE_IOTLB_FAULT_RING_H_

// The fault ring: a model of the SMMU event queue, lossless-or-counted.
//
// Layout. A circular buffer of `capacity` FaultRecords. Push assigns the next
// sequence number (first_seq, first_seq + 1, ...; first_seq is 1 unless the
// ring continues the numbering of an earlier one, see Restarts) and the
// timestamp; when the ring is full the
// oldest record is overwritten and counted as dropped. The records present are
// always the contiguous sequence numbers
// [oldest_seq, newest_seq] = [newest_seq - size + 1, newest_seq].
//
// Readers hold no state here: each remembers the last seq it consumed and
// calls ReadSince(after_seq, ...), which returns what is still present and
// `lost`, the number of records between after_seq and the oldest present that
// were overwritten before this reader saw them. So no record disappears
// without being counted, for every reader independently (QEMU's and
// virtio-iommu's event queues drop silently): records returned plus lost
// always add up to the seqs issued after after_seq.
//
// Restarts. The records are not durable, their numbering is: a ring created
// with first_seq = (the last seq issued before the restart) + 1 continues
// it, so a reader's after_seq from before the restart stays meaningful and
// no seq is ever issued twice. Until its first Push such a ring's
// newest_seq() is first_seq - 1. The records first_seq - 1 and below are
// gone, and ReadSince counts those above a reader's after_seq as lost like
// overwritten ones: a reader that had consumed up to after_seq sees
// lost = first_seq - 1 - after_seq (plus any overwritten since), and a
// reader that asks for after_seq = 0 ("from the start") sees every seq
// below the oldest present one as lost, first_seq - 1 of them from before
// the restart. A reader that wants only this run's records asks for
// after_seq = first_seq() - 1. WaitForNewerThan(after_seq < first_seq - 1)
// returns OK at once: newer records were issued (if not by this ring).
//
// Cost. Push is O(1) and never blocks on readers (a fault never waits for a
// watcher); ReadSince is O(records returned).
//
// Thread-safe. One mutex, mu_, guards everything; WaitForNewerThan waits on
// the condition variable newer_ (signalled by Push and Shutdown) under mu_.

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/base/prot.h"
#include "core/base/types.h"

namespace iommu::core {

enum class FaultType : uint8_t {
  kTranslation,    // no valid descriptor for the IOVA (F_TRANSLATION)
  kPermission,     // the leaf forbids the access (F_PERMISSION)
  kAddressSize,    // IOVA beyond ias, or output beyond oas (F_ADDR_SIZE)
  kAccessBlocked,  // the device's domain is BLOCKED
  kUnknownStream,  // no device has this stream id (C_BAD_STREAMID)
};
inline constexpr size_t kNumFaultTypes = 5;
// "translation", "permission", "address_size", "blocked", "unknown_stream":
// the `type` label of iommu_faults_total.
absl::string_view FaultTypeName(FaultType type);

struct FaultRecord {
  uint64_t seq = 0;  // assigned by Push: first_seq, first_seq + 1, ... strictly increasing
  FaultType type = FaultType::kTranslation;
  std::string smmu;
  uint32_t stream_id = 0;
  std::string device;      // empty for kUnknownStream
  uint64_t domain_id = 0;  // 0 when no domain is involved
  Iova iova;
  Access access;
  absl::Time timestamp;  // assigned by Push
};

struct FaultReadResult {
  std::vector<FaultRecord> records;  // ascending seq, all > after_seq
  // Records with seq > after_seq that this read can no longer return:
  // overwritten, or issued before a restart (seq < first_seq).
  uint64_t lost = 0;
  // The seq to pass as after_seq next time (the last returned or skipped).
  uint64_t next_after_seq = 0;
};

struct FaultRingStats {
  uint64_t capacity = 0;
  uint64_t size = 0;           // records present
  uint64_t pushed_total = 0;   // pushed to this ring: newest seq - (first_seq - 1)
  uint64_t dropped_total = 0;  // overwritten records
  uint64_t first_seq = 1;      // the seq of this ring's first record
  std::array<uint64_t, kNumFaultTypes> pushed_by_type{};  // indexed by FaultType
};

struct FaultRingOptions {
  uint64_t capacity = 4096;  // records, >= 1
  // Clock for timestamps; absl::Now when empty (tests inject a fake).
  std::function<absl::Time()> clock;
  // The seq of the first record: 1, or the last seq issued before a restart
  // plus one (see Restarts). In [1, 2^63].
  uint64_t first_seq = 1;
};

class FaultRing {
 public:
  // INVALID_ARGUMENT: capacity zero or above 2^24 records; first_seq zero or
  // above 2^63.
  static absl::StatusOr<std::unique_ptr<FaultRing>> Create(FaultRingOptions options = {});

  FaultRing(const FaultRing&) = delete;
  FaultRing& operator=(const FaultRing&) = delete;

  // Appends `record` with the next seq and the current time (the record's own
  // seq and timestamp are ignored); overwrites and counts the oldest when full.
  // Wakes waiters. Accepted after Shutdown too (faults are never refused).
  // Returns the assigned seq.
  uint64_t Push(FaultRecord record) ABSL_LOCKS_EXCLUDED(mu_);

  // Up to max_records records with seq > after_seq, oldest first, and how many
  // such records were lost (overwritten, or from before a restart: see
  // Restarts). after_seq = 0 reads from the start; an after_seq at or above
  // newest_seq() returns nothing and leaves next_after_seq at after_seq.
  // INVALID_ARGUMENT: max_records zero.
  absl::StatusOr<FaultReadResult> ReadSince(uint64_t after_seq, size_t max_records) const
      ABSL_LOCKS_EXCLUDED(mu_);

  // Blocks until a record with seq > after_seq has been pushed (OK), the
  // deadline passes (DEADLINE_EXCEEDED) or the ring is shut down (CANCELLED),
  // checked in that order.
  absl::Status WaitForNewerThan(uint64_t after_seq, absl::Time deadline) const
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status WaitForNewerThan(uint64_t after_seq, absl::Duration timeout) const
      ABSL_LOCKS_EXCLUDED(mu_);

  // Wakes every waiter; later waits return CANCELLED at once unless a newer
  // record already exists. Idempotent.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  // The last seq issued: first_seq - 1 before the first Push.
  uint64_t newest_seq() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t first_seq() const { return first_seq_; }
  FaultRingStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);

  // OK, or INTERNAL naming the first broken invariant (a bug): size <=
  // capacity; the present records carry seq newest - size + 1 .. newest in
  // ring order; pushed (newest - first_seq + 1) == size + dropped == sum of
  // pushed_by_type.
  absl::Status CheckInvariants() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  explicit FaultRing(FaultRingOptions options);

  // The slot of the record with sequence number seq. REQUIRES: present.
  size_t SlotLocked(uint64_t seq) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return size_t((seq - 1) % slots_.size());
  }

  const std::function<absl::Time()> clock_;
  const uint64_t first_seq_;

  mutable absl::Mutex mu_;
  std::vector<FaultRecord> slots_ ABSL_GUARDED_BY(mu_);  // capacity entries
  uint64_t newest_seq_ ABSL_GUARDED_BY(mu_);             // first_seq_ - 1: nothing pushed yet
  uint64_t size_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  std::array<uint64_t, kNumFaultTypes> pushed_by_type_ ABSL_GUARDED_BY(mu_){};
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  // Signalled (all waiters) on every Push and on Shutdown.
  mutable absl::CondVar newer_;
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_IOTLB_FAULT_RING_H_
