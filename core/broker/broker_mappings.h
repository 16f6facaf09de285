// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_BROKER_MAPPINGS_H_
#define IOMMU_CORE_BROKER_BROKER_MAPPINGS_H_

// A domain's mapping records and the table that finds them by address. Only
// broker*.cc include this (through broker_internal.h).

#include <cassert>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "core/base/prot.h"
#include "core/base/types.h"
#include "core/broker/broker_types.h"

namespace iommu::core::internal {

// Memory a mapping covers, as the device sees it: `phys` for `size_bytes`
// at IOVA `iova` (unpadded; GetSgTable reports these).
struct MappedPiece {
  Iova iova;
  PhysAddr phys;
  uint64_t size_bytes = 0;
};

enum class MappingKind { kMap, kMapSg, kAlloc, kMapAt, kMsi, kImport };

// Most mappings are one physically contiguous piece of one buffer: one
// element lives inline, so a record needs no heap allocation of its own.
template <typename T>
using InlinedOne = absl::InlinedVector<T, 1>;

struct DeviceState;
struct Buffer;

// A reference a mapping holds on a buffer: the buffer's id and, while the
// reference is held (so the buffer cannot go), the buffer itself.
struct BufferRef {
  uint64_t id = 0;
  Buffer* buffer = nullptr;
};

// One mapping (one IOVA allocation, or one MapAt range) in a domain.
struct MappingRecord {
  uint64_t mapping_id = 0;
  MappingKind kind = MappingKind::kMap;
  std::string device;            // owner; "" for broker-owned (MSI doorbells)
  DeviceState* owner = nullptr;  // the same, charged for it; null for broker-owned
  uint64_t session_id = 0;       // set when it enters its table, never changed there
  Iova iova;                     // start of the IOVA allocation / range
  uint64_t iova_size_bytes = 0;
  bool iova_from_allocator = false;  // release to the IOVA cookie on unmap
  uint64_t dma_offset = 0;           // dma_addr - iova
  Prot prot = Prot::kNone;
  // Granule-aligned ranges actually written to the page table, with the
  // physical run each maps (recovery writes them again).
  InlinedOne<std::pair<Iova, PhysRun>> pt_ranges;
  InlinedOne<MappedPiece> pieces;     // in IOVA order
  InlinedOne<BufferRef> buffer_refs;  // buffers holding one reference each
  uint64_t owned_buffer_id = 0;       // Alloc: freed with the mapping
  uint64_t export_id = 0;             // kImport: the export it imports
  uint64_t mapped_bytes = 0;          // charged to the device's quota
  std::vector<DmaSegment> segments;   // MapSg result, for GetSgTable/Get
};

// A domain's mapping records, keyed by IOVA start. Not thread-safe: the
// owning Domain's mu guards it.
//
// Layout. The records live inline in an absl::flat_hash_map keyed by their
// IOVA start: no node allocation per mapping, O(1) insert, erase and exact
// lookup. Records move when the table grows or erases, so a pointer into it
// is valid only until the next Insert/Erase.
//
// Containment (the record whose [iova, iova + iova_size_bytes) holds addr)
// first probes the key AlignDown(addr, granule). That probe finds a record
// from every address it contains when it starts on the granule and spans at
// most one granule ("short"); every other record is also entered in an
// ordered index (start -> size), searched in O(log n) when the probe misses.
// A table made with index_all enters every record there (UNMANAGED domains,
// whose UnmapRange scans an IOVA range in order).
//
// Records made under a session are also indexed by session (session ->
// starts), so that a session's release finds its records in O(its records)
// (docs/design.md#sessions).
//
// Invariants: (1) every record is stored under its own iova; (2) records are
// disjoint; (3) the ordered index holds exactly the records that are not
// short (all of them with index_all), each with its size; (4) the session
// index holds exactly the records whose session_id is not 0, under it.
class MappingTable {
 public:
  MappingTable() = default;
  // granule_bytes: a power of two.
  MappingTable(uint64_t granule_bytes, bool index_all);

  size_t size() const { return records_.size(); }
  // Room for `n` records without rehashing (a restore knows how many).
  void Reserve(size_t n) { records_.reserve(n); }
  bool empty() const { return records_.empty(); }

  // Adds `record` at record.iova. REQUIRES: it overlaps no record.
  void Insert(MappingRecord&& record);
  // Adds a default record with `iova`, `iova_size_bytes` and `session_id`
  // set, for the caller to fill in. REQUIRES: [iova, iova + iova_size_bytes)
  // overlaps no record; the caller changes none of the three.
  MappingRecord& Emplace(Iova iova, uint64_t iova_size_bytes, uint64_t session_id = 0);
  // The record starting at `iova_start`, or nullptr.
  MappingRecord* FindStart(uint64_t iova_start);
  const MappingRecord* FindStart(uint64_t iova_start) const;
  // The record whose IOVA range contains `addr`, or nullptr.
  MappingRecord* Find(uint64_t addr);
  // Removes the record starting at `iova_start`. REQUIRES: one starts there.
  void Erase(uint64_t iova_start);

  // Record starts, ascending. O(n log n).
  std::vector<uint64_t> StartsInOrder() const;
  // Appends the starts of the records of session `session_id` (not 0), in
  // no particular order. O(those records).
  void AppendStartsOf(uint64_t session_id, std::vector<uint64_t>* out) const;
  // The number of records of session `session_id` (not 0). O(1).
  size_t CountOf(uint64_t session_id) const;
  // fn(const MappingRecord&) for each record, in no particular order.
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (const auto& [start, record] : records_) fn(record);
  }
  // fn(const MappingRecord&) for each record overlapping [first, last], in
  // IOVA order, until fn returns false. REQUIRES: index_all.
  template <typename Fn>
  void ForEachOverlapping(uint64_t first, uint64_t last, Fn&& fn) const {
    assert(index_all_);
    auto it = ordered_.upper_bound(first);
    if (it != ordered_.begin()) --it;
    for (; it != ordered_.end() && it->first <= last; ++it) {
      if (it->first + (it->second - 1) < first) continue;
      if (!fn(records_.at(it->first))) return;
    }
  }

  absl::Status CheckInvariants() const;

 private:
  bool NeedsIndex(uint64_t start, uint64_t size_bytes) const {
    return index_all_ || (start & (granule_bytes_ - 1)) != 0 || size_bytes > granule_bytes_;
  }

  uint64_t granule_bytes_ = 1;
  bool index_all_ = true;
  absl::flat_hash_map<uint64_t, MappingRecord> records_;
  std::map<uint64_t, uint64_t> ordered_;  // start -> size_bytes, records that are not short
  // session id -> starts of its records (records of session 0 are not here)
  absl::flat_hash_map<uint64_t, absl::flat_hash_set<uint64_t>> by_session_;
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_BROKER_BROKER_MAPPINGS_H_
