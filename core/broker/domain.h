// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_DOMAIN_H_
#define IOMMU_CORE_BROKER_DOMAIN_H_

// An SMMU instance and the I/O address spaces (domains) on it.
//
// A Domain owns its lock, page table, typed cookie and mapping records, and
// performs its own map and unmap. Every change to a domain is made through a
// Domain::Transaction: it holds the domain's lock, gathers the IOTLB
// invalidations of the unmaps it makes and the IOVAs and buffer references
// they release, and on commit invalidates first, then frees the IOVAs, then
// hands the released mappings to their releaser (the kernel's
// gather-then-sync; docs/design.md#domain-transactions). So an IOVA is never
// reused, and memory never unpinned, while an IOTLB entry for it may remain
// in a strict domain, and a commit is the one point where a mutation of a
// domain becomes visible.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/base/prot.h"
#include "core/base/types.h"
#include "core/broker/broker_mappings.h"
#include "core/broker/broker_types.h"
#include "core/broker/flush_timer.h"
#include "core/broker/session_index.h"
#include "core/broker/state.h"
#include "core/broker/topology.h"
#include "core/iotlb/flush_queue.h"
#include "core/iotlb/iotlb.h"
#include "core/iova/iova_allocator.h"
#include "core/pgtable/io_pgtable.h"

namespace iommu::core::internal {

// One SMMU instance: its IOTLB and its translation contexts.
// Thread-safe: mu guards the IOTLB and the context table (lock order 4).
struct Smmu {
  SmmuConfig config;
  std::vector<uint8_t> leaf_sizes_log2;  // every leaf size its formats produce
  mutable absl::Mutex mu;
  std::unique_ptr<Iotlb> iotlb ABSL_GUARDED_BY(mu);
  std::vector<bool> context_in_use ABSL_GUARDED_BY(mu);  // index = context = ASID/VMID
  uint64_t translations_ok ABSL_GUARDED_BY(mu) = 0;
  uint64_t translations_fault ABSL_GUARDED_BY(mu) = 0;
};

// Typed cookies (docs/design.md#typed-cookies). A domain holds exactly one;
// every use is a std::visit with a case per type, so a cookie of one type can
// never be read as another (the 2016 and 2025 mix-ups).
struct NoCookie {};
struct IovaCookie {
  std::unique_ptr<IovaAllocator> iovad;
  std::unique_ptr<FlushQueue> fq;  // DMA_FQ only
  // Doorbell page (physical) -> its IOVA in this domain.
  std::map<uint64_t, uint64_t> msi_pages;
};
struct MsiWindowCookie {
  IovaWindow window;
  uint64_t next_offset = 0;  // linear allocator within the window
  std::map<uint64_t, uint64_t> msi_pages;
};
using Cookie = std::variant<NoCookie, IovaCookie, MsiWindowCookie>;

template <class... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <class... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

// The flush ops a domain's page table calls: invalidations of this domain's
// tag in its SMMU's IOTLB. Called with the domain's lock held.
class DomainFlushOps final : public FlushOps {
 public:
  DomainFlushOps(Smmu* smmu, TlbTag tag, bool strict) : smmu_(smmu), tag_(tag), strict_(strict) {}
  void TlbFlushAll() override;
  void TlbFlushWalk(Iova iova, uint64_t size_bytes, uint64_t granule_bytes) override;
  void TlbAddPage(IotlbGather* gather, Iova iova, uint64_t granule_bytes) override;
  void TlbAddPages(IotlbGather* gather, Iova iova, uint64_t granule_bytes, uint64_t count) override;

