#include "core/iova_index.h"

#include <bit>
#include <cassert>
#include <cstdint>
#include <utility>

#include "absl/strings/str_format.h"

namespace iommu::core::internal {

IovaIndex::IovaIndex() { Rehash(kMinCapacity); }

void IovaIndex::Rehash(size_t capacity) {
  assert(std::has_single_bit(capacity) && capacity >= kMinCapacity);
  std::vector<Slot> old = std::exchange(slots_, std::vector<Slot>(capacity, Slot{0, 0}));
  mask_ = capacity - 1;
  shift_ = 64 - std::countr_zero(capacity);
  for (const Slot& s : old) {
    if (s.pfn == 0) continue;
    size_t i = Home(s.pfn);
    while (slots_[i].pfn != 0) i = (i + 1) & mask_;
    slots_[i] = s;
  }
}

void IovaIndex::Insert(uint64_t pfn, uint64_t entry) {
  assert(pfn != 0 && Find(pfn) == nullptr);
  // Load factor <= 3/4 after the insert.
  if ((size_ + 1) * 4 > slots_.size() * 3) [[unlikely]] Rehash(slots_.size() * 2);
  size_t i = Home(pfn);
  while (slots_[i].pfn != 0) i = (i + 1) & mask_;
  slots_[i] = Slot{pfn, entry};
  ++size_;
}

void IovaIndex::Erase(uint64_t* entry) {
  size_t hole = (reinterpret_cast<uintptr_t>(entry) - reinterpret_cast<uintptr_t>(slots_.data())) /
                sizeof(Slot);
  assert(hole < slots_.size() && slots_[hole].pfn != 0);
  // Backward-shift deletion: move every later member of the cluster whose home
  // is not cyclically in (hole, j] into the hole, so no lookup stops early.
  for (size_t j = (hole + 1) & mask_; slots_[j].pfn != 0; j = (j + 1) & mask_) {
    const size_t home = Home(slots_[j].pfn);
    if (((j - home) & mask_) >= ((j - hole) & mask_)) {
      slots_[hole] = slots_[j];
      hole = j;
    }
  }
  slots_[hole].pfn = 0;
  --size_;
}

absl::Status IovaIndex::CheckInvariants() const {
  if (!std::has_single_bit(slots_.size()) || mask_ != slots_.size() - 1 ||
      shift_ != 64 - std::countr_zero(slots_.size())) {
    return absl::InternalError("iova index: capacity/mask/shift inconsistent");
  }
  size_t count = 0;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const uint64_t pfn = slots_[i].pfn;
    if (pfn == 0) continue;
    ++count;
    for (size_t j = Home(pfn); j != i; j = (j + 1) & mask_) {
      if (slots_[j].pfn == 0) {
        return absl::InternalError(absl::StrFormat(
            "iova index: pfn %#x at slot %u unreachable from its home %u (slot %u empty)", pfn,
            i, Home(pfn), j));
      }
      if (slots_[j].pfn == pfn) {
        return absl::InternalError(absl::StrFormat("iova index: pfn %#x stored twice", pfn));
      }
    }
  }
  if (count != size_) {
    return absl::InternalError(
        absl::StrFormat("iova index: %u keys, size %u", count, size_));
  }
  if (size_ * 4 > slots_.size() * 3) {
    return absl::InternalError("iova index: load factor above 3/4");
  }
  return absl::OkStatus();
}

}  // namespace iommu::core::internal
