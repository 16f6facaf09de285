// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_BROKER_H_
#define IOMMU_CORE_BROKER_BROKER_H_

// The broker model: one authority for DMA address translation on a host.
// Every front end (the gRPC server, a journal replay) goes through this API,
// so ownership, quotas and error codes live here.
//
// Model (docs/design.md#model). SMMUs own translation contexts and an IOTLB.
// A domain is one I/O address space: one page table (format fixed at
// creation), an aperture, a typed cookie (IOVA allocator, MSI window, or
// none) and the devices attached to it. Every device starts attached to its
// own default DMA domain; Attach replaces its domain (a context switch), Detach
// returns it to the default. Device callers map only memory they own
// (buffers from AllocBuffer/Alloc) and see only their own mappings.
//
// Errors: absl::Status with the codes of docs/design.md#errors, every message
// naming the offending field and value. A failed call leaves no trace.
//
// Thread-safe. Locking (acquire in this order, never the reverse):
//   1. registry_mu_    devices' current domains, the domain table, sessions
//                      (shared for lookups, exclusive to attach/create/destroy)
//   2. a Domain's lock  its page table, cookie and mappings, held by one
//                      Domain::Transaction per operation or Batch message
//   3. BufferTable      its export lock, then one buffer shard's lock
//   4. Smmu::mu         one SMMU's IOTLB and context allocator
//   5. PhysMemory's, FaultRing's and SessionIndex's internal locks
// A device's current domain is read under a lock of that device alone, and
// buffer references are taken under one of 16 shard locks or none, so
// operations of different devices in different domains share no lock but
// their SMMU's and, rarely, a shard's (docs/design.md#domain-transactions).

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/broker/broker_types.h"
#include "core/broker/request_log.h"
#include "core/broker/state.h"
#include "core/broker/topology.h"
#include "core/iotlb/fault_ring.h"
#include "core/iotlb/flush_queue.h"
#include "core/iotlb/iotlb.h"
#include "core/iova/iova_allocator.h"
#include "core/memory/phys_memory.h"
#include "core/pgtable/io_pgtable.h"

namespace iommu::core {

class BrokerImpl;

struct DeviceInfo {
  DeviceConfig config;
  uint64_t current_domain_id = 0;
  uint64_t default_domain_id = 0;
  uint64_t mapped_bytes = 0;
  uint64_t mappings = 0;
  uint64_t buffers = 0;
  Quotas quotas;
};

struct SmmuStats {
  std::string name;
  IotlbStats iotlb;
  uint64_t iotlb_capacity = 0;
  uint32_t contexts_total = 0;
  uint32_t contexts_used = 0;
  uint64_t translations_ok = 0;
  uint64_t translations_fault = 0;
};

struct DomainStats {
  uint64_t domain_id = 0;
  std::string smmu;
  DomainType type = DomainType::kDma;
  bool strict = true;
  std::optional<IovaStats> iova;  // DMA and DMA_FQ domains
  PgtableStats pgtable;
  uint64_t mappings = 0;
  uint64_t mapped_bytes = 0;
  std::optional<FlushQueueStats> flush_queue;  // DMA_FQ domains
};

// One device's faults. kUnknownStream is always 0: those faults name no
// device, so only the fault ring's counts hold them.
struct DeviceFaultStats {
  std::string device;
  std::array<uint64_t, kNumFaultTypes> by_type{};  // indexed by FaultType
};

struct BrokerStats {
  std::vector<SmmuStats> smmus;
  std::vector<DomainStats> domains;
  FaultRingStats faults;
  std::vector<PoolStats> pools;
  // Admin view only, in topology order: summed over devices, each type but
  // kUnknownStream is faults.pushed_by_type of that type.
  std::vector<DeviceFaultStats> device_faults;
};

struct BrokerOptions {
  Quotas default_quotas;
  uint32_t fault_ring_capacity = 4096;
  uint32_t flush_queue_capacity = 256;  // DMA_FQ entries before a forced flush
  absl::Duration flush_queue_timeout = absl::Milliseconds(10);
  uint64_t iova_cache_max_pages = 32;           // magazine size classes up to this
  std::function<absl::Time()> now = absl::Now;  // injected for tests
  // Where every mutation is journaled before it is acknowledged (none when
  // null): see core/broker/state.h. Not owned; outlives the broker.
  Journal* journal = nullptr;
  // How long and how many request ids are remembered (see RequestLog).
  RequestLogOptions requests;
  // The most physical runs a buffer made by AllocBuffer or Alloc may have
  // (the daemon's --max_buffer_runs, docs/design.md#limits): a reply that
  // describes a buffer lists every run, so a request whose buffer could have
  // more is RESOURCE_EXHAUSTED before any page is taken. Buffers restored
  // from a store are not checked.
  uint64_t max_buffer_runs = UINT64_MAX;
};

class Broker {
 public:
  // Validates the topology and builds the model: SMMUs, memory, devices each
  // attached to a fresh default DMA domain.
  static absl::StatusOr<std::unique_ptr<Broker>> Create(const Topology& topology,
                                                        const BrokerOptions& options = {});
  // Rebuilds the broker a journal recorded (docs/design.md#durable-state):
  // every domain, attachment, buffer, export, session and mapping at its
  // recorded id, IOVA and pages, so that every page table walks as before;
  // the IOTLBs start empty, lazy invalidations count as done, session
  // leases restart with their full TTL, and ids, mapping ids and fault
  // sequence numbers continue past any issued before. A crash between the
  // commits of one operation is completed as the operation would have
  // (an Alloc's buffer without its mapping is freed; a mapping whose buffer
  // was freed, or an import whose export was revoked, is unmapped); each
  // such repair is counted and named in `report`. A state that cannot be
  // restored (a record naming a missing SMMU, device or domain, an address
  // taken twice) is FAILED_PRECONDITION naming the record. An empty state
  // is a fresh start. The topology must be the one the state was written
  // with, or a superset (new devices get fresh default domains).
  static absl::StatusOr<std::unique_ptr<Broker>> Restore(const Topology& topology,
                                                         const BrokerOptions& options,
                                                         DurableState state,
                                                         RestoreReport* report = nullptr);
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  const Topology& topology() const;
  // The replies of mutating calls made under request ids (see RequestLog):
  // the server begins each such call here and runs it in a RequestScope.
  RequestLog& request_log();
  const RequestLog& request_log() const;

