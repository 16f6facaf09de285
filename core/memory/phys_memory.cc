// SPDX-License-Identifier: Apache-2.0
#include "core/memory/phys_memory.h"

#include <algorithm>
#include <cassert>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/base/bits.h"
#include "core/base/errors.h"
#include "core/base/fail_nth.h"
#include "core/base/status_macros.h"

namespace iommu::core {
namespace {

absl::Status Broken(absl::string_view field, uint64_t value, absl::string_view why) {
  return FieldError(absl::StatusCode::kInternal, field, value, why);
}

// The same status with `prefix` before its message (a field path).
absl::Status Prefixed(const absl::Status& s, absl::string_view prefix) {
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}

}  // namespace

PhysMemory::PhysMemory(uint64_t page_size_bytes, std::vector<MemoryRegionConfig> regions,
                       std::vector<Pool> pools)
    : page_size_bytes_(page_size_bytes),
      huge_order_(Log2(kHugePageBytes / page_size_bytes)),
      regions_(std::move(regions)),
      pools_(std::move(pools)) {}

bool PhysMemory::FitsLocked(const Pool& pool, uint64_t num_pages, Placement placement) const {
  switch (placement) {
    case Placement::kScattered: {
      uint64_t free_pages = 0;
      for (const BuddyAllocator& b : pool.ranges) free_pages += b.free_pages();
      return free_pages >= num_pages;
    }
    case Placement::kContiguous: {
      const unsigned order = Log2(RoundUpPowerOfTwo(num_pages));
      for (const BuddyAllocator& b : pool.ranges) {
        const std::optional<unsigned> largest = b.LargestFreeOrder();
        if (largest.has_value() && *largest >= order) return true;
      }
      return false;
    }
    case Placement::kHuge: {
      uint64_t blocks = 0;
      for (const BuddyAllocator& b : pool.ranges) {
        if (b.max_order() >= huge_order_) blocks += b.AvailableBlocks(huge_order_);
      }
      return blocks >= (num_pages >> huge_order_);
    }
  }
  return false;
}

namespace {

// Appends `pages` (order-0 addresses of one buddy range) to chunks, merging
// physical neighbours. REQUIRES: `pages` sorted.
template <typename Chunk>
void AppendChunks(const std::vector<uint64_t>& pages, uint64_t page_bytes, size_t range_index,
                  std::vector<Chunk>* chunks) {
  for (size_t i = 0; i < pages.size();) {
    size_t j = i + 1;
    while (j < pages.size() && pages[j] == pages[j - 1] + page_bytes) ++j;
    chunks->push_back({PhysAddr(pages[i]), (j - i) * page_bytes, range_index});
    i = j;
  }
}

}  // namespace

std::vector<PhysRun> PhysMemory::TakeLocked(Pool& pool, uint64_t num_pages, Placement placement,
                                            std::vector<Chunk>* chunks) {
  const uint64_t page = page_size_bytes_;
  std::vector<PhysRun> runs;
  switch (placement) {
    case Placement::kScattered: {
      std::vector<uint64_t> all;
      all.reserve(num_pages);
      for (size_t ri = 0; ri < pool.ranges.size() && all.size() < num_pages; ++ri) {
        std::vector<uint64_t> pages;
        while (all.size() + pages.size() < num_pages && pool.ranges[ri].free_pages() > 0) {
          absl::StatusOr<PhysAddr> a = pool.ranges[ri].Allocate(0);
          assert(a.ok());
          pages.push_back(a->value());
        }
        std::sort(pages.begin(), pages.end());
        AppendChunks(pages, page, ri, chunks);
        all.insert(all.end(), pages.begin(), pages.end());
      }
      assert(all.size() == num_pages);
      // Interleave the upper half with the lower half: after p[h + i] comes
      // p[i] (lower), after p[i] comes p[h + i + 1] >= p[i] + (h + 1) pages,
      // so no run is followed by its physical successor.
      std::sort(all.begin(), all.end());
      const size_t h = all.size() / 2;
      runs.reserve(all.size());
      for (size_t i = 0; i < h; ++i) {
        runs.push_back({PhysAddr(all[h + i]), page});
        runs.push_back({PhysAddr(all[i]), page});
      }
      if (all.size() % 2 != 0) runs.push_back({PhysAddr(all.back()), page});
      return runs;
    }
    case Placement::kContiguous: {
      const unsigned order = Log2(RoundUpPowerOfTwo(num_pages));
      for (size_t ri = 0; ri < pool.ranges.size(); ++ri) {
        BuddyAllocator& b = pool.ranges[ri];
        const std::optional<unsigned> largest = b.LargestFreeOrder();
        if (!largest.has_value() || *largest < order) continue;
        absl::StatusOr<PhysAddr> a = b.Allocate(order);
        assert(a.ok());
        const uint64_t tail_pages = (uint64_t{1} << order) - num_pages;
        if (tail_pages > 0) {
          [[maybe_unused]] absl::Status s = b.FreeRange(*a + num_pages * page, tail_pages);
          assert(s.ok());
        }
        chunks->push_back({*a, num_pages * page, ri});
        runs.push_back({*a, num_pages * page});
        return runs;
      }
      assert(false && "FitsLocked promised a block");
      return runs;
    }
    case Placement::kHuge: {
      uint64_t blocks = num_pages >> huge_order_;
      for (size_t ri = 0; ri < pool.ranges.size() && blocks > 0; ++ri) {
        BuddyAllocator& b = pool.ranges[ri];
        if (b.max_order() < huge_order_) continue;
        std::vector<uint64_t> starts;
        for (; blocks > 0 && b.AvailableBlocks(huge_order_) > 0; --blocks) {
          absl::StatusOr<PhysAddr> a = b.Allocate(huge_order_);
          assert(a.ok());
          runs.push_back({*a, kHugePageBytes});
          starts.push_back(a->value());
        }
        std::sort(starts.begin(), starts.end());
        for (size_t i = 0; i < starts.size();) {
          size_t j = i + 1;
          while (j < starts.size() && starts[j] == starts[j - 1] + kHugePageBytes) ++j;
          chunks->push_back({PhysAddr(starts[i]), (j - i) * kHugePageBytes, ri});
          i = j;
        }
      }
      assert(blocks == 0);
      return runs;
    }
  }
  return runs;
}

absl::StatusOr<PhysAllocation> PhysMemory::AllocPages(uint64_t owner_id, uint64_t size_bytes,
                                                      Placement placement,
                                                      absl::string_view pool_name) {
  if (placement != Placement::kScattered && placement != Placement::kContiguous &&
      placement != Placement::kHuge) {
    return InvalidField("placement", uint64_t(placement), "not a placement");
  }
  if (size_bytes == 0) return InvalidField("size_bytes", 0, "must be non-zero");
  const uint64_t unit = placement == Placement::kHuge ? kHugePageBytes : page_size_bytes_;
  const std::optional<uint64_t> rounded = AlignUp(size_bytes, unit);
  if (!rounded.has_value()) {
    return InvalidField("size_bytes", size_bytes, "passes 2^64 when rounded up to pages");
  }
  const uint64_t num_pages = *rounded / page_size_bytes_;

  absl::MutexLock lock(&mu_);
  std::vector<size_t> candidates;
  for (size_t i = 0; i < pools_.size(); ++i) {
    if (pool_name.empty() || pools_[i].name == pool_name) candidates.push_back(i);
  }
  if (candidates.empty()) {
    if (!pool_name.empty()) {
      return FieldError(absl::StatusCode::kNotFound, "pool", pool_name, "no such pool");
    }
  }
  // The pools run dry (docs/design.md#failure-injection): no page is taken.
  if (fail_nth::ShouldFail(FailPoint::kMemoryPages)) {
    return fail_nth::Exhausted(FailPoint::kMemoryPages, "size_bytes", size_bytes,
                               absl::StrFormat("no pool can give %#x pages", num_pages));
  }
  for (size_t i : candidates) {
    Pool& pool = pools_[i];
    if (!FitsLocked(pool, num_pages, placement)) continue;
    PhysAllocation allocation;
    allocation.id = next_allocation_id_++;
    allocation.owner_id = owner_id;
    allocation.pool = pool.name;
    allocation.placement = placement;
    allocation.size_bytes = *rounded;
    AllocationRecord record{owner_id, i, {}};
    allocation.runs = TakeLocked(pool, num_pages, placement, &record.chunks);
    for (const Chunk& c : record.chunks) {
      owned_.emplace(c.start.value(),
                     OwnedChunk{c.start.value() + c.size_bytes, owner_id, allocation.id});
    }
    std::sort(record.chunks.begin(), record.chunks.end(),
              [](const Chunk& a, const Chunk& b) { return a.start < b.start; });
    by_owner_.emplace(owner_id, allocation.id);
    allocations_.emplace(allocation.id, std::move(record));
    pool.allocated_pages += num_pages;
    ++pool.live_allocations;
    ++pool.allocations_total;
    return allocation;
  }
  // Nothing fits: name every pool tried with its free pages and largest block.
  std::vector<std::string> tried;
  for (size_t i : candidates) {
    Pool& pool = pools_[i];
    ++pool.failures_total;
    uint64_t free_pages = 0;
    uint64_t largest_pages = 0;
    for (const BuddyAllocator& b : pool.ranges) {
      free_pages += b.free_pages();
      if (const std::optional<unsigned> k = b.LargestFreeOrder()) {
        largest_pages = std::max(largest_pages, uint64_t{1} << *k);
      }
    }
    tried.push_back(absl::StrFormat("\"%s\" (%#x pages free, largest free block %#x bytes)",
                                    pool.name, free_pages, largest_pages * page_size_bytes_));
  }
  return FieldError(
      absl::StatusCode::kResourceExhausted, "size_bytes", *rounded,
      absl::StrFormat("%s placement of %#x pages fits in no pool: %s", PlacementName(placement),
                      num_pages, tried.empty() ? "none configured" : absl::StrJoin(tried, ", ")));
}

absl::StatusOr<PhysAllocation> PhysMemory::ClaimPages(uint64_t owner_id,
                                                      absl::string_view pool_name,
                                                      Placement placement,
                                                      absl::Span<const PhysRun> runs) {
  if (placement != Placement::kScattered && placement != Placement::kContiguous &&
      placement != Placement::kHuge) {
    return InvalidField("placement", uint64_t(placement), "not a placement");
  }
  if (runs.empty()) return InvalidField("runs", 0, "must hold at least one run");
  auto field = [](size_t i, absl::string_view name) {
    return absl::StrCat("runs[", i, "].", name);
  };
  for (size_t i = 0; i < runs.size(); ++i) {
    const PhysRun& r = runs[i];
    if (r.size_bytes == 0) return InvalidField(field(i, "size_bytes"), 0, "must be non-zero");
    if (!IsAligned(r.start.value(), page_size_bytes_)) {
      return InvalidField(field(i, "start"), r.start.value(), "must be page-aligned");
    }
    if (!IsAligned(r.size_bytes, page_size_bytes_)) {
      return InvalidField(field(i, "size_bytes"), r.size_bytes,
                          "must be a multiple of the page size");
    }
    if (!LastOfRange(r.start.value(), r.size_bytes).has_value()) {
      return InvalidField(field(i, "size_bytes"), r.size_bytes,
                          absl::StrFormat("run at %#x passes 2^64", r.start.value()));
    }
  }
  // Overlaps: in address order, each run must end before the next starts.
  std::vector<size_t> by_start(runs.size());
  for (size_t i = 0; i < runs.size(); ++i) by_start[i] = i;
  std::sort(by_start.begin(), by_start.end(), [&](size_t a, size_t b) {
    return std::pair(runs[a].start, a) < std::pair(runs[b].start, b);
  });
  for (size_t k = 1; k < by_start.size(); ++k) {
    const size_t a = by_start[k - 1];
    const size_t b = by_start[k];
    if (runs[b].start - runs[a].start < runs[a].size_bytes) {
      const size_t later = std::max(a, b);
      const size_t earlier = std::min(a, b);
      return InvalidField(field(later, "start"), runs[later].start.value(),
                          absl::StrFormat("overlaps runs[%u] [%#x, +%#x)", earlier,
                                          runs[earlier].start.value(), runs[earlier].size_bytes));
    }
  }

  absl::MutexLock lock(&mu_);
  size_t pool_index = 0;
  while (pool_index < pools_.size() && pools_[pool_index].name != pool_name) ++pool_index;
  if (pool_index == pools_.size()) {
    return FieldError(absl::StatusCode::kNotFound, "pool", pool_name, "no such pool");
  }
  Pool& pool = pools_[pool_index];
  // The buddy range of each run.
  std::vector<size_t> range_of(runs.size());
  for (size_t i = 0; i < runs.size(); ++i) {
    const PhysRun& r = runs[i];
    size_t ri = 0;
    while (ri < pool.ranges.size() && !(pool.ranges[ri].Contains(r.start) &&
                                        pool.ranges[ri].Contains(r.start + (r.size_bytes - 1)))) {
      ++ri;
    }
    if (ri == pool.ranges.size()) {
      return OutOfRangeField(field(i, "start"), r.start.value(),
                             absl::StrFormat("run of %#x bytes not inside one range of pool \"%s\"",
                                             r.size_bytes, pool.name));
    }
    range_of[i] = ri;
  }
  // Claim, all or nothing.
  uint64_t pages = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const uint64_t n = runs[i].size_bytes / page_size_bytes_;
    absl::Status s = pool.ranges[range_of[i]].ClaimRange(runs[i].start, n);
    if (!s.ok()) {
      for (size_t j = 0; j < i; ++j) {
        [[maybe_unused]] absl::Status undo = pool.ranges[range_of[j]].FreeRange(
            runs[j].start, runs[j].size_bytes / page_size_bytes_);
        assert(undo.ok());
      }
      if (s.code() != absl::StatusCode::kFailedPrecondition) return Prefixed(s, field(i, ""));
      // The lowest owned page of the run (the page the buddy names, as
      // owned and not free are the same pages), with its owner.
      const uint64_t start = runs[i].start.value();
      auto o = owned_.upper_bound(start);
      if (o != owned_.begin() && std::prev(o)->second.end > start) {
        --o;
      } else if (o == owned_.end() || o->first > start + (runs[i].size_bytes - 1)) {
        return Prefixed(s, field(i, ""));
      }
      return FieldError(absl::StatusCode::kFailedPrecondition, field(i, "page"),
                        std::max(start, o->first),
                        absl::StrFormat("already allocated (owner %#x, allocation %#x)",
                                        o->second.owner_id, o->second.allocation_id));
    }
    pages += n;
  }
  // One owned chunk per physically contiguous stretch of runs in one range.
  AllocationRecord record{owner_id, pool_index, {}};
  for (size_t i : by_start) {
    const PhysRun& r = runs[i];
    if (!record.chunks.empty()) {
      Chunk& last = record.chunks.back();
      if (last.range_index == range_of[i] && last.start + last.size_bytes == r.start) {
        last.size_bytes += r.size_bytes;
        continue;
      }
    }
    record.chunks.push_back({r.start, r.size_bytes, range_of[i]});
  }
  PhysAllocation allocation;
  allocation.id = next_allocation_id_++;
  allocation.owner_id = owner_id;
  allocation.pool = pool.name;
  allocation.placement = placement;
  allocation.size_bytes = pages * page_size_bytes_;
  allocation.runs.assign(runs.begin(), runs.end());
  for (const Chunk& c : record.chunks) {
    owned_.emplace(c.start.value(),
                   OwnedChunk{c.start.value() + c.size_bytes, owner_id, allocation.id});
  }
  by_owner_.emplace(owner_id, allocation.id);
  allocations_.emplace(allocation.id, std::move(record));
  pool.allocated_pages += pages;
  ++pool.live_allocations;
  ++pool.allocations_total;
  return allocation;
}

