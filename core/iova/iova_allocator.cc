// SPDX-License-Identifier: Apache-2.0
#include "core/iova/iova_allocator.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/base/bits.h"
#include "core/base/errors.h"

namespace iommu::core {
namespace {

constexpr uint64_t kMaxCachePages = uint64_t{1} << 20;
constexpr uint32_t kMaxMagazineDepth = 4096;
constexpr uint32_t kMaxDepotMagazines = 4096;

const char* ReasonName(IovaFailureReason reason) {
  switch (reason) {
    case IovaFailureReason::kNoSpace:
      return "not enough free space";
    case IovaFailureReason::kFragmented:
      return "fragmented: enough free pages but no aligned fit";
    case IovaFailureReason::kBeyondLimit:
      return "an aligned fit exists only above the limit";
  }
  return "unknown";
}

// Order of the alignment of a num_pages request: ceil(log2(num_pages)).
int AlignOrder(uint64_t num_pages) { return std::bit_width(num_pages - 1); }

}  // namespace

absl::StatusOr<IovaAllocator> IovaAllocator::Create(const IovaAllocatorOptions& options) {
  if (options.granule_bytes != 4096 && options.granule_bytes != 16384 &&
      options.granule_bytes != 65536) {
    return InvalidField("granule_bytes", options.granule_bytes, "must be 4K, 16K or 64K");
  }
  const unsigned shift = Log2(options.granule_bytes);
  if (options.start_pfn == 0) {
    return InvalidField("start_pfn", 0, "must be >= 1: pfn 0 is never handed out");
  }
  if (options.end_pfn < options.start_pfn) {
    return InvalidField("end_pfn", options.end_pfn,
                        absl::StrFormat("below start_pfn=%#x", options.start_pfn));
  }
  if (options.end_pfn > (~uint64_t{0} >> shift)) {
    return InvalidField("end_pfn", options.end_pfn, "its byte address does not fit in 64 bits");
  }
  if (options.cache.enabled) {
    if (!IsPowerOfTwo(options.cache.max_pages) || options.cache.max_pages > kMaxCachePages) {
      return InvalidField("cache.max_pages", options.cache.max_pages,
                          "must be a power of two <= 2^20");
    }
    if (options.cache.magazine_depth == 0 || options.cache.magazine_depth > kMaxMagazineDepth) {
      return InvalidField("cache.magazine_depth", options.cache.magazine_depth,
                          "must be in [1, 4096]");
    }
    if (options.cache.depot_magazines > kMaxDepotMagazines) {
      return InvalidField("cache.depot_magazines", options.cache.depot_magazines,
                          "must be <= 4096");
    }
  }
  const uint64_t space_pages = options.end_pfn - options.start_pfn + 1;
  const int num_orders = static_cast<int>(Log2(RoundUpPowerOfTwo(space_pages))) + 1;
  return IovaAllocator(options, num_orders);
}

IovaAllocator::IovaAllocator(const IovaAllocatorOptions& options, int num_orders)
    : options_(options),
      granule_shift_(Log2(options.granule_bytes)),
      granule_mask_(options.granule_bytes - 1),
      start_pfn_(options.start_pfn),
      end_pfn_(options.end_pfn),
      space_pages_(options.end_pfn - options.start_pfn + 1),
      pfn_32bit_(((uint64_t{1} << 32) >> Log2(options.granule_bytes)) - 1),
      tree_(num_orders),
      small_(options.start_pfn, options.end_pfn) {
  if (options.cache.enabled) {
    const int classes = std::min<int>(Log2(options.cache.max_pages) + 1, num_orders);
    cache_max_pages_ = uint64_t{1} << (classes - 1);
    inline_max_pages_ = std::min(cache_max_pages_, internal::IovaAllocMap::kGroupPages);
    cache_ = internal::IovaMagazineCache(classes, options.cache.magazine_depth,
                                         options.cache.depot_magazines);
  }
  if (options.try_32bit_first && pfn_32bit_ >= start_pfn_) first_try_max_pfn_ = pfn_32bit_;
  tree_.Release(start_pfn_, end_pfn_);
}

// --- allocation ----------------------------------------------------------------

uint64_t IovaAllocator::AllocFromTree(uint64_t num_pages, uint64_t limit_pfn) {
  const int order = AlignOrder(num_pages);
  internal::IovaGapTree::Fit fit;
  if (options_.placement == IovaPlacement::kLinuxNextFit) {
    const uint64_t cursor = limit_pfn <= pfn_32bit_ ? cursor32_ : cursor_;
    // Below the cached node first; if nothing fits there, the highest fit
    // overall is above it (Linux's retry from limit_pfn down to the node).
    if (cursor != kNoCursor && cursor - 1 < limit_pfn) {
      fit = tree_.FindHighestFit(num_pages, order, cursor - 1);
    }
    if (fit.node == 0) fit = tree_.FindHighestFit(num_pages, order, limit_pfn);
    if (fit.node == 0) return 0;
    (fit.pfn + num_pages - 1 <= pfn_32bit_ ? cursor32_ : cursor_) = fit.pfn;
  } else {
    fit = tree_.FindHighestFit(num_pages, order, limit_pfn);
    if (fit.node == 0) return 0;
  }
  tree_.Carve(fit, num_pages);
  RecordLive(fit.pfn, num_pages);
  allocated_pages_ += num_pages;
  ++allocations_;
  return fit.pfn;
}

void IovaAllocator::ReleaseToTree(uint64_t pfn, uint64_t num_pages) {
  const uint64_t last = pfn + num_pages - 1;
  const internal::IovaGapTree::Range r = tree_.Release(pfn, last);
  allocated_pages_ -= num_pages;
  --allocations_;
  if (options_.placement != IovaPlacement::kLinuxNextFit) return;
  // __cached_rbnode_delete_update: a cached node at or below the freed range
  // moves to the next node above it, the first non-free pfn after the free
  // range now holding [pfn, last].
  const bool move32 = pfn == cursor32_ || (last <= pfn_32bit_ && pfn >= cursor32_);
  const bool move = pfn >= cursor_;
  if (!move32 && !move) return;
  const uint64_t next = r.hi == end_pfn_ ? kNoCursor : r.hi + 1;
  if (move32) cursor32_ = next;
  if (move) cursor_ = next;
}

uint64_t IovaAllocator::PopCached(uint64_t num_pages, uint64_t limit_pfn) {
  if (limit_pfn + 1 < num_pages) return 0;
  const uint64_t pfn = cache_.Pop(AlignOrder(num_pages), limit_pfn + 1 - num_pages);
  if (pfn != 0) {
    ++cache_hits_;
    RecordLive(pfn, num_pages);
  }
  return pfn;
}

IovaFailureReason IovaAllocator::CountFailure(uint64_t num_pages) {
  IovaFailureReason reason = IovaFailureReason::kNoSpace;
  if (tree_.AnyFit(num_pages, AlignOrder(num_pages))) {
    reason = IovaFailureReason::kBeyondLimit;
  } else if (tree_.free_pages() >= num_pages) {
    reason = IovaFailureReason::kFragmented;
  }
  ++failures_[static_cast<int>(reason)];
  return reason;
}

absl::Status IovaAllocator::ExhaustedError(uint64_t size_bytes, uint64_t num_pages,
                                           uint64_t limit_pfn) {
  const IovaFailureReason reason = CountFailure(num_pages);
  const uint64_t largest = tree_.largest_pages();
  return FieldError(
      absl::StatusCode::kResourceExhausted, "size_bytes", size_bytes,
      absl::StrFormat("no free IOVA range holds %#x pages (%#x bytes) aligned to %#x pages "
                      "at or below limit_pfn=%#x (%s); largest free range %#x pages "
                      "(%#x bytes), %#x pages free",
                      num_pages, num_pages << granule_shift_, RoundUpPowerOfTwo(num_pages),
                      limit_pfn, ReasonName(reason), largest, largest << granule_shift_,
                      tree_.free_pages()));
}

// --- live-allocation index --------------------------------------------------------

void IovaAllocator::RecordLive(uint64_t pfn, uint64_t num_pages) {
  if (num_pages <= internal::IovaAllocMap::kMaxPages) {
    small_.Insert(pfn, num_pages);
  } else {
    large_.emplace(pfn, num_pages);
  }
}

uint64_t IovaAllocator::LivePages(uint64_t pfn) const {
  if (const uint64_t pages = internal::IovaAllocMap::PagesAt(*small_.Find(pfn), pfn); pages != 0) {
    return pages;
  }
  if (large_.empty()) return 0;
  const auto it = large_.find(pfn);
  return it == large_.end() ? 0 : it->second;
}

// --- free ------------------------------------------------------------------------

absl::Status IovaAllocator::FreeError(Iova iova, uint64_t size_bytes) const {
  if ((iova.value() & granule_mask_) != 0) {
    return InvalidField("iova", iova.value(), "not aligned to the granule");
  }
  if (size_bytes == 0) return InvalidField("size_bytes", 0, "must be non-zero");
  const uint64_t pfn = iova.value() >> granule_shift_;
  const uint64_t pages = LivePages(pfn);
  if (pages == 0) {
    bool cached = false;
    cache_.ForEach([&](uint64_t cached_pfn, int) { cached |= cached_pfn == pfn; });
    return FieldError(absl::StatusCode::kNotFound, "pfn", pfn,
                      cached ? "allocation already freed (it sits in a range cache)"
                             : "no live allocation starts at this pfn");
  }
  return InvalidField("num_pages", PagesOf(size_bytes),
                      absl::StrFormat("the allocation at pfn=%#x has %#x pages", pfn, pages));
}

absl::Status IovaAllocator::FreeIovaSlow(Iova iova, uint64_t size_bytes) {
  const uint64_t pfn = iova.value() >> granule_shift_;
  // The allocation in one lookup of each index: its group of the bitmap, or
  // one probe of large_.
  internal::IovaAllocMap::Group* const g = small_.Find(pfn);
  uint64_t pages = internal::IovaAllocMap::PagesAt(*g, pfn);
  auto large = large_.end();
  if (pages == 0 && !large_.empty()) {
    large = large_.find(pfn);
    if (large != large_.end()) pages = large->second;
  }
  // A misaligned iova, size_bytes 0 (ClassPages(0) is 0), no allocation or
  // another size: FreeError says which.
  if ((iova.value() & granule_mask_) != 0 || pages == 0 || pages != ClassPages(PagesOf(size_bytes)))
      [[unlikely]] {
    return FreeError(iova, size_bytes);
  }
  if (large != large_.end()) {
    large_.erase(large);
  } else {
    internal::IovaAllocMap::Clear(*g, pfn, pages);
  }
  if (pages - 1 < cache_max_pages_) {
    cache_.Push(AlignOrder(pages), pfn, [this](uint64_t spilled, int spilled_cls) {
      ReleaseToTree(spilled, uint64_t{1} << spilled_cls);
    });
  } else {
    ReleaseToTree(pfn, pages);
  }
  return absl::OkStatus();
}

void IovaAllocator::FlushCaches() {
  cache_.Flush([this](uint64_t pfn, int cls) { ReleaseToTree(pfn, uint64_t{1} << cls); });
}

// --- reserved ranges -----------------------------------------------------------------

uint64_t IovaAllocator::ReservedPagesIn(uint64_t lo, uint64_t hi) const {
  uint64_t pages = 0;
  auto it = reserved_.upper_bound(lo);
  if (it != reserved_.begin()) --it;
  for (; it != reserved_.end() && it->first <= hi; ++it) {
    const uint64_t a = std::max(lo, it->first);
    const uint64_t b = std::min(hi, it->second);
    if (a <= b) pages += b - a + 1;
  }
  return pages;
}

absl::Status IovaAllocator::Reserve(uint64_t pfn_lo, uint64_t pfn_hi) {
  if (pfn_hi < pfn_lo) {
    return InvalidField("pfn_hi", pfn_hi, absl::StrFormat("below pfn_lo=%#x", pfn_lo));
  }
  const uint64_t lo = std::max(pfn_lo, start_pfn_);
  const uint64_t hi = std::min(pfn_hi, end_pfn_);
  if (lo > hi) return absl::OkStatus();
  FlushCaches();
  const uint64_t free_in = tree_.FreePagesIn(lo, hi);
  if (free_in + ReservedPagesIn(lo, hi) != hi - lo + 1) {
    return FieldError(
        absl::StatusCode::kFailedPrecondition, "pfn_lo", pfn_lo,
        absl::StrFormat("range [%#x, %#x] overlaps a live allocation", pfn_lo, pfn_hi));
  }
  // [lo, hi] alternates between free runs and reserved ranges: take the free
  // runs out of the tree.
  for (uint64_t p = lo; p <= hi;) {
    internal::IovaGapTree::Range r;
    uint64_t run_end;
    if (tree_.FindContaining(p, &r)) {
      run_end = std::min(r.hi, hi);
      tree_.Take(p, run_end);
    } else {
      auto it = std::prev(reserved_.upper_bound(p));
      run_end = std::min(it->second, hi);
    }
    if (run_end == hi) break;
    p = run_end + 1;
  }
  // Merge into reserved_, keeping it disjoint and non-adjacent.
  uint64_t new_lo = lo;
  uint64_t new_hi = hi;
  auto it = reserved_.upper_bound(lo);
  if (it != reserved_.begin()) --it;
  while (it != reserved_.end() && it->first <= hi + 1) {
    if (it->second + 1 >= lo) {
      new_lo = std::min(new_lo, it->first);
      new_hi = std::max(new_hi, it->second);
      it = reserved_.erase(it);
    } else {
      ++it;
    }
  }
  reserved_.emplace(new_lo, new_hi);
  reserved_pages_ += free_in;
  return absl::OkStatus();
}

// --- claims ----------------------------------------------------------------------------

bool IovaAllocator::LiveContaining(uint64_t pfn, uint64_t* first, uint64_t* pages) const {
  // A recorded allocation of up to kMaxPages pages is aligned to its size
  // rounded up to a power of two, so one holding pfn starts at pfn aligned
  // down to one of those powers.
  for (uint64_t align = 1; align <= internal::IovaAllocMap::kMaxPages; align <<= 1) {
    const uint64_t start = AlignDown(pfn, align);
    const uint64_t n = internal::IovaAllocMap::PagesAt(*small_.Find(start), start);
    if (n != 0 && start + (n - 1) >= pfn) {
      *first = start;
      *pages = n;
      return true;
    }
  }
  for (const auto& [start, n] : large_) {
    if (start <= pfn && pfn - start < n) {
      *first = start;
      *pages = n;
      return true;
    }
  }
  return false;
}

absl::Status IovaAllocator::ClaimConflict(Iova iova, uint64_t pfn, uint64_t last) const {
  // Walk the pieces of [pfn, last] in address order: free ranges and cached
  // ranges are passed over, the first live or reserved piece is the error.
  std::vector<std::pair<uint64_t, uint64_t>> cached;  // (pfn, pages), sorted; loaded once
  bool cached_loaded = false;
  for (uint64_t p = pfn;;) {
    uint64_t hi = 0;
    internal::IovaGapTree::Range r;
    uint64_t first = 0;
    uint64_t pages = 0;
    auto res = reserved_.upper_bound(p);
    if (tree_.FindContaining(p, &r)) {
      hi = r.hi;
    } else if (res != reserved_.begin() && std::prev(res)->second >= p) {
      --res;
      return FieldError(absl::StatusCode::kFailedPrecondition, "iova", iova.value(),
                        absl::StrFormat("pfns [%#x, %#x] overlap the reserved range [%#x, %#x]",
                                        pfn, last, res->first, res->second));
    } else if (LiveContaining(p, &first, &pages)) {
      return FieldError(
          absl::StatusCode::kFailedPrecondition, "iova", iova.value(),
          absl::StrFormat("pfns [%#x, %#x] overlap the live allocation of %#x pages at pfn %#x",
                          pfn, last, pages, first));
    } else {
      if (!cached_loaded) {
        cache_.ForEach([&](uint64_t c, int cls) { cached.emplace_back(c, uint64_t{1} << cls); });
        std::sort(cached.begin(), cached.end());
        cached_loaded = true;
      }
      auto c = std::upper_bound(cached.begin(), cached.end(),
                                std::pair(p, ~uint64_t{0}));  // the last starting at or below p
      if (c == cached.begin() || std::prev(c)->first + std::prev(c)->second <= p) {
        // Every pfn of the space is free, live, cached or reserved
        // (invariant 1).
        return absl::InternalError(absl::StrFormat("iova: pfn %#x is in no piece", p));
      }
      --c;
      hi = c->first + c->second - 1;
    }
    if (hi >= last) return absl::OkStatus();
    p = hi + 1;
  }
}

absl::Status IovaAllocator::ClaimIova(Iova iova, uint64_t size_bytes) {
  if (size_bytes == 0) return InvalidField("size_bytes", 0, "must be non-zero");
  if ((iova.value() & granule_mask_) != 0) {
    return InvalidField("iova", iova.value(), "not aligned to the granule");
  }
  const uint64_t requested = PagesOf(size_bytes);
  if (requested > space_pages_) {
    return OutOfRangeField(
        "size_bytes", size_bytes,
        absl::StrFormat("larger than the IOVA space of %#x bytes", space_pages_ << granule_shift_));
  }
  const uint64_t num_pages = ClassPages(requested);  // as AllocIova rounds
  const uint64_t pfn = iova.value() >> granule_shift_;
  if (!IsAligned(pfn, RoundUpPowerOfTwo(num_pages))) {
    return InvalidField("iova", iova.value(),
                        absl::StrFormat("not aligned to %#x pages, as AllocIova aligns an "
                                        "allocation of %#x pages",
                                        RoundUpPowerOfTwo(num_pages), num_pages));
  }
  // pfn + num_pages cannot wrap: pfn < 2^52 and num_pages <= 2 * space_pages_.
  const uint64_t last = pfn + num_pages - 1;
  if (pfn < start_pfn_ || last > end_pfn_) {
    return OutOfRangeField("iova", iova.value(),
                           absl::StrFormat("pfns [%#x, %#x] outside the space [%#x, %#x]", pfn,
                                           last, start_pfn_, end_pfn_));
  }
  if (!tree_.TakeIfFree(pfn, last)) [[unlikely]] {
    if (absl::Status s = ClaimConflict(iova, pfn, last); !s.ok()) return s;
    // Only free and cached pages: with the caches flushed, one free range.
    FlushCaches();
    tree_.Take(pfn, last);
  }
  RecordLive(pfn, num_pages);
  allocated_pages_ += num_pages;
  ++allocations_;
  return absl::OkStatus();
}

// --- the byte interface, out of line ---------------------------------------------------

absl::Status IovaAllocator::RequestError(uint64_t size_bytes, Iova limit) const {
  if (size_bytes == 0) return InvalidField("size_bytes", 0, "must be non-zero");
  if (PagesOf(size_bytes) > space_pages_) {
    return OutOfRangeField(
        "size_bytes", size_bytes,
        absl::StrFormat("larger than the IOVA space of %#x bytes", space_pages_ << granule_shift_));
  }
  return OutOfRangeField(
      "limit", limit.value(),
      absl::StrFormat("below the first allocatable IOVA %#x", start_pfn_ << granule_shift_));
}

absl::StatusOr<Iova> IovaAllocator::AllocIovaSlow(uint64_t size_bytes, Iova limit) {
  uint64_t num_pages = PagesOf(size_bytes);
  const uint64_t limit_pfn = ClipLimit(limit.value() >> granule_shift_);
  // num_pages - 1 wraps for size_bytes 0; a limit below start_pfn_ stays
  // below it when clipped.
  if (num_pages - 1 >= space_pages_ || limit_pfn < start_pfn_) [[unlikely]] {
    return RequestError(size_bytes, limit);
  }
  // alloc_iova_fast: the class's cache, then the tree; with 32-bit-first,
  // once under the 32-bit limit first. Only the last attempt flushes the
  // caches into the tree and retries when the tree fails.
  const bool cacheable = num_pages - 1 < cache_max_pages_;
  if (cacheable) num_pages = RoundUpPowerOfTwo(num_pages);
  uint64_t limit_now = limit_pfn;
  if (options_.try_32bit_first && limit_pfn > pfn_32bit_ && pfn_32bit_ >= start_pfn_) {
    limit_now = pfn_32bit_;
  }
  for (;;) {
    uint64_t pfn = cacheable ? PopCached(num_pages, limit_now) : 0;
    if (pfn != 0) return Iova(pfn << granule_shift_);
    pfn = AllocFromTree(num_pages, limit_now);
    if (pfn == 0 && limit_now == limit_pfn && cache_.cached_ranges() != 0) {
      FlushCaches();
      pfn = AllocFromTree(num_pages, limit_now);
    }
    if (pfn != 0 || limit_now == limit_pfn) {
      cache_misses_ += cacheable;  // one hit or one miss per cacheable call
      if (pfn == 0) [[unlikely]]
        return ExhaustedError(size_bytes, num_pages, limit_pfn);
      return Iova(pfn << granule_shift_);
    }
    limit_now = limit_pfn;
  }
}

// --- queries ---------------------------------------------------------------------------

std::optional<uint64_t> IovaAllocator::AllocationSizeBytes(Iova iova) const {
  const uint64_t pages = LivePages(iova.value() >> granule_shift_);
  if (pages == 0) return std::nullopt;
  return pages << granule_shift_;
}

void IovaAllocator::ForEachAllocated(const std::function<void(uint64_t, uint64_t)>& fn) const {
  std::vector<std::pair<uint64_t, uint64_t>> live;
  live.reserve(allocations_ - cache_.cached_ranges());
  small_.ForEach([&](uint64_t pfn, uint64_t pages) { live.emplace_back(pfn, pages); });
  if (!large_.empty()) {
    for (const auto& [pfn, pages] : large_) live.emplace_back(pfn, pages);
    std::sort(live.begin(), live.end());
  }
  for (const auto& [pfn, pages] : live) fn(pfn, pages);
}

IovaStats IovaAllocator::GetStats() const {
  IovaStats s;
  s.granule_bytes = options_.granule_bytes;
  s.space_pages = space_pages_;
  s.cached_pages = cache_.cached_pages();
  s.allocated_pages = allocated_pages_ - s.cached_pages;
  s.free_pages = tree_.free_pages();
  s.reserved_pages = reserved_pages_;
  s.largest_free_pages = tree_.largest_pages();
  s.free_ranges = tree_.range_count();
  std::copy_n(tree_.histogram(), internal::IovaGapTree::kHistogramBuckets, s.free_range_histogram);
  s.fragmentation_ratio = s.free_pages == 0 ? 0.0
                                            : 1.0 - static_cast<double>(s.largest_free_pages) /
                                                        static_cast<double>(s.free_pages);
  std::copy_n(failures_, kIovaFailureReasonCount, s.failures);
  s.cache_hits = cache_hits_;
  s.cache_misses = cache_misses_;
  s.live_allocations = allocations_ - cache_.cached_ranges();
  return s;
}

// --- invariants --------------------------------------------------------------------------

absl::Status IovaAllocator::CheckInvariants() const {
  if (absl::Status s = tree_.CheckInvariants(); !s.ok()) return s;
  if (!cache_.StructureOk()) return absl::InternalError("iova: magazine structure broken");
  if (absl::Status s = small_.CheckStructure(); !s.ok()) return s;
  enum Kind { kFree, kAllocated, kCached, kReserved };
  std::vector<std::tuple<uint64_t, uint64_t, Kind>> pieces;
  tree_.ForEach([&](internal::IovaGapTree::Range r) { pieces.emplace_back(r.lo, r.hi, kFree); });
  uint64_t allocated = 0;
  uint64_t live = 0;
  uint64_t misaligned = 0;
  bool large_is_small = false;
  auto add = [&](uint64_t pfn, uint64_t pages, Kind kind) {
    if (pages == 0 || pfn % RoundUpPowerOfTwo(pages) != 0) misaligned = pfn;
    allocated += pages;
    live += kind == kAllocated;
    pieces.emplace_back(pfn, pfn + pages - 1, kind);
  };
  small_.ForEach([&](uint64_t pfn, uint64_t pages) { add(pfn, pages, kAllocated); });
  for (const auto& [pfn, pages] : large_) {
    large_is_small |= pages <= internal::IovaAllocMap::kMaxPages;
    add(pfn, pages, kAllocated);
  }
  uint64_t cached_ranges = 0;
  cache_.ForEach([&](uint64_t pfn, int cls) {
    ++cached_ranges;
    add(pfn, uint64_t{1} << cls, kCached);
  });
  if (misaligned != 0) {
    return absl::InternalError(
        absl::StrFormat("iova: allocation at pfn %#x not size-aligned", misaligned));
  }
  if (large_is_small) {
    return absl::InternalError(absl::StrFormat(
        "iova: an allocation of <= %d pages in the large map", internal::IovaAllocMap::kMaxPages));
  }
  uint64_t reserved = 0;
  for (const auto& [lo, hi] : reserved_) {
    reserved += hi - lo + 1;
    pieces.emplace_back(lo, hi, kReserved);
  }
  std::sort(pieces.begin(), pieces.end());
  uint64_t expect = start_pfn_;
  Kind prev_kind = kAllocated;
  for (const auto& [lo, hi, kind] : pieces) {
    if (lo != expect || hi < lo) {
      return absl::InternalError(absl::StrFormat(
          "iova: pieces do not tile the space: [%#x, %#x] (kind %d) where %#x was expected", lo, hi,
          kind, expect));
    }
    if (kind == kReserved && prev_kind == kReserved && lo != start_pfn_) {
      return absl::InternalError(absl::StrFormat("iova: reserved range at %#x not merged", lo));
    }
    prev_kind = kind;
    expect = hi + 1;
  }
  if (expect != end_pfn_ + 1) {
    return absl::InternalError(
        absl::StrFormat("iova: pieces end at %#x, space ends at %#x", expect - 1, end_pfn_));
  }
  if (allocated != allocated_pages_ || reserved != reserved_pages_) {
    return absl::InternalError(
        absl::StrFormat("iova: recount allocated %#x reserved %#x, tracked %#x / %#x", allocated,
                        reserved, allocated_pages_, reserved_pages_));
  }
  if (cached_ranges != cache_.cached_ranges() || live + cached_ranges != allocations_) {
    return absl::InternalError(absl::StrFormat(
        "iova: recount %u cached ranges, %u live allocations; tracked %u cached, %u in all",
        cached_ranges, live, cache_.cached_ranges(), allocations_));
  }
  for (const uint64_t cursor : {cursor32_, cursor_}) {
    internal::IovaGapTree::Range r;
    if (cursor != kNoCursor &&
        (cursor < start_pfn_ || cursor > end_pfn_ || tree_.FindContaining(cursor, &r))) {
      return absl::InternalError(absl::StrFormat("iova: cursor %#x is free or outside", cursor));
    }
  }
  return absl::OkStatus();
}

}  // namespace iommu::core
