#ifndef IOMMU_CORE_BROKER_BROKER_INTERNAL_H_
#define IOMMU_CORE_BROKER_BROKER_INTERNAL_H_

// The broker's internal model: SMMU instances, domains with typed cookies,
// mapping records and buffers. Only broker*.cc include this.

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/synchronization/mutex.h"
#include "core/broker/broker_mappings.h"
#include "core/broker/broker_types.h"
#include "core/broker/topology.h"
#include "core/iotlb/fault_ring.h"
#include "core/iotlb/flush_queue.h"
#include "core/iotlb/iotlb.h"
#include "core/iova/iova_allocator.h"
#include "core/memory/phys_memory.h"
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
  uint64_t base = 0;
  uint64_t size_bytes = 0;
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

class Domain;

// The flush ops a domain's page table calls: invalidations of this domain's
// tag in its SMMU's IOTLB. Called with Domain::mu held.
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

// One I/O address space. Immutable fields are set at creation; the rest is
// guarded by mu (lock order 2). `attached` is guarded by the broker's
// registry_mu_ (written only with it held exclusively).
class Domain {
 public:
  uint64_t id = 0;
  DomainType type = DomainType::kDma;
  Smmu* smmu = nullptr;
  std::string owner;  // creating device; "" for admin-created and default domains
  bool is_default = false;
  // Devices besides the owner that may attach themselves (immutable).
  std::vector<std::string> granted;
  uint64_t session_id = 0;
  uint64_t granule_bytes = 0;
  uint64_t pgsize_bitmap = 0;
  uint64_t aperture_start = 0;
  uint64_t aperture_end = 0;  // inclusive
  uint32_t context = 0;       // ASID (stage 1) or VMID (stage 2)
  TlbTag tag;
  bool strict = true;
  std::unique_ptr<DomainFlushOps> flush_ops;

  mutable absl::Mutex mu;
  std::unique_ptr<IoPgtableOps> pgtable ABSL_GUARDED_BY(mu);  // null: IDENTITY/BLOCKED
  Cookie cookie ABSL_GUARDED_BY(mu);
  MappingTable mappings ABSL_GUARDED_BY(mu);  // by IOVA start
  uint64_t mapped_bytes ABSL_GUARDED_BY(mu) = 0;

  std::vector<std::string> attached;  // guarded by Broker registry_mu_

  // The mapping whose IOVA allocation contains `addr`, or nullptr.
  MappingRecord* FindMappingLocked(uint64_t addr) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return mappings.Find(addr);
  }
};

// A buffer of pinned pages owned by one device.
struct Buffer {
  uint64_t buffer_id = 0;
  std::string device;
  uint64_t session_id = 0;
  PhysAllocation alloc;
  uint64_t map_refs = 0;     // mappings referencing it
  bool backs_alloc = false;  // created by Alloc; freed by Free
  // Its Alloc mapping is gone but importers still map it: freed when the
  // last reference drops.
  bool free_when_unreferenced = false;
  std::vector<uint64_t> exports;  // ids of the live exports of its memory
};

// An exported DMA buffer (GetSgTable with an export token): what it grants,
// to whom, and every live import of it, so that revocation can unmap them.
struct ExportRecord {
  uint64_t export_id = 0;  // internal handle; the token is the map key
  std::string exporter;
  uint64_t exporter_granule = 0;
  std::vector<PhysRun> chunks;
  std::vector<uint64_t> buffer_ids;
  std::vector<std::string> importers_allowed;  // empty: any device
  bool writable = false;
  struct Import {
    std::weak_ptr<Domain> domain;
    uint64_t iova = 0;
    uint64_t mapping_id = 0;
  };
  std::vector<Import> imports;
};

// Per-device state. `current` is guarded by the broker's registry_mu_; quota
// usage is atomic (charged before a change, refunded on failure).
struct DeviceState {
  DeviceConfig config;
  Smmu* smmu = nullptr;
  std::shared_ptr<Domain> default_domain;
  std::shared_ptr<Domain> current;
  Quotas quotas;
  std::atomic<uint64_t> mapped_bytes{0};
  std::atomic<uint64_t> mappings{0};
  std::atomic<uint64_t> buffers{0};
  std::atomic<uint64_t> buffer_bytes{0};
  std::atomic<uint64_t> domains{0};  // non-default domains it owns
  uint64_t exports = 0;              // live export tokens; guarded by buffers_mu_
  // Its own faults by FaultType (what a device's GetStats shows).
  std::array<std::atomic<uint64_t>, kNumFaultTypes> faults_by_type{};
};

}  // namespace iommu::core::internal

#endif  // IOMMU_CORE_BROKER_BROKER_INTERNAL_H_