uint64_t PhysMemory::FreeLocked(uint64_t allocation_id) {
  auto it = allocations_.find(allocation_id);
  assert(it != allocations_.end());
  AllocationRecord& record = it->second;
  Pool& pool = pools_[record.pool_index];
  uint64_t pages = 0;
  for (const Chunk& c : record.chunks) {
    const uint64_t n = c.size_bytes / page_size_bytes_;
    [[maybe_unused]] absl::Status s = pool.ranges[c.range_index].FreeRange(c.start, n);
    assert(s.ok());
    owned_.erase(c.start.value());
    pages += n;
  }
  pool.allocated_pages -= pages;
  --pool.live_allocations;
  by_owner_.erase({record.owner_id, allocation_id});
  allocations_.erase(it);
  return pages;
}

absl::Status PhysMemory::FreeAllocation(uint64_t allocation_id) {
  absl::MutexLock lock(&mu_);
  if (!allocations_.contains(allocation_id)) {
    return FieldError(absl::StatusCode::kNotFound, "allocation_id", allocation_id,
                      "no live allocation (already freed?)");
  }
  FreeLocked(allocation_id);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> PhysMemory::FreeOwner(uint64_t owner_id) {
  absl::MutexLock lock(&mu_);
  auto it = by_owner_.lower_bound({owner_id, 0});
  if (it == by_owner_.end() || it->first != owner_id) {
    return FieldError(absl::StatusCode::kNotFound, "owner_id", owner_id, "owns no pages");
  }
  uint64_t pages = 0;
  while (it != by_owner_.end() && it->first == owner_id) {
    const uint64_t id = it->second;
    ++it;  // FreeLocked erases the current entry
    pages += FreeLocked(id);
  }
  return pages;
}

std::optional<uint64_t> PhysMemory::Owner(PhysAddr addr) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = owned_.upper_bound(addr.value());
  if (it == owned_.begin()) return std::nullopt;
  --it;
  if (addr.value() >= it->second.end) return std::nullopt;
  return it->second.owner_id;
}

