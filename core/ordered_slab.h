#ifndef IOMMU_CORE_ORDERED_SLAB_H_
#define IOMMU_CORE_ORDERED_SLAB_H_

// OrderedSlab<T>: values keyed by a uint64_t, iterated in key order, stored
// in a slab of reusable slots.
//
// Why. A domain's mapping records were a std::map: every Map allocated a
// tree node holding the whole record and every Unmap freed it, rebalancing
// a red-black tree of pointer-chased nodes on both. Here the records live in
// a std::deque of slots that freed records return to (a free list, so a
// steady map/unmap stream allocates nothing), and the order is kept by an
// absl::btree_map from key to slot index: 12-byte entries packed into
// cache-line nodes, a few binary searches per lookup, no allocation per
// entry.
//
// Semantics are those of the std::map it replaces for the operations used:
// Find (exact key), UpperBound (first key above), ordered iteration, Insert
// of an absent key, Take (remove and return). References to values stay
// valid until their key is taken (deque slots never move). Not thread-safe;
// the owner's lock guards it.

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <iterator>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace iommu::core::internal {

template <typename T>
class OrderedSlab {
  using Index = absl::btree_map<uint64_t, uint32_t>;

  template <typename V, typename It>
  class Iter {
   public:
    using iterator_category = std::bidirectional_iterator_tag;
    using value_type = std::pair<uint64_t, V&>;
    using difference_type = std::ptrdiff_t;
    using reference = value_type;
    using pointer = void;

    Iter() = default;

    value_type operator*() const { return {it_->first, Value()}; }
    uint64_t key() const { return it_->first; }
    V& Value() const { return (*slots_)[it_->second]; }
    Iter& operator++() {
      ++it_;
      return *this;
    }
    Iter& operator--() {
      --it_;
      return *this;
    }
    bool operator==(const Iter& o) const { return it_ == o.it_; }
    bool operator!=(const Iter& o) const { return it_ != o.it_; }

   private:
    friend class OrderedSlab;
    using Slots = std::conditional_t<std::is_const_v<V>, const std::deque<T>, std::deque<T>>;
    Iter(It it, Slots* slots) : it_(it), slots_(slots) {}
    It it_{};
    Slots* slots_ = nullptr;
  };

 public:
  using iterator = Iter<T, Index::iterator>;
  using const_iterator = Iter<const T, Index::const_iterator>;

  OrderedSlab() = default;
  OrderedSlab(const OrderedSlab&) = delete;
  OrderedSlab& operator=(const OrderedSlab&) = delete;

  size_t size() const { return index_.size(); }
  bool empty() const { return index_.empty(); }

  iterator begin() { return iterator(index_.begin(), &slots_); }
  iterator end() { return iterator(index_.end(), &slots_); }
  const_iterator begin() const { return const_iterator(index_.begin(), &slots_); }
  const_iterator end() const { return const_iterator(index_.end(), &slots_); }
  // The first entry whose key is above `key`.
  iterator UpperBound(uint64_t key) { return iterator(index_.upper_bound(key), &slots_); }

  // The value at exactly `key`, or nullptr.
  T* Find(uint64_t key) {
    auto it = index_.find(key);
    return it == index_.end() ? nullptr : &slots_[it->second];
  }

  // Stores `value` at `key`, which must be absent. Returns the stored value.
  T& Insert(uint64_t key, T value) {
    uint32_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
      slots_[slot] = std::move(value);
    } else {
      assert(slots_.size() < UINT32_MAX);
      slot = static_cast<uint32_t>(slots_.size());
      slots_.push_back(std::move(value));
    }
    const bool inserted = index_.emplace(key, slot).second;
    assert(inserted);
    (void)inserted;
    return slots_[slot];
  }

  // Removes the value at `key`, which must be present, and returns it. Its
  // slot keeps a moved-from T until reused.
  T Take(uint64_t key) {
    auto it = index_.find(key);
    assert(it != index_.end());
    const uint32_t slot = it->second;
    index_.erase(it);
    T value = std::move(slots_[slot]);
    free_.push_back(slot);
    return value;
  }

  // Every slot is either indexed by exactly one key or free, never both.
  absl::Status CheckInvariants() const {
    if (index_.size() + free_.size() != slots_.size()) {
      return absl::InternalError(absl::StrFormat("slab: %d keys + %d free != %d slots",
                                                 index_.size(), free_.size(), slots_.size()));
    }
    std::vector<bool> seen(slots_.size(), false);
    auto claim = [&](uint32_t slot, const char* by) -> absl::Status {
      if (slot >= slots_.size() || seen[slot]) {
        return absl::InternalError(absl::StrFormat("slab: slot %d claimed twice or out of range "
                                                   "(by %s)",
                                                   slot, by));
      }
      seen[slot] = true;
      return absl::OkStatus();
    };
    for (const auto& [key, slot] : index_) {
      if (absl::Status s = claim(slot, "a key"); !s.ok()) return s;
    }
    for (uint32_t slot : free_) {
      if (absl::Status s = claim(slot, "the free list"); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  Index index_;                 // key -> slot
  std::deque<T> slots_;         // values; a slot's address never changes
  std::vector<uint32_t> free_;  // slots holding no value, reused LIFO
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_ORDERED_SLAB_H_
