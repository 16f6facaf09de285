// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BROKER_BROKER_TYPES_H_
#define IOMMU_CORE_BROKER_BROKER_TYPES_H_

// The vocabulary of the broker's API: who calls, what they ask, what they
// get. Plain structs; the server converts protobuf messages to and from these
// in one place. Addresses are typed (Iova, PhysAddr: core/base/types.h); the
// device a DMA call acts as is a parameter of the call, never a field of its
// request, so a request is the same value in a unary call and in a Batch run.

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "core/base/prot.h"
#include "core/base/types.h"
#include "core/broker/sg_layout.h"
#include "core/broker/topology.h"
#include "core/iotlb/fault_ring.h"
#include "core/memory/phys_memory.h"

namespace iommu::core {

// The authenticated identity a call acts as. A device caller may act only as
// its own device; an admin may act as any device and on any memory.
struct Caller {
  std::string device;  // "" for an admin acting on no particular device
  bool admin = false;
  uint64_t session_id = 0;  // 0: resources persist until freed explicitly

  static Caller Admin() { return Caller{.device = "", .admin = true}; }
  static Caller Device(std::string name, uint64_t session_id = 0) {
    return Caller{.device = std::move(name), .admin = false, .session_id = session_id};
  }
};

enum class DomainType { kDma, kDmaFq, kUnmanaged, kIdentity, kBlocked };
const char* DomainTypeName(DomainType type);  // "DMA", "DMA_FQ", ...

enum class DmaDirection { kBidirectional, kToDevice, kFromDevice };

// DMA attributes (DMA_ATTR_*).
struct DmaAttrs {
  bool privileged = false;          // DMA_ATTR_PRIVILEGED: IOMMU_PRIV
  bool no_kernel_mapping = false;   // DMA_ATTR_NO_KERNEL_MAPPING (Alloc)
  bool force_contiguous = false;    // DMA_ATTR_FORCE_CONTIGUOUS (Alloc)
  bool alloc_single_pages = false;  // DMA_ATTR_ALLOC_SINGLE_PAGES (Alloc)
};

// Physical memory named by a client: a range of one of its buffers, or (admin
// only) a raw physical range.
struct MemRef {
  uint64_t buffer_id = 0;  // 0: raw physical address (admin)
  uint64_t offset_bytes = 0;
  PhysAddr phys;  // used when buffer_id == 0
  uint64_t length_bytes = 0;
};

struct BufferInfo {
  uint64_t buffer_id = 0;
  std::string device;
  uint64_t size_bytes = 0;
  std::string pool;
  Placement placement = Placement::kScattered;
  std::vector<PhysRun> runs;  // in buffer order, each maximal
  uint64_t map_count = 0;     // mappings referencing the buffer
};

struct MapRequest {
  MemRef mem;
  DmaDirection direction = DmaDirection::kBidirectional;
  DmaAttrs attrs;
};

// A Map at an address the caller chooses (UNMANAGED domains).
struct MapAtRequest {
  Iova iova;
  MemRef mem;
  DmaDirection direction = DmaDirection::kBidirectional;
  DmaAttrs attrs;
};

struct MapResult {
  Iova dma_addr;  // iova + offset of the memory within its granule
  uint64_t mapping_id = 0;
  uint64_t domain_id = 0;
  uint64_t iova_size_bytes = 0;  // the whole IOVA allocation
};

// Unmaps the allocation that `dma_addr` (any address inside it) belongs to.
struct UnmapRequest {
  Iova dma_addr;
};

// One operation of Broker::MapUnmapBatch, which acts as one device for a run
// of them: the request of a Map or of an Unmap, as the unary call takes it.
using DmaBatchOp = std::variant<MapRequest, UnmapRequest>;

// What Map (status and `map`) or Unmap (status) returned for one DmaBatchOp.
struct DmaBatchResult {
  absl::Status status;
  MapResult map;  // kMap with an OK status
};

struct MapSgRequest {
  std::vector<MemRef> segments;  // each physically contiguous
  std::string import_token;      // instead of segments: import an exported buffer
  SgMode mode = SgMode::kMerge;
  DmaDirection direction = DmaDirection::kBidirectional;
  DmaAttrs attrs;
};

struct DmaSegment {
  Iova dma_addr;
  uint64_t length_bytes = 0;
};

struct MapSgResult {
  uint64_t mapping_id = 0;
  uint64_t domain_id = 0;
  Iova iova;  // start of the IOVA allocation
  uint64_t iova_size_bytes = 0;
  std::vector<DmaSegment> segments;
};

struct AllocRequest {
  uint64_t size_bytes = 0;
  DmaDirection direction = DmaDirection::kBidirectional;
  DmaAttrs attrs;
  std::string pool;  // "" = by priority
};

struct AllocResult {
  Iova dma_addr;
  uint64_t mapping_id = 0;
  uint64_t domain_id = 0;
  uint64_t buffer_id = 0;  // the pages behind it, owned by the device
  uint64_t size_bytes = 0;
  std::vector<PhysRun> runs;
  std::vector<uint64_t> page_sizes_used;  // distinct page-table page sizes, descending
};

// What an export token allows (GetSgTable with an export).
struct ExportGrant {
  // The devices that may import; empty: any device.
  std::vector<std::string> importers;
  // Importers may map it for device writes too; otherwise TO_DEVICE only.
  bool writable = false;
};

struct SgTableResult {
  std::vector<PhysRun> chunks;  // maximal physically contiguous chunks, in IOVA order
  uint64_t size_bytes = 0;
  // Empty unless asked for: "iexp_" and 32 hex digits (128 bits from the OS
  // CSPRNG), valid until revoked or the buffer is freed.
  std::string export_token;
};

// A window of IOVA space, [base, base + size_bytes).
struct IovaWindow {
  Iova base;
  uint64_t size_bytes = 0;
  friend bool operator==(const IovaWindow&, const IovaWindow&) = default;
};

struct MsiCookieRequest {
  // For the owner of an UNMANAGED domain setting up its MSI window (once):
  std::optional<uint64_t> domain_id;
  IovaWindow window;
};

struct MsiCookieResult {
  Iova msi_addr;  // iova of the doorbell page + the doorbell's offset
  uint64_t domain_id = 0;
  bool newly_mapped = false;  // false: the doorbell page was already mapped there
};

struct CreateDomainRequest {
  std::string smmu;
  DomainType type = DomainType::kDma;
  uint64_t granule_bytes = 0;  // 0: the SMMU's smallest
  // Devices (behind the same SMMU) that may attach themselves to the domain
  // besides its owner. An admin-created domain is reachable only by these
  // and by the admin's own AttachDevice calls.
  std::vector<std::string> granted_devices;
};

struct DomainInfo {
  uint64_t domain_id = 0;
  std::string smmu;
  DomainType type = DomainType::kDma;
  std::string owner;  // creating device, "" for admin/default
  bool is_default = false;
  std::vector<std::string> granted_devices;
  uint64_t granule_bytes = 0;
  uint64_t pgsize_bitmap = 0;
  unsigned ias_bits = 0, oas_bits = 0;
  Stage stage = Stage::kStage1;
  Iova aperture_start, aperture_end;  // inclusive
  uint32_t asid = 0, vmid = 0;
  bool strict = true;
  std::vector<std::string> devices;  // attached
  uint64_t mappings = 0;
  uint64_t mapped_bytes = 0;
  std::optional<IovaWindow> msi_window;  // UNMANAGED, once set
};

enum class ReservedKind { kMsi, kReserved };

struct IovaRange {
  Iova start, end;  // inclusive
};
struct ReservedRegion {
  Iova start, end;  // inclusive
  ReservedKind kind = ReservedKind::kReserved;
};
struct IovaRangesResult {
  uint64_t domain_id = 0;
  std::vector<IovaRange> usable;
  std::vector<ReservedRegion> reserved;
};

enum class TranslateOutcome { kOk, kFault };

// A device access. Unlike the DMA calls it names its device in the request,
// as one of two ways of naming the accessor: an admin may give a raw stream
// (smmu + stream_id) instead.
struct TranslateRequest {
  std::string device;  // or, for admins, smmu + stream_id
  std::string smmu;
  std::optional<uint32_t> stream_id;
  Iova iova;
  uint64_t length_bytes = 1;
  Access access;
};

struct TranslatedPage {
  Iova iova;  // first byte of this piece
  PhysAddr phys_addr;
  uint64_t length_bytes = 0;  // up to the end of the page or request
  bool iotlb_hit = false;
  bool stale = false;  // served from a stale IOTLB entry (lazy mode)
};

struct TranslateResult {
  std::vector<TranslatedPage> pages;  // the pieces that translated, in order
  bool faulted = false;
  uint64_t fault_seq = 0;                          // the fault record, when faulted
  FaultType fault_type = FaultType::kTranslation;  // when faulted
  Iova fault_iova;
};

}  // namespace iommu::core

#endif  // IOMMU_CORE_BROKER_BROKER_TYPES_H_
