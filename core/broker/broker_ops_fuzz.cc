// SPDX-License-Identifier: Apache-2.0
// The broker's operation-sequence fuzzer: the input decodes to a sequence of
// Broker calls (every public operation) on a small host (FuzzTopology), with
// arguments drawn from what earlier calls returned (buffer ids, DMA
// addresses, domain ids, sessions, export tokens), from near misses of those
// and from raw fuzzed values, by callers of every identity: the device
// itself, the admin, another device, an unknown one. After every call:
//
//   * CheckInvariants() holds;
//   * a call that failed left the broker's state (StateDigest) as it was and
//     journaled nothing (docs/design.md#errors: a failed call leaves no trace);
//   * reads (views, stats, walks) change nothing;
//   * at the end, what the journal holds restores to the same broker
//     (docs/design.md#durable-state);
//   * a device that translates through its own default domain, with no admin
//     having mapped or attached anything, reaches only memory it owns: its
//     buffers, exports it imported, and its MSI doorbell
//     (docs/security.md, docs/design.md#physical-memory-and-ownership).
//
// Built as a libFuzzer target with IOMMU_FUZZ=ON (`make fuzz`), and with the
// normal toolchain as broker_ops_fuzz_replay, which runs every file of
// core/broker/fuzz_corpus/broker_ops through this entry point under ctest.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "core/broker/broker.h"
#include "core/broker/state.h"
#include "core/testing/fuzz_input.h"
#include "core/testing/memory_journal.h"

