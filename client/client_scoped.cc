// SPDX-License-Identifier: Apache-2.0
// The RAII forms of Client: each makes the call, then wraps the result in a
// handle whose closer undoes it through a copy of the client.
#include <bit>

#include "client/client.h"

namespace iommu::client {

absl::StatusOr<Buffer> Client::AllocBufferScoped(uint64_t size_bytes, v1::Placement placement,
                                                 const std::string& pool) const {
  v1::AllocBufferRequest request;
  request.set_size_bytes(size_bytes);
  request.set_placement(placement);
  request.set_pool(pool);
  return AllocBufferScoped(std::move(request));
}

absl::StatusOr<Buffer> Client::AllocBufferScoped(v1::AllocBufferRequest request) const {
  absl::StatusOr<v1::AllocBufferResponse> response = AllocBuffer(std::move(request));
  if (!response.ok()) return response.status();
  v1::FreeBufferRequest free;
  free.set_device(response->buffer().device());
  free.set_buffer_id(response->buffer().buffer_id());
  return Buffer(response->buffer(),
                [client = *this, free]() { return client.FreeBuffer(free).status(); });
}

absl::StatusOr<Mapping> Client::MapScoped(const Buffer& buffer, uint64_t offset_bytes,
                                          uint64_t length_bytes, v1::DmaDirection direction) const {
  v1::MapRequest request;
  request.set_device(buffer.info().device());
  request.mutable_mem()->set_buffer_id(buffer.id());
  request.mutable_mem()->set_offset_bytes(offset_bytes);
  request.mutable_mem()->set_length_bytes(length_bytes);
  request.set_direction(direction);
  return MapScoped(std::move(request));
}

absl::StatusOr<Mapping> Client::MapScoped(v1::MapRequest request) const {
  if (request.device().empty()) request.set_device(device());
  absl::StatusOr<v1::MapResponse> response = Map(request);
  if (!response.ok()) return response.status();
  Mapping::Info info{
      .kind = Mapping::Kind::kMap,
      .mapping_id = response->mapping_id(),
      .domain_id = response->domain_id(),
      .dma_addr = response->dma_addr(),
      // The allocation is size-aligned (to the power of two above its size).
      .iova = response->dma_addr() & ~(std::bit_ceil(response->iova_size_bytes()) - 1),
      .iova_size_bytes = response->iova_size_bytes()};
  v1::UnmapRequest unmap;
  unmap.set_device(request.device());
  unmap.set_dma_addr(response->dma_addr());
  return Mapping(std::move(info),
                 [client = *this, unmap]() { return client.Unmap(unmap).status(); });
}

absl::StatusOr<Mapping> Client::MapSgScoped(v1::MapSgRequest request) const {
  if (request.device().empty()) request.set_device(device());
  absl::StatusOr<v1::MapSgResponse> response = MapSg(request);
  if (!response.ok()) return response.status();
  Mapping::Info info{.kind = Mapping::Kind::kMapSg,
                     .mapping_id = response->mapping_id(),
                     .domain_id = response->domain_id(),
                     .dma_addr = response->segments().empty() ? response->iova()
                                                              : response->segments(0).dma_addr(),
                     .iova = response->iova(),
                     .iova_size_bytes = response->iova_size_bytes(),
                     .segments = {response->segments().begin(), response->segments().end()}};
  v1::UnmapSgRequest unmap;
  unmap.set_device(request.device());
  unmap.set_dma_addr(info.dma_addr);
  return Mapping(std::move(info),
                 [client = *this, unmap]() { return client.UnmapSg(unmap).status(); });
}

absl::StatusOr<Mapping> Client::AllocScoped(v1::AllocRequest request) const {
  if (request.device().empty()) request.set_device(device());
  absl::StatusOr<v1::AllocResponse> response = Alloc(request);
  if (!response.ok()) return response.status();
  Mapping::Info info{.kind = Mapping::Kind::kAlloc,
                     .mapping_id = response->mapping_id(),
                     .domain_id = response->domain_id(),
                     .dma_addr = response->dma_addr(),
                     .iova = response->dma_addr(),
                     .iova_size_bytes = response->size_bytes(),
                     .buffer_id = response->buffer_id()};
  v1::FreeRequest free;
  free.set_device(request.device());
  free.set_dma_addr(response->dma_addr());
  return Mapping(std::move(info), [client = *this, free]() { return client.Free(free).status(); });
}

absl::StatusOr<Mapping> Client::MapAtScoped(v1::MapAtRequest request) const {
  if (request.device().empty()) request.set_device(device());
  absl::StatusOr<v1::MapAtResponse> response = MapAt(request);
  if (!response.ok()) return response.status();
  Mapping::Info info{.kind = Mapping::Kind::kMapAt,
                     .mapping_id = response->mapping_id(),
                     .domain_id = response->domain_id(),
                     .dma_addr = request.iova(),
                     .iova = request.iova(),
                     .iova_size_bytes = request.mem().length_bytes()};
  v1::UnmapRangeRequest unmap;
  unmap.set_device(request.device());
  unmap.set_iova(request.iova());
  unmap.set_size_bytes(request.mem().length_bytes());
  return Mapping(std::move(info),
                 [client = *this, unmap]() { return client.UnmapRange(unmap).status(); });
}

}  // namespace iommu::client
