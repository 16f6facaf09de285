// SPDX-License-Identifier: Apache-2.0
// Integration: WatchFaults streams against the real iommud
// (docs/design.md#watch-faults). Finding: every watcher held an OS thread
// (2,000 idle watchers were 2,000 threads; at a thread limit watchers ended
// UNIMPLEMENTED with no message). Now a watcher is a callback reactor woken
// by the fault ring: thousands of idle watchers cost a constant number of
// threads and bounded memory, each still gets its device's faults, a
// device's watchers are bounded by --max_watchers_per_device, and a drain
// ends every one with OK.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "tests/daemon_harness.h"
#include "tests/test_clients.h"

namespace iommu::testing {
namespace {

using grpc::StatusCode;

// A field of /proc/<pid>/status ("Threads", "VmRSS" in KiB), as a number.
uint64_t ProcStatus(pid_t pid, const std::string& field) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoull(line.substr(field.size() + 1));
  }
  return 0;
}

// A channel of its own connection (gRPC shares connections between channels
// to one target unless told not to).
std::shared_ptr<grpc::Channel> OwnConnection(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

// One device fault: a read of an IOVA nothing maps.
void Fault(Stubs& s, const std::string& device) {
  v1::TranslateRequest tr;
  tr.set_device(device);
  tr.set_iova(0x7000000);
  tr.set_length_bytes(4);
  tr.set_access(v1::ACCESS_KIND_READ);
  v1::TranslateResponse out;
  ASSERT_OK(s.devices->Translate(Ctx().get(), tr, &out));
  ASSERT_TRUE(out.faulted());
}

// Many WatchFaults streams driven from one completion queue (so the test
// itself needs no thread per stream): each reads until its stream ends,
// keeping the records it received and its final status.
class Watchers {
 public:
  // Cancels the streams still open and waits for every one to end.
  ~Watchers() {
    for (const auto& w : watchers_) w->ctx.TryCancel();
    if (driver_.joinable()) AwaitEnded(std::chrono::seconds(60));
    cq_.Shutdown();
    if (driver_.joinable()) driver_.join();
  }

  // Opens a watcher of `device` from the start of the ring.
  void Open(v1::Devices::Stub* stub, const std::string& device) {
    auto w = std::make_unique<Watcher>();
    w->device = device;
    v1::WatchFaultsRequest request;
    request.set_device(device);
    const size_t i = watchers_.size();
    w->reader = stub->PrepareAsyncWatchFaults(&w->ctx, request, &cq_);
    watchers_.push_back(std::move(w));
    watchers_[i]->reader->StartCall(Tag(i, kStarted));
  }
  void Run() {
    driver_ = std::thread([this] { Drive(); });
  }
  size_t size() const { return watchers_.size(); }

  // Waits (at most `timeout`) until every watcher has received at least
  // `records` records; false when one has not.
  bool AwaitRecords(size_t records, std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, timeout, [&] {
      for (const auto& w : watchers_) {
        if (w->records.size() < records) return false;
      }
      return true;
    });
  }
  // Waits (at most `timeout`) until every stream has ended.
  bool AwaitEnded(std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, timeout, [&] { return ended_ == watchers_.size(); });
  }

  // What no watcher may have received: another device's record. Empty when
  // every record names the watcher's device.
  std::string Foreign() {
    std::lock_guard<std::mutex> l(mu_);
    for (size_t i = 0; i < watchers_.size(); ++i) {
      for (const v1::FaultRecord& r : watchers_[i]->records) {
        if (r.device() != watchers_[i]->device) {
          return "watcher " + std::to_string(i) + " of " + watchers_[i]->device + " got " +
                 r.ShortDebugString();
        }
      }
    }
    return "";
  }
  // The statuses the streams ended with, as "code: message" -> count.
  std::map<std::string, int> Endings() {
    std::lock_guard<std::mutex> l(mu_);
    std::map<std::string, int> out;
    for (const auto& w : watchers_) {
      ++out[std::to_string(w->status.error_code()) + ": " + w->status.error_message()];
    }
    return out;
  }

 private:
  enum Op { kStarted, kRead, kFinished };
  struct Watcher {
    std::string device;
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientAsyncReader<v1::FaultEvent>> reader;
    v1::FaultEvent event;
    std::vector<v1::FaultRecord> records;
    grpc::Status status;
  };
  static void* Tag(size_t i, Op op) { return reinterpret_cast<void*>((i << 2) | op); }

  void Drive() {
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
      const size_t i = reinterpret_cast<uintptr_t>(tag) >> 2;
      const Op op = static_cast<Op>(reinterpret_cast<uintptr_t>(tag) & 3);
      Watcher& w = *watchers_[i];
      if (op == kFinished) {
        std::lock_guard<std::mutex> l(mu_);
        ++ended_;
        cv_.notify_all();
        continue;
      }
      if (op == kRead && ok) {
        std::lock_guard<std::mutex> l(mu_);
        for (const v1::FaultRecord& r : w.event.records()) w.records.push_back(r);
        cv_.notify_all();
      }
      if (ok) {
        w.reader->Read(&w.event, Tag(i, kRead));
      } else {
        w.reader->Finish(&w.status, Tag(i, kFinished));
      }
    }
  }

  grpc::CompletionQueue cq_;
  std::vector<std::unique_ptr<Watcher>> watchers_;  // fixed once Run starts
  std::thread driver_;
  std::mutex mu_;
  std::condition_variable cv_;
  size_t ended_ = 0;  // guarded by mu_
};

