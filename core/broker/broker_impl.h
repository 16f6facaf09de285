#ifndef IOMMU_CORE_BROKER_BROKER_IMPL_H_
#define IOMMU_CORE_BROKER_BROKER_IMPL_H_

// BrokerImpl: the state behind Broker and the helpers its operations share.
// Lock order and what each lock guards: see broker.h.

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "core/broker/broker.h"
#include "core/broker/broker_internal.h"
#include "core/broker/session_table.h"
#include "core/iotlb/fault_ring.h"
#include "core/memory/phys_memory.h"

namespace iommu::core {

class BrokerImpl {
 public:
  using Domain = internal::Domain;
  using DeviceState = internal::DeviceState;
  using Smmu = internal::Smmu;
  using MappingRecord = internal::MappingRecord;

  BrokerImpl(const Topology& topology, const BrokerOptions& options)
      : topology_(topology), options_(options) {}

  absl::Status Init();

  // --- authorisation (broker_authz.cc: the whole model in one file) ---------
  // The device the caller may act as: PERMISSION_DENIED when a device caller
  // names another device, NOT_FOUND for an unknown device.
  absl::StatusOr<DeviceState*> ActAs(const Caller& caller, const std::string& device) const;
  // NOT_FOUND naming `device` when a device caller's identity names no device
  // of the topology (every call by a device checks this first).
  absl::Status CheckCaller(const Caller& caller) const;
  // Whether `device` may attach itself to `d`: its default domain, a domain
  // it owns, or one that grants it. (Immutable fields only: no lock.)
  bool MayUse(const DeviceState& dev, const Domain& d) const;
  // Whether the caller may see `d` (GetDomain, ListDomains, WalkDomain,
  // stats): admins all; a device the domains it may use or is attached to.
  bool MaySee(const Caller& caller, const Domain& d) const ABSL_SHARED_LOCKS_REQUIRED(registry_mu_);
  // A list of device names a client sends (domain grants, export importers):
  // at most as many as the topology has devices (INVALID_ARGUMENT naming the
  // field and size, checked before any work), each a device of the topology
  // (NOT_FOUND naming `field[i]`), none twice (INVALID_ARGUMENT).
  absl::Status CheckDeviceList(absl::string_view field,
                               const std::vector<std::string>& names) const;
  // CreateDomain's rules: IDENTITY and BLOCKED are the admin's; an untrusted
  // creator gets strict translated domains only; granted devices exist, sit
  // behind the SMMU and, when untrusted, get a strict translated type.
  absl::Status CheckCreateDomain(const Caller& caller, const Smmu& smmu,
                                 const CreateDomainRequest& request) const;
  // AttachDevice's rules: a device attaches itself only to domains it may
  // use (others answer NOT_FOUND, as a missing one); an admin attaches any
  // device; an untrusted device only to a strict DMA or UNMANAGED domain;
  // the domain must be on the device's SMMU.
  absl::Status CheckAttach(const Caller& caller, const DeviceState& dev, const Domain& d) const;
  // Importing an export: the importer must be allowed (else NOT_FOUND, as an
  // unknown token); a read-only export maps for TO_DEVICE only.
  absl::Status CheckImport(const DeviceState& importer, const internal::ExportRecord& e,
                           const std::string& token, DmaDirection direction) const;
  // Holds the caller's session open (shared) for the duration of an
  // operation that creates resources under it, so its release cannot start
  // until the operation is done and no operation can start after it began.
  // NOT_FOUND for an unknown, closed or foreign session id (a device may use
  // only its own sessions; an admin any). Empty for session 0.
  class SessionPin {
   public:
    SessionPin() = default;
    explicit SessionPin(std::shared_ptr<SessionGate> gate) : gate_(std::move(gate)) {}
    SessionPin(SessionPin&& o) noexcept : gate_(std::move(o.gate_)) {}
    SessionPin& operator=(SessionPin&&) = delete;
    // Releases the shared hold PinSession took (the analysis cannot follow
    // a lock handed from one function to an object's destructor).
    ~SessionPin() ABSL_NO_THREAD_SAFETY_ANALYSIS {
      if (gate_) gate_->mu.ReaderUnlock();
    }

