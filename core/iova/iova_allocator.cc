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
      start_pfn_(options.start_pfn),
      end_pfn_(options.end_pfn),
      space_pages_(options.end_pfn - options.start_pfn + 1),
      pfn_32bit_(((uint64_t{1} << 32) >> Log2(options.granule_bytes)) - 1),
      tree_(num_orders),
      small_(options.start_pfn, options.end_pfn) {
  if (options.cache.enabled) {
    const int classes = std::min<int>(Log2(options.cache.max_pages) + 1, num_orders);
    cache_max_pages_ = uint64_t{1} << (classes - 1);
    inline_free_max_pages_ = std::min(cache_max_pages_, internal::IovaAllocMap::kGroupPages);
    inline_alloc_max_pages_ = options.try_32bit_first ? 0 : inline_free_max_pages_;
    cache_ = internal::IovaMagazineCache(classes, options.cache.magazine_depth,
                                         options.cache.depot_magazines);
  }
  tree_.Release(start_pfn_, end_pfn_);
}

// --- allocation ----------------------------------------------------------------

absl::Status IovaAllocator::ValidateRequest(uint64_t num_pages, uint64_t limit_pfn) const {
  if (num_pages == 0) return InvalidField("num_pages", 0, "must be non-zero");
  if (num_pages > space_pages_) {
    return OutOfRangeField(
        "num_pages", num_pages,
        absl::StrFormat("larger than the IOVA space of %#x pages", space_pages_));
  }
  if (limit_pfn < start_pfn_) {
    return OutOfRangeField("limit_pfn", limit_pfn,
                           absl::StrFormat("below start_pfn=%#x", start_pfn_));
  }
  return absl::OkStatus();
}

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