  // --- Buffers (pinned pages) ---------------------------------------------
  absl::StatusOr<BufferInfo> AllocBuffer(const Caller& caller, const std::string& device,
                                         uint64_t size_bytes, Placement placement,
                                         const std::string& pool = "");
  // FAILED_PRECONDITION while any mapping references the buffer.
  absl::Status FreeBuffer(const Caller& caller, uint64_t buffer_id);
  absl::StatusOr<BufferInfo> GetBuffer(const Caller& caller, uint64_t buffer_id) const;

  // --- DMA API --------------------------------------------------------------
  // Every call acts as `device` (which the caller must be allowed to act as)
  // in its current domain.
  absl::StatusOr<MapResult> Map(const Caller& caller, const std::string& device,
                                const MapRequest& request);
  // Unmaps the whole allocation that `request.dma_addr` (any address inside
  // it) belongs to in the device's current domain. NOT_FOUND for anything
  // the caller does not own.
  absl::Status Unmap(const Caller& caller, const std::string& device, const UnmapRequest& request);
  // A run of Map/Unmap operations of one device, applied in order under one
  // device lookup, one domain reference and one hold of the domain's lock.
  // results[i] is exactly what Map/Unmap would have returned for ops[i] at
  // that point of a one-at-a-time sequence (same codes, messages, addresses;
  // ownership and quotas checked per op; a failed op leaves no trace). In a
  // strict domain the IOTLB invalidation of consecutive Unmaps is done
  // together (adjacent leaf ranges merged), before the next Map and before
  // the call returns, and only then are their IOVAs freed, in unmap order: an
  // IOVA is never reused before its invalidation completes.
  // REQUIRES: results.size() == ops.size().
  void MapUnmapBatch(const Caller& caller, const std::string& device,
                     absl::Span<const DmaBatchOp> ops, absl::Span<DmaBatchResult> results);
  absl::StatusOr<MapSgResult> MapSg(const Caller& caller, const std::string& device,
                                    const MapSgRequest& request);
  absl::Status UnmapSg(const Caller& caller, const std::string& device, Iova dma_addr);
  absl::StatusOr<AllocResult> Alloc(const Caller& caller, const std::string& device,
                                    const AllocRequest& request);
  absl::Status Free(const Caller& caller, const std::string& device, Iova dma_addr);
  // With `grant`, also an export token (see ExportGrant): unguessable,
  // limited to the named importers, read-only unless writable, and valid
  // until RevokeExport, or until the exporter frees the memory (which revokes
  // it). An imported mapping cannot be exported again.
  absl::StatusOr<SgTableResult> GetSgTable(const Caller& caller, const std::string& device,
                                           Iova dma_addr,
                                           std::optional<ExportGrant> grant = std::nullopt);
  // Revokes an export token: no new import can use it, and every live import
  // is unmapped (IOTLB invalidated, lazy queues flushed) before this returns.
  // The exporter or an admin only: NOT_FOUND for anyone else, as for an
  // unknown token. Returns the number of imports unmapped.
  absl::StatusOr<uint64_t> RevokeExport(const Caller& caller, const std::string& export_token);
  absl::StatusOr<MsiCookieResult> MsiCookie(const Caller& caller, const std::string& device,
                                            const MsiCookieRequest& request);
  // UNMANAGED domains only: the caller chooses the IOVA.
  absl::StatusOr<MapResult> MapAt(const Caller& caller, const std::string& device,
                                  const MapAtRequest& request);
  // Returns the bytes unmapped. A range that would split a mapping fails and
  // changes nothing.
  absl::StatusOr<uint64_t> UnmapRange(const Caller& caller, const std::string& device, Iova iova,
                                      uint64_t size_bytes);
  // Completes pending (lazy) invalidations of the device's current domain.
  absl::Status Sync(const Caller& caller, const std::string& device);