// 2,000 idle watchers over four devices (and connections): the daemon's
// threads stay within a small constant of what it had before them, its
// memory within a bound per watcher; every watcher receives its device's
// fault, and only its device's, both when it starts and, idle, when a new
// one comes; a drain ends every watcher with OK.
TEST(FaultWatchersTest, IdleWatchersHoldNoThreadAndEachGetsItsDevicesFaults) {
  constexpr int kPerDevice = 500;
  const std::vector<std::string> devices = {"nic0", "nvme0", "gpu0", "dsp0"};
  DaemonProcess daemon;
  ASSERT_TRUE(
      daemon.Start({"--no_store", "--max_streams_per_device=600", "--max_watchers_per_device=600",
                    "--max_streams_per_connection=1000", "--drain_timeout=20s"}))
      << daemon.log();
  Stubs admin(Insecure(daemon.unix_target()));
  // Warm the paths the watchers take (a watcher, a fault, a read).
  {
    Watchers warm;
    warm.Open(admin.devices.get(), "cam0");
    warm.Run();
    ASSERT_NO_FATAL_FAILURE(Fault(admin, "cam0"));
    ASSERT_TRUE(warm.AwaitRecords(1, std::chrono::seconds(30)));
  }
  const uint64_t threads_before = ProcStatus(daemon.pid(), "Threads");
  const uint64_t rss_before_kib = ProcStatus(daemon.pid(), "VmRSS");

  std::vector<std::unique_ptr<Stubs>> connections;
  Watchers watchers;
  for (const std::string& device : devices) {
    connections.push_back(std::make_unique<Stubs>(OwnConnection(daemon.unix_target())));
    for (int i = 0; i < kPerDevice; ++i) watchers.Open(connections.back()->devices.get(), device);
  }
  watchers.Run();
  // One fault each: a watcher started after it reads it at once, one
  // started before is woken by it.
  for (const std::string& device : devices) ASSERT_NO_FATAL_FAILURE(Fault(admin, device));
  ASSERT_TRUE(watchers.AwaitRecords(1, std::chrono::seconds(60))) << daemon.log();

  // Every watcher is established and idle now.
  const uint64_t threads = ProcStatus(daemon.pid(), "Threads");
  const uint64_t rss_kib = ProcStatus(daemon.pid(), "VmRSS");
  std::printf(
      "iommud: %llu threads and %.1f MiB before, %llu threads and %.1f MiB with %zu idle "
      "watchers\n",
      static_cast<unsigned long long>(threads_before), rss_before_kib / 1024.0,
      static_cast<unsigned long long>(threads), rss_kib / 1024.0, watchers.size());
  EXPECT_LE(threads, threads_before + 16);
  // A watcher costs its reactor, gRPC's call and its HTTP/2 stream: well
  // under 64 KiB.
  EXPECT_LE(rss_kib, rss_before_kib + watchers.size() * 64);

  // Idle, every watcher is woken by its device's next fault.
  for (const std::string& device : devices) ASSERT_NO_FATAL_FAILURE(Fault(admin, device));
  ASSERT_TRUE(watchers.AwaitRecords(2, std::chrono::seconds(60))) << daemon.log();
  EXPECT_EQ(watchers.Foreign(), "");

  // The drain ends every watcher with OK.
  EXPECT_EQ(daemon.Stop(std::chrono::seconds(60)), 0) << daemon.log();
  ASSERT_TRUE(watchers.AwaitEnded(std::chrono::seconds(60)));
  EXPECT_EQ(watchers.Endings(), (std::map<std::string, int>{{"0: ", kPerDevice * 4}}));
}

