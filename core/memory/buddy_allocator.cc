// SPDX-License-Identifier: Apache-2.0
#include "core/memory/buddy_allocator.h"

#include <algorithm>
#include <bit>
#include <cassert>

#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"

namespace iommu::core {
namespace {

absl::Status Broken(absl::string_view field, uint64_t value, absl::string_view why) {
  return FieldError(absl::StatusCode::kInternal, field, value, why);
}

}  // namespace

absl::StatusOr<BuddyAllocator> BuddyAllocator::Create(PhysAddr base, uint64_t size_bytes,
                                                      BuddyOptions options) {
  const uint64_t page = options.page_size_bytes;
  if (!IsPowerOfTwo(page) || page < 64) {
    return InvalidField("page_size_bytes", page, "must be a power of two >= 64");
  }
  if (!IsAligned(base.value(), page)) {
    return InvalidField("base", base.value(), "must be page-aligned");
  }
  if (size_bytes == 0) return InvalidField("size_bytes", size_bytes, "must be non-zero");
  if (!IsAligned(size_bytes, page)) {
    return InvalidField("size_bytes", size_bytes, "must be a multiple of the page size");
  }
  if (!LastOfRange(base.value(), size_bytes)) {
    return InvalidField("size_bytes", size_bytes, "range passes 2^64");
  }
  const unsigned page_shift = Log2(page);
  const uint64_t num_pages = size_bytes >> page_shift;
  if (num_pages >= kNil) {
    return InvalidField("size_bytes", size_bytes, "more than 2^32 - 1 pages");
  }
  unsigned max_order = 0;
  if (options.max_order.has_value()) {
    max_order = *options.max_order;
    if (max_order > kMaxBuddyOrder) {
      return InvalidField("max_order", max_order, "above the largest supported order 31");
    }
  } else {
    const unsigned range_order = std::bit_width(num_pages) - 1;  // floor(log2)
    const unsigned gib_order =
        page >= kDefaultMaxBlockBytes ? 0 : Log2(kDefaultMaxBlockBytes / page);
    max_order = std::min(range_order, gib_order);
  }
  return BuddyAllocator(base.value() >> page_shift, num_pages, page_shift, max_order);
}

BuddyAllocator::BuddyAllocator(uint64_t base_pfn, uint64_t num_pages, unsigned page_shift,
                               unsigned max_order)
    : base_pfn_(base_pfn),
      num_pages_(num_pages),
      page_shift_(page_shift),
      max_order_(max_order),
      head_order_(num_pages, kNotFreeHead),
      next_(num_pages, kNil),
      prev_(num_pages, kNil),
      free_head_(max_order + 1, kNil),
      free_count_(max_order + 1, 0) {
  // Carve the range into maximal naturally aligned blocks, low to high. Two
  // neighbours of one order below max_order are never buddies here: their
  // pair would have been aligned and in range, so carved as one block.
  uint64_t pfn = base_pfn_;
  const uint64_t end = base_pfn_ + num_pages_;
  while (pfn < end) {
    unsigned order = std::min<unsigned>(max_order_, std::countr_zero(pfn | (uint64_t{1} << 63)));
    while (pfn + (uint64_t{1} << order) > end) --order;
    PushFree(Index(pfn - base_pfn_), order);
    free_pages_ += uint64_t{1} << order;
    pfn += uint64_t{1} << order;
  }
}

void BuddyAllocator::PushFree(Index idx, unsigned order) {
  assert(head_order_[idx] == kNotFreeHead);
  head_order_[idx] = uint8_t(order);
  prev_[idx] = kNil;
  next_[idx] = free_head_[order];
  if (free_head_[order] != kNil) prev_[free_head_[order]] = idx;
  free_head_[order] = idx;
  ++free_count_[order];
}

void BuddyAllocator::RemoveFree(Index idx, unsigned order) {
  assert(head_order_[idx] == order);
  if (prev_[idx] != kNil) {
    next_[prev_[idx]] = next_[idx];
  } else {
    free_head_[order] = next_[idx];
  }
  if (next_[idx] != kNil) prev_[next_[idx]] = prev_[idx];
  head_order_[idx] = kNotFreeHead;
  --free_count_[order];
}

bool BuddyAllocator::Contains(PhysAddr addr) const {
  const uint64_t pfn = addr.value() >> page_shift_;
  return pfn >= base_pfn_ && pfn - base_pfn_ < num_pages_;
}

absl::StatusOr<PhysAddr> BuddyAllocator::Allocate(unsigned order) {
  if (order > max_order_) {
    return InvalidField("order", order,
                        absl::StrFormat("above the allocator's max_order %u", max_order_));
  }
  unsigned k = order;
  while (k <= max_order_ && free_head_[k] == kNil) ++k;
  if (k > max_order_) {
    const std::optional<unsigned> largest = LargestFreeOrder();
    return FieldError(absl::StatusCode::kResourceExhausted, "order", order,
                      absl::StrFormat("no free block of %#x pages; largest free block is "
                                      "%#x pages",
                                      uint64_t{1} << order, largest ? uint64_t{1} << *largest : 0));
  }
  const Index idx = free_head_[k];
  RemoveFree(idx, k);
  // Split down: keep the lower half, free the upper half at each level.
  while (k > order) {
    --k;
    PushFree(idx + (Index{1} << k), k);
  }
  free_pages_ -= uint64_t{1} << order;
  return PhysAddr((base_pfn_ + idx) << page_shift_);
}

std::optional<BuddyAllocator::Index> BuddyAllocator::CoveringFreeHead(Index idx,
                                                                      unsigned min_order) const {
  const uint64_t pfn = base_pfn_ + idx;
  for (unsigned k = min_order; k <= max_order_; ++k) {
    const uint64_t head_pfn = AlignDown(pfn, uint64_t{1} << k);
    if (head_pfn < base_pfn_) break;
    const Index head = Index(head_pfn - base_pfn_);
    if (head_order_[head] != kNotFreeHead && head_order_[head] >= k) return head;
  }
  return std::nullopt;
}

absl::Status BuddyAllocator::ValidateBlock(PhysAddr block, unsigned order, Index* idx) const {
  if (order > max_order_) {
    return InvalidField("order", order,
                        absl::StrFormat("above the allocator's max_order %u", max_order_));
  }
  const uint64_t block_bytes = uint64_t{1} << (page_shift_ + order);
  if (!IsAligned(block.value(), block_bytes)) {
    return InvalidField("block", block.value(),
                        absl::StrFormat("not aligned to its size %#x", block_bytes));
  }
  const uint64_t pfn = block.value() >> page_shift_;
  if (pfn < base_pfn_ || pfn - base_pfn_ + (uint64_t{1} << order) > num_pages_) {
    return InvalidField("block", block.value(),
                        absl::StrFormat("block of %#x bytes outside the range [%#x, +%#x)",
                                        block_bytes, base().value(), size_bytes()));
  }
  *idx = Index(pfn - base_pfn_);
  if (head_order_[*idx] != kNotFreeHead || CoveringFreeHead(*idx, order).has_value()) {
    return FieldError(absl::StatusCode::kNotFound, "block", block.value(),
                      "not allocated (already free)");
  }
  return absl::OkStatus();
}

void BuddyAllocator::FreeValidated(Index idx, unsigned order) {
  // The REQUIRES of Free that ValidateBlock cannot check in O(max_order): no
  // free block starts strictly inside the freed one.
  assert(std::all_of(head_order_.begin() + idx, head_order_.begin() + idx + (Index{1} << order),
                     [](uint8_t o) { return o == kNotFreeHead; }));
  free_pages_ += uint64_t{1} << order;
  uint64_t pfn = base_pfn_ + idx;
  const uint64_t end = base_pfn_ + num_pages_;
  unsigned k = order;
  while (k < max_order_) {
    const uint64_t buddy = pfn ^ (uint64_t{1} << k);
    if (buddy < base_pfn_ || buddy + (uint64_t{1} << k) > end) break;
    const Index buddy_idx = Index(buddy - base_pfn_);
    if (head_order_[buddy_idx] != k) break;
    RemoveFree(buddy_idx, k);
    pfn = std::min(pfn, buddy);
    ++k;
  }
  PushFree(Index(pfn - base_pfn_), k);
}

absl::Status BuddyAllocator::Free(PhysAddr block, unsigned order) {
  Index idx = 0;
  if (absl::Status s = ValidateBlock(block, order, &idx); !s.ok()) return s;
  FreeValidated(idx, order);
  return absl::OkStatus();
}

namespace {

// Splits [pfn, pfn + count) into maximal naturally aligned blocks of order <=
// max_order and calls fn(pfn, order) for each, low to high; stops at the first
// non-OK result.
template <typename Fn>
absl::Status ForEachAlignedBlock(uint64_t pfn, uint64_t count, unsigned max_order, Fn fn) {
  while (count > 0) {
    unsigned order = std::min<unsigned>(max_order, std::countr_zero(pfn | (uint64_t{1} << 63)));
    while ((uint64_t{1} << order) > count) --order;
    if (absl::Status s = fn(pfn, order); !s.ok()) return s;
    pfn += uint64_t{1} << order;
    count -= uint64_t{1} << order;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status BuddyAllocator::FreeRange(PhysAddr start, uint64_t num_pages) {
  if (num_pages == 0) return InvalidField("num_pages", num_pages, "must be non-zero");
  if (!IsAligned(start.value(), page_size_bytes())) {
    return InvalidField("start", start.value(), "must be page-aligned");
  }
  const uint64_t pfn = start.value() >> page_shift_;
  if (pfn < base_pfn_ || num_pages > num_pages_ || pfn - base_pfn_ > num_pages_ - num_pages) {
    return InvalidField("start", start.value(),
                        absl::StrFormat("%#x pages outside the range [%#x, +%#x)", num_pages,
                                        base().value(), size_bytes()));
  }
  // Validate every block first so that a failure frees nothing.
  absl::Status valid = ForEachAlignedBlock(pfn, num_pages, max_order_, [&](uint64_t p, unsigned k) {
    Index idx = 0;
    return ValidateBlock(PhysAddr(p << page_shift_), k, &idx);
  });
  if (!valid.ok()) return valid;
  return ForEachAlignedBlock(pfn, num_pages, max_order_, [&](uint64_t p, unsigned k) {
    FreeValidated(Index(p - base_pfn_), k);
    return absl::OkStatus();
  });
}

void BuddyAllocator::PushOutside(Index idx, unsigned order, uint64_t lo, uint64_t hi) {
  const uint64_t end = uint64_t{idx} + (uint64_t{1} << order);
  if (end <= lo || idx >= hi) {
    PushFree(idx, order);
    return;
  }
  if (idx >= lo && end <= hi) return;  // inside the range: stays allocated
  // Straddles an edge of the range, so holds at least two pages: split. Only
  // the (at most two) halves holding an edge split further.
  assert(order > 0);
  PushOutside(idx, order - 1, lo, hi);
  PushOutside(idx + (Index{1} << (order - 1)), order - 1, lo, hi);
}

absl::Status BuddyAllocator::ClaimRange(PhysAddr start, uint64_t num_pages) {
  if (num_pages == 0) return InvalidField("num_pages", num_pages, "must be non-zero");
  if (!IsAligned(start.value(), page_size_bytes())) {
    return InvalidField("start", start.value(), "must be page-aligned");
  }
  const uint64_t pfn = start.value() >> page_shift_;
  const uint64_t last_pfn = ~uint64_t{0} >> page_shift_;  // the highest pfn there is
  if (num_pages - 1 > last_pfn - pfn) {
    return InvalidField("num_pages", num_pages,
                        absl::StrFormat("range at %#x passes 2^64", start.value()));
  }
  if (pfn < base_pfn_ || num_pages > num_pages_ || pfn - base_pfn_ > num_pages_ - num_pages) {
    return OutOfRangeField("start", start.value(),
                           absl::StrFormat("%#x pages outside the range [%#x, +%#x)", num_pages,
                                           base().value(), size_bytes()));
  }
  const uint64_t lo = pfn - base_pfn_;
  const uint64_t hi = lo + num_pages;
  // Check first, so that a failure changes nothing: walk the free blocks
  // covering the range, low to high, each skipped whole.
  for (uint64_t i = lo; i < hi;) {
    const std::optional<Index> head = CoveringFreeHead(Index(i), 0);
    if (!head.has_value()) {
      return FieldError(absl::StatusCode::kFailedPrecondition, "page",
                        (base_pfn_ + i) << page_shift_, "not free");
    }
    i = uint64_t{*head} + (uint64_t{1} << head_order_[*head]);
  }
  // Take each covering block off its list and give back what lies outside.
  for (uint64_t i = lo; i < hi;) {
    const Index head = *CoveringFreeHead(Index(i), 0);
    const unsigned order = head_order_[head];
    RemoveFree(head, order);
    PushOutside(head, order, lo, hi);
    i = uint64_t{head} + (uint64_t{1} << order);
  }
  free_pages_ -= num_pages;
  return absl::OkStatus();
}

uint64_t BuddyAllocator::AvailableBlocks(unsigned order) const {
  assert(order <= max_order_);
  uint64_t n = 0;
  for (unsigned k = order; k <= max_order_; ++k) n += free_count_[k] << (k - order);
  return n;
}

std::optional<unsigned> BuddyAllocator::LargestFreeOrder() const {
  for (unsigned k = max_order_ + 1; k-- > 0;) {
    if (free_count_[k] != 0) return k;
  }
  return std::nullopt;
}

BuddyStats BuddyAllocator::Stats() const {
  BuddyStats stats;
  stats.page_size_bytes = page_size_bytes();
  stats.max_order = max_order_;
  stats.total_pages = num_pages_;
  stats.free_pages = free_pages_;
  stats.free_blocks_by_order = free_count_;
  if (const std::optional<unsigned> largest = LargestFreeOrder()) {
    stats.largest_free_block_pages = uint64_t{1} << *largest;
  }
  return stats;
}

std::vector<BuddyBlock> BuddyAllocator::FreeBlocks() const {
  std::vector<BuddyBlock> blocks;
  for (uint64_t i = 0; i < num_pages_; ++i) {
    if (head_order_[i] != kNotFreeHead) {
      blocks.push_back({PhysAddr((base_pfn_ + i) << page_shift_), head_order_[i]});
    }
  }
  return blocks;
}

absl::Status BuddyAllocator::CheckInvariants() const {
  // Free lists: linked consistently, tagged with their order, counted.
  uint64_t listed_blocks = 0;
  uint64_t listed_pages = 0;
  for (unsigned k = 0; k <= max_order_; ++k) {
    uint64_t n = 0;
    Index prev = kNil;
    for (Index i = free_head_[k]; i != kNil; prev = i, i = next_[i]) {
      if (i >= num_pages_) return Broken("free_list_entry", i, "index outside the range");
      if (head_order_[i] != k) return Broken("free_list_entry", i, "order tag differs from list");
      if (prev_[i] != prev) return Broken("free_list_entry", i, "prev link broken");
      if (++n > free_count_[k]) return Broken("free_count", free_count_[k], "list is longer");
    }
    if (n != free_count_[k]) return Broken("free_count", free_count_[k], "list is shorter");
    listed_blocks += n;
    listed_pages += n << k;
  }
  if (listed_pages != free_pages_) return Broken("free_pages", free_pages_, "recount differs");
  // Every tagged head is listed, aligned, in range, disjoint from the next,
  // and not an uncoalesced buddy.
  uint64_t tagged = 0;
  uint64_t covered_until = 0;  // relative index past the last free block
  for (uint64_t i = 0; i < num_pages_; ++i) {
    const uint8_t k = head_order_[i];
    if (k == kNotFreeHead) continue;
    ++tagged;
    const uint64_t pfn = base_pfn_ + i;
    const uint64_t pages = uint64_t{1} << k;
    if (k > max_order_) return Broken("block_order", k, "above max_order");
    if (!IsAligned(pfn, pages)) return Broken("block_pfn", pfn, "not naturally aligned");
    if (i + pages > num_pages_) return Broken("block_pfn", pfn, "runs past the range");
    if (i < covered_until) return Broken("block_pfn", pfn, "overlaps a lower free block");
    covered_until = i + pages;
    if (k < max_order_) {
      const uint64_t buddy = pfn ^ pages;
      if (buddy >= base_pfn_ && buddy + pages <= base_pfn_ + num_pages_ &&
          head_order_[buddy - base_pfn_] == k) {
        return Broken("block_pfn", pfn, "free buddy left uncoalesced");
      }
    }
  }
  if (tagged != listed_blocks) return Broken("free_blocks", tagged, "tagged heads not all listed");
  return absl::OkStatus();
}

}  // namespace iommu::core