 private:
  Smmu* const smmu_;
  const TlbTag tag_;
  const bool strict_;
};

// Receives what a transaction's unmaps release. Unmapped is called as each
// mapping leaves the domain: the releaser drops what the mapping held (quota,
// buffer references, an owned buffer, an import) as one-at-a-time calls
// would see it, but keeps any memory that became free. ReleaseUnmapped is
// called by the commit once the transaction's invalidations are done and its
// IOVAs freed, to return that memory. Both run with the domain's lock held.
class Domain;
class MappingReleaser {
 public:
  virtual ~MappingReleaser() = default;
  virtual void Unmapped(const Domain& d, const MappingRecord& m) = 0;
  virtual void ReleaseUnmapped() = 0;
};

struct DomainParams {
  uint64_t id = 0;
  DomainType type = DomainType::kDma;
  uint64_t granule_bytes = 0;  // 0: the SMMU's smallest
  std::string owner;           // creating device; "" for admin-created and default domains
  bool is_default = false;
  std::string default_of;            // the device whose default domain it is (is_default)
  std::vector<std::string> granted;  // devices besides the owner that may attach
  uint64_t session_id = 0;
  bool try_32bit_first = false;  // PCI default domains (SAC addressing)
  uint64_t iova_cache_max_pages = 32;
  uint32_t flush_queue_capacity = 256;
  absl::Duration flush_queue_timeout = absl::Milliseconds(10);
  std::function<absl::Time()> now = absl::Now;
  // Where its transactions' commits are journaled (none when null), and the
  // first mapping id to hand out (a restored domain's reserved ids).
  Journal* journal = nullptr;
  uint64_t first_mapping_id = 1;
  // Told when a session's first mapping enters the domain and its last
  // leaves (none when null). Not owned; outlives the domain.
  SessionIndex* sessions = nullptr;
  // Told when its flush queue (DMA_FQ) holds entries that need a poll (none
  // when null: its owner polls it). Not owned; outlives the domain.
  FlushTimer* flush_timer = nullptr;
};

// One I/O address space. Its identity (id, type, SMMU, owner, grants,
// granule, aperture, context) is fixed at creation; its page table, cookie
// and mappings are reached only through a Transaction (changes) or a Reader.
// Cache-line aligned, so that no two domains' locks share a line.
class alignas(64) Domain {
 public:
  // Takes a translation context of `smmu` (RESOURCE_EXHAUSTED when none is
  // free) for translating types; INVALID_ARGUMENT for a granule the SMMU lacks.
  static absl::StatusOr<std::shared_ptr<Domain>> Create(Smmu* smmu, DomainParams params);
  ~Domain();
  Domain(const Domain&) = delete;
  Domain& operator=(const Domain&) = delete;

  uint64_t id() const { return id_; }
  DomainType type() const { return type_; }
  Smmu& smmu() const { return *smmu_; }
  const std::string& owner() const { return owner_; }
  bool is_default() const { return is_default_; }
  const std::string& default_of() const { return default_of_; }
  const std::vector<std::string>& granted() const { return granted_; }
  uint64_t session_id() const { return session_id_; }
  uint64_t granule_bytes() const { return granule_bytes_; }
  uint64_t pgsize_bitmap() const { return pgsize_bitmap_; }
  Iova aperture_start() const { return aperture_start_; }
  Iova aperture_end() const { return aperture_end_; }  // inclusive
  const TlbTag& tag() const { return tag_; }
  bool strict() const { return strict_; }
  // DMA and DMA_FQ: an IOVA cookie allocates the addresses.
  bool has_iova_cookie() const { return type_ == DomainType::kDma || type_ == DomainType::kDmaFq; }
  // FAILED_PRECONDITION naming `call`, which needs a DMA or DMA_FQ domain.
  absl::Status NeedsIovaCookie(const char* call) const;

  // Its durable record (docs/design.md#durable-state).
  DomainState State() const ABSL_LOCKS_EXCLUDED(mu_);

  // Returns the translation context to the SMMU (its IOTLB entries dropped).
  // Once, when the domain is destroyed, after its last mapping is gone.
  void ReleaseContext();

  class Transaction;
  class Reader;

