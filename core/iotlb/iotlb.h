// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_IOTLB_IOTLB_H_
#define IOMMU_CORE_IOTLB_IOTLB_H_

// The IOTLB of one SMMU instance: a set-associative cache of leaf
// translations, tagged (ASID, VMID), modelled on Arm SMMUv3 TLB behaviour.
//
// Entry layout (32 bytes, one aligned half cache line; a set's ways are
// contiguous, so a 4-way set is two lines):
//
//   key   u64  leaf-aligned input address | leaf_size_log2 << 2 | stale << 1
//              | valid. Leaves are >= 4 KiB, so the low 12 bits of the base
//              are free for the flags; one compare of (key & ~stale) checks
//              base, size and validity at once.
//   phys  u64  leaf-aligned output address.
//   tag   u32  asid | vmid << 16.
//   grant u8   Grant bits (core/base/prot.h) of the leaf.
//   lru   u8   recency rank in the set: 0 = most recently used,
//              ways - 1 = least recently used.
//
// Leaf sizes: an entry covers exactly one leaf of the walk that filled it (a
// 2 MiB block entry translates every address of the block). The owner passes
// the leaf sizes its formats can produce, in probe order: Lookup tries them
// one after the other, so the most common size (usually the granule) goes
// first. The model caches leaf entries only, no walk cache, so a leaf-only
// VA invalidation and an all-levels one remove the same entries; they are
// still counted apart (`invalidations_va_leaf` vs `invalidations_va`).
//
// Set index: for an address of leaf size L under tag T,
//   set = ((iova >> L) ^ Salt(T, L)) & (sets - 1),
//   Salt(T, L) = ((T << 8 | L) * 0x9e3779b97f4a7c15) >> 32.
// The salt spreads ASIDs, VMIDs and leaf sizes over the sets; the XOR keeps
// consecutive pages of one size and tag in distinct sets (for fewer than
// `sets` pages), which range invalidation relies on.
//
// Replacement: true LRU within a set. Insert takes an invalid way if the set
// has one, else evicts the least recently used way (counted in `evictions`).
// A hit or a fill makes its way the most recently used.
//
// Costs (W = ways, S = sets, n = leaf sizes, P = pages of a range at one
// size): Lookup O(n * W), no allocation, typically one set probe. Insert
// O(W). Invalidate all / by ASID / by VMID: O(S * W) scan. Invalidate or
// MarkStale by VA range: O(sum over sizes of min(P, S) * W) -- the sets that
// can hold pages of the range are probed while that is cheaper than a scan,
// else one scan of every entry; never a flush of unrelated entries.
// Figures (core/iotlb/iotlb_benchmark.cc): docs/performance.md#iotlb.
//
// Strict vs lazy invalidation (the owner's policy, InvalidationPolicy below):
//   kStrict: unmap clears the page table, then calls InvalidateVa over the
//            unmapped range before the unmap returns; the IOVA may be reused
//            at once.
//   kLazy:   unmap clears the page table, calls MarkStale over the range and
//            enqueues it on the domain's FlushQueue (core/iotlb/flush_queue.h). The
//            stale entries keep translating, as hardware does until the
//            invalidation, and every such hit is counted (`stale_hits`). The
//            queue's Flush invalidates (domain-wide, InvalidateAsid) and only
//            then releases the IOVAs, so an IOVA is never reused while a TLB
//            entry for it may survive.
//
// Thread safety: thread-compatible. The owning SMMU model serialises every
// call (Lookup included: it updates LRU state and counters) with its own lock.

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/base/prot.h"
#include "core/base/types.h"

namespace iommu::core {

// How the owner of a domain invalidates after an unmap (see above).
enum class InvalidationPolicy : uint8_t { kStrict, kLazy };

// A translation context's tag: SMMUv3 16-bit ASID and 16-bit VMID.
struct TlbTag {
  uint16_t asid = 0;
  uint16_t vmid = 0;

