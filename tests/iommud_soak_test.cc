// SPDX-License-Identifier: Apache-2.0
// Soak: mixed traffic against a real iommud (token auth over TLS, several
// identities) for IOMMU_SOAK_SECONDS (default 12; `make soak` runs longer):
//
//   * device clients, each under sessions with short leases, allocate
//     buffers, map and unmap them (single and scatter-gather), translate
//     mapped and unmapped IOVAs, and end each session by closing it, by
//     letting it expire, or by vanishing: a call cancelled mid-flight and the
//     connection dropped, the session left to expire;
//   * a hostile client forges tokens, names other devices' buffers and
//     mappings, sends oversized strings and admin-only calls as a device;
//   * fault watchers come and go.
//
// Every answer must be one the API documents for that call; no hostile
// request may succeed. Afterwards, with every lease run out, the daemon must
// be back to its baseline: no mapping, buffer or session left on any device,
// its threads and memory within a bound of the warmed-up daemon, and the
// durable state it leaves behind (iommud --check_state) restorable, its
// invariants holding, with nothing in it. Latency percentiles of map+unmap
// per third of the run are printed (a benchmark's business, not asserted).

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "tests/daemon_harness.h"
#include "tests/test_certs.h"
#include "tests/test_clients.h"

namespace iommu::testing {
namespace {

using grpc::StatusCode;

const std::vector<std::string> kDevices = {"nic0", "nvme0", "gpu0", "sata0", "cam0"};

std::string Token(const std::string& who) { return "soak-test-token-for-" + who; }

uint64_t ProcStatus(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stoull(line.substr(key.size() + 1));
  }
  return 0;
}

// What the clients saw, by call and code; a code outside the documented
// set for its call fails the test at the end, naming it.
class Tally {
 public:
  void Count(const std::string& call, const grpc::Status& s,
             std::initializer_list<StatusCode> allowed) {
    absl::MutexLock lock(&mu_);
    ++counts_[call][s.error_code()];
    if (s.ok()) return;
    if (std::find(allowed.begin(), allowed.end(), s.error_code()) == allowed.end()) {
      unexpected_.push_back(absl::StrCat(call, ": ", s.error_code(), " ", s.error_message()));
    }
  }
  void Unexpected(std::string what) {
    absl::MutexLock lock(&mu_);
    unexpected_.push_back(std::move(what));
  }
  void AddLatency(double us, double when) {
    absl::MutexLock lock(&mu_);
    latencies_.push_back({when, us});
  }
  std::vector<std::string> unexpected() const {
    absl::MutexLock lock(&mu_);
    return unexpected_;
  }
  uint64_t ok(const std::string& call) const {
    absl::MutexLock lock(&mu_);
    auto it = counts_.find(call);
    if (it == counts_.end()) return 0;
    auto ok = it->second.find(StatusCode::OK);
    return ok == it->second.end() ? 0 : ok->second;
  }
  std::string Summary(double seconds) const {
    absl::MutexLock lock(&mu_);
    std::string out;
    for (const auto& [call, codes] : counts_) {
      absl::StrAppend(&out, "  ", call, ":");
      for (const auto& [code, n] : codes) absl::StrAppend(&out, " code", code, "=", n);
      absl::StrAppend(&out, "\n");
    }
    for (int third = 0; third < 3; ++third) {
      std::vector<double> us;
      for (const auto& [when, l] : latencies_) {
        if (when >= seconds * third / 3 && when < seconds * (third + 1) / 3) us.push_back(l);
      }
      if (us.empty()) continue;
      std::sort(us.begin(), us.end());
      absl::StrAppend(&out, "  map+unmap third ", third + 1, ": n=", us.size(),
                      " p50=", us[us.size() / 2], "us p99=", us[us.size() * 99 / 100], "us\n");
    }
    return out;
  }

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, std::map<StatusCode, uint64_t>> counts_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> unexpected_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<double, double>> latencies_ ABSL_GUARDED_BY(mu_);
};

class SoakTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string tokens = TestCerts() + "/soak-tokens";
    std::ofstream out(tokens);
    out << Token("admin") << " admin\n";
    for (const std::string& d : kDevices) out << Token(d) << " " << d << "\n";
    out.close();
    ASSERT_TRUE(daemon_.Start(
        {"--auth=token", "--token_file=" + tokens, "--tls_cert=" + TestCerts() + "/server.crt",
         "--tls_key=" + TestCerts() + "/server.key", "--log_level=warning"},
        DaemonProcess::Ready::kUnixSocket))
        << daemon_.log();
  }

  std::unique_ptr<Stubs> Connect() {
    return std::make_unique<Stubs>(TlsChannel(daemon_.unix_target()));
  }

  // The devices' state as the admin sees it: device -> "mappings/buffers/domain".
  std::map<std::string, std::string> DeviceState() {
    std::unique_ptr<Stubs> s = Connect();
    v1::ListDevicesRequest r;
    v1::ListDevicesResponse out;
    const grpc::Status st = s->devices->ListDevices(Ctx(Token("admin")).get(), r, &out);
    EXPECT_TRUE(st.ok()) << st.error_message();
    std::map<std::string, std::string> state;
    for (const v1::DeviceInfo& d : out.devices()) {
      state[d.config().name()] = absl::StrCat(d.mappings(), "/", d.buffers(), "/",
                                              d.current_domain_id(), "/", d.mapped_bytes());
    }
    return state;
  }

  void DeviceClient(const std::string& dev, std::atomic<bool>& stop, uint32_t seed,
                    absl::Time start);
  void HostileClient(std::atomic<bool>& stop, uint32_t seed);
  void Watcher(std::atomic<bool>& stop, uint32_t seed);

  DaemonProcess daemon_;
  Tally tally_;
};