namespace iommu::core {
namespace {

using ::iommu::testing::FuzzInput;

// The host: two SMMUs (a 48-bit one with every granule and a 32-bit 4K one
// with few contexts, so that contexts run out), one RAM bank with two pools,
// an MSI doorbell frame, and devices that take every path: a PCI device
// that tries 32-bit IOVAs first, a 32-bit device without scatter-gather, an
// untrusted one with a 64 KiB segment boundary, MSI-capable ones on both
// SMMUs and a non-coherent one. Small quotas so that they run out too.
constexpr uint64_t kFuzzDoorbellBase = 0x0802'0000;
constexpr uint64_t kFuzzDoorbellBytes = 64 << 10;

const Topology& FuzzTopology() {
  static const Topology* const topology = [] {
    auto* t = new Topology;
    t->smmus = {
        {.name = "smmu0",
         .ias_bits = 48,
         .oas_bits = 48,
         .granules = kGranule4K | kGranule16K | kGranule64K,
         .num_contexts = 12,
         .iotlb_sets = 8,
         .iotlb_ways = 2},
        {.name = "smmu1",
         .ias_bits = 32,
         .oas_bits = 40,
         .granules = kGranule4K,
         .num_contexts = 4,
         .iotlb_sets = 4,
         .iotlb_ways = 2},
    };
    t->memory.regions = {
        {.name = "its",
         .base = PhysAddr(kFuzzDoorbellBase),
         .size_bytes = kFuzzDoorbellBytes,
         .kind = RegionKind::kMmio},
        {.name = "sram", .base = PhysAddr(0x1000'0000), .size_bytes = 256 << 10},
        {.name = "dram", .base = PhysAddr(0x8000'0000), .size_bytes = 16 << 20},
    };
    t->memory.pools = {
        {.name = "sram", .priority = 0, .ranges = {{PhysAddr(0x1000'0000), 256 << 10}}},
        {.name = "dram", .priority = 1, .ranges = {{PhysAddr(0x8000'0000), 16 << 20}}},
    };
    const Quotas small{.max_mapped_bytes = 8 << 20,
                       .max_mappings = 32,
                       .max_buffers = 12,
                       .max_buffer_bytes = 6 << 20,
                       .max_domains = 3,
                       .max_sessions = 3,
                       .max_exports = 3};
    t->devices = {
        {.name = "nic0",
         .smmu = "smmu0",
         .stream_id = 1,
         .pci = true,
         .msi_doorbell = "its",
         .msi_doorbell_offset = 0x40,
         .quotas = small},
        {.name = "gpu0",
         .smmu = "smmu0",
         .stream_id = 2,
         .dma_mask_bits = 40,
         .max_segment_size_bytes = 1 << 20,
         .segment_boundary_mask = ~uint64_t{0},
         .msi_doorbell = "its",
         .msi_doorbell_offset = 0x40,
         .quotas = small},
        {.name = "tbt0",
         .smmu = "smmu0",
         .stream_id = 3,
         .segment_boundary_mask = 0xFFFF,
         .trusted = false,
         .pci = true,
         .quotas = small},
        {.name = "cam0",
         .smmu = "smmu1",
         .stream_id = 1,
         .dma_mask_bits = 32,
         .coherent = false,
         .scatter_gather = false,
         .quotas = small},
        {.name = "dsp0",
         .smmu = "smmu1",
         .stream_id = 2,
         .dma_mask_bits = 32,
         .max_segment_size_bytes = 8192,
         .msi_doorbell = "its",
         .msi_doorbell_offset = 0x1000,
         .quotas = small},
    };
    return t;
  }();
  return *topology;
}

// Bounds the work of one input.
constexpr int kMaxOps = 256;
constexpr size_t kMaxPool = 64;

[[noreturn]] void Fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "broker_ops_fuzz: %s\n%s\n", what, detail.c_str());
  std::abort();
}

// Keeps the journaled state as a store would, and counts the commits that
// change a record (counter reservations aside), so a failed call can be
// checked to have journaled nothing.
class CountingJournal final : public Journal {
 public:
  uint64_t Commit(const StateChanges& c) override {
    StateChanges records = c;
    records.counters.clear();
    if (!records.empty()) ++record_commits_;
    return store_.Commit(c);
  }
  void WaitDurable(uint64_t ticket) override { store_.WaitDurable(ticket); }
  uint64_t record_commits() const { return record_commits_; }
  DurableState State() const { return store_.State(); }

 private:
  testing::MemoryJournal store_;
  uint64_t record_commits_ = 0;
};

// What a restart must give back: every domain with its page-table leaves
// and mapping count, every device's attachment and charges, every buffer.
std::string RestoredView(const Broker& b, const std::vector<uint64_t>& buffer_ids) {
  std::string out;
  const std::vector<DomainInfo> domains = b.ListDomains(Caller::Admin()).value();
  for (const DomainInfo& d : domains) {
    out += "domain " + std::to_string(d.domain_id) + " " + DomainTypeName(d.type) + " " + d.smmu +
           " owner=" + d.owner + " maps=" + std::to_string(d.mappings) +
           " bytes=" + std::to_string(d.mapped_bytes) + "\n";
    const std::vector<PgtableMapping> leaves = b.WalkDomain(Caller::Admin(), d.domain_id).value();
    for (const PgtableMapping& m : leaves) {
      out += "  " + m.iova.Hex() + ">" + m.phys.Hex() + "+" + std::to_string(m.size_bytes) + " g" +
             std::to_string(m.grant.bits()) + "\n";
    }
  }
  const std::vector<DeviceInfo> devices = b.ListDevices(Caller::Admin()).value();
  for (const DeviceInfo& d : devices) {
    out += "device " + d.config.name + " in " + std::to_string(d.current_domain_id) +
           " maps=" + std::to_string(d.mappings) + " bytes=" + std::to_string(d.mapped_bytes) +
           " buffers=" + std::to_string(d.buffers) + "\n";
  }
  for (uint64_t id : buffer_ids) {
    auto buf = b.GetBuffer(Caller::Admin(), id);
    if (!buf.ok()) continue;
    out += "buffer " + std::to_string(id) + " " + buf->device +
           " maps=" + std::to_string(buf->map_count) + "\n";
  }
  return out;
}

template <typename T>
void Remember(std::vector<T>& pool, const T& v) {
  if (pool.size() >= kMaxPool) pool.erase(pool.begin());
  pool.push_back(v);
}

class Driver {
 public:
  Driver(const uint8_t* data, size_t size) : in_(data, size) {}

  void Run() {
    const Topology& topology = FuzzTopology();
    for (const DeviceConfig& d : topology.devices) devices_.push_back(d.name);
    options_.journal = &journal_;
    options_.now = [this] { return now_; };
    options_.fault_ring_capacity = 16;
    options_.flush_queue_capacity = 4;
    options_.max_buffer_runs = 64;
    options_.iova_cache_max_pages = 4;  // range caches of 1, 2 and 4 pages: cheap domains
    auto broker = Broker::Create(topology, options_);
    if (!broker.ok()) Fail("Broker::Create failed", broker.status().ToString());
    broker_ = *std::move(broker);
    broker_->CheckInvariants();
    const std::vector<DeviceInfo> devices = broker_->ListDevices(Caller::Admin()).value();
    for (const DeviceInfo& d : devices) {
      Remember(domains_, d.default_domain_id);
      default_domain_[d.config.name] = d.default_domain_id;
    }
    for (int i = 0; i < kMaxOps && !in_.empty(); ++i) Step();
    broker_->CheckInvariants();
    CheckRestore();
    broker_->Shutdown();
  }

  // What the journal holds restores (docs/design.md#durable-state) to a
  // broker whose invariants hold and which is the same broker: the same
  // domains, leaves, attachments, charges and buffers.
  void CheckRestore() {
    BrokerOptions o = options_;
    o.journal = nullptr;
    RestoreReport report;
    auto restored = Broker::Restore(FuzzTopology(), o, journal_.State(), &report);
    if (!restored.ok()) Fail("the journaled state does not restore", restored.status().ToString());
    (*restored)->CheckInvariants();
    std::vector<uint64_t> ids = buffers_;
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    const std::string want = RestoredView(*broker_, ids);
    const std::string got = RestoredView(**restored, ids);
    if (got != want || report.completed != 0) {
      for (const std::string& note : report.notes)
        std::fprintf(stderr, "repair: %s\n", note.c_str());
      Fail("the restored broker differs", "--- live\n" + want + "--- restored (" +
                                              std::to_string(report.completed) + " repairs)\n" +
                                              got);
    }
  }

 private:
  // --- argument pools -----------------------------------------------------------
  std::string Device() {
    const size_t n = in_.Index(devices_.size() + 2);
    if (n < devices_.size()) return devices_[n];
    return n == devices_.size() ? "" : "nosuch0";
  }
  // The caller for an operation acting as `device`: mostly the device itself.
  Caller CallerFor(const std::string& device) {
    const uint8_t b = in_.Byte();
    const uint64_t session = (b & 0x30) == 0 ? Session() : 0;
    switch (b & 0x7) {
      case 0:
        return Caller{.device = "", .admin = true, .session_id = session};
      case 1:
        return Caller::Device(Device(), session);
      default:
        return Caller::Device(device, session);
    }
  }
  uint64_t Session() {
    const size_t n = in_.Index(sessions_.size() + 2);
    if (n < sessions_.size()) return sessions_[n];
    return n == sessions_.size() ? 0 : in_.U64();
  }
  uint64_t BufferId() {
    const size_t n = in_.Index(buffers_.size() + 3);
    if (n < buffers_.size()) return buffers_[n];
    if (n == buffers_.size()) return 0;
    return n == buffers_.size() + 1 ? uint64_t{1} << 40 : in_.U32();
  }
  uint64_t DomainId() {
    const size_t n = in_.Index(domains_.size() + 2);
    if (n < domains_.size()) return domains_[n];
    return n == domains_.size() ? 0 : in_.U16();
  }
  std::string Token() {
    const size_t n = in_.Index(tokens_.size() + 2);
    if (n < tokens_.size()) return tokens_[n];
    if (n == tokens_.size()) return "iexp_00000000000000000000000000000000";
    return in_.String(40);
  }
  uint64_t Size() {
    switch (in_.Byte() % 8) {
      case 0:
        return in_.U16();  // small, unaligned
      case 1:
        return uint64_t{in_.Byte()} * 4096;
      case 2:
        return (uint64_t{in_.Byte()} % 8 + 1) * 16384;
      case 3:
        return (uint64_t{in_.Byte()} % 4 + 1) * 65536;
      case 4:
        return uint64_t{2} << 20;
      case 5:
        return uint64_t{1} << (in_.Byte() % 64);
      case 6:
        return ~uint64_t{0} - in_.U16();
      default:
        return in_.U64();
    }
  }
  uint64_t Address() {
    switch (in_.Byte() % 8) {
      case 0:
      case 1:
      case 2:
        if (!addrs_.empty()) {
          const uint64_t a = addrs_[in_.Index(addrs_.size())];
          return a + (in_.Bool() ? int64_t(int16_t(in_.U16())) : 0);
        }
        return in_.U32();
      case 3:
        return uint64_t{in_.U16()} << 12;
      case 4: {
        const uint64_t power = uint64_t{1} << (in_.Byte() % 64);
        return power - (in_.Bool() ? 4096 : 0);
      }
      case 5:
        return ~uint64_t{0} - in_.U16();
      default:
        return in_.U64();
    }
  }
  PhysAddr Phys() {
    if (!phys_.empty() && in_.Bool()) {
      const uint64_t p = phys_[in_.Index(phys_.size())];
      return PhysAddr(p + uint64_t{in_.Byte()} * 4096);
    }
    return PhysAddr(in_.Bool() ? kFuzzDoorbellBase + in_.U16() : in_.U64());
  }
  MemRef Mem() {
    MemRef m;
    if (in_.Byte() % 8 == 0) {
      m.phys = Phys();
    } else {
      m.buffer_id = BufferId();
      switch (in_.Byte() % 4) {
        case 0:
          m.offset_bytes = 0;
          break;
        case 1:
          m.offset_bytes = uint64_t{in_.Byte()} * 4096;
          break;
        case 2:
          m.offset_bytes = in_.U16();
          break;
        default:
          m.offset_bytes = Size();
      }
    }
    m.length_bytes = Size();
    return m;
  }
  DmaDirection Direction() { return DmaDirection(in_.Byte() % 3); }
  DmaAttrs Attrs() {
    const uint8_t b = in_.Byte();
    // Mostly plain: each attribute changes the path taken.
    if ((b & 0xf0) != 0) return {};
    return {.privileged = (b & 1) != 0,
            .no_kernel_mapping = (b & 2) != 0,
            .force_contiguous = (b & 4) != 0,
            .alloc_single_pages = (b & 8) != 0};
  }
  std::vector<std::string> DeviceList() {
    std::vector<std::string> out;
    for (size_t n = in_.Byte() % 4; n > 0; --n) out.push_back(Device());
    return out;
  }
  std::string Pool() {
    switch (in_.Byte() % 4) {
      case 0:
        return "sram";
      case 1:
        return "dram";
      case 2:
        return "nosuch";
      default:
        return "";
    }
  }

  void NoteAddr(Iova a) { Remember(addrs_, a.value()); }
  void NoteRuns(const std::vector<PhysRun>& runs) {
    for (const PhysRun& r : runs) Remember(phys_, r.start.value());
  }
  void NoteAdminDma(const Caller& c, bool ok) {
    if (ok && c.admin) admin_touched_ = true;
  }

  // --- one step ---------------------------------------------------------------------
  void Step() {
    const uint8_t op = in_.Byte();
    const std::string before = broker_->StateDigest();
    const uint64_t commits_before = journal_.record_commits();
    // A failing call must leave no trace; `reads` change nothing at all.
    bool failed = false;
    bool read = false;
    Call(op % 36, failed, read);
    broker_->CheckInvariants();
    if (failed || read) {
      const std::string after = broker_->StateDigest();
      if (after != before) {
        Fail(failed ? "a failed call changed the state" : "a read changed the state",
             "op " + std::to_string(op % 36) + "\n--- before\n" + before + "--- after\n" + after);
      }
      if (journal_.record_commits() != commits_before) {
        Fail(failed ? "a failed call journaled a change" : "a read journaled a change",
             "op " + std::to_string(op % 36));
      }
    }
  }

  void Call(uint8_t op, bool& failed, bool& read) {
    auto fails = [&](const absl::Status& s) { failed = !s.ok(); };
    switch (op) {
      case 0: {  // OpenSession
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        const absl::Duration ttl = absl::Seconds(in_.Byte() % 4 == 0 ? in_.U32() : in_.Byte());
        auto r = broker_->OpenSession(c, ttl);
        fails(r.status());
        if (r.ok()) Remember(sessions_, *r);
        break;
      }
      case 1: {  // KeepAlive
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        fails(broker_->KeepAlive(c, Session()));
        break;
      }
      case 2: {  // CloseSession
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        fails(broker_->CloseSession(c, Session()));
        break;
      }
      case 3: {  // time passes: leases and flush-queue timeouts
        now_ += in_.Bool() ? absl::Milliseconds(in_.Byte()) : absl::Seconds(in_.U16());
        broker_->Tick();
        break;
      }
      case 4: {  // AllocBuffer
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        const uint64_t size = Size();
        const Placement p = Placement(in_.Byte() % 3);
        auto r = broker_->AllocBuffer(c, dev, size, p, Pool());
        fails(r.status());
        if (r.ok()) {
          Remember(buffers_, r->buffer_id);
          NoteRuns(r->runs);
        }
        break;
      }
      case 5: {  // FreeBuffer
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        fails(broker_->FreeBuffer(c, BufferId()));
        break;
      }
      case 6: {  // GetBuffer
        read = true;
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        auto r = broker_->GetBuffer(c, BufferId());
        if (r.ok()) NoteRuns(r->runs);
        break;
      }
      case 7: {  // Map
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        MapRequest req{.mem = Mem(), .direction = Direction(), .attrs = Attrs()};
        auto r = broker_->Map(c, dev, req);
        fails(r.status());
        NoteAdminDma(c, r.ok());
        if (r.ok()) NoteAddr(r->dma_addr);
        break;
      }
      case 8: {  // Unmap
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        fails(broker_->Unmap(c, dev, {.dma_addr = Iova(Address())}));
        break;
      }
      case 9: {  // MapUnmapBatch
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        std::vector<DmaBatchOp> ops;
        for (size_t n = in_.Byte() % 8 + 1; n > 0; --n) {
          if (in_.Bool()) {
            ops.push_back(MapRequest{.mem = Mem(), .direction = Direction(), .attrs = Attrs()});
          } else {
            ops.push_back(UnmapRequest{.dma_addr = Iova(Address())});
          }
        }
        std::vector<DmaBatchResult> results(ops.size());
        broker_->MapUnmapBatch(c, dev, ops, absl::MakeSpan(results));
        bool all_failed = true;
        for (size_t i = 0; i < ops.size(); ++i) {
          if (!results[i].status.ok()) continue;
          all_failed = false;
          if (std::holds_alternative<MapRequest>(ops[i])) {
            NoteAddr(results[i].map.dma_addr);
            NoteAdminDma(c, true);
          }
        }
        failed = all_failed;
        break;
      }
      case 10: {  // MapSg
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        MapSgRequest req;
        const uint8_t how = in_.Byte();
        if (how % 4 == 0) {
          req.import_token = Token();
          if (how % 8 == 4) req.segments.push_back(Mem());
        } else {
          for (size_t n = how % 5 + 1; n > 0; --n) req.segments.push_back(Mem());
        }
        req.mode = SgMode(in_.Byte() % 3);
        req.direction = Direction();
        req.attrs = Attrs();
        auto r = broker_->MapSg(c, dev, req);
        fails(r.status());
        NoteAdminDma(c, r.ok());
        if (r.ok()) {
          NoteAddr(r->iova);
          for (const DmaSegment& s : r->segments) NoteAddr(s.dma_addr);
          if (!req.import_token.empty() && !c.admin) {
            auto it = export_chunks_.find(req.import_token);
            if (it != export_chunks_.end()) {
              for (const PhysRun& run : it->second) imported_[c.device].push_back(run);
            }
          }
        }
        break;
      }
      case 11: {  // UnmapSg
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        fails(broker_->UnmapSg(c, dev, Iova(Address())));
        break;
      }
      case 12: {  // Alloc
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        AllocRequest req{
            .size_bytes = Size(), .direction = Direction(), .attrs = Attrs(), .pool = Pool()};
        auto r = broker_->Alloc(c, dev, req);
        fails(r.status());
        NoteAdminDma(c, r.ok());
        if (r.ok()) {
          NoteAddr(r->dma_addr);
          Remember(buffers_, r->buffer_id);
          NoteRuns(r->runs);
        }
        break;
      }
      case 13: {  // Free
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        fails(broker_->Free(c, dev, Iova(Address())));
        break;
      }
      case 14: {  // GetSgTable, with or without an export
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        const Iova addr(Address());
        std::optional<ExportGrant> grant;
        if (in_.Bool()) grant = ExportGrant{.importers = DeviceList(), .writable = in_.Bool()};
        auto r = broker_->GetSgTable(c, dev, addr, grant);
        fails(r.status());
        if (!grant.has_value()) read = true;
        if (r.ok()) {
          NoteRuns(r->chunks);
          if (!r->export_token.empty()) {
            Remember(tokens_, r->export_token);
            export_chunks_[r->export_token] = r->chunks;
          }
        }
        break;
      }
      case 15: {  // RevokeExport
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        fails(broker_->RevokeExport(c, Token()).status());
        break;
      }
      case 16: {  // MsiCookie
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        MsiCookieRequest req;
        if (in_.Bool()) {
          req.domain_id = DomainId();
          req.window = {.base = Iova(Address()), .size_bytes = Size()};
        }
        auto r = broker_->MsiCookie(c, dev, req);
        fails(r.status());
        NoteAdminDma(c, r.ok());
        if (r.ok()) NoteAddr(r->msi_addr);
        break;
      }
      case 17: {  // MapAt
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        MapAtRequest req{
            .iova = Iova(Address()), .mem = Mem(), .direction = Direction(), .attrs = Attrs()};
        auto r = broker_->MapAt(c, dev, req);
        fails(r.status());
        NoteAdminDma(c, r.ok());
        if (r.ok()) NoteAddr(r->dma_addr);
        break;
      }
      case 18: {  // UnmapRange
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        const Iova iova(Address());
        fails(broker_->UnmapRange(c, dev, iova, Size()).status());
        break;
      }
      case 19: {  // Sync
        const std::string dev = Device();
        fails(broker_->Sync(CallerFor(dev), dev));
        break;
      }
      case 20: {  // CreateDomain
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        CreateDomainRequest req;
        req.smmu = in_.Bool() ? "smmu0" : (in_.Bool() ? "smmu1" : "nosuch");
        req.type = DomainType(in_.Byte() % 5);
        switch (in_.Byte() % 5) {
          case 0:
            req.granule_bytes = kGranule16K;
            break;
          case 1:
            req.granule_bytes = kGranule64K;
            break;
          case 2:
            req.granule_bytes = in_.U32();
            break;
          default:
            req.granule_bytes = in_.Bool() ? 0 : kGranule4K;
        }
        req.granted_devices = DeviceList();
        auto r = broker_->CreateDomain(c, req);
        fails(r.status());
        NoteAdminDma(c, r.ok());
        if (r.ok()) Remember(domains_, r->domain_id);
        break;
      }
      case 21: {  // DestroyDomain
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        fails(broker_->DestroyDomain(c, DomainId()));
        break;
      }
      case 22: {  // GetDomain
        read = true;
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        (void)broker_->GetDomain(c, DomainId());
        break;
      }
      case 23: {  // ListDomains
        read = true;
        const std::string dev = Device();
        (void)broker_->ListDomains(CallerFor(dev));
        break;
      }
      case 24: {  // AttachDevice
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        const absl::Status s = broker_->AttachDevice(c, dev, DomainId());
        fails(s);
        NoteAdminDma(c, s.ok());
        break;
      }
      case 25: {  // DetachDevice
        const std::string dev = Device();
        fails(broker_->DetachDevice(CallerFor(dev), dev));
        break;
      }
      case 26: {  // ListIommus
        read = true;
        if (broker_->ListIommus().size() != 2) Fail("ListIommus", "not the topology's SMMUs");
        break;
      }
      case 27: {  // ListDevices
        read = true;
        const std::string dev = Device();
        (void)broker_->ListDevices(CallerFor(dev));
        break;
      }
      case 28: {  // GetStats
        read = true;
        const std::string dev = Device();
        (void)broker_->GetStats(CallerFor(dev));
        break;
      }
      case 29: {  // ReadFaults
        read = true;
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        const uint64_t after = in_.Bool() ? 0 : in_.U16();
        (void)broker_->ReadFaults(c, after, in_.Byte());
        break;
      }
      case 30: {  // WalkDomain
        read = true;
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        const uint64_t id = DomainId();
        const Iova start(in_.Bool() ? 0 : Address());
        (void)broker_->WalkDomain(c, id, start, in_.Byte() + 1);
        break;
      }
      case 31: {  // GetIovaRanges
        read = true;
        const std::string dev = Device();
        (void)broker_->GetIovaRanges(CallerFor(dev), dev);
        break;
      }
      case 32:
      case 33: {  // Translate, one access or a run of them (TranslateBatch)
        const size_t n = op == 32 ? 1 : in_.Byte() % 8 + 1;
        for (size_t i = 0; i < n; ++i) Translate();
        break;
      }
      case 34: {  // WaitForFaults, without blocking
        read = true;
        (void)broker_->WaitForFaults(in_.Bool() ? 0 : in_.U16(), absl::InfinitePast());
        break;
      }
      default: {  // Map once more: the call most of the others need first
        const std::string dev = Device();
        const Caller c = CallerFor(dev);
        MapRequest req{.mem = Mem(), .direction = Direction(), .attrs = Attrs()};
        auto r = broker_->Map(c, dev, req);
        fails(r.status());
        NoteAdminDma(c, r.ok());
        if (r.ok()) NoteAddr(r->dma_addr);
        break;
      }
    }
  }

  void Translate() {
    const std::string dev = Device();
    const Caller c = CallerFor(dev);
    TranslateRequest req{.device = dev,
                         .iova = Iova(Address()),
                         .length_bytes = in_.Bool() ? in_.U16() : Size(),
                         .access = {AccessKind(in_.Byte() % 3), in_.Bool()}};
    if (in_.Byte() % 8 == 0) {
      req.device.clear();
      req.smmu = in_.Bool() ? "smmu0" : "smmu1";
      req.stream_id = in_.Byte() % 8;
    }
    const std::string before = broker_->StateDigest();
    auto r = broker_->Translate(c, req);
    if (!r.ok()) {
      if (broker_->StateDigest() != before) Fail("a failed Translate changed the state", before);
      return;
    }
    if (!c.admin && !admin_touched_ && req.device == c.device) {
      CheckIsolation(c.device, *r);
    }
  }

  // A device in its own default domain reaches only its memory.
  void CheckIsolation(const std::string& device, const TranslateResult& r) {
    auto info = broker_->ListDevices(Caller::Device(device));
    if (!info.ok() || info->size() != 1) return;
    if ((*info)[0].current_domain_id != default_domain_[device]) return;
    std::vector<PhysRun> allowed = imported_[device];
    for (uint64_t id : buffers_) {
      auto b = broker_->GetBuffer(Caller::Device(device), id);
      if (b.ok()) allowed.insert(allowed.end(), b->runs.begin(), b->runs.end());
    }
    allowed.push_back({PhysAddr(kFuzzDoorbellBase), kFuzzDoorbellBytes});
    for (const TranslatedPage& p : r.pages) {
      if (p.stale) continue;  // lazy mode's documented window
      const bool ok = std::any_of(allowed.begin(), allowed.end(), [&](const PhysRun& run) {
        return p.phys_addr.value() >= run.start.value() &&
               p.phys_addr.value() - run.start.value() + p.length_bytes <= run.size_bytes;
      });
      if (!ok) {
        Fail("a device reached memory it does not own", device + " " + p.iova.Hex() + " -> " +
                                                            p.phys_addr.Hex() + "\n" +
                                                            broker_->StateDigest());
      }
    }
  }

  FuzzInput in_;
  CountingJournal journal_;
  BrokerOptions options_;
  absl::Time now_ = absl::FromUnixSeconds(1'700'000'000);
  std::unique_ptr<Broker> broker_;
  std::vector<std::string> devices_;
  std::map<std::string, uint64_t> default_domain_;
  std::vector<uint64_t> sessions_, buffers_, domains_, addrs_, phys_;
  std::vector<std::string> tokens_;
  std::map<std::string, std::vector<PhysRun>> export_chunks_;
  std::map<std::string, std::vector<PhysRun>> imported_;
  bool admin_touched_ = false;
};

}  // namespace
}  // namespace iommu::core

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  iommu::core::Driver(data, size).Run();
  return 0;
}
