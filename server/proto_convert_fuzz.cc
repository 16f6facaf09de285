// SPDX-License-Identifier: Apache-2.0
// The request converters' fuzzer: the input's first byte picks a request
// message type, the rest is parsed as that message (ParseFromArray, as the
// server parses what a client sends) and converted to the core's request by
// its one conversion (server/proto_convert.h). A conversion may refuse, with
// INVALID_ARGUMENT (or NOT_FOUND for buffer id 0, the answer an unknown
// buffer gets) and a message naming the field; whatever it accepts must:
//
//   * hold the message's values exactly (addresses, sizes, ids, strings,
//     attributes, list order), with every enum a named core value;
//   * name memory one way only: a buffer (id non-zero) or a raw physical
//     address (buffer id 0);
//   * leave a broker consistent when it is run: each accepted request is
//     called on a broker on a small host, as a device and as the admin, and
//     CheckInvariants must hold after each call.
//
// Built as a libFuzzer target with IOMMU_FUZZ=ON (`make fuzz`), and with the
// normal toolchain as proto_convert_fuzz_replay, which runs every file of
// server/fuzz_corpus/proto_convert through this entry point under ctest.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "core/broker/broker.h"
#include "server/proto_convert.h"

namespace iommu::server {
namespace {

// The message types the first byte picks, in this order.
enum class Kind : uint8_t {
  kMap,
  kUnmap,
  kMapAt,
  kMapSg,
  kAlloc,
  kMsiCookie,
  kCreateDomain,
  kTranslate,
  kBatch,
  kAllocBuffer,
};
constexpr int kNumKinds = int(Kind::kAllocBuffer) + 1;

void Check(bool ok, const char* what, const google::protobuf::Message& m) {
  if (ok) return;
  std::fprintf(stderr, "proto_convert_fuzz: %s\n%s\n", what, m.DebugString().c_str());
  std::abort();
}

// A refusal is INVALID_ARGUMENT, or NOT_FOUND for buffer id 0, naming a field.
void CheckRefusal(const absl::Status& s, const google::protobuf::Message& m) {
  Check(s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kNotFound,
        "a refusal with an unexpected code", m);
  Check(!s.message().empty() && s.message().find('=') != absl::string_view::npos,
        "a refusal that names no field", m);
}

bool Same(core::DmaDirection d, v1::DmaDirection p) {
  switch (d) {
    case core::DmaDirection::kBidirectional:
      return p == v1::DMA_DIRECTION_BIDIRECTIONAL;
    case core::DmaDirection::kToDevice:
      return p == v1::DMA_DIRECTION_TO_DEVICE;
    case core::DmaDirection::kFromDevice:
      return p == v1::DMA_DIRECTION_FROM_DEVICE;
  }
  return false;
}

bool Same(const core::DmaAttrs& a, const v1::DmaAttrs& p) {
  return a.privileged == p.privileged() && a.no_kernel_mapping == p.no_kernel_mapping() &&
         a.force_contiguous == p.force_contiguous() &&
         a.alloc_single_pages == p.alloc_single_pages();
}

bool Same(const core::MemRef& m, const v1::MemRef& p) {
  if (m.offset_bytes != p.offset_bytes() || m.length_bytes != p.length_bytes()) return false;
  switch (p.memory_case()) {
    case v1::MemRef::kBufferId:
      return m.buffer_id != 0 && m.buffer_id == p.buffer_id();
    case v1::MemRef::kPhysAddr:
      return m.buffer_id == 0 && m.phys.value() == p.phys_addr();
    case v1::MemRef::MEMORY_NOT_SET:
      return false;
  }
  return false;
}

bool Same(core::AccessKind k, v1::AccessKind p) {
  switch (k) {
    case core::AccessKind::kRead:
      return p == v1::ACCESS_KIND_READ;
    case core::AccessKind::kWrite:
      return p == v1::ACCESS_KIND_WRITE;
    case core::AccessKind::kExec:
      return p == v1::ACCESS_KIND_EXEC;
  }
  return false;
}

// The host accepted requests run on: the built-in one with its DRAM cut to
// 8 MiB per region, so that a broker is cheap to build for every input.
const core::Topology& SmallHost() {
  static const core::Topology* const topology = [] {
    auto* t = new core::Topology(core::DefaultTopology());
    constexpr uint64_t kDramBytes = uint64_t{8} << 20;
    for (core::MemoryRegionConfig& r : t->memory.regions) {
      if (r.name.starts_with("dram")) r.size_bytes = kDramBytes;
    }
    for (core::PoolConfig& p : t->memory.pools) {
      if (p.name == "dram") {
        for (core::PoolRangeConfig& range : p.ranges) range.size_bytes = kDramBytes;
      }
    }
    return t;
  }();
  return *topology;
}

// Runs accepted requests as nic0 and as the admin, checking the broker's
// invariants after each call. The broker is built for an input's first
// accepted request, with two buffers of nic0, so that buffer ids 1 and 2
// name real memory.
class Runner {
 public:
  template <typename Fn>
  void Run(Fn&& fn) {
    if (broker_ == nullptr) {
      core::BrokerOptions options;
      options.iova_cache_max_pages = 4;  // cheaper domains
      auto b = core::Broker::Create(SmallHost(), options);
      if (!b.ok()) std::abort();
      broker_ = *std::move(b);
      (void)broker_->AllocBuffer(kDev, "nic0", 64 << 10, core::Placement::kContiguous);
      (void)broker_->AllocBuffer(kDev, "nic0", 64 << 10, core::Placement::kScattered);
    }
    for (const core::Caller& c : {kDev, core::Caller::Admin()}) {
      fn(*broker_, c);
      broker_->CheckInvariants();
    }
  }