  // --- Domains --------------------------------------------------------------
  absl::StatusOr<DomainInfo> CreateDomain(const Caller& caller, const CreateDomainRequest& request);
  // FAILED_PRECONDITION while devices are attached or for a default domain.
  absl::Status DestroyDomain(const Caller& caller, uint64_t domain_id);
  absl::StatusOr<DomainInfo> GetDomain(const Caller& caller, uint64_t domain_id) const;
  absl::StatusOr<std::vector<DomainInfo>> ListDomains(const Caller& caller) const;
  absl::Status AttachDevice(const Caller& caller, const std::string& device, uint64_t domain_id);
  absl::Status DetachDevice(const Caller& caller, const std::string& device);

  // --- Topology and views -----------------------------------------------------
  std::vector<SmmuConfig> ListIommus() const;
  // Devices the caller may see (all for an admin, itself for a device).
  absl::StatusOr<std::vector<DeviceInfo>> ListDevices(const Caller& caller) const;
  // Per domain the caller may see. The SMMU-wide counters (IOTLB, contexts),
  // the pools and the fault ring's totals are the platform's: an admin sees
  // them; a device gets no SMMU or pool entries and fault counts of its own
  // accesses only (no other device's activity shows through shared counters).
  absl::StatusOr<BrokerStats> GetStats(const Caller& caller) const;
  // Fault records with seq > after_seq (a device sees only its own; `lost`
  // counts every record the reader missed).
  absl::StatusOr<FaultReadResult> ReadFaults(const Caller& caller, uint64_t after_seq,
                                             size_t max_records) const;
  // The leaves of the domain's page table in IOVA order (for dumps and
  // tests): those ending after `start`, at most `max_leaves` of them. Same
  // visibility as GetDomain; empty for IDENTITY and BLOCKED domains. The walk
  // visits every leaf below the last one returned (O(leaves) under the
  // domain's reader lock).
  absl::StatusOr<std::vector<PgtableMapping>> WalkDomain(const Caller& caller, uint64_t domain_id,
                                                         Iova start = Iova(0),
                                                         size_t max_leaves = SIZE_MAX) const;
  // Blocks until a fault newer than after_seq exists, the deadline passes
  // (DEADLINE_EXCEEDED) or Shutdown (CANCELLED).
  absl::Status WaitForFaults(uint64_t after_seq, absl::Time deadline) const;
  // Wakes fault watchers for a daemon shutdown.
  void Shutdown();

  absl::StatusOr<IovaRangesResult> GetIovaRanges(const Caller& caller,
                                                 const std::string& device) const;

  // --- Device accesses ------------------------------------------------------
  absl::StatusOr<TranslateResult> Translate(const Caller& caller, const TranslateRequest& request);

  // --- Sessions -------------------------------------------------------------
  // Everything created with the session id is released when the session is
  // closed or its lease expires.
  absl::StatusOr<uint64_t> OpenSession(const Caller& caller, absl::Duration ttl);
  absl::Status KeepAlive(const Caller& caller, uint64_t session_id);
  absl::Status CloseSession(const Caller& caller, uint64_t session_id);
  // Releases sessions whose lease ran out; returns how many. Also polls the
  // lazy domains whose flush queue timed out, and only those (O(due)). The
  // daemon calls it from a timer.
  // A release (of a closed or an expired session) costs O(what the session
  // owns): it visits only the domains holding its mappings, its mappings,
  // buffers and domains, and holds another domain's lock for a bounded
  // number of removals at a time, so one device's expiring sessions do not
  // stall another device's calls (docs/design.md#sessions).
  int Tick();
  // The records session releases have visited since the broker was made
  // (mappings, buffers, domains): the work of a release, for tests that
  // assert its cost without timing it.
  uint64_t SessionReleaseWork() const;
  // The lazy domains Ticks have polled since the broker was made: only those
  // whose flush queue was due (docs/design.md#sessions), for tests.
  uint64_t FlushPolls() const;

  // Checks every engine's invariants and the cross-references between them
  // (mappings vs page tables, buffer references, quotas). For tests.
  void CheckInvariants() const;
  // The state as one deterministic text, for tests that must tell whether a
  // call changed anything (equal texts, equal states; core/broker/
  // broker_digest.cc): SMMU contexts in use; each pool's free and allocated
  // pages and free blocks; each device's attachment, quota usage and session
  // count; each domain's identity, mapping records, page-table leaves and
  // tables, live IOVA allocations and reservations, pending lazy unmaps and
  // MSI pages; each buffer and export with its references and imports.
  // Left out: what no caller can see change but through timing or counters
  // (IOTLB contents, faults, statistics, the request log, freed memory
  // cached for reuse: page-table pages, IOVA magazines) and id counters (an
  // id a failed call took is skipped, never reused). O(state).
  std::string StateDigest() const;

 private:
  explicit Broker(std::unique_ptr<BrokerImpl> impl);
  std::unique_ptr<BrokerImpl> impl_;
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_BROKER_BROKER_H_
