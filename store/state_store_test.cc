// SPDX-License-Identifier: Apache-2.0
// The state store end to end, on every engine: a broker journaling into it
// restores as the same broker after the store is closed and reopened; what
// the store reads back is exactly what the broker committed; damage is
// refused naming the directory and the record; a torn last write loses that
// write and nothing else; and a store an earlier build wrote still restores.

#include "store/state_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/broker/broker.h"
#include "core/broker/broker_test_util.h"
#include "core/testing/memory_journal.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iommu/state/v1/records.pb.h"
#include "store/crc32c.h"
#include "store/kv_store.h"
#include "store/state_codec.h"
#include "store/state_fuzz_input.h"

namespace iommu::store {
namespace {

namespace fs = std::filesystem;
namespace pb = ::iommu::state::v1;
using core::Broker;
using core::Caller;
using core::DomainType;
using core::Iova;
using core::Placement;
using core::testing::KiB;
using core::testing::MemoryJournal;
using core::testing::MiB;
using core::testing::Value;
using ::testing::HasSubstr;

Caller Dev(const std::string& name, uint64_t session = 0) { return Caller::Device(name, session); }

std::string NewDir(absl::string_view tag) {
  static std::atomic<int> counter{0};
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/state_", tag, "_", getpid(), "_", counter++);
  fs::remove_all(dir);
  return dir;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// A value as the codec frames it: the CRC-32C of key and message, then the
// message.
std::string Framed(std::string_view key, std::string_view message) {
  const uint32_t crc = Crc32c(message, Crc32c(key));
  std::string v;
  for (int i = 0; i < 4; ++i) v.push_back(char((crc >> (8 * i)) & 0xff));
  v.append(message);
  return v;
}

// Every persistent field of a state, one line per record, in key order: two
// states are equal iff their descriptions are.
std::string Describe(const core::DurableState& s) {
  std::vector<std::string> lines;
  for (const auto& [c, v] : s.counters) lines.push_back(absl::StrCat("c ", int(c), " ", v));
  if (s.session_key) {
    lines.push_back(absl::StrCat("k ", s.session_key->first, " ", s.session_key->second));
  }
  for (const core::DomainState& d : s.domains) {
    std::string l = absl::StrCat("d ", d.domain_id, " ", d.smmu, " ", int(d.type), " ",
                                 d.granule_bytes, " owner=", d.owner, " default_of=", d.default_of,
                                 " granted=", absl::StrJoin(d.granted, ","),
                                 " session=", d.session_id, " ids=", d.mapping_ids_reserved);
    if (d.msi_window)
      absl::StrAppend(&l, " msi=", d.msi_window->base.value(), "+", d.msi_window->size_bytes);
    lines.push_back(l);
  }
  for (const core::AttachmentState& a : s.attachments) {
    lines.push_back(absl::StrCat("a ", a.device, " ", a.domain_id));
  }
  auto runs = [](const std::vector<core::PhysRun>& rs) {
    std::string out;
    for (const core::PhysRun& r : rs)
      absl::StrAppend(&out, " ", r.start.value(), "+", r.size_bytes);
    return out;
  };
  for (const core::BufferState& b : s.buffers) {
    lines.push_back(absl::StrCat("b ", b.buffer_id, " ", b.device, " session=", b.session_id,
                                 " pool=", b.pool, " ", int(b.placement), " alloc=", b.backs_alloc,
                                 runs(b.runs)));
  }
  for (const core::ExportState& e : s.exports) {
    lines.push_back(absl::StrCat("e ", e.export_id, " ", e.token, " ", e.exporter, " ",
                                 e.exporter_granule, " buffers=", absl::StrJoin(e.buffer_ids, ","),
                                 " importers=", absl::StrJoin(e.importers_allowed, ","),
                                 " writable=", e.writable, runs(e.chunks)));
  }
  for (const core::SessionState& x : s.sessions) {
    lines.push_back(
        absl::StrCat("s ", x.session_id, " ", x.device, " ", absl::ToInt64Milliseconds(x.ttl)));
  }
  for (const auto& [domain, m] : s.mappings) {
    std::string l = absl::StrFormat(
        "m %d %#x id=%d kind=%d dev=%s session=%d size=%#x alloc=%d "
        "off=%#x prot=%d owned=%d export=%d bytes=%d",
        domain, m.iova.value(), m.mapping_id, int(m.kind), m.device, m.session_id,
        m.iova_size_bytes, m.iova_from_allocator, m.dma_offset, int(m.prot), m.owned_buffer_id,
        m.export_id, m.mapped_bytes);
    for (const auto& [iova, run] : m.pt_ranges) {
      absl::StrAppendFormat(&l, " pt %#x->%#x+%#x", iova.value(), run.start.value(),
                            run.size_bytes);
    }
    for (const auto& p : m.pieces) {
      absl::StrAppendFormat(&l, " piece %#x->%#x+%#x", p.iova.value(), p.phys.value(),
                            p.size_bytes);
    }
    for (const auto& b : m.buffer_refs) absl::StrAppend(&l, " buf ", b.id);
    for (const auto& seg : m.segments) {
      absl::StrAppendFormat(&l, " seg %#x+%#x", seg.dma_addr.value(), seg.length_bytes);
    }
    lines.push_back(l);
  }
  std::sort(lines.begin(), lines.end());
  return absl::StrJoin(lines, "\n") + "\n";
}

// What a client or operator observes of a broker: domains with their page
// table leaves, devices, IOVA allocators and buffers (IOTLBs and caches,
// which a restore starts afresh, excepted).
std::string Fingerprint(const Broker& b) {
  const Caller admin = Caller::Admin();
  std::string out;
  for (const core::DomainInfo& d : Value(b.ListDomains(admin))) {
    absl::StrAppendFormat(&out,
                          "domain %d on %s %s owner=%s default=%d granted=%s granule=%#x "
                          "attached=%s mappings=%d bytes=%#x",
                          d.domain_id, d.smmu, core::DomainTypeName(d.type), d.owner, d.is_default,
                          absl::StrJoin(d.granted_devices, ","), d.granule_bytes,
                          absl::StrJoin(d.devices, ","), d.mappings, d.mapped_bytes);
    if (d.msi_window) {
      absl::StrAppendFormat(&out, " msi=%#x+%#x", d.msi_window->base.value(),
                            d.msi_window->size_bytes);
    }
    out += "\n";
    for (const core::PgtableMapping& m : Value(b.WalkDomain(admin, d.domain_id))) {
      absl::StrAppendFormat(&out, "  %#x -> %#x %#x prot=%d\n", m.iova.value(), m.phys.value(),
                            m.size_bytes, int(m.prot));
    }
  }
  for (const core::DeviceInfo& d : Value(b.ListDevices(admin))) {
    absl::StrAppendFormat(&out, "device %s in %d (default %d) mappings=%d bytes=%#x buffers=%d\n",
                          d.config.name, d.current_domain_id, d.default_domain_id, d.mappings,
                          d.mapped_bytes, d.buffers);
  }
  for (const core::DomainStats& s : Value(b.GetStats(admin)).domains) {
    if (s.iova) {
      absl::StrAppendFormat(&out, "iova of %d: %d allocated, %d reserved\n", s.domain_id,
                            s.iova->allocated_pages, s.iova->reserved_pages);
    }
  }
  for (uint64_t id = 1; id <= 128; ++id) {
    auto buf = b.GetBuffer(admin, id);
    if (!buf.ok()) continue;
    absl::StrAppendFormat(&out, "buffer %d of %s %#x pool=%s maps=%d", id, buf->device,
                          buf->size_bytes, buf->pool, buf->map_count);
    for (const core::PhysRun& r : buf->runs) {
      absl::StrAppendFormat(&out, " %#x+%#x", r.start.value(), r.size_bytes);
    }
    out += "\n";
  }
  return out;
}

// Hands every commit to the store and to an in-memory journal, which holds
// what the store must read back.
class TeeJournal final : public core::Journal {
 public:
  explicit TeeJournal(core::Journal* store) : store_(store) {}
  uint64_t Commit(const core::StateChanges& changes) override {
    memory_.Commit(changes);
    return store_->Commit(changes);
  }
  void WaitDurable(uint64_t ticket) override { store_->WaitDurable(ticket); }
  const MemoryJournal& memory() const { return memory_; }

 private:
  core::Journal* const store_;
  MemoryJournal memory_;
};

// What DriveEveryMutation made that later steps use.
struct Driven {
  uint64_t session = 0;
  std::string token;
  uint64_t nic_buffer = 0;
};

// Every kind of mutation: buffers, Map/Unmap, MapSg, Batch, Alloc with an
// export and an import, an UNMANAGED domain with an MSI window and MapAt, a
// DMA_FQ domain with a pending lazy invalidation, a session, FreeBuffer and
// DestroyDomain.
Driven DriveEveryMutation(Broker& b) {
  Driven out;
  auto buf = b.AllocBuffer(Dev("nic0"), "nic0", 96 * KiB, Placement::kScattered);
  EXPECT_TRUE(buf.ok()) << buf.status();
  out.nic_buffer = buf->buffer_id;
  std::vector<Iova> maps;
  for (uint64_t i = 0; i < 5; ++i) {
    auto m = b.Map(Dev("nic0"), "nic0",
                   {.mem = {.buffer_id = buf->buffer_id,
                            .offset_bytes = i * 12 * KiB + 0x100,
                            .length_bytes = 6 * KiB}});
    EXPECT_TRUE(m.ok()) << m.status();
    maps.push_back(m->dma_addr);
  }
  EXPECT_TRUE(b.Unmap(Dev("nic0"), "nic0", {.dma_addr = maps[1]}).ok());
  EXPECT_TRUE(b.Unmap(Dev("nic0"), "nic0", {.dma_addr = maps[3]}).ok());
  auto sg = b.MapSg(
      Dev("nic0"), "nic0",
      {.segments = {
           {.buffer_id = buf->buffer_id, .offset_bytes = 64 * KiB, .length_bytes = 4 * KiB},
           {.buffer_id = buf->buffer_id, .offset_bytes = 80 * KiB, .length_bytes = 4 * KiB}}});
  EXPECT_TRUE(sg.ok()) << sg.status();
  EXPECT_TRUE(b.MsiCookie(Dev("nic0"), "nic0", {}).ok());

  std::vector<core::DmaBatchOp> ops;
  for (uint64_t i = 0; i < 4; ++i) {
    ops.push_back(core::MapRequest{.mem = {.buffer_id = buf->buffer_id,
                                           .offset_bytes = i * 8 * KiB,
                                           .length_bytes = 8 * KiB}});
  }
  std::vector<core::DmaBatchResult> results(ops.size());
  b.MapUnmapBatch(Dev("nic0"), "nic0", ops, absl::MakeSpan(results));
  for (const auto& r : results) EXPECT_TRUE(r.status.ok()) << r.status;
  std::vector<core::DmaBatchOp> mixed = {
      core::UnmapRequest{results[1].map.dma_addr},
      core::MapRequest{.mem = {.buffer_id = buf->buffer_id, .length_bytes = 2 * KiB}},
      core::UnmapRequest{results[3].map.dma_addr}};
  std::vector<core::DmaBatchResult> mixed_results(mixed.size());
  b.MapUnmapBatch(Dev("nic0"), "nic0", mixed, absl::MakeSpan(mixed_results));
  for (const auto& r : mixed_results) EXPECT_TRUE(r.status.ok()) << r.status;

  auto alloc = b.Alloc(Dev("gpu0"), "gpu0", {.size_bytes = 192 * KiB});
  EXPECT_TRUE(alloc.ok()) << alloc.status();
  auto table = b.GetSgTable(Dev("gpu0"), "gpu0", alloc->dma_addr,
                            core::ExportGrant{.importers = {"sata0"}, .writable = true});
  EXPECT_TRUE(table.ok()) << table.status();
  out.token = table->export_token;
  auto imported = b.MapSg(Dev("sata0"), "sata0", {.import_token = out.token});
  EXPECT_TRUE(imported.ok()) << imported.status();

  auto unmanaged = b.CreateDomain(Dev("vf0"), {.smmu = "smmu2", .type = DomainType::kUnmanaged});
  EXPECT_TRUE(unmanaged.ok()) << unmanaged.status();
  EXPECT_TRUE(b.AttachDevice(Dev("vf0"), "vf0", unmanaged->domain_id).ok());
  EXPECT_TRUE(b.MsiCookie(Dev("vf0"), "vf0",
                          {.domain_id = unmanaged->domain_id,
                           .window = {.base = Iova(0x1000'0000), .size_bytes = 1 * MiB}})
                  .ok());
  auto huge = b.AllocBuffer(Dev("vf0"), "vf0", 2 * MiB, Placement::kHuge);
  EXPECT_TRUE(huge.ok()) << huge.status();
  EXPECT_TRUE(b.MapAt(Dev("vf0"), "vf0",
                      {.iova = Iova(0x2000'0000),
                       .mem = {.buffer_id = huge->buffer_id, .length_bytes = 2 * MiB},
                       .direction = core::DmaDirection::kBidirectional})
                  .ok());

  auto lazy = b.CreateDomain(
      Caller::Admin(), {.smmu = "smmu0", .type = DomainType::kDmaFq, .granted_devices = {"nvme0"}});
  EXPECT_TRUE(lazy.ok()) << lazy.status();
  EXPECT_TRUE(b.AttachDevice(Caller::Admin(), "nvme0", lazy->domain_id).ok());
  auto nvme = b.AllocBuffer(Dev("nvme0"), "nvme0", 48 * KiB, Placement::kContiguous);
  EXPECT_TRUE(nvme.ok()) << nvme.status();
  auto kept = b.Map(Dev("nvme0"), "nvme0",
                    {.mem = {.buffer_id = nvme->buffer_id, .length_bytes = 16 * KiB}});
  auto dropped = b.Map(
      Dev("nvme0"), "nvme0",
      {.mem = {.buffer_id = nvme->buffer_id, .offset_bytes = 16 * KiB, .length_bytes = 16 * KiB}});
  EXPECT_TRUE(kept.ok() && dropped.ok());
  EXPECT_TRUE(b.Unmap(Dev("nvme0"), "nvme0", {.dma_addr = dropped->dma_addr}).ok());

  out.session = b.OpenSession(Dev("cam0"), absl::Seconds(45)).value();
  auto cam = b.AllocBuffer(Dev("cam0", out.session), "cam0", 32 * KiB, Placement::kContiguous);
  EXPECT_TRUE(cam.ok()) << cam.status();
  EXPECT_TRUE(b.Map(Dev("cam0", out.session), "cam0",
                    {.mem = {.buffer_id = cam->buffer_id, .length_bytes = 32 * KiB}})
                  .ok());

  auto freed = b.AllocBuffer(Dev("dsp0"), "dsp0", 8 * KiB, Placement::kScattered);
  EXPECT_TRUE(freed.ok()) << freed.status();
  EXPECT_TRUE(b.FreeBuffer(Dev("dsp0"), freed->buffer_id).ok());
  auto destroyed = b.CreateDomain(Dev("gpu0"), {.smmu = "smmu0"});
  EXPECT_TRUE(destroyed.ok()) << destroyed.status();
  EXPECT_TRUE(b.DestroyDomain(Dev("gpu0"), destroyed->domain_id).ok());
  return out;
}

class StateStoreTest : public ::testing::TestWithParam<KvEngine> {
 protected:
  void SetUp() override {
    dir_ = NewDir(KvEngineName(GetParam()));
    broker_options_.now = clock_.Fn();
  }
  void TearDown() override { fs::remove_all(dir_); }

  StateStoreOptions Options(const std::string& dir) const {
    StateStoreOptions o;
    o.kv.engine = GetParam();
    o.kv.dir = dir;
    o.kv.lmdb_map_size_bytes = 64 * MiB;
    o.written_by = "state_store_test";
    return o;
  }

  std::unique_ptr<StateStore> MustOpen(const std::string& dir, core::DurableState* state,
                                       RecoveryInfo* info = nullptr) {
    auto store = StateStore::Open(Options(dir), state, info);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  // A fresh broker journaling into `journal`.
  std::unique_ptr<Broker> NewBroker(core::Journal* journal) {
    core::BrokerOptions o = broker_options_;
    o.journal = journal;
    return core::testing::MakeBroker(o);
  }

  std::unique_ptr<Broker> MustRestore(const core::DurableState& state,
                                      core::Journal* journal = nullptr) {
    core::BrokerOptions o = broker_options_;
    o.journal = journal;
    core::RestoreReport report;
    auto b = Broker::Restore(core::testing::TestTopology(), o, state, &report);
    EXPECT_TRUE(b.ok()) << b.status();
    if (!b.ok()) return nullptr;
    EXPECT_EQ(report.completed, 0u) << absl::StrJoin(report.notes, "\n");
    (*b)->CheckInvariants();
    return *std::move(b);
  }

  // Writes a small state (one mapping of nic0) and closes the store; returns
  // the mapping's key and its domain and IOVA.
  struct Written {
    std::string key;
    uint64_t domain_id = 0;
    uint64_t iova = 0;
  };
  Written WriteSmallStore() {
    Written w;
    core::DurableState state;
    auto store = MustOpen(dir_, &state);
    auto broker = NewBroker(store.get());
    auto buf = broker->AllocBuffer(Dev("nic0"), "nic0", 8 * KiB, Placement::kScattered);
    EXPECT_TRUE(buf.ok()) << buf.status();
    auto m = broker->Map(Dev("nic0"), "nic0",
                         {.mem = {.buffer_id = buf->buffer_id, .length_bytes = 8 * KiB}});
    EXPECT_TRUE(m.ok()) << m.status();
    w.domain_id = m->domain_id;
    w.iova = m->dma_addr.value();
    w.key = std::string(1, 'm');
    for (uint64_t v : {w.domain_id, w.iova}) {
      for (int shift = 56; shift >= 0; shift -= 8) w.key.push_back(char((v >> shift) & 0xff));
    }
    return w;
  }

  // Opens the closed store's database directly and applies `writes`.
  void Rewrite(const std::vector<KvWrite>& writes) {
    auto kv = KvStore::Open(Options(dir_).kv);
    ASSERT_TRUE(kv.ok()) << kv.status();
    auto seq = (*kv)->Commit(writes);
    ASSERT_TRUE(seq.ok()) << seq.status();
  }
  std::optional<std::string> MaybeStored(std::string_view key) {
    auto kv = KvStore::Open(Options(dir_).kv);
    EXPECT_TRUE(kv.ok()) << kv.status();
    if (!kv.ok()) return std::nullopt;
    auto v = (*kv)->Get(key);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : std::nullopt;
  }
  std::string StoredValue(std::string_view key) {
    auto kv = KvStore::Open(Options(dir_).kv);
    EXPECT_TRUE(kv.ok()) << kv.status();
    if (!kv.ok()) return "";
    auto v = (*kv)->Get(key);
    EXPECT_TRUE(v.ok() && v->has_value()) << DescribeKey(key);
    return v.ok() && v->has_value() ? **v : "";
  }

  // StateStore::Open's error on the store as it is now.
  absl::Status OpenError() {
    core::DurableState state;
    auto store = StateStore::Open(Options(dir_), &state);
    EXPECT_FALSE(store.ok()) << "opened a damaged store";
    return store.ok() ? absl::OkStatus() : store.status();
  }

  std::string dir_;
  core::testing::FakeClock clock_;
  core::BrokerOptions broker_options_;
};

TEST_P(StateStoreTest, ReopenedStoreRestoresTheSameBroker) {
  std::string original;
  core::DurableState committed;
  Driven driven;
  {
    core::DurableState state;
    RecoveryInfo info;
    auto store = MustOpen(dir_, &state, &info);
    ASSERT_NE(store, nullptr);
    EXPECT_TRUE(info.fresh);
    EXPECT_TRUE(state.empty());
    TeeJournal tee(store.get());
    auto broker = NewBroker(&tee);
    ASSERT_NE(broker, nullptr);
    driven = DriveEveryMutation(*broker);
    broker->CheckInvariants();
    // A restore completes lazy invalidations; so does Sync on the original.
    ASSERT_TRUE(broker->Sync(Dev("nvme0"), "nvme0").ok());
    original = Fingerprint(*broker);
    committed = tee.memory().State();
    EXPECT_GT(store->Stats().commits, 20u);
  }  // The broker, then the store, are destroyed.

  core::DurableState state;
  RecoveryInfo info;
  auto store = MustOpen(dir_, &state, &info);
  ASSERT_NE(store, nullptr);
  EXPECT_FALSE(info.fresh);
  EXPECT_EQ(info.schema_version, kSchemaVersion);
  // Every record plus the schema record.
  const uint64_t records = committed.counters.size() + 1 + committed.domains.size() +
                           committed.attachments.size() + committed.buffers.size() +
                           committed.exports.size() + committed.sessions.size() +
                           committed.mappings.size();
  EXPECT_EQ(info.records, records + 1);
  EXPECT_EQ(Describe(state), Describe(committed));
  EXPECT_GE(state.mappings.size(), 10u);
  ASSERT_EQ(state.exports.size(), 1u);
  ASSERT_EQ(state.sessions.size(), 1u);

  auto restored = MustRestore(state, store.get());
  ASSERT_NE(restored, nullptr);
  EXPECT_EQ(Fingerprint(*restored), original);
  EXPECT_TRUE(restored->KeepAlive(Dev("cam0"), driven.session).ok());

  // The restored broker journals into the reopened store: one more round
  // restores it too.
  auto more = restored->Map(Dev("nic0"), "nic0",
                            {.mem = {.buffer_id = driven.nic_buffer, .length_bytes = 4 * KiB}});
  ASSERT_TRUE(more.ok()) << more.status();
  ASSERT_TRUE(restored->RevokeExport(Dev("gpu0"), driven.token).ok());
  const std::string continued = Fingerprint(*restored);
  restored.reset();
  store.reset();
  store = MustOpen(dir_, &state);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(state.exports.empty());
  auto again = MustRestore(state);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(Fingerprint(*again), continued);
}

TEST_P(StateStoreTest, ReadStoreReadsWhatOpenReadsWithoutWriting) {
  WriteSmallStore();
  RecoveryInfo read_info;
  auto read = ReadStore(Options(dir_).kv, &read_info);
  ASSERT_TRUE(read.ok()) << read.status();
  core::DurableState opened;
  RecoveryInfo open_info;
  auto store = MustOpen(dir_, &opened, &open_info);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Describe(*read), Describe(opened));
  EXPECT_EQ(read_info.records, open_info.records);
  store.reset();

  const std::string empty = NewDir("empty");
  ASSERT_TRUE(fs::create_directory(empty));
  KvOptions kv = Options(empty).kv;
  EXPECT_EQ(ReadStore(kv, nullptr).status().code(), absl::StatusCode::kNotFound);
  fs::remove_all(empty);
}

TEST_P(StateStoreTest, EmptyDirectoryIsAFreshStore) {
  ASSERT_TRUE(fs::create_directory(dir_));
  core::DurableState state;
  state.sessions.push_back({.session_id = 1});  // cleared by Open
  RecoveryInfo info;
  auto store = MustOpen(dir_, &state, &info);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(info.fresh);
  EXPECT_EQ(info.schema_version, kSchemaVersion);
  EXPECT_EQ(info.records, 0u);
  EXPECT_TRUE(state.empty());
  store.reset();
  // Reopened: initialised (the schema record alone), no longer fresh.
  store = MustOpen(dir_, &state, &info);
  ASSERT_NE(store, nullptr);
  EXPECT_FALSE(info.fresh);
  EXPECT_EQ(info.records, 1u);
  EXPECT_TRUE(state.empty());
}

TEST_P(StateStoreTest, DamagedValuesAreDataLossNamingTheRecord) {
  const Written w = WriteSmallStore();
  const std::string name = absl::StrFormat("m/%d/%#x (mapping)", w.domain_id, w.iova);
  ASSERT_EQ(DescribeKey(w.key), name);
  const std::string good = StoredValue(w.key);
  ASSERT_GT(good.size(), 8u);
  pb::MappingRecord record;
  ASSERT_TRUE(record.ParseFromString(good.substr(4)));
  ASSERT_EQ(record.iova(), w.iova);

  std::string flipped = good;
  flipped[good.size() / 2] ^= 0x20;
  std::string bad_crc = good;
  bad_crc[1] ^= 0x01;
  pb::MappingRecord elsewhere = record;
  elsewhere.set_iova(w.iova - 0x10000);
  const struct {
    const char* what;
    std::string value;
    std::string why;
  } cases[] = {
      {"a flipped message byte", flipped, "checksum mismatch"},
      {"a flipped checksum byte", bad_crc, "checksum mismatch"},
      {"garbage bytes", "\x13\x37", "value shorter than its checksum"},
      {"garbage message with a valid checksum", Framed(w.key, "\xff\xff\xff\xff\x0f"),
       "not a valid MappingRecord"},
      {"a record of another IOVA", Framed(w.key, elsewhere.SerializeAsString()),
       absl::StrFormat("holds IOVA %#x", w.iova - 0x10000)},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    Rewrite({{w.key, c.value}});
    const absl::Status s = OpenError();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_THAT(s.message(), HasSubstr(dir_));
    EXPECT_THAT(s.message(), HasSubstr("record " + name));
    EXPECT_THAT(s.message(), HasSubstr(c.why));
    // --check_state's reader refuses it the same way.
    EXPECT_EQ(ReadStore(Options(dir_).kv, nullptr).status(), s);
  }
  // Repaired, it opens again.
  Rewrite({{w.key, good}});
  core::DurableState state;
  EXPECT_NE(MustOpen(dir_, &state), nullptr);
  EXPECT_EQ(state.mappings.size(), 1u);
}

TEST_P(StateStoreTest, DamagedRecordsOfEveryKindAreNamed) {
  WriteSmallStore();
  // A record under each kind's key with a valid checksum but a message of
  // another id, or no valid message at all.
  pb::DomainRecord domain;
  domain.set_domain_id(7);
  pb::BufferRecord buffer;
  buffer.set_buffer_id(5);
  buffer.add_runs(0x8000'0000);  // half a (start, size) pair
  const std::string d1 = std::string("d\0\0\0\0\0\0\0\x01", 9);
  const std::string b5 = std::string("b\0\0\0\0\0\0\0\x05", 9);
  const std::string c9 = std::string("c\x09", 2);
  const struct {
    std::string key;
    std::string value;
    std::string why;
  } cases[] = {
      {d1, Framed(d1, domain.SerializeAsString()), "record d/1 (domain): holds another id"},
      {b5, Framed(b5, buffer.SerializeAsString()),
       "record b/5 (buffer): runs holds 1 values, not a multiple of 2"},
      {c9, Framed(c9, "\x08"), "record c/9 (counter): not a valid CounterRecord"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.why);
    const std::optional<std::string> before = MaybeStored(c.key);
    Rewrite({{c.key, c.value}});
    const absl::Status s = OpenError();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_THAT(s.message(), HasSubstr(dir_));
    EXPECT_THAT(s.message(), HasSubstr(c.why));
    if (before) {
      Rewrite({{c.key, std::string_view(*before)}});
    } else {
      Rewrite({{c.key, std::nullopt}});
    }
  }
  core::DurableState state;
  EXPECT_NE(MustOpen(dir_, &state), nullptr);
}

TEST_P(StateStoreTest, NewerSchemaVersionIsRefusedNamingIt) {
  WriteSmallStore();
  pb::SchemaRecord schema;
  schema.set_version(99);
  schema.set_written_by("iommud 9.0.0");
  Rewrite({{"v", Framed("v", schema.SerializeAsString())}});
  const absl::Status s = OpenError();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr(dir_));
  EXPECT_THAT(s.message(),
              HasSubstr("schema version 99 is newer than this iommud reads (up to 2)"));
}

TEST_P(StateStoreTest, RecordsWithoutASchemaRecordAreRefused) {
  WriteSmallStore();
  Rewrite({{"v", std::nullopt}});
  const absl::Status s = OpenError();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr(dir_));
  EXPECT_THAT(s.message(), HasSubstr("no schema record"));
}

TEST_P(StateStoreTest, AnotherEnginesDirectoryIsRefusedNamingTheFile) {
  const KvEngine other = GetParam() == KvEngine::kLmdb ? KvEngine::kSqlite : KvEngine::kLmdb;
  {
    StateStoreOptions o = Options(dir_);
    o.kv.engine = other;
    core::DurableState state;
    auto store = StateStore::Open(o, &state);
    ASSERT_TRUE(store.ok()) << store.status();
  }
  core::DurableState state;
  auto store = StateStore::Open(Options(dir_), &state);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr(absl::StrCat(dir_, "/", kMarkerFileName)));
  EXPECT_THAT(store.status().message(),
              HasSubstr(absl::StrCat("holds a ", KvEngineName(other), " store")));

  // A directory of files no engine of ours made: refused naming the file.
  const std::string foreign = NewDir("foreign");
  ASSERT_TRUE(fs::create_directory(foreign));
  WriteFile(foreign + "/data.bin", "not a store");
  store = StateStore::Open(Options(foreign), &state);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr(foreign + "/data.bin"));
  fs::remove_all(foreign);
}

// --- torn last write -----------------------------------------------------------

uint64_t FileSize(const std::string& path) {
  struct stat st;
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return uint64_t(st.st_size);
}

void Truncate(const std::string& path, uint64_t size) {
  ASSERT_EQ(truncate(path.c_str(), off_t(size)), 0) << path;
}

// The newest RocksDB WAL file of dir (the one the open DB writes).
std::string RocksdbLog(const std::string& dir) {
  std::string newest;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename();
    if (name.ends_with(".log") && name > fs::path(newest).filename().string()) {
      newest = e.path();
    }
  }
  EXPECT_FALSE(newest.empty()) << "no WAL in " << dir;
  return newest;
}

// Each engine's record of its last commit, and a crash that tears it:
//   SQLite (WAL): the WAL grows by whole frames (24-byte header and a page)
//     per commit; the store's close checkpoints and removes the WAL, so the
//     files are copied while the store is open, and the copy's WAL is cut in
//     the middle of its last frame (the commit frame of the last commit).
//   RocksDB: the WAL gets one record per commit (written, not synced); it
//     survives the close (nothing is flushed while the WAL holds it) and is
//     cut in the middle of the last record; the default recovery mode
//     (kPointInTimeRecovery) drops the torn tail.
//   LMDB: a commit writes its pages where the previous commit does not look,
//     then the meta page (pages 0 and 1 alternate). A crash before the meta
//     page is written is simulated by putting back the meta pages as they
//     were before the last commit. (A meta page itself half written cannot
//     be simulated faithfully: LMDB 0.9 keeps no checksum on it and relies
//     on the small meta write being atomic.)
class TornWrite {
 public:
  TornWrite(KvEngine engine, std::string dir) : engine_(engine), dir_(std::move(dir)) {}

  void BeforeLastCommit() {
    switch (engine_) {
      case KvEngine::kSqlite:
        before_ = FileSize(dir_ + "/kv.sqlite3-wal");
        break;
      case KvEngine::kRocksdb:
        log_ = RocksdbLog(dir_);
        before_ = FileSize(log_);
        break;
      case KvEngine::kLmdb: {
        const std::string data = ReadFile(dir_ + "/data.mdb");
        const size_t page = size_t(sysconf(_SC_PAGESIZE));
        ASSERT_GE(data.size(), 2 * page);
        meta_pages_ = data.substr(0, 2 * page);
        break;
      }
    }
  }

  // While the store is still open.
  void AfterLastCommit(const std::string& copy_to) {
    copy_ = copy_to;
    switch (engine_) {
      case KvEngine::kSqlite: {
        after_ = FileSize(dir_ + "/kv.sqlite3-wal");
        ASSERT_TRUE(fs::create_directory(copy_));
        // The -shm index is rebuilt from the WAL by the first connection.
        for (const char* f : {kMarkerFileName, "kv.sqlite3", "kv.sqlite3-wal"}) {
          fs::copy_file(dir_ + "/" + f, copy_ + "/" + f);
        }
        break;
      }
      case KvEngine::kRocksdb:
        after_ = FileSize(log_);
        break;
      case KvEngine::kLmdb:
        break;
    }
  }

  // After the store is closed: tears the last commit; returns the directory
  // to reopen.
  std::string Tear() {
    switch (engine_) {
      case KvEngine::kSqlite: {
        const std::string wal = copy_ + "/kv.sqlite3-wal";
        const std::string header = ReadFile(wal).substr(0, 32);
        const uint64_t page = uint64_t(uint8_t(header[8])) << 24 |
                              uint64_t(uint8_t(header[9])) << 16 |
                              uint64_t(uint8_t(header[10])) << 8 | uint8_t(header[11]);
        const uint64_t frame = 24 + page;
        EXPECT_GT(after_, before_);
        EXPECT_EQ((after_ - before_) % frame, 0u) << "the WAL grows by whole frames";
        EXPECT_EQ(FileSize(wal), after_);
        Truncate(wal, after_ - frame / 2);
        return copy_;
      }
      case KvEngine::kRocksdb:
        EXPECT_GT(after_, before_);
        EXPECT_EQ(FileSize(log_), after_) << "the close left the WAL as it was";
        Truncate(log_, before_ + (after_ - before_) / 2);
        return dir_;
      case KvEngine::kLmdb: {
        const int fd = open((dir_ + "/data.mdb").c_str(), O_WRONLY);
        EXPECT_GE(fd, 0);
        EXPECT_EQ(pwrite(fd, meta_pages_.data(), meta_pages_.size(), 0),
                  ssize_t(meta_pages_.size()));
        close(fd);
        return dir_;
      }
    }
    return dir_;
  }

 private:
  const KvEngine engine_;
  const std::string dir_;
  std::string copy_;
  std::string log_;
  std::string meta_pages_;
  uint64_t before_ = 0;
  uint64_t after_ = 0;
};

TEST_P(StateStoreTest, TornLastWriteLosesThatCommitAndNothingElse) {
  core::DurableState before_last;
  core::DurableState with_last;
  const std::string copy = NewDir("torn_copy");
  TornWrite torn(GetParam(), dir_);
  {
    core::DurableState state;
    auto store = MustOpen(dir_, &state);
    ASSERT_NE(store, nullptr);
    TeeJournal tee(store.get());
    auto broker = NewBroker(&tee);
    ASSERT_NE(broker, nullptr);
    auto buf = broker->AllocBuffer(Dev("nic0"), "nic0", 64 * KiB, Placement::kScattered);
    ASSERT_TRUE(buf.ok()) << buf.status();
    for (uint64_t i = 0; i < 4; ++i) {
      ASSERT_TRUE(broker
                      ->Map(Dev("nic0"), "nic0",
                            {.mem = {.buffer_id = buf->buffer_id,
                                     .offset_bytes = i * 8 * KiB,
                                     .length_bytes = 8 * KiB}})
                      .ok());
    }
    before_last = tee.memory().State();
    const uint64_t commits = tee.memory().commits();
    torn.BeforeLastCommit();
    // The last commit: one mapping (one atomic write of the database).
    ASSERT_TRUE(broker
                    ->Map(Dev("nic0"), "nic0",
                          {.mem = {.buffer_id = buf->buffer_id,
                                   .offset_bytes = 48 * KiB,
                                   .length_bytes = 16 * KiB}})
                    .ok());
    ASSERT_EQ(tee.memory().commits(), commits + 1);
    with_last = tee.memory().State();
    torn.AfterLastCommit(copy);
  }
  ASSERT_NE(Describe(before_last), Describe(with_last));
  const std::string reopen = torn.Tear();
  ASSERT_FALSE(HasFailure());
  core::DurableState state;
  auto store = MustOpen(reopen, &state);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Describe(state), Describe(before_last));
  auto restored = MustRestore(state);
  ASSERT_NE(restored, nullptr);
  store.reset();
  fs::remove_all(copy);
}

INSTANTIATE_TEST_SUITE_P(Engines, StateStoreTest,
                         ::testing::Values(KvEngine::kLmdb, KvEngine::kSqlite, KvEngine::kRocksdb),
                         [](const ::testing::TestParamInfo<KvEngine>& info) {
                           return std::string(KvEngineName(info.param));
                         });

// --- schema compatibility ----------------------------------------------------------

// store/testdata/v1_lmdb: an LMDB store written by schema version 1 with the
// state of WriteKnownState; v1_lmdb_fingerprint.txt: the fingerprint of the
// broker restored from it.
const std::string kV1Dir = std::string(IOMMU_STORE_TESTDATA_DIR) + "/v1_lmdb";
const std::string kV1Fingerprint =
    std::string(IOMMU_STORE_TESTDATA_DIR) + "/v1_lmdb_fingerprint.txt";
// Fixed so that the fingerprint does not depend on when the test runs.
const absl::Time kV1Now = absl::FromUnixSeconds(1'700'000'000);

// A few domains, buffers and mappings, an export with its import, and a
// session.
void WriteKnownState(Broker& b) {
  auto buf = b.AllocBuffer(Dev("nic0"), "nic0", 32 * KiB, Placement::kScattered);
  ASSERT_TRUE(buf.ok()) << buf.status();
  ASSERT_TRUE(
      b.Map(Dev("nic0"), "nic0", {.mem = {.buffer_id = buf->buffer_id, .length_bytes = 8 * KiB}})
          .ok());
  ASSERT_TRUE(
      b.MapSg(
           Dev("nic0"), "nic0",
           {.segments =
                {{.buffer_id = buf->buffer_id, .offset_bytes = 16 * KiB, .length_bytes = 4 * KiB},
                 {.buffer_id = buf->buffer_id, .offset_bytes = 24 * KiB, .length_bytes = 4 * KiB}}})
          .ok());
  auto alloc = b.Alloc(Dev("gpu0"), "gpu0", {.size_bytes = 64 * KiB});
  ASSERT_TRUE(alloc.ok()) << alloc.status();
  auto table = b.GetSgTable(Dev("gpu0"), "gpu0", alloc->dma_addr, core::ExportGrant{});
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_TRUE(
      b.MapSg(Dev("sata0"), "sata0",
              {.import_token = table->export_token, .direction = core::DmaDirection::kToDevice})
          .ok());
  auto domain = b.CreateDomain(Dev("gpu0"), {.smmu = "smmu0"});
  ASSERT_TRUE(domain.ok()) << domain.status();
  ASSERT_TRUE(b.AttachDevice(Dev("gpu0"), "gpu0", domain->domain_id).ok());
  ASSERT_TRUE(b.Alloc(Dev("gpu0"), "gpu0", {.size_bytes = 16 * KiB}).ok());
  const uint64_t session = b.OpenSession(Dev("cam0"), absl::Seconds(60)).value();
  auto cam = b.AllocBuffer(Dev("cam0", session), "cam0", 16 * KiB, Placement::kContiguous);
  ASSERT_TRUE(cam.ok()) << cam.status();
  ASSERT_TRUE(b.Map(Dev("cam0", session), "cam0",
                    {.mem = {.buffer_id = cam->buffer_id, .length_bytes = 16 * KiB}})
                  .ok());
}

// The fingerprint a v1 store's restored broker is checked against: the
// broker's and the state's.
std::string V1Fingerprint(const Broker& b, const core::DurableState& state) {
  return absl::StrCat(Fingerprint(b), "-- state\n", Describe(state));
}

// Writes store/testdata/v1_lmdb and its fingerprint (run once, by hand, with
// --gtest_also_run_disabled_tests --gtest_filter='*WriteV1TestData').
TEST(StateStoreSchemaTest, DISABLED_WriteV1TestData) {
  fs::remove_all(kV1Dir);
  StateStoreOptions o;
  o.kv.engine = KvEngine::kLmdb;
  o.kv.dir = kV1Dir;
  o.kv.lmdb_map_size_bytes = 1 * MiB;
  o.written_by = "iommud 0.1.0";
  std::string fingerprint;
  {
    core::DurableState state;
    auto store = StateStore::Open(o, &state);
    ASSERT_TRUE(store.ok()) << store.status();
    core::BrokerOptions bo;
    bo.now = [] { return kV1Now; };
    bo.journal = store->get();
    auto broker = core::testing::MakeBroker(bo);
    ASSERT_NE(broker, nullptr);
    WriteKnownState(*broker);
  }
  fs::remove(kV1Dir + "/lock.mdb");  // LMDB's reader table, made afresh by each open
  const std::string copy = NewDir("v1_write");
  fs::copy(kV1Dir, copy);
  o.kv.dir = copy;
  core::DurableState state;
  auto store = StateStore::Open(o, &state);
  ASSERT_TRUE(store.ok()) << store.status();
  core::BrokerOptions bo;
  bo.now = [] { return kV1Now; };
  auto restored = Broker::Restore(core::testing::TestTopology(), bo, state);
  ASSERT_TRUE(restored.ok()) << restored.status();
  WriteFile(kV1Fingerprint, V1Fingerprint(**restored, state));
  fs::remove_all(copy);
}

TEST(StateStoreSchemaTest, V1LmdbStoreRestoresAsWritten) {
  // Opened from a copy: opening writes (LMDB's lock file, a fresh reader
  // table), and the checked-in files must stay as they are.
  const std::string copy = NewDir("v1_lmdb");
  fs::copy(kV1Dir, copy);
  ASSERT_TRUE(fs::exists(copy + "/data.mdb")) << kV1Dir;
  StateStoreOptions o;
  o.kv.engine = KvEngine::kLmdb;
  o.kv.dir = copy;
  o.kv.lmdb_map_size_bytes = 1 * MiB;
  core::DurableState state;
  RecoveryInfo info;
  auto store = StateStore::Open(o, &state, &info);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_FALSE(info.fresh);
  EXPECT_EQ(info.schema_version, 1u);
  EXPECT_TRUE(info.upgraded);
  EXPECT_TRUE(state.requests.empty());
  EXPECT_EQ(state.exports.size(), 1u);
  EXPECT_EQ(state.sessions.size(), 1u);
  core::BrokerOptions bo;
  bo.now = [] { return kV1Now; };
  core::RestoreReport report;
  auto restored = Broker::Restore(core::testing::TestTopology(), bo, state, &report);
  ASSERT_TRUE(restored.ok()) << restored.status();
  (*restored)->CheckInvariants();
  EXPECT_EQ(report.completed, 0u);
  EXPECT_EQ(V1Fingerprint(**restored, state), ReadFile(kV1Fingerprint));
  EXPECT_TRUE((*restored)->KeepAlive(Dev("cam0"), state.sessions[0].session_id).ok());
  store->reset();
  fs::remove_all(copy);
}

// --- the recovery fuzzer's seeds -------------------------------------------------------

// A journal that encodes each commit as the store does and applies it to a
// map of key-value entries (the database a StateStore would hold).
class EncodingJournal final : public core::Journal {
 public:
  EncodingJournal() {
    std::string key, value;
    const KvWrite schema = SchemaWrite(&key, &value, "iommud 0.1.0");
    entries_[key] = std::string(*schema.value);
  }
  uint64_t Commit(const core::StateChanges& changes) override {
    EncodedChanges encoded;
    encoded.Encode(changes);
    for (const KvWrite& w : encoded.writes()) {
      if (w.value) {
        entries_[std::string(w.key)] = std::string(*w.value);
      } else {
        entries_.erase(std::string(w.key));
      }
    }
    return ++commits_;
  }
  void WaitDurable(uint64_t) override {}

  // The entries as the fuzzer's input, each with the flags given.
  std::string Input(uint8_t flags) const {
    std::vector<fuzz::Entry> entries;
    for (const auto& [k, v] : entries_) entries.push_back({flags, k, v});
    return fuzz::JoinInput(entries);
  }

 private:
  std::map<std::string, std::string> entries_;
  uint64_t commits_ = 0;
};

// Writes store/fuzz_corpus/state_store/seed_* (run by hand, with
// --gtest_also_run_disabled_tests --gtest_filter='*WriteFuzzSeeds').
TEST(StateStoreFuzzSeeds, DISABLED_WriteFuzzSeeds) {
  const std::string dir = IOMMU_STATE_FUZZ_CORPUS_DIR;
  fs::create_directories(dir);
  core::testing::FakeClock clock;
  auto write = [&](const std::string& name, const EncodingJournal& j) {
    WriteFile(absl::StrCat(dir, "/seed_", name), j.Input(0));
    WriteFile(absl::StrCat(dir, "/seed_", name, "_fixcrc"), j.Input(fuzz::kFixChecksum));
  };
  {
    EncodingJournal j;
    core::BrokerOptions o{.now = clock.Fn(), .journal = &j};
    auto b = core::testing::MakeBroker(o, fuzz::FuzzTopology());
    write("fresh", j);
  }
  {
    EncodingJournal j;
    core::BrokerOptions o{.now = clock.Fn(), .journal = &j};
    auto b = core::testing::MakeBroker(o, fuzz::FuzzTopology());
    WriteKnownState(*b);
    write("known", j);
  }
  {
    EncodingJournal j;
    core::BrokerOptions o{.now = clock.Fn(), .journal = &j};
    auto b = core::testing::MakeBroker(o, fuzz::FuzzTopology());
    DriveEveryMutation(*b);
    write("every_mutation", j);
  }
  {
    // Calls made under request ids: their replies are records too.
    EncodingJournal j;
    core::BrokerOptions o{.now = clock.Fn(), .journal = &j};
    auto b = core::testing::MakeBroker(o, fuzz::FuzzTopology());
    for (int i = 0; i < 3; ++i) {
      core::RequestScope scope(
          b->request_log(),
          {.principal = "device:nic0", .request_id = absl::StrCat("seed-", i), .fingerprint = 7},
          [i](const void*, const std::type_info&) { return absl::StrCat("reply ", i); });
      ASSERT_TRUE(scope.Begin(absl::InfiniteFuture()).ok());
      ASSERT_TRUE(b->AllocBuffer(Dev("nic0"), "nic0", 16 * KiB, Placement::kScattered).ok());
    }
    write("requests", j);
  }
}

// The checked-in seeds are real states: each decodes and restores (on the
// fuzzer's topology) with nothing to repair, so fuzzing starts from states
// Broker::Restore accepts.
TEST(StateStoreFuzzSeeds, SeedsDecodeAndRestore) {
  int seeds = 0;
  for (const auto& e : fs::directory_iterator(IOMMU_STATE_FUZZ_CORPUS_DIR)) {
    if (!e.path().filename().string().starts_with("seed_")) continue;
    SCOPED_TRACE(e.path().string());
    ++seeds;
    const std::string input = ReadFile(e.path());
    core::DurableState state;
    uint32_t version = 0;
    for (fuzz::Entry& entry :
         fuzz::SplitInput(reinterpret_cast<const uint8_t*>(input.data()), input.size(), SIZE_MAX)) {
      ASSERT_TRUE(DecodeEntry(entry.key, entry.value, &state, &version).ok());
    }
    EXPECT_EQ(version, kSchemaVersion);
    core::RestoreReport report;
    auto b = Broker::Restore(fuzz::FuzzTopology(), {}, state, &report);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(report.completed, 0u);
    (*b)->CheckInvariants();
  }
  EXPECT_EQ(seeds, 8);
}

}  // namespace
}  // namespace iommu::store