absl::Status PhysMemory::CheckOwned(uint64_t owner_id, PhysAddr start, uint64_t size_bytes) const {
  if (size_bytes == 0) return InvalidField("size_bytes", 0, "must be non-zero");
  const std::optional<uint64_t> last = LastOfRange(start.value(), size_bytes);
  if (!last.has_value()) {
    return InvalidField("size_bytes", size_bytes,
                        absl::StrFormat("range at %#x passes 2^64", start.value()));
  }
  absl::ReaderMutexLock lock(&mu_);
  uint64_t page = AlignDown(start.value(), page_size_bytes_);
  auto it = owned_.upper_bound(page);
  if (it != owned_.begin()) --it;
  while (true) {
    if (it == owned_.end() || it->first > page || page >= it->second.end ||
        it->second.owner_id != owner_id) {
      return FieldError(absl::StatusCode::kPermissionDenied, "phys_addr", page,
                        absl::StrFormat("page not owned by owner %#x", owner_id));
    }
    if (*last < it->second.end) return absl::OkStatus();
    page = it->second.end;
    ++it;
  }
}

const MemoryRegionConfig* PhysMemory::RegionContaining(PhysAddr start, uint64_t size_bytes) const {
  const std::optional<uint64_t> last = LastOfRange(start.value(), size_bytes);
  if (!last.has_value()) return nullptr;
  auto it = std::upper_bound(regions_.begin(), regions_.end(), start,
                             [](PhysAddr a, const MemoryRegionConfig& r) { return a < r.base; });
  if (it == regions_.begin()) return nullptr;
  --it;
  if (*last > *LastOfRange(it->base.value(), it->size_bytes)) return nullptr;
  return &*it;
}

