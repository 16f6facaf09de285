// SPDX-License-Identifier: Apache-2.0
// The topology loader's fuzzer: the input is the text of an `iommud
// --topology` file (an iommu.v1.Topology in protobuf text format,
// docs/design.md#topology). Whatever the text, ParseTopology never crashes:
// it refuses with INVALID_ARGUMENT, or returns a topology that
//
//   * converts back to the same message (ToProto then FromProto is the
//     identity on what was accepted), and, when valid, serializes to bytes
//     a client parses (its names go out in replies);
//   * either fails core::ValidateTopology, and then Broker::Create refuses
//     it with the same status, or passes it, and then builds a broker whose
//     invariants hold, every device in its own default domain, and on which
//     every device can take a page, map it, translate through it and give it
//     back.
//
// Built as a libFuzzer target with IOMMU_FUZZ=ON (`make fuzz`), and with the
// normal toolchain as topology_loader_fuzz_replay, which runs every file of
// server/fuzz_corpus/topology_loader through this entry point under ctest.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "core/broker/broker.h"
#include "server/proto_convert.h"
#include "server/topology_loader.h"

namespace iommu::server {
namespace {

// Larger inputs add nothing the text format's grammar needs.
constexpr size_t kMaxInputBytes = 16 << 10;

[[noreturn]] void Fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "topology_loader_fuzz: %s\n%s\n", what, detail.c_str());
  std::abort();
}

// What each device of a valid host must be able to do: allocate a page,
// map it, read it through its SMMU, unmap and free it.
void ServeEveryDevice(core::Broker& broker, const core::Topology& t) {
  auto devices = broker.ListDevices(core::Caller::Admin());
  if (!devices.ok() || devices->size() != t.devices.size()) {
    Fail("ListDevices does not list the topology's devices", devices.status().ToString());
  }
  for (const core::DeviceInfo& d : *devices) {
    if (d.current_domain_id != d.default_domain_id || d.default_domain_id == 0) {
      Fail("a device does not start in its own default domain", d.config.name);
    }
  }
  for (const core::DeviceConfig& d : t.devices) {
    const core::Caller c = core::Caller::Device(d.name);
    auto buffer = broker.AllocBuffer(c, d.name, 4096, core::Placement::kContiguous);
    if (!buffer.ok()) continue;  // pools may be too small to share with every device
    auto map =
        broker.Map(c, d.name, {.mem = {.buffer_id = buffer->buffer_id, .length_bytes = 4096}});
    if (map.ok()) {
      auto tr = broker.Translate(
          c, {.device = d.name, .iova = map->dma_addr, .access = {core::AccessKind::kRead}});
      if (!tr.ok() || tr->faulted || tr->pages.size() != 1 ||
          tr->pages[0].phys_addr != buffer->runs[0].start) {
        Fail("a device cannot read the page it mapped", d.name);
      }
      if (!broker.Unmap(c, d.name, {.dma_addr = map->dma_addr}).ok()) {
        Fail("a device cannot unmap its mapping", d.name);
      }
    } else if (map.status().code() != absl::StatusCode::kResourceExhausted &&
               map.status().code() != absl::StatusCode::kOutOfRange) {
      // (IOVA space below a small DMA mask, or a page beyond the SMMU's
      // output address size, are the host's limits, not faults.)
      Fail("a device cannot map its own page", d.name + ": " + map.status().ToString());
    }
    if (!broker.FreeBuffer(c, buffer->buffer_id).ok()) {
      Fail("a device cannot free its buffer", d.name);
    }
    broker.CheckInvariants();
  }
}

}  // namespace
}  // namespace iommu::server

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iommu;
  if (size > server::kMaxInputBytes) return 0;
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<core::Topology> t = server::ParseTopology(text);
  if (!t.ok()) {
    if (t.status().code() != absl::StatusCode::kInvalidArgument) {
      server::Fail("a refusal that is not INVALID_ARGUMENT", t.status().ToString());
    }
    return 0;
  }
  v1::Topology proto;
  server::ToProto(*t, &proto);
  absl::StatusOr<core::Topology> back = server::FromProto(proto);
  v1::Topology again;
  if (back.ok()) server::ToProto(*back, &again);
  if (!back.ok() || again.SerializeAsString() != proto.SerializeAsString()) {
    server::Fail("an accepted topology does not convert back to itself", proto.DebugString());
  }
  const absl::Status valid = core::ValidateTopology(*t);
  auto broker = core::Broker::Create(*t);
  if (!valid.ok()) {
    if (broker.ok() || broker.status() != valid) {
      server::Fail("Broker::Create does not refuse an invalid topology as ValidateTopology does",
                   valid.ToString() + " / " + broker.status().ToString());
    }
    return 0;
  }
  if (!broker.ok()) {
    server::Fail("Broker::Create refuses a valid topology",
                 broker.status().ToString() + "\n" + proto.DebugString());
  }
  // Its names go out in replies: a client must be able to parse them.
  if (v1::Topology sent; !sent.ParseFromString(proto.SerializeAsString())) {
    server::Fail("a valid topology's names do not parse back", proto.DebugString());
  }
  (*broker)->CheckInvariants();
  server::ServeEveryDevice(**broker, *t);
  return 0;
}