// A device has at most --max_watchers_per_device watchers, each refused
// beyond it with RESOURCE_EXHAUSTED naming the flag and its value, before
// anything is read; another device has watchers of its own; a closed
// watcher gives its slot back. A limit of 0 is refused at start.
TEST(FaultWatchersTest, WatchersPerDeviceAreLimited) {
  {
    DaemonProcess refused;
    EXPECT_FALSE(refused.Start({"--no_store", "--max_watchers_per_device=0"}));
    EXPECT_EQ(refused.exit_code(), 1);
    EXPECT_NE(refused.log().find("max_watchers_per_device=0: must be at least 1"),
              std::string::npos)
        << refused.log();
  }
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({"--no_store", "--max_watchers_per_device=2"})) << daemon.log();
  Stubs s(Insecure(daemon.unix_target()));
  ASSERT_NO_FATAL_FAILURE(Fault(s, "nic0"));
  ASSERT_NO_FATAL_FAILURE(Fault(s, "gpu0"));
  struct Open {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<v1::FaultEvent>> reader;
    v1::FaultEvent event;
    bool answered = false;
  };
  // A watcher from the start of the ring: an accepted one answers at once
  // with its device's fault.
  auto open = [&](const std::string& device) {
    auto o = std::make_unique<Open>();
    o->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::WatchFaultsRequest wf;
    wf.set_device(device);
    o->reader = s.devices->WatchFaults(&o->ctx, wf);
    o->answered = o->reader->Read(&o->event);
    return o;
  };
  std::vector<std::unique_ptr<Open>> held;
  for (int i = 0; i < 2; ++i) {
    held.push_back(open("nic0"));
    ASSERT_TRUE(held.back()->answered) << i;
  }
  auto third = open("nic0");
  EXPECT_FALSE(third->answered);
  const grpc::Status refused = third->reader->Finish();
  EXPECT_EQ(refused.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(refused.error_message(),
            "device=\"nic0\": the device has 2 WatchFaults streams open, the "
            "--max_watchers_per_device=2 limit; close one first");
  held.push_back(open("gpu0"));
  EXPECT_TRUE(held.back()->answered);
  // A cancelled watcher's slot comes back once the daemon has seen it go.
  held[0]->ctx.TryCancel();
  EXPECT_EQ(held[0]->reader->Finish().error_code(), StatusCode::CANCELLED);
  std::unique_ptr<Open> again;
  for (int attempt = 0; attempt < 100; ++attempt) {
    again = open("nic0");
    if (again->answered) break;
    again->reader->Finish();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(again->answered);
  for (auto* o : {held[1].get(), held[2].get(), again.get()}) o->ctx.TryCancel();
  for (auto* o : {held[1].get(), held[2].get(), again.get()}) o->reader->Finish();
  EXPECT_EQ(daemon.Stop(), 0);
}

}  // namespace
}  // namespace iommu::testing