  constexpr uint32_t Packed() const { return uint32_t{asid} | uint32_t{vmid} << 16; }
  friend constexpr bool operator==(TlbTag, TlbTag) = default;
};

struct IotlbConfig {
  uint32_t sets = 256;  // power of two
  uint32_t ways = 4;    // 1..kMaxWays
  // log2 of every leaf size the formats behind this SMMU can produce, in
  // probe order (most common first); each in [kMinLeafLog2, kMaxLeafLog2].
  std::vector<uint8_t> leaf_sizes_log2 = {12, 21, 30};
};

// A Lookup hit.
struct IotlbHit {
  PhysAddr phys;  // translated address, offset within the leaf included
  Grant grant;    // the leaf's permissions
  uint8_t leaf_size_log2 = 0;
  bool stale = false;  // served by an entry whose mapping is gone (lazy mode)
};

// One valid entry, as ForEachEntry reports it.
struct IotlbEntryView {
  TlbTag tag;
  Iova iova;  // leaf-aligned
  uint8_t leaf_size_log2 = 0;
  PhysAddr phys;  // leaf-aligned
  Grant grant;
  bool stale = false;
};

// Counters; every one is maintained incrementally, so reading is O(1).
struct IotlbStats {
  uint64_t lookups = 0;
  uint64_t hits = 0;  // stale hits included
  uint64_t misses = 0;
  uint64_t stale_hits = 0;
  uint64_t fills = 0;      // successful Insert calls
  uint64_t evictions = 0;  // valid entries displaced by a fill
  // Invalidation commands, by scope.
  uint64_t invalidations_all = 0;
  uint64_t invalidations_asid = 0;
  uint64_t invalidations_vmid = 0;
  uint64_t invalidations_va = 0;
  uint64_t invalidations_va_leaf = 0;
  uint64_t entries_invalidated = 0;  // valid entries removed by any scope
  uint64_t mark_stale_calls = 0;
  uint64_t entries_marked_stale = 0;  // entries newly marked stale
  uint64_t occupancy = 0;             // valid entries now
};

// Whether a VA invalidation is leaf-only (SMMUv3 TLBI ... Leaf=1). The model
// has no walk cache, so both remove the same entries; only the counter differs.
enum class VaLevels : uint8_t { kAllLevels, kLeafOnly };

class Iotlb {
 public:
  static constexpr uint32_t kMaxWays = 64;
  static constexpr uint64_t kMaxEntries = uint64_t{1} << 20;
  static constexpr unsigned kMinLeafLog2 = 12;
  static constexpr unsigned kMaxLeafLog2 = 52;
  static constexpr size_t kMaxLeafSizes = 8;

  // Errors: INVALID_ARGUMENT naming `sets` (zero, not a power of two),
  // `ways` (zero, > kMaxWays, sets * ways > kMaxEntries) or
  // `leaf_sizes_log2` (empty, too many, a size out of range, a duplicate).
  static absl::StatusOr<Iotlb> Create(const IotlbConfig& config);

  Iotlb(Iotlb&&) = default;
  Iotlb& operator=(Iotlb&&) = default;
  Iotlb(const Iotlb&) = delete;
  Iotlb& operator=(const Iotlb&) = delete;

  // The translation of `iova` under `tag`, or nullopt on a miss. A hit makes
  // the entry the most recently used of its set; a hit on a stale entry still
  // translates and counts in `stale_hits`.
  // Inline: the hot path of every translation (its bar:
  // docs/performance.md#engine-bars).
  inline std::optional<IotlbHit> Lookup(TlbTag tag, Iova iova);

  // Fill after a walk: the leaf of size 2^leaf_size_log2 that contains `iova`
  // translates to the leaf containing `phys`. `iova` and `phys` may be any
  // addresses inside the leaf (they are aligned down) but must share their
  // offset in it. An entry for the same (tag, leaf) in the set is replaced in
  // place (no eviction); otherwise a free way is used or the LRU way evicted.
  // REQUIRES (caller's break-before-make): no valid entry of another leaf size
  // overlaps this leaf under `tag`; a walk of a live page table guarantees it.
  // Errors: INVALID_ARGUMENT naming `leaf_size_log2` (not a configured size)
  // or `phys` (offset in the leaf differs from iova's).
  absl::Status Insert(TlbTag tag, Iova iova, unsigned leaf_size_log2, PhysAddr phys, Grant grant);