const MemoryRegionConfig* PhysMemory::RegionAt(PhysAddr addr) const {
  return RegionContaining(addr, 1);
}

bool PhysMemory::IsRam(PhysAddr start, uint64_t size_bytes) const {
  const MemoryRegionConfig* r = RegionContaining(start, size_bytes);
  return r != nullptr && r->kind == RegionKind::kRam;
}

bool PhysMemory::IsMmio(PhysAddr start, uint64_t size_bytes) const {
  const MemoryRegionConfig* r = RegionContaining(start, size_bytes);
  return r != nullptr && r->kind == RegionKind::kMmio;
}

std::vector<PoolStats> PhysMemory::Stats() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<PoolStats> out;
  for (const Pool& pool : pools_) {
    PoolStats s;
    s.name = pool.name;
    s.priority = pool.priority;
    s.page_size_bytes = page_size_bytes_;
    for (const BuddyAllocator& b : pool.ranges) {
      const BuddyStats bs = b.Stats();
      s.total_pages += bs.total_pages;
      s.free_pages += bs.free_pages;
      s.largest_free_block_bytes =
          std::max(s.largest_free_block_bytes, bs.largest_free_block_pages * page_size_bytes_);
      if (s.free_blocks_by_order.size() < bs.free_blocks_by_order.size()) {
        s.free_blocks_by_order.resize(bs.free_blocks_by_order.size());
      }
      for (size_t k = 0; k < bs.free_blocks_by_order.size(); ++k) {
        s.free_blocks_by_order[k] += bs.free_blocks_by_order[k];
      }
    }
    s.allocated_pages = pool.allocated_pages;
    s.live_allocations = pool.live_allocations;
    s.allocations_total = pool.allocations_total;
    s.failures_total = pool.failures_total;
    out.push_back(std::move(s));
  }
  return out;
}

