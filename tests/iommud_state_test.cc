// SPDX-License-Identifier: Apache-2.0
// Integration: the real iommud's durable state. What it acknowledged
// survives SIGTERM and SIGKILL — domains, attachments, buffers, mappings,
// exports, sessions keep their ids, IOVAs and pages, and every page table
// walks as before —; a Batch message cut by a kill is wholly there or wholly
// absent; device clients under mixed traffic lose nothing acknowledged across
// ten kills at random moments; a damaged store is refused by name, and
// `iommud --check_state` reports on a store offline.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tests/daemon_harness.h"
#include "tests/test_clients.h"

namespace iommu::testing {
namespace {

using grpc::StatusCode;

// What clients can observe of the whole state (as the admin: --auth=none
// and no device), as text: domains, their page-table leaves, devices,
// buffers 1..max_buffer.
std::string Snapshot(Stubs& s, uint64_t max_buffer) {
  std::string out;
  v1::ListDomainsResponse domains;
  EXPECT_TRUE(s.domains->ListDomains(Ctx().get(), {}, &domains).ok());
  for (const v1::Domain& d : domains.domains()) {
    absl::StrAppend(&out, "domain ", d.domain_id(), " ", d.smmu(), " type=", int(d.type()),
                    " owner=", d.owner(), " default=", d.is_default(),
                    " devices=", absl::StrJoin(d.devices(), ","), " mappings=", d.mappings(),
                    " bytes=", d.mapped_bytes(), " msi=", d.msi_window_base(), "+",
                    d.msi_window_size_bytes(), "\n");
    v1::WalkDomainRequest walk;
    walk.set_domain_id(d.domain_id());
    walk.set_max_leaves(65536);
    v1::WalkDomainResponse leaves;
    EXPECT_TRUE(s.domains->WalkDomain(Ctx().get(), walk, &leaves).ok());
    for (const v1::PageTableLeaf& l : leaves.leaves()) {
      absl::StrAppend(&out, "  ", l.iova(), "->", l.phys_addr(), " ", l.size_bytes(), " ", l.read(),
                      l.write(), l.exec(), "\n");
    }
  }
  v1::ListDevicesResponse devices;
  EXPECT_TRUE(s.devices->ListDevices(Ctx().get(), {}, &devices).ok());
  for (const v1::DeviceInfo& d : devices.devices()) {
    absl::StrAppend(&out, "device ", d.config().name(), " current=", d.current_domain_id(),
                    " default=", d.default_domain_id(), " mappings=", d.mappings(),
                    " mapped=", d.mapped_bytes(), " buffers=", d.buffers(), "\n");
  }
  for (uint64_t id = 1; id <= max_buffer; ++id) {
    v1::GetBufferRequest get;
    get.set_buffer_id(id);
    v1::GetBufferResponse buf;
    if (!s.memory->GetBuffer(Ctx().get(), get, &buf).ok()) continue;
    absl::StrAppend(&out, "buffer ", id, " ", buf.buffer().device(),
                    " maps=", buf.buffer().map_count());
    for (const auto& r : buf.buffer().runs()) {
      absl::StrAppend(&out, " ", r.phys_addr(), "+", r.size_bytes());
    }
    out += "\n";
  }
  return out;
}

uint64_t AllocBuffer(Stubs& s, const std::string& device, uint64_t size,
                     v1::Placement placement = v1::PLACEMENT_SCATTERED, uint64_t session = 0) {
  v1::AllocBufferRequest req;
  req.set_device(device);
  req.set_size_bytes(size);
  req.set_placement(placement);
  v1::AllocBufferResponse resp;
  const grpc::Status st = s.memory->AllocBuffer(Ctx("", session).get(), req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return resp.buffer().buffer_id();
}

v1::MapResponse Map(Stubs& s, const std::string& device, uint64_t buffer, uint64_t offset,
                    uint64_t length, uint64_t session = 0) {
  v1::MapRequest req;
  req.set_device(device);
  *req.mutable_mem() = BufferRef(buffer, offset, length);
  req.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
  v1::MapResponse resp;
  const grpc::Status st = s.dma->Map(Ctx("", session).get(), req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return resp;
}

// A state with every kind of record: returns the highest buffer id.
uint64_t MakeEverything(Stubs& s) {
  const uint64_t b = AllocBuffer(s, "nic0", 64 * 1024);
  for (uint64_t off = 0; off < 64 * 1024; off += 16 * 1024) Map(s, "nic0", b, off + 0x40, 4096);
  v1::MapSgRequest sg;
  sg.set_device("nic0");
  *sg.add_segments() = BufferRef(b, 0, 4096);
  *sg.add_segments() = BufferRef(b, 8192, 4096);
  sg.set_mode(v1::SG_MODE_MERGE);
  sg.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
  v1::MapSgResponse sg_resp;
  const grpc::Status sg_status = s.dma->MapSg(Ctx().get(), sg, &sg_resp);
  EXPECT_TRUE(sg_status.ok()) << sg_status.error_message();
  v1::MsiCookieRequest msi;
  msi.set_device("nic0");
  v1::MsiCookieResponse msi_resp;
  EXPECT_TRUE(s.dma->MsiCookie(Ctx().get(), msi, &msi_resp).ok());
  // An Alloc, exported and imported by another device.
  v1::AllocRequest alloc;
  alloc.set_device("gpu0");
  alloc.set_size_bytes(128 * 1024);
  alloc.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
  v1::AllocResponse a;
  const grpc::Status alloc_status = s.dma->Alloc(Ctx().get(), alloc, &a);
  EXPECT_TRUE(alloc_status.ok()) << alloc_status.error_message();
  v1::GetSgTableRequest gst;
  gst.set_device("gpu0");
  gst.set_dma_addr(a.dma_addr());
  gst.set_export_(true);
  v1::GetSgTableResponse table;
  const grpc::Status exported = s.dma->GetSgTable(Ctx().get(), gst, &table);
  EXPECT_TRUE(exported.ok()) << exported.error_message();
  v1::MapSgRequest imp;
  imp.set_device("sata0");
  imp.set_import_token(table.export_token());
  imp.set_direction(v1::DMA_DIRECTION_TO_DEVICE);
  imp.set_mode(v1::SG_MODE_MERGE);
  v1::MapSgResponse imp_resp;
  const grpc::Status imported = s.dma->MapSg(Ctx().get(), imp, &imp_resp);
  EXPECT_TRUE(imported.ok()) << imported.error_message();
  // An UNMANAGED domain with an MSI window and a caller-chosen IOVA.
  v1::CreateDomainRequest cd;
  cd.set_device("vf0");
  cd.set_smmu("smmu2");
  cd.set_type(v1::DOMAIN_TYPE_UNMANAGED);
  v1::CreateDomainResponse dom;
  EXPECT_TRUE(s.domains->CreateDomain(Ctx().get(), cd, &dom).ok());
  v1::AttachDeviceRequest at;
  at.set_device("vf0");
  at.set_domain_id(dom.domain().domain_id());
  v1::AttachDeviceResponse at_resp;
  EXPECT_TRUE(s.domains->AttachDevice(Ctx().get(), at, &at_resp).ok());
  v1::MsiCookieRequest win;
  win.set_device("vf0");
  win.set_domain_id(dom.domain().domain_id());
  win.set_window_base(0x800'0000);
  win.set_window_size_bytes(1 << 20);
  EXPECT_TRUE(s.dma->MsiCookie(Ctx().get(), win, &msi_resp).ok());
  const uint64_t vb = AllocBuffer(s, "vf0", 2 << 20, v1::PLACEMENT_HUGE);
  v1::MapAtRequest map_at;
  map_at.set_device("vf0");
  map_at.set_iova(0x4000'0000);
  *map_at.mutable_mem() = BufferRef(vb, 0, 2 << 20);
  map_at.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
  v1::MapAtResponse map_at_resp;
  EXPECT_TRUE(s.dma->MapAt(Ctx().get(), map_at, &map_at_resp).ok());
  // A session's buffer and mapping.
  v1::OpenSessionRequest open;
  open.set_device("cam0");
  open.set_ttl_ms(60'000);
  v1::OpenSessionResponse session;
  EXPECT_TRUE(s.sessions->OpenSession(Ctx().get(), open, &session).ok());
  const uint64_t cb =
      AllocBuffer(s, "cam0", 32 * 1024, v1::PLACEMENT_CONTIGUOUS, session.session_id());
  Map(s, "cam0", cb, 0, 32 * 1024, session.session_id());
  return cb;
}

TEST(StateTest, EverythingSurvivesSigtermAndSigkill) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start()) << daemon.log();
  uint64_t max_buffer = 0;
  std::string before;
  {
    Stubs s(Insecure(daemon.unix_target()));
    max_buffer = MakeEverything(s);
    before = Snapshot(s, max_buffer + 4);
  }
  EXPECT_EQ(daemon.Stop(), 0);
  ASSERT_TRUE(daemon.Restart()) << daemon.log();
  EXPECT_NE(daemon.log().find("fresh=false"), std::string::npos) << daemon.log();
  {
    Stubs s(Insecure(daemon.unix_target()));
    EXPECT_EQ(Snapshot(s, max_buffer + 4), before);
  }
  daemon.Kill();
  ASSERT_TRUE(daemon.Restart()) << daemon.log();
  Stubs s(Insecure(daemon.unix_target()));
  EXPECT_EQ(Snapshot(s, max_buffer + 4), before);
  // Ids continue: a new buffer gets an id no buffer ever had.
  EXPECT_GT(AllocBuffer(s, "dsp0", 4096), max_buffer);
  EXPECT_EQ(daemon.Stop(), 0);
}

TEST(StateTest, ABatchCutByAKillIsWhollyPresentOrWhollyAbsent) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start()) << daemon.log();
  constexpr int kOps = 8000;  // within --max_batch_ops
  uint64_t buffer = 0;
  {
    Stubs s(Insecure(daemon.unix_target()));
    buffer = AllocBuffer(s, "nvme0", 4096);
    grpc::ClientContext ctx;
    auto stream = s.dma->Batch(&ctx);
    v1::BatchRequest req;
    req.set_device("nvme0");
    for (int i = 0; i < kOps; ++i) {
      v1::MapRequest* m = req.add_ops()->mutable_map();
      *m->mutable_mem() = BufferRef(buffer, 0, 4096);
    }
    ASSERT_TRUE(stream->Write(req));
    // Kill while the message is being applied (or just before or after).
    std::this_thread::sleep_for(std::chrono::milliseconds(std::random_device()() % 40));
    daemon.Kill();
  }
  ASSERT_TRUE(daemon.Restart()) << daemon.log();
  Stubs s(Insecure(daemon.unix_target()));
  v1::ListDevicesRequest ld;
  ld.set_device("nvme0");
  v1::ListDevicesResponse devices;
  ASSERT_OK(s.devices->ListDevices(Ctx().get(), ld, &devices));
  const uint64_t mappings = devices.devices(0).mappings();
  EXPECT_TRUE(mappings == 0 || mappings == kOps) << mappings;
  v1::GetBufferRequest get;
  get.set_device("nvme0");
  get.set_buffer_id(buffer);
  v1::GetBufferResponse buf;
  ASSERT_OK(s.memory->GetBuffer(Ctx().get(), get, &buf));
  EXPECT_EQ(buf.buffer().map_count(), mappings);
}

// One client's log, replayed: what the daemon must hold after any crash.
struct Expected {
  std::map<uint64_t, std::string> buffers;                     // live: id -> runs as logged
  std::set<uint64_t> maybe_buffers;                            // ?F: live or gone
  std::set<uint64_t> freed;                                    // acknowledged frees
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> mappings;  // dma_addr -> (buffer, offset)
  std::set<uint64_t> maybe_unmapped;                           // ?U: dma_addrs live or gone
  uint64_t maybe_maps = 0, maybe_allocs = 0;
  std::set<uint64_t> all_buffer_ids;
  std::set<std::pair<uint64_t, uint64_t>> all_mapping_ids;  // (domain, mapping id)
  bool ids_reused = false;
  uint64_t lines = 0, acked = 0, replays = 0;
  // Calls left without an answer ("?" lines): none when calls carry
  // request ids and are retried until answered.
  uint64_t unanswered() const {
    return maybe_maps + maybe_allocs + maybe_buffers.size() + maybe_unmapped.size();
  }
};

Expected Replay(const std::string& log) {
  Expected e;
  std::istringstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    ++e.lines;
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    auto n = [&](size_t i) { return std::stoull(f.at(i)); };
    if (f[0] == "R") {
      ++e.replays;
    } else if (f[0] == "B") {
      ++e.acked;
      e.ids_reused |= !e.all_buffer_ids.insert(n(1)).second;
      e.buffers[n(1)] = f.size() > 2 ? f[2] : "";
    } else if (f[0] == "F") {
      ++e.acked;
      e.buffers.erase(n(1));
      e.freed.insert(n(1));
    } else if (f[0] == "M") {
      ++e.acked;
      e.ids_reused |= !e.all_mapping_ids.insert({n(5), n(4)}).second;
      e.mappings[n(1)] = {n(2), n(3)};
      e.maybe_unmapped.erase(n(1));
    } else if (f[0] == "U") {
      ++e.acked;
      e.mappings.erase(n(1));
    } else if (f[0] == "?B") {
      ++e.maybe_allocs;
    } else if (f[0] == "?F") {
      e.buffers.erase(n(1));
      e.maybe_buffers.insert(n(1));
    } else if (f[0] == "?M") {
      ++e.maybe_maps;
    } else if (f[0] == "?U") {
      e.mappings.erase(n(1));
      e.maybe_unmapped.insert(n(1));
    }
  }
  return e;
}

// The physical address of byte `offset` of a buffer with `runs`
// ("start:size,...").
uint64_t PhysAt(const std::string& runs, uint64_t offset) {
  for (absl::string_view r : absl::StrSplit(runs, ',')) {
    std::vector<std::string> p = absl::StrSplit(r, ':');
    const uint64_t start = std::stoull(p[0]), size = std::stoull(p[1]);
    if (offset < size) return start + offset;
    offset -= size;
  }
  return 0;
}

// Device clients retry every unanswered call under its request id (as the
// SDKs do) across SIGKILLs at random moments: the daemon ends up holding
// exactly what their logs say, each call applied once.
TEST(StateTest, CrashCyclesLoseNothingAcknowledgedAndApplyEachCallOnce) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({"--log_level=warning"}, DaemonProcess::Ready::kUnixSocket))
      << daemon.log();
  const std::vector<std::string> devices = {"nic0", "gpu0", "cam0"};
  std::vector<pid_t> clients;
  std::vector<std::string> logs;
  for (size_t i = 0; i < devices.size(); ++i) {
    logs.push_back(daemon.dir() + "/client-" + devices[i] + ".log");
    const pid_t pid = fork();
    if (pid == 0) {
      const std::string target = "--target=" + daemon.unix_target();
      const std::string device = "--device=" + devices[i];
      const std::string log = "--log=" + logs[i];
      const std::string seed = "--seed=" + std::to_string(1000 + i);
      execl(STATE_CLIENT_PATH, STATE_CLIENT_PATH, target.c_str(), device.c_str(), log.c_str(),
            seed.c_str(), "--request_ids", nullptr);
      _exit(127);
    }
    clients.push_back(pid);
  }
  std::mt19937 rng(std::random_device{}());
  // `make soak` runs many more (IOMMU_CRASH_CYCLES).
  const char* cycles_env = std::getenv("IOMMU_CRASH_CYCLES");
  const int cycles = cycles_env != nullptr ? std::max(1, std::atoi(cycles_env)) : 10;
  // Each cycle kills mid-traffic: only once every client's log has grown
  // since the last restart (clients reconnect with backoff, slower on a
  // loaded machine), then at a random moment.
  auto log_sizes = [&logs] {
    std::vector<uintmax_t> sizes;
    for (const std::string& l : logs) {
      std::error_code ec;
      const uintmax_t size = std::filesystem::file_size(l, ec);
      sizes.push_back(ec ? 0 : size);
    }
    return sizes;
  };
  for (int cycle = 0; cycle < cycles; ++cycle) {
    const std::vector<uintmax_t> before = log_sizes();
    for (int waited_ms = 0; waited_ms < 20000; waited_ms += 20) {
      const std::vector<uintmax_t> now = log_sizes();
      bool all_grew = true;
      for (size_t i = 0; i < now.size(); ++i) all_grew = all_grew && now[i] > before[i] + 256;
      if (all_grew) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(150 + rng() % 450));
    daemon.Kill();
    ASSERT_TRUE(daemon.Restart()) << "cycle " << cycle << ": " << daemon.log();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (pid_t pid : clients) kill(pid, SIGTERM);
  for (pid_t pid : clients) {
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }
  // One more kill with the clients quiet, then compare with the logs.
  daemon.Kill();
  ASSERT_TRUE(daemon.Restart()) << daemon.log();
  Stubs s(Insecure(daemon.unix_target()));
  uint64_t total_acked = 0, total_replays = 0;
  for (size_t i = 0; i < devices.size(); ++i) {
    const std::string& device = devices[i];
    const Expected e = Replay(ReadAll(logs[i]));
    total_acked += e.acked;
    total_replays += e.replays;
    EXPECT_EQ(e.unanswered(), 0u) << device << ": a call was left without an answer";
    EXPECT_FALSE(e.ids_reused) << device;
    EXPECT_GT(e.acked, 20u) << device << ": too little traffic to mean anything";
    for (const auto& [id, runs] : e.buffers) {
      v1::GetBufferRequest get;
      get.set_device(device);
      get.set_buffer_id(id);
      v1::GetBufferResponse buf;
      const grpc::Status st = s.memory->GetBuffer(Ctx().get(), get, &buf);
      ASSERT_TRUE(st.ok()) << device << " buffer " << id << ": " << st.error_message();
      std::string got;
      for (const auto& r : buf.buffer().runs()) {
        if (!got.empty()) got += ",";
        got += std::to_string(r.phys_addr()) + ":" + std::to_string(r.size_bytes());
      }
      EXPECT_EQ(got, runs) << device << " buffer " << id;
    }
    for (uint64_t id : e.freed) {
      if (e.buffers.contains(id)) continue;
      v1::GetBufferRequest get;
      get.set_device(device);
      get.set_buffer_id(id);
      v1::GetBufferResponse buf;
      EXPECT_CODE(s.memory->GetBuffer(Ctx().get(), get, &buf), NOT_FOUND);
    }
    for (const auto& [dma_addr, where] : e.mappings) {
      v1::TranslateRequest t;
      t.set_device(device);
      t.set_iova(dma_addr);
      t.set_length_bytes(1);
      t.set_access(v1::ACCESS_KIND_READ);
      v1::TranslateResponse r;
      ASSERT_OK(s.devices->Translate(Ctx().get(), t, &r));
      ASSERT_FALSE(r.faulted()) << device << " dma_addr " << dma_addr;
      ASSERT_EQ(r.pages_size(), 1);
      EXPECT_EQ(r.pages(0).phys_addr(), PhysAt(e.buffers.at(where.first), where.second))
          << device << " dma_addr " << dma_addr;
    }
    v1::ListDevicesRequest ld;
    ld.set_device(device);
    v1::ListDevicesResponse info;
    ASSERT_OK(s.devices->ListDevices(Ctx().get(), ld, &info));
    // Exactly: a retried call applied twice would leave one more.
    EXPECT_EQ(info.devices(0).mappings(), e.mappings.size()) << device;
    EXPECT_EQ(info.devices(0).buffers(), e.buffers.size()) << device;
  }
  EXPECT_GT(total_acked, 100u);
  // How many answers were replays of a call applied before a kill (a kill
  // between commit and reply is rare: not asserted, shown).
  std::printf("crash cycles: %lu calls acknowledged, %lu answered by replay\n",
              static_cast<unsigned long>(total_acked), static_cast<unsigned long>(total_replays));
  EXPECT_EQ(daemon.Stop(), 0);
  // The store checks clean offline, invariants included.
  const std::string check =
      std::string(IOMMUD_PATH) + " --check_state --state_dir=" + daemon.state_dir() + " 2>&1";
  std::string out;
  FILE* p = popen(check.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << out;
  EXPECT_NE(out.find("state: OK"), std::string::npos) << out;
}

TEST(StateTest, ADamagedStoreIsRefusedByNameAndCheckedOffline) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start()) << daemon.log();
  {
    Stubs s(Insecure(daemon.unix_target()));
    Map(s, "nic0", AllocBuffer(s, "nic0", 8192), 0, 4096);
  }
  EXPECT_EQ(daemon.Stop(), 0);
  // The directory and its files are the daemon's alone.
  struct stat st {};
  ASSERT_EQ(stat(daemon.state_dir().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  // Offline check of a good store.
  auto run = [](const std::string& cmd, std::string* out) {
    FILE* p = popen((cmd + " 2>&1").c_str(), "r");
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, n);
    return pclose(p);
  };
  std::string out;
  EXPECT_EQ(
      run(std::string(IOMMUD_PATH) + " --check_state --state_dir=" + daemon.state_dir(), &out), 0)
      << out;
  EXPECT_NE(out.find("1 mappings"), std::string::npos) << out;
  // Damage the mapping's record in place: flip bytes of its value inside the
  // LMDB data file (found by its key, which only its leaf holds; the pages in
  // use sit at the start of the file, which is sparse up to its map size).
  const std::string data = daemon.state_dir() + "/data.mdb";
  const int fd = open(data.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  std::string head(8 << 20, '\0');
  const ssize_t got = pread(fd, head.data(), head.size(), 0);
  ASSERT_GT(got, 0);
  head.resize(size_t(got));
  // The record's value follows its key: 'm' + domain (8 bytes) + IOVA (8 bytes).
  const std::string key_prefix = std::string("m\0\0\0\0\0\0\0\1", 9);
  const size_t at = head.find(key_prefix);
  ASSERT_NE(at, std::string::npos);
  const size_t value = at + 17;
  const char flipped[2] = {char(head[value + 6] ^ 0x5a), char(head[value + 7] ^ 0xa5)};
  ASSERT_EQ(pwrite(fd, flipped, 2, off_t(value + 6)), 2);
  close(fd);
  out.clear();
  EXPECT_NE(
      run(std::string(IOMMUD_PATH) + " --check_state --state_dir=" + daemon.state_dir(), &out), 0);
  EXPECT_NE(out.find("(mapping)"), std::string::npos) << out;
  EXPECT_FALSE(daemon.Restart());
  EXPECT_EQ(daemon.exit_code(), 1);
  EXPECT_NE(daemon.log().find(daemon.state_dir()), std::string::npos) << daemon.log();
  EXPECT_NE(daemon.log().find("(mapping)"), std::string::npos) << daemon.log();
}

// A context carrying request id `id`.
std::unique_ptr<grpc::ClientContext> WithId(const std::string& id) {
  auto ctx = Ctx();
  ctx->AddMetadata("iommu-request-id", id);
  return ctx;
}

bool Replayed(const grpc::ClientContext& ctx) {
  return ctx.GetServerTrailingMetadata().count("iommu-request-replayed") == 1;
}

uint64_t Mappings(Stubs& s, const std::string& device) {
  v1::ListDevicesRequest ld;
  ld.set_device(device);
  v1::ListDevicesResponse info;
  EXPECT_TRUE(s.devices->ListDevices(Ctx().get(), ld, &info).ok());
  return info.devices_size() == 1 ? info.devices(0).mappings() : ~uint64_t{0};
}

// A retry of a mutating call under its request id, after SIGKILL and
// restart, gets the original reply and applies nothing; a Batch message
// resent on a new stream the same; a reused id is refused; ids are scoped to
// their device.
TEST(StateTest, ARetryUnderItsRequestIdIsAnsweredNotAppliedAgain) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start()) << daemon.log();
  v1::MapRequest map;
  map.set_device("nic0");
  map.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
  v1::MapResponse first;
  v1::BatchRequest batch;
  batch.set_device("nic0");
  batch.set_sequence(1);
  batch.set_request_id("batch-1");
  v1::BatchResponse batch_first;
  uint64_t buffer = 0;
  {
    Stubs s(Insecure(daemon.unix_target()));
    buffer = AllocBuffer(s, "nic0", 64 * 1024);
    *map.mutable_mem() = BufferRef(buffer, 0x100, 4096);
    auto ctx = WithId("map-1");
    ASSERT_OK(s.dma->Map(ctx.get(), map, &first));
    EXPECT_FALSE(Replayed(*ctx));
    // The same id again, at once: the same reply, nothing new.
    v1::MapResponse again;
    auto ctx2 = WithId("map-1");
    ASSERT_OK(s.dma->Map(ctx2.get(), map, &again));
    EXPECT_TRUE(Replayed(*ctx2));
    EXPECT_EQ(again.SerializeAsString(), first.SerializeAsString());
    EXPECT_EQ(Mappings(s, "nic0"), 1u);
    // A Batch message: two maps and an unmap of the unary one.
    for (uint64_t off : {0x2000, 0x4000}) {
      v1::MapRequest* m = batch.add_ops()->mutable_map();
      *m->mutable_mem() = BufferRef(buffer, off, 4096);
      m->set_direction(v1::DMA_DIRECTION_TO_DEVICE);
    }
    batch.add_ops()->mutable_unmap()->set_dma_addr(first.dma_addr());
    grpc::ClientContext bctx;
    auto stream = s.dma->Batch(&bctx);
    ASSERT_TRUE(stream->Write(batch));
    ASSERT_TRUE(stream->Read(&batch_first));
    stream->WritesDone();
    ASSERT_OK(stream->Finish());
    ASSERT_EQ(batch_first.results_size(), 3);
    for (const auto& r : batch_first.results()) EXPECT_EQ(r.code(), 0) << r.message();
    EXPECT_EQ(Mappings(s, "nic0"), 2u);
  }
  daemon.Kill();
  ASSERT_TRUE(daemon.Restart()) << daemon.log();
  Stubs s(Insecure(daemon.unix_target()));
  // After the kill: the unary Map's retry gets its reply (the mapping it
  // names was since unmapped by the Batch: a replay is the answer, not a
  // new effect).
  v1::MapResponse after;
  auto ctx = WithId("map-1");
  ASSERT_OK(s.dma->Map(ctx.get(), map, &after));
  EXPECT_TRUE(Replayed(*ctx));
  EXPECT_EQ(after.SerializeAsString(), first.SerializeAsString());
  // The Batch message resent on a new stream (numbered afresh).
  batch.set_sequence(7);
  grpc::ClientContext bctx;
  auto stream = s.dma->Batch(&bctx);
  ASSERT_TRUE(stream->Write(batch));
  v1::BatchResponse batch_again;
  ASSERT_TRUE(stream->Read(&batch_again));
  stream->WritesDone();
  ASSERT_OK(stream->Finish());
  EXPECT_EQ(batch_again.sequence(), 7u);
  ASSERT_EQ(batch_again.results_size(), 3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(batch_again.results(i).SerializeAsString(),
              batch_first.results(i).SerializeAsString())
        << i;
  }
  EXPECT_EQ(Mappings(s, "nic0"), 2u);
  // The id reused for another request: refused, naming it; nothing made.
  v1::MapRequest other = map;
  other.mutable_mem()->set_offset_bytes(0x8000);
  v1::MapResponse refused;
  grpc::Status st = s.dma->Map(WithId("map-1").get(), other, &refused);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("iommu-request-id=\"map-1\""), std::string::npos)
      << st.error_message();
  EXPECT_EQ(Mappings(s, "nic0"), 2u);
  // Another device's call under the same id is its own call.
  const uint64_t gbuf = AllocBuffer(s, "gpu0", 64 * 1024);
  v1::MapRequest gmap = map;
  gmap.set_device("gpu0");
  gmap.mutable_mem()->set_buffer_id(gbuf);
  v1::MapResponse gresp;
  auto gctx = WithId("map-1");
  ASSERT_OK(s.dma->Map(gctx.get(), gmap, &gresp));
  EXPECT_FALSE(Replayed(*gctx));
  EXPECT_EQ(Mappings(s, "gpu0"), 1u);
  // A malformed id: refused before any work.
  st = s.dma->Map(WithId("not an id").get(), other, &refused);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("iommu-request-id="), std::string::npos) << st.error_message();
  EXPECT_EQ(Mappings(s, "nic0"), 2u);
  EXPECT_EQ(daemon.Stop(), 0);
}

TEST(StateTest, NoStoreIsExplicitAndWarned) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({"--no_store"})) << daemon.log();
  EXPECT_NE(daemon.log().find("--no_store: nothing is durable"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(daemon.state_dir()));
  EXPECT_EQ(daemon.Stop(), 0);
}

}  // namespace
}  // namespace iommu::testing
