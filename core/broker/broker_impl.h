// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_BROKER_IMPL_H_
#define IOMMU_CORE_BROKER_BROKER_IMPL_H_

// BrokerImpl: the state behind Broker and the helpers its operations share.
// Lock order and what each lock guards: see broker.h.

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "core/broker/broker.h"
#include "core/broker/broker_internal.h"
#include "core/broker/request_log.h"
#include "core/broker/session_index.h"
#include "core/broker/session_table.h"
#include "core/broker/state.h"
#include "core/iotlb/fault_ring.h"
#include "core/memory/phys_memory.h"

namespace iommu::core {

class BrokerImpl {
 public:
  using Domain = internal::Domain;
  using DeviceState = internal::DeviceState;
  using Smmu = internal::Smmu;
  using MappingRecord = internal::MappingRecord;
  using Buffers = internal::BufferTable;

  BrokerImpl(const Topology& topology, const BrokerOptions& options)
      : topology_(topology), options_(options) {}

  // Builds the model; from `restored` when given (see Broker::Restore),
  // else fresh, journaling its initial state.
  absl::Status Init(DurableState* restored = nullptr, RestoreReport* report = nullptr);

  // --- durable state (broker_restore.cc) -------------------------------------
  // Journals `changes` (nothing without a journal), with the reply of the
  // call's request when it has been captured (see RequestScope).
  void Commit(StateChanges& changes);
  // Waits, as an operation's scope ends, until what this thread's commits
  // wrote is as durable as the journal promises: an operation is
  // acknowledged only after that. Declared first in every mutating
  // operation, so that every lock is released before it waits.
  class DurableReply {
   public:
    explicit DurableReply(const BrokerImpl& impl) : journal_(impl.journal_) {}
    ~DurableReply() {
      // A call under a request id that changed nothing still records its
      // reply (alone: there is no change for it to join).
      if (RequestScope* request = internal::pending_request;
          request != nullptr && request->unjournaled()) {
        StateChanges c;
        request->JoinCommit(c);
        if (journal_ != nullptr) {
          internal::pending_journal_ticket =
              std::max(internal::pending_journal_ticket, journal_->Commit(c));
        }
      }
      if (journal_ != nullptr && internal::pending_journal_ticket != 0) {
        journal_->WaitDurable(internal::pending_journal_ticket);
        internal::pending_journal_ticket = 0;
      }
    }
    DurableReply(const DurableReply&) = delete;
    DurableReply& operator=(const DurableReply&) = delete;

    // The operation's result, captured as its request's reply when it
    // succeeded (see RequestScope). Called as the operation returns, before
    // its last commit (the transaction's or table's scope ends after it).
    template <typename T>
    absl::StatusOr<T> Reply(absl::StatusOr<T> result) const {
      if (result.ok()) internal::CaptureReply(*result);
      return result;
    }
    template <typename T>
    T Reply(T result) const {
      internal::CaptureReply(result);
      return result;
    }
    absl::Status Reply(absl::Status status) const {
      if (status.ok()) internal::CaptureReply(status);
      return status;
    }

   private:
    Journal* const journal_;
  };
  // Init's restore of `state` (see Broker::Restore).
  // (Moves the mapping records out of `state`.)
  absl::Status RestoreState(DurableState& state, RestoreReport* report);
  // Journals a device's current domain. REQUIRES: registry_mu_ held
  // exclusively (attachments change only so).
  void JournalAttachment(const DeviceState& dev) ABSL_EXCLUSIVE_LOCKS_REQUIRED(registry_mu_) {
    if (journal_ == nullptr) return;
    StateChanges c;
    c.attachment_puts.push_back({dev.config.name, dev.current->id()});
    Commit(c);
  }
  // Every record of the state, for a fresh journal's first commit.
  StateChanges InitialState() const ABSL_LOCKS_EXCLUDED(registry_mu_);
  // Fault sequence numbers are reserved in the journal in blocks: called
  // after a fault got `seq`, journals the next block when seq reaches it.
  void ReserveFaultSeqs(uint64_t seq);
  static constexpr uint64_t kFaultSeqBlock = uint64_t{1} << 16;

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
  std::shared_ptr<Domain> CurrentDomain(const DeviceState& dev) const;
  absl::StatusOr<std::shared_ptr<Domain>> FindDomain(uint64_t domain_id) const
      ABSL_SHARED_LOCKS_REQUIRED(registry_mu_);

  // --- domains --------------------------------------------------------------
  // Creates a domain and enters it in the registry. A device's default domain
  // tries 32-bit IOVAs first when the device is PCI (as Linux's
  // iommu_dma_alloc_iova does, for SAC addressing).
  absl::StatusOr<std::shared_ptr<Domain>> NewDomain(Smmu* smmu, internal::DomainParams params)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(registry_mu_);
  absl::StatusOr<std::shared_ptr<Domain>> NewDefaultDomain(const DeviceState& dev)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(registry_mu_);
  absl::Status DestroyDomain(const Caller& caller, uint64_t domain_id)
      ABSL_LOCKS_EXCLUDED(registry_mu_);
  // The devices whose current domain is `d`, in topology order.
  std::vector<std::string> AttachedTo(const Domain& d) const
      ABSL_SHARED_LOCKS_REQUIRED(registry_mu_);
  DomainInfo Describe(const Domain& domain) const ABSL_SHARED_LOCKS_REQUIRED(registry_mu_);

