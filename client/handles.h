// SPDX-License-Identifier: Apache-2.0
// Move-only RAII handles for what the daemon hands out.
//
// Buffer owns a pinned buffer (AllocBuffer) and frees it on destruction.
// Mapping owns a DMA mapping and undoes it the way it was made: Unmap for
// Map, UnmapSg for MapSg, Free for Alloc (which also frees its pages),
// UnmapRange for MapAt. Destruction ignores the undo's status; call Close()
// to see it. Release() detaches the handle from the resource, which then
// lives until freed explicitly (or its session ends).
//
// Destroy a buffer's mappings before the buffer: the daemon refuses to free
// a mapped buffer (FAILED_PRECONDITION), and a destructor cannot report that.
// Declaring the Buffer before its Mappings in one scope does it.
//
// Thread-compatible: one thread owns a handle; handles of one client may be
// used from different threads.
#ifndef IOMMU_CLIENT_HANDLES_H_
#define IOMMU_CLIENT_HANDLES_H_

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "iommu/v1/common.pb.h"
#include "iommu/v1/memory.pb.h"

namespace iommu::client {

// The undo action of a handle; empty once run or released.
using Closer = std::function<absl::Status()>;

class Buffer {
 public:
  Buffer() = default;
  Buffer(iommu::v1::Buffer info, Closer closer)
      : info_(std::move(info)), closer_(std::move(closer)) {}
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { (void)Close(); }

  bool valid() const { return static_cast<bool>(closer_); }
  uint64_t id() const { return info_.buffer_id(); }
  uint64_t size_bytes() const { return info_.size_bytes(); }
  const iommu::v1::Buffer& info() const { return info_; }

  // Frees the buffer now; the handle becomes empty either way. OK when empty.
  absl::Status Close();
  // Detaches: the buffer outlives the handle. Returns its id.
  uint64_t Release();

 private:
  iommu::v1::Buffer info_;
  Closer closer_;
};

class Mapping {
 public:
  enum class Kind { kMap, kMapSg, kAlloc, kMapAt };

  // What the daemon returned for the mapping, whatever made it.
  struct Info {
    Kind kind = Kind::kMap;
    uint64_t mapping_id = 0;
    uint64_t domain_id = 0;
    uint64_t dma_addr = 0;                        // first DMA address (iova + offset)
    uint64_t iova = 0;                            // start of the IOVA allocation or range
    uint64_t iova_size_bytes = 0;                 // the whole allocation or range
    uint64_t buffer_id = 0;                       // kAlloc: the buffer Alloc created
    std::vector<iommu::v1::DmaSegment> segments;  // kMapSg: the DMA segments
  };

  Mapping() = default;
  Mapping(Info info, Closer closer) : info_(std::move(info)), closer_(std::move(closer)) {}
  Mapping(Mapping&& other) noexcept { *this = std::move(other); }
  Mapping& operator=(Mapping&& other) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { (void)Close(); }

  bool valid() const { return static_cast<bool>(closer_); }
  Kind kind() const { return info_.kind; }
  uint64_t dma_addr() const { return info_.dma_addr; }
  uint64_t iova() const { return info_.iova; }
  uint64_t iova_size_bytes() const { return info_.iova_size_bytes; }
  uint64_t mapping_id() const { return info_.mapping_id; }
  uint64_t domain_id() const { return info_.domain_id; }
  const Info& info() const { return info_; }

  // Undoes the mapping now; the handle becomes empty either way. OK when empty.
  absl::Status Close();
  // Detaches: the mapping outlives the handle. Returns its dma_addr.
  uint64_t Release();

 private:
  Info info_;
  Closer closer_;
};

}  // namespace iommu::client

#endif  // IOMMU_CLIENT_HANDLES_H_