void SoakTest::DeviceClient(const std::string& dev, std::atomic<bool>& stop, uint32_t seed,
                            absl::Time start) {
  std::mt19937 rng(seed);
  std::unique_ptr<Stubs> s = Connect();
  const std::string token = Token(dev);
  while (!stop.load()) {
    v1::OpenSessionRequest open;
    open.set_device(dev);
    open.set_ttl_ms(300 + rng() % 700);
    v1::OpenSessionResponse session;
    grpc::Status st = s->sessions->OpenSession(Ctx(token).get(), open, &session);
    tally_.Count("OpenSession", st, {StatusCode::RESOURCE_EXHAUSTED, StatusCode::UNAVAILABLE});
    if (!st.ok()) continue;
    const uint64_t sid = session.session_id();

    v1::AllocBufferRequest alloc;
    alloc.set_device(dev);
    alloc.set_size_bytes(4096 * (4 + rng() % 60));
    alloc.set_placement(rng() % 2 ? v1::PLACEMENT_SCATTERED : v1::PLACEMENT_CONTIGUOUS);
    v1::AllocBufferResponse buffer;
    st = s->memory->AllocBuffer(Ctx(token, sid).get(), alloc, &buffer);
    tally_.Count("AllocBuffer", st, {StatusCode::RESOURCE_EXHAUSTED});
    if (!st.ok()) continue;
    const uint64_t id = buffer.buffer().buffer_id();
    const uint64_t size = buffer.buffer().size_bytes();

    std::vector<uint64_t> mapped;
    for (int op = 0; op < 20 && !stop.load(); ++op) {
      const int what = rng() % 10;
      if (what < 4) {  // map a page range, sometimes unmap it at once
        v1::MapRequest m;
        m.set_device(dev);
        const uint64_t off = (rng() % (size / 4096)) * 4096;
        *m.mutable_mem() =
            BufferRef(id, off, std::min<uint64_t>(size - off, 4096 * (1 + rng() % 4)));
        m.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
        v1::MapResponse mr;
        const absl::Time t0 = absl::Now();
        st = s->dma->Map(Ctx(token, sid).get(), m, &mr);
        tally_.Count("Map", st, {StatusCode::RESOURCE_EXHAUSTED});
        if (!st.ok()) continue;
        if (rng() % 2) {
          v1::UnmapRequest u;
          u.set_device(dev);
          u.set_dma_addr(mr.dma_addr());
          v1::UnmapResponse ur;
          st = s->dma->Unmap(Ctx(token, sid).get(), u, &ur);
          tally_.Count("Unmap", st, {});
          tally_.AddLatency(absl::ToDoubleMicroseconds(absl::Now() - t0),
                            absl::ToDoubleSeconds(t0 - start));
        } else {
          mapped.push_back(mr.dma_addr());
        }
      } else if (what < 6) {  // a scatterlist of two segments
        v1::MapSgRequest m;
        m.set_device(dev);
        *m.add_segments() = BufferRef(id, 0, 4096);
        *m.add_segments() = BufferRef(id, size - 4096, 4096);
        // cam0 cannot do scatter-gather: its lists map as one run.
        m.set_mode(dev == "cam0" ? v1::SG_MODE_CONTIGUOUS
                   : rng() % 2   ? v1::SG_MODE_MERGE
                                 : v1::SG_MODE_DMA_API);
        m.set_direction(v1::DMA_DIRECTION_TO_DEVICE);
        v1::MapSgResponse mr;
        st = s->dma->MapSg(Ctx(token, sid).get(), m, &mr);
        tally_.Count("MapSg", st, {StatusCode::RESOURCE_EXHAUSTED});
        if (st.ok()) {
          v1::UnmapSgRequest u;
          u.set_device(dev);
          u.set_dma_addr(mr.iova());
          v1::UnmapSgResponse ur;
          st = s->dma->UnmapSg(Ctx(token, sid).get(), u, &ur);
          tally_.Count("UnmapSg", st, {});
        }
      } else if (what < 8) {  // the device touches a mapped page, or a hole
        v1::TranslateRequest t;
        t.set_device(dev);
        const bool hole = mapped.empty() || rng() % 3 == 0;
        t.set_iova(hole ? 0x1000 * (1 + rng() % 16) : mapped[rng() % mapped.size()]);
        t.set_length_bytes(4);
        t.set_access(v1::ACCESS_KIND_READ);
        v1::TranslateResponse tr;
        st = s->devices->Translate(Ctx(token).get(), t, &tr);
        tally_.Count("Translate", st, {});
        if (st.ok() && !hole && tr.faulted()) {
          tally_.Unexpected(absl::StrCat(dev, ": a mapped IOVA faulted: ", t.iova()));
        }
      } else if (what == 8 && !mapped.empty()) {
        v1::UnmapRequest u;
        u.set_device(dev);
        u.set_dma_addr(mapped.back());
        mapped.pop_back();
        v1::UnmapResponse ur;
        st = s->dma->Unmap(Ctx(token, sid).get(), u, &ur);
        tally_.Count("Unmap", st, {});
      } else {
        v1::KeepAliveRequest k;
        k.set_device(dev);
        k.set_session_id(sid);
        v1::KeepAliveResponse kr;
        st = s->sessions->KeepAlive(Ctx(token).get(), k, &kr);
        tally_.Count("KeepAlive", st, {StatusCode::NOT_FOUND});  // it may have run out
      }
    }
    // End the session: close it, let it expire, or vanish mid-call.
    const int end = rng() % 3;
    if (end == 0) {
      v1::CloseSessionRequest c;
      c.set_device(dev);
      c.set_session_id(sid);
      v1::CloseSessionResponse cr;
      st = s->sessions->CloseSession(Ctx(token).get(), c, &cr);
      tally_.Count("CloseSession", st, {StatusCode::NOT_FOUND});
    } else if (end == 2) {
      auto ctx = Ctx(token, sid);
      v1::MapRequest m;
      m.set_device(dev);
      *m.mutable_mem() = BufferRef(id, 0, 4096);
      m.set_direction(v1::DMA_DIRECTION_FROM_DEVICE);
      v1::MapResponse mr;
      std::thread cancel([&ctx, &rng] {
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
        ctx->TryCancel();
      });
      st = s->dma->Map(ctx.get(), m, &mr);
      cancel.join();
      tally_.Count("Map(cancelled)", st, {StatusCode::CANCELLED, StatusCode::RESOURCE_EXHAUSTED});
      s = Connect();  // the old connection goes away with its stubs
    }
  }
}

