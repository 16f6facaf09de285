#ifndef IOMMU_CORE_IOVA_PFN_INDEX_H_
#define IOMMU_CORE_IOVA_PFN_INDEX_H_

// IovaPfnIndex: first pfn -> 64-bit entry, the allocator's index of its
// allocations, built for the range-cache hit path (one lookup per alloc and
// per free).
//
// Layout. Open addressing with linear probing over a power-of-two array of
// 16-byte slots {pfn, entry}; pfn 0 marks an empty slot (pfn 0 is never
// allocated). Home slot = (pfn * 2^64/phi) >> (64 - log2 capacity), a
// multiplicative hash: consecutive size-aligned pfns spread over the table.
// Load factor <= 1/2, so a hit is almost always the first or second slot.
// Erase shifts later members of the probe run back (no tombstones), so probe
// runs never grow with churn.
//
// Cost: Find / Insert / Erase O(1) expected. Insert grows (rehash, doubling)
// when the load would pass 1/2: amortised O(1), and never in a steady state.
//
// Invariants (CheckInvariants): every member is reachable from its home slot
// without crossing an empty slot; the member count equals size().
//
// Thread-compatible: the owning IovaAllocator serialises all calls.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace iommu::core::internal {

class IovaPfnIndex {
 public:
  IovaPfnIndex() { slots_.resize(kMinCapacity); }

  IovaPfnIndex(IovaPfnIndex&&) = default;
  IovaPfnIndex& operator=(IovaPfnIndex&&) = default;

  size_t size() const { return size_; }

  // The entry of pfn, or nullptr. The pointer is valid until the next Insert
  // or Erase. REQUIRES: pfn != 0.
  uint64_t* Find(uint64_t pfn) {
    for (size_t i = Home(pfn);; i = (i + 1) & mask()) {
      Slot& s = slots_[i];
      if (s.pfn == pfn) [[likely]] return &s.entry;
      if (s.pfn == 0) return nullptr;
    }
  }
  const uint64_t* Find(uint64_t pfn) const { return const_cast<IovaPfnIndex*>(this)->Find(pfn); }

  // Hints that pfn is about to be looked up (pulls its home slot into cache).
  void Prefetch(uint64_t pfn) const { __builtin_prefetch(&slots_[Home(pfn)]); }

  // REQUIRES: pfn != 0 and not present.
  void Insert(uint64_t pfn, uint64_t entry);

  // Removes pfn. REQUIRES: present.
  void Erase(uint64_t pfn);

  // Visits every (pfn, entry), in no particular order.
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (const Slot& s : slots_) {
      if (s.pfn != 0) fn(s.pfn, s.entry);
    }
  }

  // INTERNAL naming the first broken invariant.
  absl::Status CheckInvariants() const;

 private:
  struct Slot {
    uint64_t pfn = 0;  // 0: empty
    uint64_t entry = 0;
  };
  static constexpr size_t kMinCapacity = 16;
  static constexpr uint64_t kHashMul = 0x9E3779B97F4A7C15;  // 2^64 / golden ratio

  size_t mask() const { return slots_.size() - 1; }
  size_t Home(uint64_t pfn) const {
    return static_cast<size_t>((pfn * kHashMul) >> shift_);
  }
  void Grow();

  std::vector<Slot> slots_;
  size_t size_ = 0;
  int shift_ = 64 - 4;  // 64 - log2(slots_.size())
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_IOVA_PFN_INDEX_H_
