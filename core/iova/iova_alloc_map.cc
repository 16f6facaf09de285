// SPDX-License-Identifier: Apache-2.0
#include "core/iova/iova_alloc_map.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <utility>

#include "absl/strings/str_format.h"

namespace iommu::core::internal {

alignas(64) IovaAllocMap::Group IovaAllocMap::zero_chunk_[uint64_t{1} << kChunkShift];

IovaAllocMap::IovaAllocMap(uint64_t start_pfn, uint64_t end_pfn)
    : base_chunk_(start_pfn >> kChunkPfnShift),
      num_chunks_((end_pfn >> kChunkPfnShift) - (start_pfn >> kChunkPfnShift) + 1) {
  assert(start_pfn <= end_pfn);
  const uint64_t num_chunks = num_chunks_;
  // As many lower levels of 2^9 pointers as it takes for the top to hold at
  // most 2^12.
  const int chunk_bits = std::bit_width(num_chunks - 1);
  top_shift_ = chunk_bits <= kTopShift
                   ? 0
                   : (chunk_bits - kTopShift + kLevelShift - 1) / kLevelShift * kLevelShift;
  flat_chunks_ = top_shift_ == 0 ? num_chunks_ : 0;
  top_.assign(((num_chunks - 1) >> top_shift_) + 1,
              flat_chunks_ != 0 ? static_cast<void*>(zero_chunk_) : nullptr);
}

IovaAllocMap::Group& IovaAllocMap::FindOrCreate(uint64_t pfn) {
  const uint64_t c = (pfn >> kChunkPfnShift) - base_chunk_;
  assert(c < num_chunks_);
  void** slot = &top_[c >> top_shift_];
  for (int shift = top_shift_ - kLevelShift; shift >= 0; shift -= kLevelShift) {
    if (*slot == nullptr) {
      levels_.push_back(std::make_unique<void*[]>(uint64_t{1} << kLevelShift));  // zeroed
      *slot = levels_.back().get();
    }
    slot = &static_cast<void**>(*slot)[(c >> shift) & kLevelMask];
  }
  if (*slot == nullptr || *slot == zero_chunk_) {
    Group* const chunk = NewChunk();
    *slot = chunk;
    // Chunks are created rarely (once per 2^15 pfns): keep the list sorted.
    const auto at = std::lower_bound(
        chunks_.begin(), chunks_.end(), c,
        [](const std::pair<uint64_t, Group*>& e, uint64_t v) { return e.first < v; });
    chunks_.emplace(at, c, chunk);
  }
  return static_cast<Group*>(*slot)[(pfn >> kGroupShift) & kChunkMask];
}

IovaAllocMap::Group* IovaAllocMap::NewChunk() {
  constexpr uint64_t kChunkBytes = sizeof(Group) << kChunkShift;
  if (block_left_ == 0) {
    // As many chunks as the map holds (doubling it), up to 2 MiB, and never
    // more than the space has left to create.
    uint64_t chunks = std::max<uint64_t>(chunks_.size(), 1);
    chunks = std::min(chunks, kHugePageBytes / kChunkBytes);
    chunks = std::min(chunks, num_chunks_ - chunks_.size());
    blocks_.push_back(NewSlabArray<Group>(chunks << kChunkShift));  // zeroed
    block_next_ = blocks_.back().get();
    block_left_ = chunks;
    block_bytes_ += chunks * kChunkBytes;
  }
  Group* const chunk = block_next_;
  block_next_ += uint64_t{1} << kChunkShift;
  --block_left_;
  return chunk;
}

uint64_t IovaAllocMap::SpanPagesAt(const Group* g, uint64_t pfn) {
  const uint64_t index = (pfn >> kGroupShift) & kChunkMask;
  const uint64_t first = kGroupPages - (pfn & 63);  // pages in g's group
  for (uint64_t k = 1; index + k <= kChunkMask; ++k) {
    if (const uint64_t ends = g[k].end_bits; ends != 0) {
      return first + (k - 1) * kGroupPages + static_cast<uint64_t>(std::countr_zero(ends)) + 1;
    }
  }
  return 0;
}

absl::Status IovaAllocMap::CheckStructure() const {
  absl::Status bad = absl::OkStatus();
  ForEachChunk([&](uint64_t first_group, const Group* chunk) {
    // The bits in pfn order: a start opens an allocation, an end closes it.
    bool open = false;
    uint64_t open_pfn = 0;
    auto broken = [&](uint64_t pfn, const char* what) {
      const Group& g = chunk[(pfn >> kGroupShift) & kChunkMask];
      bad = absl::InternalError(
          absl::StrFormat("iova map: pfn %#x: %s (its group's start bits %#x, end bits %#x)", pfn,
                          what, g.start_bits, g.end_bits));
    };
    for (uint64_t i = 0; i < (uint64_t{1} << kChunkShift) && bad.ok(); ++i) {
      const Group& g = chunk[i];
      const uint64_t base = (first_group + i) << kGroupShift;
      for (uint64_t bits = g.start_bits | g.end_bits; bits != 0 && bad.ok(); bits &= bits - 1) {
        const int b = std::countr_zero(bits);
        const uint64_t pfn = base + static_cast<uint64_t>(b);
        if ((g.start_bits >> b) & 1) {
          if (open) {
            broken(pfn, "a start inside the allocation before it");
            break;
          }
          open = true;
          open_pfn = pfn;
        }
        if ((g.end_bits >> b) & 1) {
          if (!open) {
            broken(pfn, "an end with no start");
          } else if (pfn - open_pfn + 1 > kMaxPages) {
            broken(open_pfn, "an allocation longer than kMaxPages");
          }
          open = false;
        }
      }
    }
    if (open && bad.ok()) broken(open_pfn, "a start with no end in its chunk");
  });
  return bad;
}

uint64_t IovaAllocMap::memory_bytes() const {
  return top_.size() * sizeof(void*) +
         levels_.size() * (uint64_t{1} << kLevelShift) * sizeof(void*) + block_bytes_;
}

}  // namespace iommu::core::internal