 private:
  inline static const core::Caller kDev = core::Caller::Device("nic0");
  std::unique_ptr<core::Broker> broker_;
};

void MapOp(const v1::MapRequest& m, Runner& run) {
  absl::StatusOr<core::MapRequest> r = FromProto(m);
  if (!r.ok()) return CheckRefusal(r.status(), m);
  Check(Same(r->mem, m.mem()) && Same(r->direction, m.direction()) && Same(r->attrs, m.attrs()),
        "MapRequest converted unfaithfully", m);
  run.Run([&](core::Broker& b, const core::Caller& c) {
    if (auto res = b.Map(c, "nic0", *r); res.ok()) {
      (void)b.Unmap(c, "nic0", {.dma_addr = res->dma_addr});
    }
  });
}

void UnmapOp(const v1::UnmapRequest& m, Runner& run) {
  const core::UnmapRequest r = FromProto(m);
  Check(r.dma_addr.value() == m.dma_addr(), "UnmapRequest converted unfaithfully", m);
  run.Run([&](core::Broker& b, const core::Caller& c) { (void)b.Unmap(c, "nic0", r); });
}

void MapSgOp(const v1::MapSgRequest& m, Runner& run) {
  absl::StatusOr<core::MapSgRequest> r = FromProto(m);
  if (!r.ok()) return CheckRefusal(r.status(), m);
  bool same = r->import_token == m.import_token() && Same(r->direction, m.direction()) &&
              Same(r->attrs, m.attrs()) && r->segments.size() == size_t(m.segments_size());
  for (int i = 0; same && i < m.segments_size(); ++i) same = Same(r->segments[i], m.segments(i));
  const core::SgMode modes[] = {core::SgMode::kDmaApi, core::SgMode::kMerge,
                                core::SgMode::kContiguous};
  const v1::SgMode names[] = {v1::SG_MODE_DMA_API, v1::SG_MODE_MERGE, v1::SG_MODE_CONTIGUOUS};
  bool mode_ok = false;
  for (int i = 0; i < 3; ++i) mode_ok |= r->mode == modes[i] && m.mode() == names[i];
  Check(same && mode_ok, "MapSgRequest converted unfaithfully", m);
  run.Run([&](core::Broker& b, const core::Caller& c) {
    if (auto res = b.MapSg(c, "nic0", *r); res.ok()) (void)b.UnmapSg(c, "nic0", res->iova);
  });
}

void Convert(Kind kind, const uint8_t* data, size_t size) {
  Runner run;
  switch (kind) {
    case Kind::kMap: {
      v1::MapRequest m;
      if (m.ParseFromArray(data, int(size))) MapOp(m, run);
      break;
    }
    case Kind::kUnmap: {
      v1::UnmapRequest m;
      if (m.ParseFromArray(data, int(size))) UnmapOp(m, run);
      break;
    }
    case Kind::kMapAt: {
      v1::MapAtRequest m;
      if (!m.ParseFromArray(data, int(size))) break;
      absl::StatusOr<core::MapAtRequest> r = FromProto(m);
      if (!r.ok()) return CheckRefusal(r.status(), m);
      Check(r->iova.value() == m.iova() && Same(r->mem, m.mem()) &&
                Same(r->direction, m.direction()) && Same(r->attrs, m.attrs()),
            "MapAtRequest converted unfaithfully", m);
      run.Run([&](core::Broker& b, const core::Caller& c) { (void)b.MapAt(c, "nic0", *r); });
      break;
    }
    case Kind::kMapSg: {
      v1::MapSgRequest m;
      if (m.ParseFromArray(data, int(size))) MapSgOp(m, run);
      break;
    }
    case Kind::kAlloc: {
      v1::AllocRequest m;
      if (!m.ParseFromArray(data, int(size))) break;
      absl::StatusOr<core::AllocRequest> r = FromProto(m);
      if (!r.ok()) return CheckRefusal(r.status(), m);
      Check(r->size_bytes == m.size_bytes() && r->pool == m.pool() &&
                Same(r->direction, m.direction()) && Same(r->attrs, m.attrs()),
            "AllocRequest converted unfaithfully", m);
      run.Run([&](core::Broker& b, const core::Caller& c) {
        if (auto res = b.Alloc(c, "nic0", *r); res.ok()) (void)b.Free(c, "nic0", res->dma_addr);
      });
      break;
    }
    case Kind::kMsiCookie: {
      v1::MsiCookieRequest m;
      if (!m.ParseFromArray(data, int(size))) break;
      const core::MsiCookieRequest r = FromProto(m);
      Check(r.window.base.value() == m.window_base() &&
                r.window.size_bytes == m.window_size_bytes() &&
                r.domain_id.has_value() == (m.domain_id() != 0) &&
                r.domain_id.value_or(0) == m.domain_id(),
            "MsiCookieRequest converted unfaithfully", m);
      run.Run([&](core::Broker& b, const core::Caller& c) { (void)b.MsiCookie(c, "nic0", r); });
      break;
    }
    case Kind::kCreateDomain: {
      v1::CreateDomainRequest m;
      if (!m.ParseFromArray(data, int(size))) break;
      absl::StatusOr<core::CreateDomainRequest> r = FromProto(m);
      if (!r.ok()) return CheckRefusal(r.status(), m);
      bool same = r->smmu == m.smmu() && r->granule_bytes == m.granule_bytes() &&
                  r->granted_devices.size() == size_t(m.granted_devices_size());
      for (int i = 0; same && i < m.granted_devices_size(); ++i) {
        same = r->granted_devices[i] == m.granted_devices(i);
      }
      Check(same && int(r->type) <= int(core::DomainType::kBlocked) &&
                m.type() != v1::DOMAIN_TYPE_UNSPECIFIED,
            "CreateDomainRequest converted unfaithfully", m);
      run.Run([&](core::Broker& b, const core::Caller& c) {
        if (auto res = b.CreateDomain(c, *r); res.ok()) (void)b.DestroyDomain(c, res->domain_id);
      });
      break;
    }
    case Kind::kTranslate: {
      v1::TranslateRequest m;
      if (!m.ParseFromArray(data, int(size))) break;
      absl::StatusOr<core::TranslateRequest> r = FromProto(m, "nic0");
      if (!r.ok()) return CheckRefusal(r.status(), m);
      Check(r->device == "nic0" && r->smmu == m.smmu() && r->iova.value() == m.iova() &&
                r->length_bytes == m.length_bytes() && Same(r->access.kind, m.access()) &&
                r->access.privileged == m.privileged() &&
                r->stream_id.has_value() == m.has_stream_id() &&
                r->stream_id.value_or(0) == m.stream_id(),
            "TranslateRequest converted unfaithfully", m);
      run.Run([&](core::Broker& b, const core::Caller& c) { (void)b.Translate(c, *r); });
      break;
    }
    case Kind::kBatch: {
      v1::BatchRequest m;
      if (!m.ParseFromArray(data, int(size))) break;
      for (const v1::BatchOp& op : m.ops()) {
        switch (op.op_case()) {
          case v1::BatchOp::kMap:
            MapOp(op.map(), run);
            break;
          case v1::BatchOp::kUnmap:
            UnmapOp(op.unmap(), run);
            break;
          case v1::BatchOp::kMapSg:
            MapSgOp(op.map_sg(), run);
            break;
          case v1::BatchOp::kUnmapSg:
            run.Run([&](core::Broker& b, const core::Caller& c) {
              (void)b.UnmapSg(c, "nic0", core::Iova(op.unmap_sg().dma_addr()));
            });
            break;
          case v1::BatchOp::kTranslate: {
            absl::StatusOr<core::TranslateRequest> r = FromProto(op.translate(), "nic0");
            if (!r.ok()) {
              CheckRefusal(r.status(), op);
              break;
            }
            Check(r->device == "nic0" && r->iova.value() == op.translate().iova() &&
                      r->length_bytes == op.translate().length_bytes() &&
                      Same(r->access.kind, op.translate().access()) && !r->stream_id.has_value(),
                  "TranslateOp converted unfaithfully", op);
            run.Run([&](core::Broker& b, const core::Caller& c) { (void)b.Translate(c, *r); });
            break;
          }
          case v1::BatchOp::OP_NOT_SET:
            break;
        }
      }
      break;
    }
    case Kind::kAllocBuffer: {
      v1::AllocBufferRequest m;
      if (!m.ParseFromArray(data, int(size))) break;
      absl::StatusOr<core::Placement> p = FromProto(m.placement());
      if (!p.ok()) return CheckRefusal(p.status(), m);
      Check(int(*p) <= int(core::Placement::kHuge) && m.placement() != v1::PLACEMENT_UNSPECIFIED,
            "AllocBufferRequest.placement converted unfaithfully", m);
      run.Run([&](core::Broker& b, const core::Caller& c) {
        if (auto res = b.AllocBuffer(c, "nic0", m.size_bytes(), *p, m.pool()); res.ok()) {
          (void)b.FreeBuffer(c, res->buffer_id);
        }
      });
      break;
    }
  }
}

}  // namespace
}  // namespace iommu::server

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto kind = iommu::server::Kind(data[0] % iommu::server::kNumKinds);
  iommu::server::Convert(kind, data + 1, size - 1);
  return 0;
}