uint64_t IovaAllocator::AllocFastOnce(uint64_t num_pages, uint64_t limit_pfn, bool flush,
                                      bool* cacheable) {
  *cacheable = num_pages - 1 < cache_max_pages_;
  if (*cacheable) {
    const int cls = AlignOrder(num_pages);
    num_pages = uint64_t{1} << cls;
    if (limit_pfn + 1 >= num_pages) {
      const uint64_t pfn = cache_.Pop(cls, limit_pfn + 1 - num_pages);
      if (pfn != 0) {
        ++cache_hits_;
        RecordLive(pfn, num_pages);
        return pfn;
      }
    }
  }
  uint64_t pfn = AllocFromTree(num_pages, limit_pfn);
  if (pfn == 0 && flush && cache_.cached_ranges() != 0) {
    FlushCaches();
    pfn = AllocFromTree(num_pages, limit_pfn);
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

absl::Status IovaAllocator::ExhaustedError(absl::string_view field, uint64_t value,
                                           uint64_t num_pages, uint64_t limit_pfn,
                                           IovaFailureReason reason) const {
  const uint64_t largest = tree_.largest_pages();
  return FieldError(
      absl::StatusCode::kResourceExhausted, field, value,
      absl::StrFormat("no free IOVA range holds %#x pages (%#x bytes) aligned to %#x pages "
                      "at or below limit_pfn=%#x (%s); largest free range %#x pages "
                      "(%#x bytes), %#x pages free",
                      num_pages, num_pages << granule_shift_, RoundUpPowerOfTwo(num_pages),
                      limit_pfn, ReasonName(reason), largest, largest << granule_shift_,
                      tree_.free_pages()));
}

uint64_t IovaAllocator::AllocTreePath(uint64_t num_pages, uint64_t limit_pfn,
                                      IovaFailureReason* reason) {
  const uint64_t limit = ClipLimit(limit_pfn);
  if (options_.try_32bit_first && limit > pfn_32bit_ && pfn_32bit_ >= start_pfn_) {
    if (const uint64_t pfn = AllocFromTree(num_pages, pfn_32bit_); pfn != 0) return pfn;
  }
  const uint64_t pfn = AllocFromTree(num_pages, limit);
  if (pfn == 0) *reason = CountFailure(num_pages);
  return pfn;
}

uint64_t IovaAllocator::AllocFastPath(uint64_t num_pages, uint64_t limit_pfn,
                                      IovaFailureReason* reason) {
  const uint64_t limit = ClipLimit(limit_pfn);
  const uint64_t hits_before = cache_hits_;
  bool cacheable = false;
  uint64_t pfn = 0;
  if (options_.try_32bit_first && limit > pfn_32bit_ && pfn_32bit_ >= start_pfn_) {
    pfn = AllocFastOnce(num_pages, pfn_32bit_, /*flush=*/false, &cacheable);
  }
  if (pfn == 0) pfn = AllocFastOnce(num_pages, limit, /*flush=*/true, &cacheable);
  // One hit or one miss per cacheable call.
  if (cacheable && cache_hits_ == hits_before) ++cache_misses_;
  if (pfn == 0) *reason = CountFailure(FastSize(num_pages));
  return pfn;
}

uint64_t IovaAllocator::AllocPfnsOrZero(uint64_t num_pages, uint64_t limit_pfn) {
  if (num_pages == 0 || num_pages > space_pages_ || limit_pfn < start_pfn_) return 0;
  IovaFailureReason reason;
  return AllocTreePath(num_pages, limit_pfn, &reason);
}

uint64_t IovaAllocator::AllocPfnsFastSlow(uint64_t num_pages, uint64_t limit_pfn) {
  if (num_pages == 0 || num_pages > space_pages_ || limit_pfn < start_pfn_) return 0;
  IovaFailureReason reason;
  return AllocFastPath(num_pages, limit_pfn, &reason);
}

absl::StatusOr<uint64_t> IovaAllocator::AllocPfns(uint64_t num_pages, uint64_t limit_pfn) {
  if (absl::Status s = ValidateRequest(num_pages, limit_pfn); !s.ok()) [[unlikely]] {
    return s;
  }
  IovaFailureReason reason = IovaFailureReason::kNoSpace;
  const uint64_t pfn = AllocTreePath(num_pages, limit_pfn, &reason);
  if (pfn != 0) [[likely]]
    return pfn;
  return ExhaustedError("num_pages", num_pages, num_pages, ClipLimit(limit_pfn), reason);
}

absl::StatusOr<uint64_t> IovaAllocator::AllocPfnsFast(uint64_t num_pages, uint64_t limit_pfn) {
  if (absl::Status s = ValidateRequest(num_pages, limit_pfn); !s.ok()) [[unlikely]] {
    return s;
  }
  IovaFailureReason reason = IovaFailureReason::kNoSpace;
  const uint64_t pfn = AllocFastPath(num_pages, limit_pfn, &reason);
  if (pfn != 0) [[likely]]
    return pfn;
  return ExhaustedError("num_pages", num_pages, FastSize(num_pages), ClipLimit(limit_pfn), reason);
}

// --- live-allocation index --------------------------------------------------------

void IovaAllocator::RecordLive(uint64_t pfn, uint64_t num_pages) {
  if (num_pages <= internal::IovaAllocMap::kMaxPages) {
    small_.Insert(pfn, num_pages);
  } else {
    large_.emplace(pfn, num_pages);
  }
}

void IovaAllocator::EraseLive(uint64_t pfn, uint64_t num_pages) {
  if (num_pages <= internal::IovaAllocMap::kMaxPages) {
    internal::IovaAllocMap::Clear(small_.Existing(pfn), pfn, num_pages);
  } else {
    large_.erase(pfn);
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

absl::Status IovaAllocator::NotLiveError(uint64_t pfn) const {
  bool cached = false;
  cache_.ForEach([&](uint64_t cached_pfn, int) { cached |= cached_pfn == pfn; });
  return FieldError(absl::StatusCode::kNotFound, "pfn", pfn,
                    cached ? "allocation already freed (it sits in a range cache)"
                           : "no live allocation starts at this pfn");
}

absl::Status IovaAllocator::FreePfns(uint64_t pfn) {
  // LivePages + EraseLive in one lookup: the small allocation's group once,
  // or one probe of large_ (erase by the iterator find returned).
  internal::IovaAllocMap::Group* const g = small_.Find(pfn);
  if (const uint64_t pages = internal::IovaAllocMap::PagesAt(*g, pfn); pages != 0) {
    internal::IovaAllocMap::Clear(*g, pfn, pages);
    ReleaseToTree(pfn, pages);
    return absl::OkStatus();
  }
  if (!large_.empty()) {
    if (const auto it = large_.find(pfn); it != large_.end()) {
      const uint64_t pages = it->second;
      large_.erase(it);
      ReleaseToTree(pfn, pages);
      return absl::OkStatus();
    }
  }
  return NotLiveError(pfn);
}

absl::Status IovaAllocator::FreePfnsFastSlow(uint64_t pfn, uint64_t num_pages) {
  const uint64_t pages = LivePages(pfn);
  if (pages == 0) [[unlikely]]
    return NotLiveError(pfn);
  if (num_pages - 1 < cache_max_pages_) {
    const int cls = AlignOrder(num_pages);
    if (pages == uint64_t{1} << cls) [[likely]] {
      EraseLive(pfn, pages);
      cache_.Push(cls, pfn, [this](uint64_t spilled, int spilled_cls) {
        ReleaseToTree(spilled, uint64_t{1} << spilled_cls);
      });
      return absl::OkStatus();
    }
  }
  if (pages != num_pages) [[unlikely]] {
    return InvalidField("num_pages", num_pages,
                        absl::StrFormat("the allocation at pfn=%#x has %#x pages", pfn, pages));
  }
  EraseLive(pfn, pages);
  ReleaseToTree(pfn, num_pages);
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

// --- byte interface ----------------------------------------------------------------------

absl::StatusOr<Iova> IovaAllocator::AllocIova(uint64_t size_bytes, Iova limit) {
  if (size_bytes == 0) return InvalidField("size_bytes", 0, "must be non-zero");
  const uint64_t mask = options_.granule_bytes - 1;
  const uint64_t num_pages = (size_bytes >> granule_shift_) + ((size_bytes & mask) != 0);
  const uint64_t limit_pfn = limit.value() >> granule_shift_;
  if (num_pages > space_pages_) {
    return OutOfRangeField(
        "size_bytes", size_bytes,
        absl::StrFormat("larger than the IOVA space of %#x bytes", space_pages_ << granule_shift_));
  }
  if (limit_pfn < start_pfn_) {
    return OutOfRangeField(
        "limit", limit.value(),
        absl::StrFormat("below the first allocatable IOVA %#x", start_pfn_ << granule_shift_));
  }
  IovaFailureReason reason = IovaFailureReason::kNoSpace;
  const uint64_t pfn = AllocFastPath(num_pages, limit_pfn, &reason);
  if (pfn != 0) [[likely]]
    return Iova(pfn << granule_shift_);
  return ExhaustedError("size_bytes", size_bytes, FastSize(num_pages), ClipLimit(limit_pfn),
                        reason);
}

absl::Status IovaAllocator::FreeIova(Iova iova, uint64_t size_bytes) {
  const uint64_t mask = options_.granule_bytes - 1;
  if ((iova.value() & mask) != 0) {
    return InvalidField("iova", iova.value(), "not aligned to the granule");
  }
  if (size_bytes == 0) return InvalidField("size_bytes", 0, "must be non-zero");
  const uint64_t num_pages = (size_bytes >> granule_shift_) + ((size_bytes & mask) != 0);
  return FreePfnsFast(iova.value() >> granule_shift_, num_pages);
}

std::optional<uint64_t> IovaAllocator::AllocationSizeBytes(Iova iova) const {
  const std::optional<uint64_t> pages = AllocationPages(iova.value() >> granule_shift_);
  if (!pages) return std::nullopt;
  return *pages << granule_shift_;
}

// --- queries ---------------------------------------------------------------------------

std::optional<uint64_t> IovaAllocator::AllocationPages(uint64_t pfn) const {
  const uint64_t pages = LivePages(pfn);
  if (pages == 0) return std::nullopt;
  return pages;
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