   private:
    std::shared_ptr<SessionGate> gate_;
  };
  absl::StatusOr<SessionPin> PinSession(const Caller& caller) const
      ABSL_LOCKS_EXCLUDED(registry_mu_) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // Marks a session's gate closed, waiting for its pinned operations.
  static void CloseGate(SessionGate& gate);
  // The effective quotas of a device: its topology overrides, then the
  // broker's defaults, then the fair share (see Quotas).
  Quotas EffectiveQuotas(const DeviceConfig& cfg) const;
  // The device's current domain (a reference that outlives registry changes).
  std::shared_ptr<Domain> CurrentDomain(const DeviceState& dev) const
      ABSL_LOCKS_EXCLUDED(registry_mu_);
  absl::StatusOr<std::shared_ptr<Domain>> FindDomain(uint64_t domain_id) const
      ABSL_SHARED_LOCKS_REQUIRED(registry_mu_);

  // --- domains --------------------------------------------------------------
  // A device's default domain tries 32-bit IOVAs first when the device is PCI
  // (as Linux's iommu_dma_alloc_iova does, for SAC addressing).
  absl::StatusOr<std::shared_ptr<Domain>> NewDomain(Smmu* smmu, DomainType type,
                                                    uint64_t granule_bytes,
                                                    const std::string& owner, bool is_default,
                                                    uint64_t session_id,
                                                    bool try_32bit_first = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(registry_mu_);
  void ReleaseContext(Domain& domain);
  absl::Status DestroyDomain(const Caller& caller, uint64_t domain_id)
      ABSL_LOCKS_EXCLUDED(registry_mu_);
  DomainInfo Describe(const Domain& domain) const ABSL_SHARED_LOCKS_REQUIRED(registry_mu_);

  // --- memory -------------------------------------------------------------
  // The physical pieces behind `mem` for `dev` (ownership checked), and the
  // buffers they belong to, each with one reference taken atomically with
  // the check (so a buffer cannot be freed between check and map). On any
  // later failure the caller drops them with DropRefs.
  struct ResolvedMem {
    internal::InlinedOne<PhysRun> runs;      // physically contiguous, in order
    internal::InlinedOne<uint64_t> buffers;  // buffer ids referenced (one ref each)
  };
  // `out` must be empty; on failure it stays empty and nothing is referenced.
  absl::Status ResolveAndRef(const Caller& caller, const DeviceState& dev, const MemRef& mem,
                             absl::string_view field, ResolvedMem* out)
      ABSL_LOCKS_EXCLUDED(buffers_mu_);
  void AddRefs(absl::Span<const uint64_t> buffers) ABSL_LOCKS_EXCLUDED(buffers_mu_);
  void DropRefs(absl::Span<const uint64_t> buffers) ABSL_LOCKS_EXCLUDED(buffers_mu_);
  // A run of Map/Unmap ops under one hold of buffers_mu_ (Broker::MapUnmapBatch
  // takes it once for the run), remembering the buffer it looked up last so
  // that consecutive ops on one buffer skip the lookup. Used only while
  // buffers_mu_ is held; a buffer freed during the run is forgotten.
  struct BufferRun {
    uint64_t id = 0;
    internal::Buffer* buffer = nullptr;
  };
  // ResolveAndRef of physical memory (buffer_id 0) or of a zero length: the
  // errors, or the one run; no buffer table.
  absl::Status ResolvePhys(const Caller& caller, const MemRef& mem, absl::string_view field,
                           ResolvedMem* out) const;
  // As ResolveAndRef / DropRefs with buffers_mu_ held (`run` may be null).
  absl::Status ResolveAndRefLocked(const Caller& caller, const DeviceState& dev, const MemRef& mem,
                                   absl::string_view field, ResolvedMem* out, BufferRun* run)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(buffers_mu_);
  void DropRefsLocked(absl::Span<const uint64_t> buffers, BufferRun* run)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(buffers_mu_);
  // With a null `run` these take buffers_mu_ themselves; with one, the caller
  // holds it for the run.
  absl::Status ResolveAndRefIn(BufferRun* run, const Caller& caller, const DeviceState& dev,
                               const MemRef& mem, absl::string_view field, ResolvedMem* out);
  void DropRefsIn(BufferRun* run, absl::Span<const uint64_t> buffers);
  absl::Status FreeBufferLocked(uint64_t buffer_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(buffers_mu_);
  // Allocates pages for a new buffer of `dev`, charging its buffer quotas.
  absl::StatusOr<internal::Buffer*> NewBufferLocked(DeviceState& dev, uint64_t session_id,
                                                    uint64_t size_bytes, Placement placement,
                                                    const std::string& pool)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(buffers_mu_);
  BufferInfo DescribeBuffer(const internal::Buffer& b) const
      ABSL_SHARED_LOCKS_REQUIRED(buffers_mu_);

  // --- quota --------------------------------------------------------------
  absl::Status ChargeMapping(DeviceState& dev, uint64_t bytes);
  void RefundMapping(DeviceState& dev, uint64_t bytes);

  // --- mapping core (domain lock held) ---------------------------------------
  // Maps the pieces at consecutive granule-aligned IOVAs from `iova`; on
  // failure unmaps what it mapped and returns the error.
  absl::Status MapPiecesLocked(Domain& d, absl::Span<const std::pair<Iova, PhysRun>> ranges,
                               Prot prot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(d.mu);
  // Strict unmaps whose IOTLB invalidation is done together: the leaf ranges
  // they cleared from the page table, and the IOVA allocations to free once
  // those are invalidated, in unmap order (so the allocator ends in the state
  // one-at-a-time unmaps leave). Owned by one domain-lock hold.
  struct DeferredInvalidation {
    std::vector<std::pair<uint64_t, uint64_t>> leaf_ranges;  // [first, last] bytes
    std::vector<std::pair<Iova, uint64_t>> iova_frees;       // (start, size_bytes)
    bool empty() const { return leaf_ranges.empty() && iova_frees.empty(); }
  };
  // Removes a mapping: page table, IOTLB (strict) or flush queue (lazy),
  // IOVA, buffer references, quota. The record must be in d.mappings. With
  // `deferred`, a strict IOVA domain's invalidation and IOVA free are queued
  // there instead (everything else is done now); the caller completes them
  // with CompleteInvalidationLocked before the lock is released and before
  // any IOVA allocation in the domain. `known`: a device the caller already
  // holds, used instead of a lookup when it owns the mapping.
  // `run`: the caller's hold of buffers_mu_ (null: taken here if needed).
  void RemoveMappingLocked(Domain& d, uint64_t iova_start, DeferredInvalidation* deferred = nullptr,
                           DeviceState* known = nullptr, BufferRun* run = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(d.mu);
  // Drops a removed mapping's buffer references and frees the buffer it owns
  // (or marks it to be freed when its importers unmap).
  void ReleaseMappingBuffersLocked(const MappingRecord& m, BufferRun* run)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(buffers_mu_);
  // Invalidates the queued leaf ranges (adjacent ones merged, one hold of the
  // SMMU lock), then frees the queued IOVAs; leaves `deferred` empty.
  void CompleteInvalidationLocked(Domain& d, DeferredInvalidation* deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(d.mu);
  // Map and Unmap once the device and its current domain are known (the
  // domain's lock held): every check, error and effect of Broker::Map/Unmap.
  // `deferred` and `run` as for RemoveMappingLocked; `dev` is the device
  // named `device`.
  absl::StatusOr<MapResult> MapLocked(Domain& d, DeviceState& dev, const Caller& caller,
                                      const std::string& device, const MemRef& mem_ref,
                                      DmaDirection direction, const DmaAttrs& attrs,
                                      BufferRun* run = nullptr) ABSL_EXCLUSIVE_LOCKS_REQUIRED(d.mu);
  absl::Status UnmapLocked(Domain& d, DeviceState& dev, const Caller& caller,
                           const std::string& device, uint64_t dma_addr,
                           DeferredInvalidation* deferred, BufferRun* run = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(d.mu);
  // Allocates IOVA for `size_bytes` below the device's limit in a domain with
  // an IOVA cookie. FAILED_PRECONDITION for other cookies.
  absl::StatusOr<Iova> AllocIovaLocked(Domain& d, const DeviceState& dev, uint64_t size_bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(d.mu);
  void FreeIovaLocked(Domain& d, Iova iova, uint64_t size_bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(d.mu);
  uint64_t DeviceLimit(const Domain& d, const DeviceState& dev) const;
  Prot ProtFor(const DeviceState& dev, DmaDirection dir, const DmaAttrs& attrs) const;
  // FAILED_PRECONDITION: `call` needs a domain with an IOVA cookie.
  static absl::Status NeedsIovaCookie(const Domain& d, const char* call);
  // The caller's mapping containing dma_addr in `d`, made by one of `kinds`:
  // NOT_FOUND for anything the caller does not own, FAILED_PRECONDITION
  // naming the call that made it otherwise.
  static absl::StatusOr<MappingRecord*> OwnMapping(
      Domain& d, const Caller& caller, const std::string& device, uint64_t dma_addr,
      std::initializer_list<internal::MappingKind> kinds, const char* call)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(d.mu);
  // Inserts the record and returns the mapping id.
  uint64_t CommitMappingLocked(Domain& d, MappingRecord&& record)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(d.mu);
  // The same for a record built in place: inserts one at `iova` with its
  // mapping id and mapped_bytes set, for the caller to fill in before it
  // releases d.mu.
  MappingRecord& NewMappingLocked(Domain& d, Iova iova, uint64_t iova_size_bytes,
                                  uint64_t mapped_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(d.mu);

  // Releases everything created under a session.
  void ReleaseSession(uint64_t session_id);

  // --- exports ----------------------------------------------------------------
  // Revokes the exports `export_ids` (those still live; no new import can
  // use them), then unmaps each of their live imports, with the IOTLB
  // invalidated (lazy domains flushed) before it returns. Returns the
  // imports unmapped. Takes domain locks: call with no domain lock held.
  uint64_t RevokeExports(absl::Span<const uint64_t> export_ids) ABSL_LOCKS_EXCLUDED(buffers_mu_);
  // The live exports of a buffer's memory (empty for an unknown buffer).
  std::vector<uint64_t> ExportsOf(uint64_t buffer_id) ABSL_LOCKS_EXCLUDED(buffers_mu_);
  // Forgets export `export_id`: its token, its record and its buffers' links
  // to it. Returns its live imports.
  std::vector<internal::ExportRecord::Import> EraseExportLocked(uint64_t export_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(buffers_mu_);
  // A removed import mapping leaves its export's list.
  void ForgetImportLocked(const MappingRecord& m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(buffers_mu_);

  // --- state ----------------------------------------------------------------
  const Topology topology_;
  const BrokerOptions options_;
  std::unique_ptr<PhysMemory> memory_;
  std::unique_ptr<FaultRing> faults_;
  std::vector<std::unique_ptr<Smmu>> smmus_;  // immutable after Init
  absl::flat_hash_map<std::string, Smmu*> smmu_by_name_;
  absl::flat_hash_map<std::string, std::unique_ptr<DeviceState>> devices_;  // immutable set

  mutable absl::Mutex registry_mu_ ABSL_ACQUIRED_BEFORE(buffers_mu_);
  std::map<uint64_t, std::shared_ptr<Domain>> domains_ ABSL_GUARDED_BY(registry_mu_);
  uint64_t next_domain_id_ ABSL_GUARDED_BY(registry_mu_) = 1;
  SessionTable sessions_ ABSL_GUARDED_BY(registry_mu_);

  mutable absl::Mutex buffers_mu_;
  std::map<uint64_t, internal::Buffer> buffers_ ABSL_GUARDED_BY(buffers_mu_);
  // Physical start of each buffer run -> (end exclusive, buffer id).
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> runs_ ABSL_GUARDED_BY(buffers_mu_);
  // By token; export_tokens_ finds the token of an export id.
  absl::flat_hash_map<std::string, internal::ExportRecord> exports_ ABSL_GUARDED_BY(buffers_mu_);
  absl::flat_hash_map<uint64_t, std::string> export_tokens_ ABSL_GUARDED_BY(buffers_mu_);
  uint64_t next_buffer_id_ ABSL_GUARDED_BY(buffers_mu_) = 1;
  uint64_t next_export_id_ ABSL_GUARDED_BY(buffers_mu_) = 1;
  // Fair shares computed at Init (see Quotas).
  uint64_t fair_buffer_bytes_ = 0;
  absl::flat_hash_map<const Smmu*, uint64_t> fair_domains_;

  std::atomic<uint64_t> next_mapping_id_{1};
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_BROKER_BROKER_IMPL_H_