absl::Status PhysMemory::CheckInvariants() const {
  absl::ReaderMutexLock lock(&mu_);
  // The ownership map: disjoint, page-aligned chunks, each of a live allocation.
  uint64_t prev_end = 0;
  for (const auto& [start, chunk] : owned_) {
    if (start < prev_end) return Broken("owned_chunk", start, "overlaps the previous chunk");
    if (!IsAligned(start, page_size_bytes_) || !IsAligned(chunk.end, page_size_bytes_) ||
        chunk.end <= start) {
      return Broken("owned_chunk", start, "not a non-empty whole number of pages");
    }
    auto a = allocations_.find(chunk.allocation_id);
    if (a == allocations_.end()) return Broken("owned_chunk", start, "of no live allocation");
    if (a->second.owner_id != chunk.owner_id) return Broken("owned_chunk", start, "owner differs");
    prev_end = chunk.end;
  }
  // The allocation table against the map, the owner index and the pools.
  std::vector<uint64_t> pages_by_pool(pools_.size(), 0);
  std::vector<uint64_t> live_by_pool(pools_.size(), 0);
  size_t chunk_count = 0;
  for (const auto& [id, record] : allocations_) {
    if (!by_owner_.contains({record.owner_id, id})) {
      return Broken("allocation_id", id, "missing from the owner index");
    }
    if (record.pool_index >= pools_.size()) return Broken("allocation_id", id, "bad pool index");
    const Pool& pool = pools_[record.pool_index];
    for (const Chunk& c : record.chunks) {
      auto o = owned_.find(c.start.value());
      if (o == owned_.end() || o->second.end != c.start.value() + c.size_bytes ||
          o->second.allocation_id != id) {
        return Broken("allocation_id", id, "chunk not in the ownership map");
      }
      if (c.range_index >= pool.ranges.size()) return Broken("allocation_id", id, "bad range");
      const BuddyAllocator& b = pool.ranges[c.range_index];
      if (!b.Contains(c.start) || !b.Contains(c.start + (c.size_bytes - 1))) {
        return Broken("allocation_id", id, "chunk outside its buddy range");
      }
      pages_by_pool[record.pool_index] += c.size_bytes / page_size_bytes_;
      ++chunk_count;
    }
    ++live_by_pool[record.pool_index];
  }
  if (chunk_count != owned_.size()) return Broken("owned_chunks", owned_.size(), "recount differs");
  if (by_owner_.size() != allocations_.size()) {
    return Broken("owner_index", by_owner_.size(), "size differs from allocations");
  }
  for (size_t p = 0; p < pools_.size(); ++p) {
    const Pool& pool = pools_[p];
    uint64_t total = 0, free_pages = 0;
    for (size_t r = 0; r < pool.ranges.size(); ++r) {
      const BuddyAllocator& b = pool.ranges[r];
      if (absl::Status s = b.CheckInvariants(); !s.ok()) {
        return Prefixed(s, absl::StrCat("pools[\"", pool.name, "\"].ranges[", r, "]."));
      }
      total += b.total_pages();
      free_pages += b.free_pages();
      // No free block overlaps an owned chunk.
      for (const BuddyBlock& blk : b.FreeBlocks()) {
        const uint64_t end = blk.start.value() + (page_size_bytes_ << blk.order);
        auto o = owned_.upper_bound(blk.start.value());
        if (o != owned_.end() && o->first < end) {
          return Broken("free_block", blk.start.value(), "overlaps an owned chunk");
        }
        if (o != owned_.begin() && std::prev(o)->second.end > blk.start.value()) {
          return Broken("free_block", blk.start.value(), "overlaps an owned chunk");
        }
      }
    }
    if (pool.allocated_pages != pages_by_pool[p] || total - free_pages != pages_by_pool[p]) {
      return Broken("allocated_pages", pool.allocated_pages, "recount differs");
    }
    if (pool.live_allocations != live_by_pool[p]) {
      return Broken("live_allocations", pool.live_allocations, "recount differs");
    }
  }
  return absl::OkStatus();
}

}  // namespace iommu::core
