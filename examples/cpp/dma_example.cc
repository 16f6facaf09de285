// SPDX-License-Identifier: Apache-2.0
// dma_example: what a device driver does through iommud, with the C++ SDK.
//
//   dma_example [--target=unix:/run/iommud/iommud.sock] [--device=nic0]
//
// Allocates a physically contiguous 64 KiB buffer (the daemon's pinned
// pages), maps its first 16 KiB for the device to read (dma_map_page,
// DMA_TO_DEVICE), then plays the device through the SMMU: a read at
// dma_addr + 4 KiB translates to the buffer's page 1, a write faults
// (permission: the mapping is read-only for the device). After the unmap, the
// same read faults (translation). The buffer is freed last. Each step prints
// one line; the exit status is 0 when every step did what it says.
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>

#include "client/client.h"
#include "client/version.h"

namespace {

namespace v1 = iommu::v1;
using iommu::client::Buffer;
using iommu::client::Client;
using iommu::client::Mapping;

int Fail(const char* step, const absl::Status& status) {
  std::fprintf(stderr, "dma_example: %s: %s\n", step, status.ToString().c_str());
  return 1;
}

absl::StatusOr<v1::TranslateResponse> Access(const Client& client, uint64_t iova,
                                             v1::AccessKind access) {
  v1::TranslateRequest request;
  request.set_iova(iova);
  request.set_length_bytes(4096);
  request.set_access(access);
  return client.Translate(request);
}

}  // namespace

int main(int argc, char** argv) {
  iommu::client::Options options{.target = "unix:/run/iommud/iommud.sock", .device = "nic0"};
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--target=", 9) == 0) {
      options.target = argv[i] + 9;
    } else if (std::strncmp(argv[i], "--device=", 9) == 0) {
      options.device = argv[i] + 9;
    } else {
      std::fprintf(stderr, "usage: dma_example [--target=ADDR] [--device=NAME]\n");
      return 2;
    }
  }
  std::printf("sdk %s (headers %s)\n", iommu::client::Version(), IOMMU_BROKER_VERSION);

  absl::StatusOr<Client> client = Client::Connect(options);
  if (!client.ok()) return Fail("connect", client.status());

  absl::StatusOr<Buffer> buffer = client->AllocBufferScoped(64 * 1024, v1::PLACEMENT_CONTIGUOUS);
  if (!buffer.ok()) return Fail("alloc_buffer", buffer.status());
  const uint64_t phys = buffer->info().runs(0).phys_addr();
  std::printf("buffer %" PRIu64 ": %" PRIu64 " bytes at phys 0x%" PRIx64 " on device %s\n",
              buffer->id(), buffer->size_bytes(), phys, client->device().c_str());

  absl::StatusOr<Mapping> mapping =
      client->MapScoped(*buffer, 0, 16 * 1024, v1::DMA_DIRECTION_TO_DEVICE);
  if (!mapping.ok()) return Fail("map", mapping.status());
  const uint64_t dma_addr = mapping->dma_addr();
  std::printf("mapped 16384 bytes to_device: dma_addr 0x%" PRIx64 " in domain %" PRIu64 "\n",
              dma_addr, mapping->domain_id());

  absl::StatusOr<v1::TranslateResponse> read =
      Access(*client, dma_addr + 4096, v1::ACCESS_KIND_READ);
  if (!read.ok()) return Fail("translate read", read.status());
  if (read->faulted() || read->pages_size() != 1 || read->pages(0).phys_addr() != phys + 4096) {
    std::fprintf(stderr,
                 "dma_example: read of dma_addr+0x1000 should reach phys 0x%" PRIx64 ": %s\n",
                 phys + 4096, read->ShortDebugString().c_str());
    return 1;
  }
  std::printf("device read at dma_addr+0x1000: phys 0x%" PRIx64 "\n", read->pages(0).phys_addr());

  absl::StatusOr<v1::TranslateResponse> write =
      Access(*client, dma_addr + 4096, v1::ACCESS_KIND_WRITE);
  if (!write.ok()) return Fail("translate write", write.status());
  if (!write->faulted() || write->fault_type() != v1::FAULT_TYPE_PERMISSION) {
    std::fprintf(stderr, "dma_example: a write to a to_device mapping should fault: %s\n",
                 write->ShortDebugString().c_str());
    return 1;
  }
  std::printf("device write at dma_addr+0x1000: fault %s (seq %" PRIu64 ")\n",
              v1::FaultType_Name(write->fault_type()).c_str(), write->fault_seq());

  if (absl::Status s = mapping->Close(); !s.ok()) return Fail("unmap", s);
  std::printf("unmapped dma_addr 0x%" PRIx64 "\n", dma_addr);

  absl::StatusOr<v1::TranslateResponse> after =
      Access(*client, dma_addr + 4096, v1::ACCESS_KIND_READ);
  if (!after.ok()) return Fail("translate after unmap", after.status());
  if (!after->faulted() || after->fault_type() != v1::FAULT_TYPE_TRANSLATION) {
    std::fprintf(stderr, "dma_example: a read after the unmap should fault: %s\n",
                 after->ShortDebugString().c_str());
    return 1;
  }
  std::printf("device read after unmap: fault %s\n",
              v1::FaultType_Name(after->fault_type()).c_str());

  const uint64_t id = buffer->id();
  if (absl::Status s = buffer->Close(); !s.ok()) return Fail("free_buffer", s);
  std::printf("freed buffer %" PRIu64 "\n", id);
  return 0;
}
