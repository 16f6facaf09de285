// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_BUFFER_TABLE_H_
#define IOMMU_CORE_BROKER_BUFFER_TABLE_H_

// The broker's buffers (pinned pages owned by one device), the references
// mappings hold on them, and the export tokens that share them.
//
// Synchronisation. Buffers live in shards, each with its own lock, chosen by
// buffer id, so operations on different devices' buffers rarely share one. A
// buffer's reference count is atomic. A reference is taken under the shard's
// lock after a lookup, or without either through a BufferTable::Refs that
// already holds one on that buffer; a reference is dropped without a lock
// (the reference held keeps the buffer alive until the drop). A buffer is
// freed only under its shard's lock with no reference left. No lock of the
// table is held across a run of operations.
// The export lock (exports, their imports, each buffer's export list) is
// taken before any shard lock. Lock order: after a domain's lock, before the
// SMMU's (see broker.h).

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "core/broker/broker_mappings.h"
#include "core/broker/broker_types.h"
#include "core/broker/domain.h"
#include "core/broker/state.h"
#include "core/memory/phys_memory.h"

namespace iommu::core::internal {

struct DeviceState;

// A buffer of pinned pages owned by one device. Identity and pages are fixed
// at creation. Cache-line aligned: its reference count is written by every
// map and unmap of it, and must not share a line with another buffer's.
struct alignas(64) Buffer {
  uint64_t buffer_id = 0;
  std::string device;
  DeviceState* owner = nullptr;
  uint64_t session_id = 0;
  PhysAllocation alloc;
  bool backs_alloc = false;  // created by Alloc; freed with its mapping
  // The number of mappings referencing it, and kWaiting once its Alloc
  // mapping is gone while importers still map it (freed when the last
  // reference drops). One word, so that of the last drop and the setting of
  // the flag exactly one sees the other.
  static constexpr uint64_t kWaiting = uint64_t{1} << 63;
  std::atomic<uint64_t> map_refs{0};
  uint64_t refs() const { return map_refs.load() & ~kWaiting; }
  // Ids of the live exports of its memory; guarded by the table's export lock.
  std::vector<uint64_t> exports;
};

// An exported DMA buffer (GetSgTable with an export token): what it grants,
// to whom, and every live import of it, so that revocation can unmap them.
struct ExportRecord {
  uint64_t export_id = 0;  // internal handle; the token is the map key
  std::string exporter;
  DeviceState* exporter_state = nullptr;
  uint64_t exporter_granule = 0;
  std::vector<PhysRun> chunks;
  std::vector<uint64_t> buffer_ids;
  // The same buffers: alive while the export is (freeing one erases it).
  std::vector<BufferRef> buffers;
  std::vector<std::string> importers_allowed;  // empty: any device
  bool writable = false;
  struct Import {
    std::weak_ptr<Domain> domain;
    uint64_t iova = 0;
    uint64_t mapping_id = 0;  // unique within its domain
  };
  std::vector<Import> imports;
};

// The physical pieces behind a MemRef and the buffers they belong to (one
// reference taken on each).
struct ResolvedMem {
  InlinedOne<PhysRun> runs;       // physically contiguous, in order
  InlinedOne<BufferRef> buffers;  // buffers referenced (one ref each)
};

// What an import needs of its export, copied under the export lock.
struct ImportedExport {
  uint64_t export_id = 0;
  uint64_t exporter_granule = 0;
  std::vector<PhysRun> chunks;
  std::vector<BufferRef> buffers;  // one reference taken on each
};

class BufferTable {
 public:
  // With a journal, every buffer and export created or removed is journaled
  // under the lock that orders it (see core/broker/state.h).
  // `max_runs` bounds the physical runs a new buffer may have (see Create).
  explicit BufferTable(PhysMemory* memory, Journal* journal = nullptr,
                       uint64_t max_runs = UINT64_MAX)
      : memory_(memory), journal_(journal), max_runs_(max_runs) {}

  // Recovery: enters a journaled buffer (its pages claimed at their recorded
  // addresses, its owner charged) or export. INTERNAL naming the record when
  // it does not fit, changing nothing.
  absl::Status Restore(DeviceState& dev, const BufferState& state);
  absl::Status RestoreExport(DeviceState& exporter, const ExportState& state);
  // Recovery: the next buffer and export ids (at least these).
  void RestoreCounters(uint64_t next_buffer_id, uint64_t next_export_id);
  bool Contains(uint64_t buffer_id) const;
  bool ContainsExport(uint64_t export_id) const;
  // Recovery: a reference of a restored mapping on buffer `buffer_id`, or
  // nullopt when there is no such buffer.
  std::optional<BufferRef> TryRestoreRef(uint64_t buffer_id);
  // Recovery: registers a restored import with its export; false when the
  // export does not exist.
  bool RestoreImport(uint64_t export_id, ExportRecord::Import import) {
    return RecordImport(export_id, std::move(import)).ok();
  }
  // Recovery: releases an Alloc's buffer whose mapping is gone, as the
  // mapping's unmap would have: at once (true), or, while other mappings or
  // exports still reference it, at the last reference's drop (false; the
  // state the live broker was in, no repair).
  bool ReleaseAllocBuffer(uint64_t buffer_id) {
    std::unique_ptr<Buffer> dead = ReleaseOwned(buffer_id);
    const bool now = dead != nullptr;
    ReleasePages(std::move(dead));
    return now;
  }
  // The durable record of a buffer.
  static BufferState StateOf(const Buffer& b);