  // Invalidations; each returns the number of entries removed.
  uint64_t InvalidateAll();
  // Entries of `asid` under `vmid` (SMMUv3 CMD_TLBI_NH_ASID).
  uint64_t InvalidateAsid(uint16_t asid, uint16_t vmid);
  // Every entry of `vmid` (CMD_TLBI_S12_VMALL).
  uint64_t InvalidateVmid(uint16_t vmid);
  // Entries of `tag` overlapping [iova, iova + size_bytes) (CMD_TLBI_NH_VA).
  // Errors: INVALID_ARGUMENT naming `size_bytes` (zero, or the range passes
  // 2^64).
  absl::StatusOr<uint64_t> InvalidateVa(TlbTag tag, Iova iova, uint64_t size_bytes,
                                        VaLevels levels);

  // Lazy mode: marks the entries of `tag` overlapping [iova, iova + size_bytes)
  // stale without removing them; returns how many were newly marked. Errors
  // as InvalidateVa.
  absl::StatusOr<uint64_t> MarkStale(TlbTag tag, Iova iova, uint64_t size_bytes);

  const IotlbStats& stats() const { return stats_; }
  uint32_t sets() const { return sets_; }
  uint32_t ways() const { return ways_; }
  uint64_t capacity() const { return uint64_t{sets_} * ways_; }

  // Calls fn(const IotlbEntryView&) for every valid entry, in set order.
  // O(capacity); for debug dumps and tests.
  template <typename Fn>
  void ForEachEntry(Fn&& fn) const;

  // Aborts with a message naming the broken invariant unless: occupancy
  // equals a recount of valid entries; no two valid entries of a set overlap
  // under one tag; each set's LRU ranks are a permutation of 0..ways-1;
  // every valid entry's base and output are aligned to its leaf size, its size
  // is a configured one and it sits in the set its index function names.
  void CheckInvariants() const;

 private:
  friend class IotlbTestPeer;

  struct alignas(32) Entry {
    uint64_t key = 0;
    uint64_t phys = 0;
    uint32_t tag = 0;
    uint8_t grant = 0;
    uint8_t lru = 0;
  };
  static_assert(sizeof(Entry) == 32);

  // Key bits below the leaf base (a leaf is at least 4 KiB).
  static constexpr uint64_t kKeyValid = uint64_t{1} << 0;
  static constexpr uint64_t kKeyStale = uint64_t{1} << 1;
  static constexpr unsigned kKeyLeafShift = 2;
  static constexpr uint64_t kKeyLeafMask = uint64_t{0x3f} << kKeyLeafShift;
  static_assert((kKeyValid | kKeyStale | kKeyLeafMask) < (uint64_t{1} << kMinLeafLog2));

  static constexpr uint64_t MakeKey(uint64_t base, unsigned leaf_log2) {
    return base | uint64_t{leaf_log2} << kKeyLeafShift | kKeyValid;
  }
  static constexpr unsigned KeyLeafLog2(uint64_t key) {
    return unsigned((key & kKeyLeafMask) >> kKeyLeafShift);
  }
  static constexpr uint64_t KeyBase(uint64_t key) { return key & ~LowMaskConst(kMinLeafLog2); }
  static constexpr uint64_t LowMaskConst(unsigned bits) { return (uint64_t{1} << bits) - 1; }
  static constexpr uint64_t kSaltMul = 0x9e3779b97f4a7c15ull;
  static constexpr uint64_t Salt(uint32_t tag, unsigned leaf_log2) {
    return ((uint64_t{tag} << 8 | leaf_log2) * kSaltMul) >> 32;
  }
  // Salt split for Lookup: (T << 8 | L) * K == (T << 8) * K + L * K (mod
  // 2^64), so the tag's product is computed once per lookup and each leaf
  // size's product once at construction.
  static constexpr uint64_t TagProduct(uint32_t tag) { return (uint64_t{tag} << 8) * kSaltMul; }

  Iotlb(uint32_t sets, uint32_t ways, absl::Span<const uint8_t> leaf_sizes_log2);