void SoakTest::HostileClient(std::atomic<bool>& stop, uint32_t seed) {
  std::mt19937 rng(seed);
  std::unique_ptr<Stubs> s = Connect();
  while (!stop.load()) {
    const std::string dev = kDevices[rng() % kDevices.size()];
    const int what = rng() % 5;
    grpc::Status st;
    if (what == 0) {  // a forged token
      v1::ListDevicesRequest r;
      v1::ListDevicesResponse out;
      st = s->devices->ListDevices(Ctx("forged-" + Token(dev)).get(), r, &out);
      if (st.error_code() != StatusCode::UNAUTHENTICATED) {
        tally_.Unexpected(absl::StrCat("forged token answered ", st.error_code()));
      }
    } else if (what == 1) {  // another device's buffer, by guessing its id
      v1::MapRequest m;
      m.set_device(dev);
      *m.mutable_mem() = BufferRef(1 + rng() % 5000, 0, 4096);
      m.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
      v1::MapResponse out;
      st = s->dma->Map(Ctx(Token(dev)).get(), m, &out);
      // Its own buffers are in sessions of its client; a guess may hit one.
      tally_.Count("Map(guessed buffer)", st,
                   {StatusCode::NOT_FOUND, StatusCode::RESOURCE_EXHAUSTED});
      if (st.ok()) {
        v1::UnmapRequest u;
        u.set_device(dev);
        u.set_dma_addr(out.dma_addr());
        v1::UnmapResponse ur;
        tally_.Count("Unmap", s->dma->Unmap(Ctx(Token(dev)).get(), u, &ur),
                     {StatusCode::NOT_FOUND});
      }
    } else if (what == 2) {  // acting as another device
      const std::string victim =
          kDevices[(rng() % (kDevices.size() - 1) + 1 +
                    std::find(kDevices.begin(), kDevices.end(), dev) - kDevices.begin()) %
                   kDevices.size()];
      v1::UnmapRequest u;
      u.set_device(victim);
      u.set_dma_addr(0xfffff000 - 0x1000 * (rng() % 64));
      v1::UnmapResponse out;
      st = s->dma->Unmap(Ctx(Token(dev)).get(), u, &out);
      if (st.error_code() != StatusCode::PERMISSION_DENIED) {
        tally_.Unexpected(absl::StrCat(dev, " acting as ", victim, " answered ", st.error_code()));
      }
    } else if (what == 3) {  // an oversized string
      v1::AllocBufferRequest a;
      a.set_device(std::string(4096 + rng() % 65536, 'x'));
      a.set_size_bytes(4096);
      v1::AllocBufferResponse out;
      st = s->memory->AllocBuffer(Ctx(Token(dev)).get(), a, &out);
      // Refused by --max_string_bytes (or, past --max_message_bytes, by size).
      if (st.error_code() != StatusCode::INVALID_ARGUMENT &&
          st.error_code() != StatusCode::RESOURCE_EXHAUSTED) {
        tally_.Unexpected(absl::StrCat("oversized device name answered ", st.error_code()));
      }
    } else {  // an admin-only call as a device
      v1::CreateDomainRequest c;
      c.set_device(dev);
      c.set_smmu("smmu0");
      c.set_type(v1::DOMAIN_TYPE_IDENTITY);
      v1::CreateDomainResponse out;
      st = s->domains->CreateDomain(Ctx(Token(dev)).get(), c, &out);
      if (st.error_code() != StatusCode::PERMISSION_DENIED) {
        tally_.Unexpected(absl::StrCat("identity domain for ", dev, " answered ", st.error_code()));
      }
    }
  }
}