  // Allocates pages for a new buffer of `dev`, charging its buffer quotas.
  // `runs`, when given, receives its runs as allocated (BufferInfo merges
  // adjacent ones). A buffer whose placement could give it more than
  // `max_runs` runs (a scattered one has one per page) is RESOURCE_EXHAUSTED
  // before any page is taken: every reply that describes it lists them all.
  absl::StatusOr<BufferInfo> Create(DeviceState& dev, uint64_t session_id, uint64_t size_bytes,
                                    Placement placement, const std::string& pool, bool backs_alloc,
                                    std::vector<PhysRun>* runs = nullptr);
  // The buffer as the caller may see it: NOT_FOUND for another device's, as
  // for a missing one.
  absl::StatusOr<BufferInfo> Get(const Caller& caller, uint64_t buffer_id) const;
  // FreeBuffer: NOT_FOUND as Get; FAILED_PRECONDITION for a buffer backing an
  // Alloc or referenced by its owner's mappings. CheckFree answers what Free
  // would, counting its exports' imports as gone: the caller checks, revokes
  // its exports (which unmaps those imports), then frees.
  absl::Status CheckFree(const Caller& caller, uint64_t buffer_id) const;
  absl::Status Free(const Caller& caller, uint64_t buffer_id);
  // Frees an unreferenced buffer whatever backs it (an Alloc that failed).
  void FreeUnreferenced(uint64_t buffer_id);
  // Frees the buffers of the sessions `session_ids` that no mapping
  // references, found through each shard's session index: O(those buffers
  // + shards x sessions), never a scan of the table, and at most
  // kReleaseChunk of them per hold of a shard's lock. Returns the buffers
  // visited.
  uint64_t ReleaseSessions(absl::Span<const uint64_t> session_ids);
  static constexpr size_t kReleaseChunk = 64;

  // --- exports --------------------------------------------------------------
  // Creates an export of `chunks` (the memory of `buffer_ids`) by `exporter`,
  // charging its export quota. Returns the token, also given to
  // `on_token` once the export is certain, before it is journaled (so the
  // caller's reply can join that commit).
  absl::StatusOr<std::string> CreateExport(
      DeviceState& exporter, uint64_t exporter_granule, std::vector<PhysRun> chunks,
      std::vector<uint64_t> buffer_ids, const ExportGrant& grant,
      absl::FunctionRef<void(const std::string&)> on_token = [](const std::string&) {});
  // The export `token` names if `check` accepts it (its error otherwise;
  // NOT_FOUND for an unknown token), with a reference taken on each of its
  // buffers for the import (dropped with Refs::Drop on failure).
  absl::Status Import(const std::string& token,
                      const std::function<absl::Status(const ExportRecord&)>& check,
                      ImportedExport* out);
  // Registers a made import with its export: NOT_FOUND (naming no token: the
  // caller names its own) when the export was revoked since Import,
  // RESOURCE_EXHAUSTED when there is no room for the import's entry (the
  // import.record injection point); the caller unmaps it again.
  absl::Status RecordImport(uint64_t export_id, ExportRecord::Import import);
  // The export id of `token` if `exporter` ("" for any) made it.
  std::optional<uint64_t> FindExport(const std::string& token, const std::string& exporter) const;
  // The live exports of a buffer's memory (empty for an unknown buffer).
  std::vector<uint64_t> ExportsOf(uint64_t buffer_id) const;
  // Forgets export `export_id` (no new import can use it). Returns its live
  // imports, for the caller to unmap.
  std::vector<ExportRecord::Import> EraseExport(uint64_t export_id);

  // fn(const Buffer&) for every buffer; fn(token, const ExportRecord&) for
  // every export (for the invariants check).
  void ForEachBuffer(const std::function<void(const Buffer&)>& fn) const;
  void ForEachExport(const std::function<void(const std::string&, const ExportRecord&)>& fn) const;
  absl::Status CheckExportIndex() const;
  // Each shard's session index lists exactly its buffers made under a
  // session, under that session.
  absl::Status CheckSessionIndex() const;

  // The references one operation, or one run of them, takes and drops, and
  // the MappingReleaser of the domain transactions it serves. References
  // drop as mappings go (a buffer waiting for its last one leaves the table
  // at once, as one-at-a-time calls see it); the pages of buffers freed so
  // are returned to memory only at the commit, after the IOTLB invalidation.
  class Refs final : public MappingReleaser {
   public:
    explicit Refs(BufferTable& table) : table_(table) {}
    ~Refs() override { ReleaseUnmapped(); }
    Refs(const Refs&) = delete;
    Refs& operator=(const Refs&) = delete;

