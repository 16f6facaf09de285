// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_STATE_H_
#define IOMMU_CORE_BROKER_STATE_H_

// The broker's durable state as records, and the Journal every mutation
// writes them through (docs/design.md#durable-state).
//
// The state is the live objects, never their history: a domain, a device's
// attachment, a buffer, an export, a session, a mapping, and a few counters.
// Each commit of the broker (a domain transaction's, or a registry change's)
// hands the Journal the records it created or changed and the keys it
// removed, as one atomic change set, before the operation is acknowledged.
// A store that applies every change set in the order it receives them holds,
// after any crash, a state the broker can restore exactly (Broker::Restore):
// the same ids, IOVAs, pages and page-table leaves.
//
// Order. Change sets touching one record are journaled under the lock that
// orders that record's changes (the domain's for its mappings, the registry
// lock for domains, attachments and sessions, the buffer table's for buffers
// and exports), so the store sees each record's changes in memory order.
// Operations that make several commits (Alloc: its buffer, then its mapping;
// RevokeExport: the export, then each import; DestroyDomain of a session's
// domain) leave, if cut short by a crash, a state that recovery completes the
// way the operation would have (see Broker::Restore).

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/time/time.h"
#include "core/broker/broker_mappings.h"
#include "core/broker/broker_types.h"
#include "core/memory/phys_memory.h"

namespace iommu::core {

// Counters that must never repeat across restarts.
enum class StateCounter : uint8_t {
  kDomainId = 1,    // the next domain id
  kBufferId = 2,    // the next buffer id
  kExportId = 3,    // the next export id
  kSessionSeq = 4,  // the next session counter (ids are its permutation)
  kFaultSeq = 5,    // fault sequence numbers below this may have been issued
};

struct DomainState {
  uint64_t domain_id = 0;
  std::string smmu;
  DomainType type = DomainType::kDma;
  uint64_t granule_bytes = 0;
  std::string owner;       // creating device; "" for admin-created and default domains
  std::string default_of;  // the device whose default domain it is, or ""
  std::vector<std::string> granted;
  uint64_t session_id = 0;
  // Mapping ids below this may have been handed out (ids are reserved in
  // blocks, so the record changes once per block, not per mapping).
  uint64_t mapping_ids_reserved = 0;
  std::optional<IovaWindow> msi_window;  // UNMANAGED, once set
};

struct AttachmentState {
  std::string device;
  uint64_t domain_id = 0;  // its current domain
};

struct BufferState {
  uint64_t buffer_id = 0;
  std::string device;
  uint64_t session_id = 0;
  std::string pool;
  Placement placement = Placement::kScattered;
  std::vector<PhysRun> runs;  // as allocated, in buffer order
  bool backs_alloc = false;
};

struct ExportState {
  uint64_t export_id = 0;
  std::string token;
  std::string exporter;
  uint64_t exporter_granule = 0;
  std::vector<PhysRun> chunks;
  std::vector<uint64_t> buffer_ids;
  std::vector<std::string> importers_allowed;
  bool writable = false;
};

struct SessionState {
  uint64_t session_id = 0;
  std::string device;
  absl::Duration ttl;
};

// A mutating call's client-chosen request id and the reply it got, so that a
// retry of the same id (after a restart too) is answered, not applied again
// (docs/design.md#request-ids). Journaled in the commit of the call's last
// change, so the reply is in the store exactly when the call's effects are.
struct RequestState {
  std::string principal;     // the authenticated identity that sent it
  std::string request_id;    // unique per principal within the window
  uint64_t fingerprint = 0;  // the method and the request's bytes
  std::string reply;         // the serialized reply
  absl::Time recorded;       // wall time: the window survives restarts
};

// A mapping's record as its domain holds it. Only the persistent fields are
// written (ids, addresses, pages, kind, owner's name, buffer ids); `owner`
// and each BufferRef's pointer are rebuilt by Restore.
using MappingState = internal::MappingRecord;

// One commit's changes. Pointers are valid during Journal::Commit only.
struct StateChanges {
  absl::InlinedVector<std::pair<uint64_t, const MappingState*>, 2>
      mapping_puts;                                                   // (domain, record)
  absl::InlinedVector<std::pair<uint64_t, Iova>, 2> mapping_deletes;  // (domain, IOVA start)
  std::vector<DomainState> domain_puts;
  std::vector<uint64_t> domain_deletes;
  std::vector<AttachmentState> attachment_puts;
  std::vector<BufferState> buffer_puts;
  std::vector<uint64_t> buffer_deletes;
  std::vector<ExportState> export_puts;
  std::vector<uint64_t> export_deletes;
  std::vector<SessionState> session_puts;
  std::vector<uint64_t> session_deletes;
  std::vector<std::pair<StateCounter, uint64_t>> counters;
  std::optional<std::pair<uint64_t, uint64_t>> session_key;  // the id permutation's key
  const RequestState* request_put = nullptr;                 // the call's reply (see RequestState)
  std::vector<std::pair<std::string, std::string>> request_deletes;  // (principal, id)

  bool empty() const {
    return mapping_puts.empty() && mapping_deletes.empty() && domain_puts.empty() &&
           domain_deletes.empty() && attachment_puts.empty() && buffer_puts.empty() &&
           buffer_deletes.empty() && export_puts.empty() && export_deletes.empty() &&
           session_puts.empty() && session_deletes.empty() && counters.empty() &&
           !session_key.has_value() && request_put == nullptr && request_deletes.empty();
  }
};

// Where the broker's commits go. Implementations: the daemon's store
// (store/state_store.h) and tests' in-memory journals.
class Journal {
 public:
  virtual ~Journal() = default;
  // Applies `changes` atomically, in the order of calls; when it returns the
  // changes survive a crash of the process. Returns a ticket for
  // WaitDurable. A journal that cannot write must not return: the broker's
  // memory is already ahead of it, so it stops the process (fail-stop) and
  // recovery serves the last state it wrote.
  virtual uint64_t Commit(const StateChanges& changes) = 0;
  // Returns once the commit `ticket` (and every earlier one) is as durable as
  // the journal promises (e.g. synced to disk); concurrent waiters share one
  // sync. Called with no broker lock held, before an operation's reply.
  virtual void WaitDurable(uint64_t ticket) = 0;
};

namespace internal {
// The newest ticket this thread's commits got from the journal and have not
// waited for yet (0: none); the broker waits for it before an operation
// returns (see BrokerImpl::DurableReply).
inline thread_local uint64_t pending_journal_ticket = 0;
}  // namespace internal

// Everything a journal holds, as Broker::Restore takes it.
struct DurableState {
  std::vector<std::pair<StateCounter, uint64_t>> counters;
  std::optional<std::pair<uint64_t, uint64_t>> session_key;
  std::vector<DomainState> domains;
  std::vector<AttachmentState> attachments;
  std::vector<BufferState> buffers;
  std::vector<ExportState> exports;
  std::vector<SessionState> sessions;
  std::vector<std::pair<uint64_t, MappingState>> mappings;  // (domain, record)
  std::vector<RequestState> requests;

  bool empty() const {
    return counters.empty() && !session_key && domains.empty() && attachments.empty() &&
           buffers.empty() && exports.empty() && sessions.empty() && mappings.empty() &&
           requests.empty();
  }
};

// What Restore did beyond restoring records: the operations a crash had cut
// short that it completed (each also named in `notes`).
struct RestoreReport {
  uint64_t records = 0;
  uint64_t mappings = 0;
  uint64_t completed = 0;
  std::vector<std::string> notes;
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_BROKER_STATE_H_