 private:
  friend class Transaction;
  friend class Reader;
  Domain(Smmu* smmu, DomainParams params);
  // Frees an IOVA allocation of the IOVA cookie.
  void FreeIova(Iova iova, uint64_t size_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  DomainState StateLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Mapping ids are reserved in the journal this many at a time.
  static constexpr uint64_t kMappingIdBlock = 4096;

  const uint64_t id_;
  const DomainType type_;
  Smmu* const smmu_;
  const std::string owner_;
  const bool is_default_;
  const std::string default_of_;
  const std::vector<std::string> granted_;
  const uint64_t session_id_;
  const uint64_t granule_bytes_;
  const uint64_t pgsize_bitmap_;
  const Iova aperture_start_;
  const Iova aperture_end_;
  uint32_t context_ = 0;  // ASID (stage 1) or VMID (stage 2); set once by Create
  TlbTag tag_;            // set once by Create
  const bool strict_;
  std::unique_ptr<DomainFlushOps> flush_ops_;  // set once by Create
  Journal* const journal_;
  SessionIndex* const sessions_;
  FlushTimer* const flush_timer_;

  mutable absl::Mutex mu_;                                      // lock order 2
  std::unique_ptr<IoPgtableOps> pgtable_ ABSL_GUARDED_BY(mu_);  // null: IDENTITY/BLOCKED
  Cookie cookie_ ABSL_GUARDED_BY(mu_);
  MappingTable mappings_ ABSL_GUARDED_BY(mu_);  // by IOVA start
  uint64_t mapped_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_mapping_id_ ABSL_GUARDED_BY(mu_) = 1;
  // Ids below this are reserved in the journal (never handed out again).
  uint64_t mapping_ids_reserved_ ABSL_GUARDED_BY(mu_) = 0;
  // flush_timer_ holds this domain's entry (see FlushTimer).
  bool flush_armed_ ABSL_GUARDED_BY(mu_) = false;
};

// Shared access to a domain's state (views, stats, translation walks).
class ABSL_SCOPED_LOCKABLE Domain::Reader {
 public:
  explicit Reader(const Domain& d) ABSL_SHARED_LOCK_FUNCTION(d.mu_) : d_(d) { d_.mu_.ReaderLock(); }
  ~Reader() ABSL_UNLOCK_FUNCTION() { d_.mu_.ReaderUnlock(); }
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  // (The analysis cannot see that this object holds the lock: each accessor
  // asserts it.)
  const IoPgtableOps* pgtable() const {
    d_.mu_.AssertReaderHeld();
    return d_.pgtable_.get();
  }
  const Cookie& cookie() const {
    d_.mu_.AssertReaderHeld();
    return d_.cookie_;
  }
  const MappingTable& mappings() const {
    d_.mu_.AssertReaderHeld();
    return d_.mappings_;
  }
  uint64_t mapped_bytes() const {
    d_.mu_.AssertReaderHeld();
    return d_.mapped_bytes_;
  }
  // Its flush timer holds an entry for it (see FlushTimer).
  bool flush_armed() const {
    d_.mu_.AssertReaderHeld();
    return d_.flush_armed_;
  }