    // The physical pieces behind `mem` for `dev`, with a reference taken on
    // its buffer (ownership checked: another device's buffer answers
    // NOT_FOUND as a missing one; raw physical memory is the admin's). On a
    // later failure the caller drops them with Drop. `out` must be empty and
    // stays so on failure.
    absl::Status Resolve(const Caller& caller, const DeviceState& dev, const MemRef& mem,
                         absl::string_view field, ResolvedMem* out);
    // Drops references this object took for a mapping it did not make.
    void Drop(absl::Span<const BufferRef> buffers);

    void Unmapped(const Domain& d, const MappingRecord& m) override;
    void ReleaseUnmapped() override {
      if (!dead_.empty()) ReleaseDead();
    }

   private:
    void ReleaseDead();
    absl::Status ResolvePhys(const Caller& caller, const MemRef& mem, absl::string_view field,
                             ResolvedMem* out) const;
    void DropNow(const BufferRef& ref);

    BufferTable& table_;
    // The last buffer this object took a reference on, and how many of its
    // references are surely this object's: while that is positive the
    // buffer is alive and referenced, and is used without a lookup.
    uint64_t last_id_ = 0;
    Buffer* last_ = nullptr;
    uint64_t balance_ = 0;
    std::vector<std::unique_ptr<Buffer>> dead_;  // unlinked; pages released at commit
  };

 private:
  static constexpr size_t kShards = 16;
  struct alignas(64) Shard {
    mutable absl::Mutex mu;
    absl::flat_hash_map<uint64_t, std::unique_ptr<Buffer>> buffers ABSL_GUARDED_BY(mu);
    // session id -> ids of its buffers in this shard (session 0 is not here)
    absl::flat_hash_map<uint64_t, absl::flat_hash_set<uint64_t>> by_session ABSL_GUARDED_BY(mu);
  };
  // Enters a buffer in its shard and the shard's session index.
  static void LinkLocked(Shard& shard, std::unique_ptr<Buffer> b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  Shard& ShardOf(uint64_t buffer_id) const { return shards_[buffer_id % kShards]; }
  // Drops a reference (no lock: the reference keeps the buffer alive until
  // the drop, which is the last touch). Returns the buffer, unlinked, when
  // that was the last reference of a buffer waiting for it; the caller
  // releases its pages.
  std::unique_ptr<Buffer> DropRef(const BufferRef& ref);
  // The Alloc buffer of an unmapped record: unlinked and returned, or
  // (importers still map it) left to its last reference.
  std::unique_ptr<Buffer> ReleaseOwned(uint64_t buffer_id);
  void ForgetImport(uint64_t export_id, const Domain& d, uint64_t mapping_id);
  // Unlinks buffer `buffer_id` if it exists and no mapping references it
  // (and, with `only_if_waiting`, if it waits for that).
  std::unique_ptr<Buffer> UnlinkIfUnreferenced(uint64_t buffer_id, bool only_if_waiting);
  // Removes the buffer and its exports from the table (its pages stay) and
  // journals their removal.
  std::unique_ptr<Buffer> UnlinkLocked(Shard& shard, uint64_t buffer_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(exports_mu_);
  // Journals `changes` (no-op without a journal).
  void Commit(StateChanges& changes);
  // Returns an unlinked buffer's pages and refunds its owner's quota.
  void ReleasePages(std::unique_ptr<Buffer> b);
  absl::Status CheckFreeLocked(Shard& shard, const Caller& caller, uint64_t buffer_id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(exports_mu_);
  void FreeLocked(Shard& shard, uint64_t buffer_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(exports_mu_);
  // Also records the export's removal in `changes`.
  std::vector<ExportRecord::Import> EraseExportLocked(uint64_t export_id, StateChanges* changes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(exports_mu_);

  PhysMemory* const memory_;
  Journal* const journal_;
  const uint64_t max_runs_;
  mutable std::array<Shard, kShards> shards_;
  absl::Mutex create_mu_;  // buffer ids are handed out in order of successful creation
  uint64_t next_buffer_id_ ABSL_GUARDED_BY(create_mu_) = 1;

  mutable absl::Mutex exports_mu_ ABSL_ACQUIRED_BEFORE(create_mu_);
  // By token; export_tokens_ finds the token of an export id.
  absl::flat_hash_map<std::string, ExportRecord> exports_ ABSL_GUARDED_BY(exports_mu_);
  absl::flat_hash_map<uint64_t, std::string> export_tokens_ ABSL_GUARDED_BY(exports_mu_);
  uint64_t next_export_id_ ABSL_GUARDED_BY(exports_mu_) = 1;
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_BROKER_BUFFER_TABLE_H_