void SoakTest::Watcher(std::atomic<bool>& stop, uint32_t seed) {
  std::mt19937 rng(seed);
  while (!stop.load()) {
    std::unique_ptr<Stubs> s = Connect();
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + Token("admin"));
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(100 + rng() % 900));
    v1::WatchFaultsRequest r;
    auto reader = s->devices->WatchFaults(&ctx, r);
    v1::FaultEvent event;
    while (reader->Read(&event)) {
    }
    const grpc::Status st = reader->Finish();
    tally_.Count("WatchFaults", st,
                 {StatusCode::DEADLINE_EXCEEDED, StatusCode::RESOURCE_EXHAUSTED});
  }
}

TEST_F(SoakTest, MixedTrafficLeavesTheDaemonAsItFoundIt) {
  const char* env = std::getenv("IOMMU_SOAK_SECONDS");
  const int seconds = env != nullptr ? std::max(2, std::atoi(env)) : 12;
  const std::map<std::string, std::string> baseline = DeviceState();
  ASSERT_EQ(baseline.size(), 8u);

  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  const absl::Time start = absl::Now();
  std::random_device seed;
  for (size_t i = 0; i < kDevices.size(); ++i) {
    const uint32_t s = seed();
    threads.emplace_back([&, i, s] { DeviceClient(kDevices[i], stop, s, start); });
  }
  threads.emplace_back([&, s = seed()] { HostileClient(stop, s); });
  threads.emplace_back([&, s = seed()] { Watcher(stop, s); });

  // The warmed-up daemon: its memory and threads a few seconds in.
  std::this_thread::sleep_for(std::chrono::seconds(std::min(3, seconds / 2)));
  const uint64_t warm_rss_kb = ProcStatus(daemon_.pid(), "VmRSS");
  const uint64_t warm_threads = ProcStatus(daemon_.pid(), "Threads");
  uint64_t peak_rss_kb = warm_rss_kb, peak_threads = warm_threads;
  while (absl::Now() - start < absl::Seconds(seconds)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    peak_rss_kb = std::max(peak_rss_kb, ProcStatus(daemon_.pid(), "VmRSS"));
    peak_threads = std::max(peak_threads, ProcStatus(daemon_.pid(), "Threads"));
  }
  stop.store(true);
  for (std::thread& t : threads) t.join();
  const double ran = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf("soak: %.1f s, warm RSS %llu KiB, peak %llu KiB, threads %llu..%llu\n%s", ran,
              static_cast<unsigned long long>(warm_rss_kb),
              static_cast<unsigned long long>(peak_rss_kb),
              static_cast<unsigned long long>(warm_threads),
              static_cast<unsigned long long>(peak_threads), tally_.Summary(ran).c_str());

  for (const std::string& u : tally_.unexpected()) ADD_FAILURE() << u;
  EXPECT_GT(tally_.ok("Map"), 100u) << "too little traffic to mean anything";
  EXPECT_GT(tally_.ok("MapSg"), 20u);
  EXPECT_GT(tally_.ok("CloseSession"), 5u);

  // Every lease runs out within a second; the daemon reaps them, releasing
  // what they own, and is back to its baseline.
  std::map<std::string, std::string> now;
  for (int i = 0; i < 100; ++i) {
    now = DeviceState();
    if (now == baseline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(now, baseline) << "mappings/buffers/domain/bytes per device after every lease ran out";
  // Bounded: no thread per call or stream left behind, memory within 64 MiB
  // of the warmed-up daemon's.
  EXPECT_LE(peak_threads, warm_threads + 16);
  EXPECT_LE(ProcStatus(daemon_.pid(), "Threads"), warm_threads + 4);
  EXPECT_LE(peak_rss_kb, warm_rss_kb + 64 * 1024);

  // What it leaves on disk restores, holds its invariants, and is empty.
  const std::optional<int> exit = daemon_.Stop();
  ASSERT_EQ(exit, 0) << daemon_.log();
  std::string out;
  FILE* p = popen(
      (std::string(IOMMUD_PATH) + " --check_state --state_dir=" + daemon_.state_dir() + " 2>&1")
          .c_str(),
      "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << out;
  EXPECT_NE(out.find("state: OK"), std::string::npos) << out;
  EXPECT_NE(out.find(" 0 buffers, 0 exports, 0 sessions, 0 mappings"), std::string::npos) << out;
}

}  // namespace
}  // namespace iommu::testing