  uint32_t SetIndex(uint32_t tag, unsigned leaf_log2, uint64_t page_number) const {
    return uint32_t((page_number ^ Salt(tag, leaf_log2)) & set_mask_);
  }
  Entry* SetAt(uint32_t set_index) { return &entries_[size_t{set_index} * ways_]; }
  const Entry* SetAt(uint32_t set_index) const { return &entries_[size_t{set_index} * ways_]; }
  bool IsLeafSize(unsigned leaf_log2) const {
    return leaf_log2 < 64 && ((leaf_size_mask_ >> leaf_log2) & 1) != 0;
  }
  // Makes way `way` of `set` the most recently used.
  void Touch(Entry* set, uint32_t way);

  enum class RangeAction : uint8_t { kRemove, kMarkStale };
  // Applies `action` to the entries of `tag` overlapping [first, last];
  // returns how many changed.
  uint64_t ApplyToRange(uint32_t tag, uint64_t first, uint64_t last, RangeAction action);
  // Removes the valid entries for which pred(const Entry&) holds.
  template <typename Pred>
  uint64_t RemoveIf(Pred pred);

  uint32_t sets_ = 0;
  uint32_t ways_ = 0;
  uint64_t set_mask_ = 0;
  uint64_t leaf_size_mask_ = 0;  // bit L set when 2^L is a configured leaf size
  uint8_t num_leaf_sizes_ = 0;
  uint8_t probe_order_[kMaxLeafSizes] = {};
  uint64_t leaf_product_[kMaxLeafSizes] = {};  // probe_order_[i] * kSaltMul
  std::unique_ptr<Entry[]> entries_;           // sets_ * ways_, set-major
  IotlbStats stats_;
};

inline void Iotlb::Touch(Entry* set, uint32_t way) {
  const uint8_t rank = set[way].lru;
  if (rank == 0) return;
  for (uint32_t w = 0; w < ways_; ++w) set[w].lru += uint8_t(set[w].lru < rank);
  set[way].lru = 0;
}

inline std::optional<IotlbHit> Iotlb::Lookup(TlbTag tag, Iova iova) {
  ++stats_.lookups;
  const uint32_t packed = tag.Packed();
  const uint64_t tag_product = TagProduct(packed);
  for (uint32_t i = 0; i < num_leaf_sizes_; ++i) {
    const unsigned leaf_log2 = probe_order_[i];
    const uint64_t page_number = iova.value() >> leaf_log2;
    const uint64_t want = MakeKey(page_number << leaf_log2, leaf_log2);
    const uint64_t salt = (tag_product + leaf_product_[i]) >> 32;
    Entry* set = SetAt(uint32_t((page_number ^ salt) & set_mask_));
    for (uint32_t w = 0; w < ways_; ++w) {
      Entry& e = set[w];
      if ((e.key & ~kKeyStale) != want || e.tag != packed) continue;
      ++stats_.hits;
      const bool stale = (e.key & kKeyStale) != 0;
      stats_.stale_hits += stale;
      Touch(set, w);
      IotlbHit hit;
      hit.phys = PhysAddr(e.phys | (iova.value() & ((uint64_t{1} << leaf_log2) - 1)));
      hit.grant = Grant(e.grant);
      hit.leaf_size_log2 = uint8_t(leaf_log2);
      hit.stale = stale;
      return hit;
    }
  }
  ++stats_.misses;
  return std::nullopt;
}

template <typename Fn>
void Iotlb::ForEachEntry(Fn&& fn) const {
  const uint64_t n = capacity();
  for (uint64_t i = 0; i < n; ++i) {
    const Entry& e = entries_[i];
    if ((e.key & kKeyValid) == 0) continue;
    IotlbEntryView v;
    v.tag = TlbTag{uint16_t(e.tag & 0xffff), uint16_t(e.tag >> 16)};
    v.iova = Iova(KeyBase(e.key));
    v.leaf_size_log2 = uint8_t(KeyLeafLog2(e.key));
    v.phys = PhysAddr(e.phys);
    v.grant = Grant(e.grant);
    v.stale = (e.key & kKeyStale) != 0;
    fn(static_cast<const IotlbEntryView&>(v));
  }
}

}  // namespace iommu::core

#endif  // IOMMU_CORE_IOTLB_IOTLB_H_
