#ifndef IOMMU_CORE_IOVA_INDEX_H_
#define IOMMU_CORE_IOVA_INDEX_H_

// IovaIndex: the allocator's map from an allocation's first pfn to a 64-bit
// entry (its page count plus flag bits the owner defines), built for the
// range-cache fast path, where a free and an allocation each cost one lookup.
//
// Layout. One array of 16-byte slots {pfn, entry}, a power-of-two capacity,
// open addressing with linear probing. pfn 0 marks an empty slot (pfn 0 is
// never allocated). A key's home slot is the top bits of pfn * 2^64/phi
// (Fibonacci hashing: size-aligned pfns, which share their low bits, still
// spread). Erase shifts the following cluster back (no tombstones), so a
// lookup never walks past the first empty slot and the table never needs a
// cleanup pass.
//
// Cost: Find / Insert / Erase O(1) expected (the load factor stays <= 3/4;
// at that load a successful lookup probes ~2.5 slots on average); Insert
// doubles the table (one O(n) rehash) when it would exceed 3/4. The table
// never shrinks, so a steady state never rehashes.
//
// Invariants (CheckInvariants): every key sits at or after its home slot with
// no empty slot between them (cyclically); size() counts the non-empty slots;
// the load factor is <= 3/4.
//
// Thread-compatible: the owning IovaAllocator serialises all calls.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace iommu::core::internal {

class IovaIndex {
 public:
  IovaIndex();

  IovaIndex(IovaIndex&&) = default;
  IovaIndex& operator=(IovaIndex&&) = default;

  // The entry stored for pfn, or nullptr. The pointer is valid until the
  // next Insert or Erase. REQUIRES: pfn != 0.
  uint64_t* Find(uint64_t pfn) {
    for (size_t i = Home(pfn);; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.pfn == pfn) [[likely]] return &s.entry;
      if (s.pfn == 0) return nullptr;
    }
  }
  const uint64_t* Find(uint64_t pfn) const { return const_cast<IovaIndex*>(this)->Find(pfn); }

  // Adds pfn -> entry. REQUIRES: pfn != 0 and not present.
  void Insert(uint64_t pfn, uint64_t entry);

  // Removes pfn, which must be present; `entry` is what Find(pfn) returned.
  void Erase(uint64_t* entry);
  // Removes pfn if present; returns whether it was.
  bool Erase(uint64_t pfn) {
    uint64_t* e = Find(pfn);
    if (e == nullptr) return false;
    Erase(e);
    return true;
  }

  size_t size() const { return size_; }
  size_t capacity() const { return slots_.size(); }

  // fn(pfn, entry) for every key, in no particular order.
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (const Slot& s : slots_) {
      if (s.pfn != 0) fn(s.pfn, s.entry);
    }
  }

  // INTERNAL naming the first broken invariant (see above).
  absl::Status CheckInvariants() const;

 private:
  struct Slot {
    uint64_t pfn;  // 0: empty
    uint64_t entry;
  };
  static constexpr uint64_t kFibonacci = 0x9E3779B97F4A7C15ull;
  static constexpr size_t kMinCapacity = 16;

  size_t Home(uint64_t pfn) const { return static_cast<size_t>((pfn * kFibonacci) >> shift_); }
  void Rehash(size_t capacity);

  std::vector<Slot> slots_;
  size_t mask_ = 0;  // capacity - 1
  int shift_ = 64;   // 64 - log2(capacity)
  size_t size_ = 0;
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_IOVA_INDEX_H_
