#include "core/iova_pfn_index.h"

#include <cassert>
#include <utility>

#include "absl/strings/str_format.h"

namespace iommu::core::internal {

void IovaPfnIndex::Insert(uint64_t pfn, uint64_t entry) {
  assert(pfn != 0);
  if (2 * (size_ + 1) > slots_.size()) Grow();
  size_t i = Home(pfn);
  while (slots_[i].pfn != 0) {
    assert(slots_[i].pfn != pfn);
    i = (i + 1) & mask();
  }
  slots_[i] = Slot{pfn, entry};
  ++size_;
}

void IovaPfnIndex::Erase(uint64_t pfn) {
  size_t i = Home(pfn);
  while (slots_[i].pfn != pfn) {
    assert(slots_[i].pfn != 0);
    i = (i + 1) & mask();
  }
  // Backward shift: move later members of the run into the hole when their
  // home does not lie (cyclically) in (hole, j].
  for (size_t j = (i + 1) & mask();; j = (j + 1) & mask()) {
    if (slots_[j].pfn == 0) break;
    const size_t home = Home(slots_[j].pfn);
    const bool home_in_gap = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (!home_in_gap) {
      slots_[i] = slots_[j];
      i = j;
    }
  }
  slots_[i] = Slot{};
  --size_;
}

void IovaPfnIndex::Grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(old.size() * 2, Slot{});
  --shift_;
  for (const Slot& s : old) {
    if (s.pfn == 0) continue;
    size_t i = Home(s.pfn);
    while (slots_[i].pfn != 0) i = (i + 1) & mask();
    slots_[i] = s;
  }
}

absl::Status IovaPfnIndex::CheckInvariants() const {
  if (slots_.size() < kMinCapacity || (slots_.size() & mask()) != 0 ||
      (size_t{1} << (64 - shift_)) != slots_.size()) {
    return absl::InternalError("pfn index: capacity not a power of two matching the hash");
  }
  size_t members = 0;
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i].pfn == 0) continue;
    ++members;
    for (size_t j = Home(slots_[i].pfn); j != i; j = (j + 1) & mask()) {
      if (slots_[j].pfn == 0) {
        return absl::InternalError(absl::StrFormat(
            "pfn index: pfn %#x in slot %u unreachable from its home %u", slots_[i].pfn, i,
            Home(slots_[i].pfn)));
      }
    }
  }
  if (members != size_ || 2 * size_ > slots_.size()) {
    return absl::InternalError(absl::StrFormat("pfn index: %u members, tracked %u, capacity %u",
                                               members, size_, slots_.size()));
  }
  return absl::OkStatus();
}

}  // namespace iommu::core::internal