  // --- mappings ---------------------------------------------------------------
  // Map and Unmap inside a transaction on the device's current domain: every
  // check, error and effect of Broker::Map/Unmap (unary and Batch alike).
  absl::StatusOr<MapResult> MapOne(Domain::Transaction& txn, internal::BufferTable::Refs& refs,
                                   DeviceState& dev, const Caller& caller, const MemRef& mem,
                                   DmaDirection direction, const DmaAttrs& attrs);
  absl::Status UnmapOne(Domain::Transaction& txn, const DeviceState& dev, const Caller& caller,
                        uint64_t dma_addr);
  // The caller's mapping containing dma_addr, made by one of `kinds`:
  // NOT_FOUND for anything the caller does not own, FAILED_PRECONDITION
  // naming the call that made it otherwise.
  static absl::StatusOr<MappingRecord*> OwnMapping(
      Domain::Transaction& txn, const Caller& caller, const std::string& device, uint64_t dma_addr,
      std::initializer_list<internal::MappingKind> kinds, const char* call);
  // The highest IOVA the device may use in `d` (aperture and DMA mask).
  Iova DeviceLimit(const Domain& d, const DeviceState& dev) const;
  Prot ProtFor(const DeviceState& dev, DmaDirection dir, const DmaAttrs& attrs) const;
  // The physical address of the device's MSI doorbell, and its page in `d`'s
  // granule. REQUIRES: the device has a doorbell.
  uint64_t MsiDoorbell(const DeviceState& dev) const;
  uint64_t MsiDoorbellPage(const DeviceState& dev, const Domain& d) const;

  // Releases everything created under the sessions `session_ids` (closed
  // or expired, their gates closed): mappings, then buffers, then domains,
  // then their records. Visits only what they own, through the indexes
  // (session_index_, each domain's and each buffer shard's session index,
  // session_domains_), and holds another domain's lock for at most
  // kReleaseChunk removals at a time (docs/design.md#sessions).
  void ReleaseSessions(absl::Span<const uint64_t> session_ids);
  // Removes the mappings of `releasing` in `d`, in IOVA order, at most
  // kReleaseChunk per hold of its lock. Returns the records visited.
  uint64_t ReleaseMappingsIn(Domain& d, absl::Span<const uint64_t> session_ids,
                             const absl::flat_hash_set<uint64_t>& releasing);
  static constexpr size_t kReleaseChunk = 256;

  // --- exports ----------------------------------------------------------------
  // Revokes the exports `export_ids` (those still live; no new import can
  // use them), then unmaps each of their live imports, with the IOTLB
  // invalidated (lazy domains flushed) before it returns. Returns the
  // imports unmapped. Takes domain locks: call with none held.
  uint64_t RevokeExports(absl::Span<const uint64_t> export_ids);

  // --- state ----------------------------------------------------------------
  const Topology topology_;
  const BrokerOptions options_;
  Journal* const journal_ = options_.journal;
  absl::Mutex fault_seq_mu_;
  std::atomic<uint64_t> fault_seqs_reserved_{0};
  std::unique_ptr<PhysMemory> memory_;
  std::unique_ptr<FaultRing> faults_;
  // Which domains hold each session's mappings; outlives every domain.
  internal::SessionIndex session_index_;
  // When each lazy domain's flush queue is due a poll; outlives every domain.
  internal::FlushTimer flush_timer_;
  // The records session releases visited (see Broker::SessionReleaseWork).
  std::atomic<uint64_t> release_work_{0};
  // The domains Tick polled (see Broker::FlushPolls).
  std::atomic<uint64_t> flush_polls_{0};
  std::vector<std::unique_ptr<Smmu>> smmus_;  // immutable after Init
  absl::flat_hash_map<std::string, Smmu*> smmu_by_name_;
  absl::flat_hash_map<std::string, std::unique_ptr<DeviceState>> devices_;  // immutable set

  mutable absl::Mutex registry_mu_;
  std::map<uint64_t, std::shared_ptr<Domain>> domains_ ABSL_GUARDED_BY(registry_mu_);
  uint64_t next_domain_id_ ABSL_GUARDED_BY(registry_mu_) = 1;
  SessionTable sessions_ ABSL_GUARDED_BY(registry_mu_);
  // session id -> the domains created under it that still exist
  absl::flat_hash_map<uint64_t, std::vector<uint64_t>> session_domains_
      ABSL_GUARDED_BY(registry_mu_);

  std::unique_ptr<internal::BufferTable> buffers_;  // set by Init
  RequestLog requests_{options_.requests};
  // Fair shares computed at Init (see Quotas).
  uint64_t fair_buffer_bytes_ = 0;
  absl::flat_hash_map<const Smmu*, uint64_t> fair_domains_;
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_BROKER_BROKER_IMPL_H_