 private:
  const Domain& d_;
};

// Exclusive access to a domain for one operation or one run of them (a
// Batch message). See the file comment for what its commit does and in which
// order; the destructor commits. With a journal, the commit also writes the
// records of the mappings it inserted and the keys of those it removed (a
// mapping made and removed in one transaction writes nothing), with
// whatever the caller added to changes(), as one change set: after the
// invalidations, before the releaser returns memory.
class ABSL_SCOPED_LOCKABLE Domain::Transaction {
 public:
  Transaction(Domain& d, MappingReleaser& releaser) ABSL_EXCLUSIVE_LOCK_FUNCTION(d.mu_)
      : d_(d), releaser_(releaser) {
    d_.mu_.Lock();
  }
  ~Transaction() ABSL_UNLOCK_FUNCTION() {
    Commit();
    d_.mu_.Unlock();
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  Domain& domain() const { return d_; }
  const IoPgtableOps* pgtable() const {
    d_.mu_.AssertHeld();
    return d_.pgtable_.get();
  }
  const MappingTable& mappings() const {
    d_.mu_.AssertHeld();
    return d_.mappings_;
  }
  // The mapping whose IOVA range contains `addr`, or nullptr. Valid until the
  // next Insert or Remove.
  MappingRecord* Find(uint64_t addr) {
    d_.mu_.AssertHeld();
    return d_.mappings_.Find(addr);
  }
  MappingRecord* FindStart(uint64_t iova_start) {
    d_.mu_.AssertHeld();
    return d_.mappings_.FindStart(iova_start);
  }

  // IOVA for `size_bytes` at or below `limit` from the IOVA cookie
  // (FAILED_PRECONDITION naming `call` for other cookies). The pending
  // invalidations of this transaction complete first, so an address it
  // unmapped is never handed out before the IOTLB forgot it.
  absl::StatusOr<Iova> AllocIova(uint64_t size_bytes, Iova limit, const char* call);
  // Room for one more mapping record, so that the next Insert cannot fail:
  // RESOURCE_EXHAUSTED when there is none (the mapping.record injection
  // point, docs/design.md#failure-injection). Every operation that inserts
  // reserves before it allocates IOVA or writes the page table. Invalidates
  // record pointers (the table may grow).
  absl::Status ReserveRecord();
  // Returns an allocation AllocIova made that was never mapped.
  void FreeIova(Iova iova, uint64_t size_bytes);
  // Writes the ranges to the page table; on failure unmaps what it wrote and
  // returns the error (nothing was translated through them meanwhile).
  absl::Status MapRanges(absl::Span<const std::pair<Iova, PhysRun>> ranges, Prot prot);
  // Adds a record for a mapping whose ranges are in the page table, with its
  // mapped bytes, its session (0: none) and a new mapping id set, for the
  // caller to fill in before the commit. Mapping ids count up per domain
  // from 1 and are never reused in it (a per-domain counter: no cache line
  // shared between domains).
  MappingRecord& Insert(Iova iova, uint64_t iova_size_bytes, uint64_t mapped_bytes,
                        uint64_t session_id = 0) {
    d_.mu_.AssertHeld();
    MappingRecord& record = d_.mappings_.Emplace(iova, iova_size_bytes, session_id);
    if (session_id != 0) SessionEntered(session_id);
    if (d_.next_mapping_id_ >= d_.mapping_ids_reserved_) [[unlikely]]
      ReserveMappingIds();
    if (d_.journal_ != nullptr) touched_.push_back(iova.value());
    record.mapping_id = d_.next_mapping_id_++;
    record.mapped_bytes = mapped_bytes;
    d_.mapped_bytes_ += mapped_bytes;
    return record;
  }
  // Removes the mapping starting at `iova_start` (one must): the page table
  // now; in a strict domain its IOTLB invalidation and IOVA free at commit,
  // in a lazy one through the flush queue; the releaser is told at once.
  void Remove(uint64_t iova_start) { RemoveMapping(iova_start, /*lazy=*/!d_.strict_); }
  // Takes back a mapping this transaction inserted (a later step of its
  // operation failed): as Remove, but strict even in a lazy domain, since
  // nothing could translate through it (this transaction holds the lock), so
  // its IOVA is free again at commit rather than queued for a flush.
  void Withdraw(uint64_t iova_start) { RemoveMapping(iova_start, /*lazy=*/false); }
  // Completes the flush queue's pending invalidations (lazy domains).
  void FlushQueue();
  // Retires flush-queue entries whose timeout passed (lazy domains), for the
  // owner's timer: the domain's FlushTimer entry came due and was taken;
  // one is armed again if entries remain.
  void PollFlushQueue();

  // MSI (iommu_dma_prepare_msi). The MSI window (base, size) of an
  // UNMANAGED domain, if set.
  std::optional<IovaWindow> MsiWindow() const;
  // Sets the MSI window of an UNMANAGED domain:
  // ALREADY_EXISTS when it overlaps mappings or another window is set; the
  // same window again is a no-op.
  absl::Status SetMsiWindow(IovaWindow window);
  // Takes back a window SetMsiWindow set in this transaction (before any
  // doorbell was mapped in it), when the operation that set it fails.
  void UnsetMsiWindow();
  struct MsiPage {
    Iova iova;
    bool newly_mapped = false;
  };
  // The IOVA of doorbell page `page` (granule-aligned physical) in this
  // domain, mapping it (write-only MMIO) on first use: from the IOVA cookie
  // below `limit`, or linearly from the MSI window. `doorbell` is the
  // doorbell's physical address inside the page.
  absl::StatusOr<MsiPage> MapMsiPage(uint64_t page, uint64_t doorbell, Iova limit);

  // Records the commit writes besides the mappings (e.g. the domain's own
  // deletion when it is torn down).
  StateChanges& changes() { return changes_; }

  // Recovery: enters a journaled mapping at its recorded IOVA and pages
  // (its IOVA claimed from the cookie, its ranges written to the page
  // table), without journaling it again. The caller sets the record's owner
  // and buffer pointers. INTERNAL naming the record when it does not fit
  // (an IOVA or range taken, outside the aperture), changing nothing.
  absl::Status Restore(MappingRecord&& record);
  // Recovery: room for `n` more mappings.
  void ReserveMappings(size_t n) {
    d_.mu_.AssertHeld();
    d_.mappings_.Reserve(d_.mappings_.size() + n);
  }

 private:
  // Invalidates, frees IOVAs and releases as the file comment says (the
  // destructor's work, before it unlocks).
  void Commit() {
    d_.mu_.AssertHeld();
    if (!leaf_ranges_.empty() || !iova_frees_.empty()) CompleteInvalidations();
    if (d_.journal_ != nullptr) JournalChanges();
    releaser_.ReleaseUnmapped();
  }
  void CompleteInvalidations() ABSL_EXCLUSIVE_LOCKS_REQUIRED(d_.mu_);
  void RemoveMapping(uint64_t iova_start, bool lazy);
  // Arms the domain's flush timer at `fq`'s next deadline, unless armed or
  // it is empty.
  void ArmFlushTimer(const iommu::core::FlushQueue& fq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(d_.mu_);
  void JournalChanges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(d_.mu_);
  void ReserveMappingIds() ABSL_EXCLUSIVE_LOCKS_REQUIRED(d_.mu_);
  // Tells the session index when a mapping of `session_id` (not 0) was
  // entered or removed and was the session's first or last in the domain.
  void SessionEntered(uint64_t session_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(d_.mu_) {
    if (d_.sessions_ != nullptr && d_.mappings_.CountOf(session_id) == 1) {
      d_.sessions_->Add(session_id, d_.id_);
    }
  }
  void SessionLeft(uint64_t session_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(d_.mu_) {
    if (d_.sessions_ != nullptr && d_.mappings_.CountOf(session_id) == 0) {
      d_.sessions_->Remove(session_id, d_.id_);
    }
  }

  Domain& d_;
  MappingReleaser& releaser_;
  // Strict unmaps: leaf ranges [first, last] to invalidate, then the IOVA
  // allocations to free, in unmap order (so the allocator ends as
  // one-at-a-time unmaps leave it).
  // Inline room for a unary operation's, so it allocates nothing.
  absl::InlinedVector<std::pair<uint64_t, uint64_t>, 2> leaf_ranges_;
  absl::InlinedVector<std::pair<Iova, uint64_t>, 2> iova_frees_;
  // Journal: IOVA starts of mappings inserted or removed, whether the
  // domain's record changed, and what the caller added.
  absl::InlinedVector<uint64_t, 2> touched_;
  bool domain_changed_ = false;
  StateChanges changes_;
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_BROKER_DOMAIN_H_
