// SPDX-License-Identifier: Apache-2.0
// An expiry storm: many sessions of one device run out at once while another
// device, with many mappings of its own, keeps mapping and unmapping. What is
// measured is the other device's Map+Unmap latency while the storm is
// released (docs/performance.md#expiry-storm): a release that scanned every
// mapping per session held the other device's domain lock for each scan.
//
// Uses the public Broker API only, so the same file measures any revision.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "benchmark/benchmark.h"
#include "core/broker/broker.h"

namespace iommu::core {
namespace {

constexpr uint64_t KiB = 1024;

// As in broker_benchmark.cc: measured as iommud runs (no deadlock detection).
[[maybe_unused]] const bool kNoDeadlockDetection = [] {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return true;
}();

using Clock = std::chrono::steady_clock;

double Percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(i), v.end());
  return v[i];
}

// range(2) storms, one after the other: in each, range(0) sessions of nic0,
// each holding one mapped page of its own buffer, expire in one Tick, while
// range(1) mappings live in gpu0's domain and a client of gpu0 maps and
// unmaps one page every kPeriod (paced, as a device driver is: a client that
// spins would mostly measure the gaps between stalls). Counters: the gpu0
// client's Map+Unmap latency outside the storms (quiet_*) and during them
// (storm_*, pooled over the storms), in microseconds; the storms' calls; and
// the longest storm, in milliseconds.
constexpr auto kPeriod = std::chrono::microseconds(50);
void BM_ExpiryStorm(benchmark::State& state) {
  const int sessions = static_cast<int>(state.range(0));
  const size_t elsewhere = static_cast<size_t>(state.range(1));
  const int storms = static_cast<int>(state.range(2));
  for (auto _ : state) {
    state.PauseTiming();
    std::atomic<int64_t> now_s{1'700'000'000};
    BrokerOptions opts;
    opts.now = [&now_s] { return absl::FromUnixSeconds(now_s.load()); };
    opts.default_quotas.max_sessions = static_cast<uint64_t>(sessions) + 1;
    auto created = Broker::Create(DefaultTopology(), opts);
    if (!created.ok()) std::abort();
    std::unique_ptr<Broker> broker = *std::move(created);

    const Caller gpu = Caller::Device("gpu0");
    const uint64_t gpu_buffer =
        broker->AllocBuffer(gpu, "gpu0", 4 * KiB, Placement::kContiguous)->buffer_id;
    const MapRequest gpu_page{.mem = {.buffer_id = gpu_buffer, .length_bytes = 4 * KiB}};
    for (size_t done = 0; done < elsewhere;) {
      const size_t n = std::min<size_t>(8192, elsewhere - done);
      std::vector<DmaBatchOp> ops(n, gpu_page);
      std::vector<DmaBatchResult> results(n);
      broker->MapUnmapBatch(gpu, "gpu0", ops, absl::MakeSpan(results));
      for (const DmaBatchResult& r : results) {
        if (!r.status.ok()) std::abort();
      }
      done += n;
    }

    // The gpu0 client, timed call by call, from before the first storm to
    // the end of the last.
    struct Sample {
      Clock::time_point start;
      double us;
    };
    std::vector<Sample> samples;
    samples.reserve(1 << 22);
    std::atomic<bool> stop{false};
    std::atomic<size_t> made{0};
    std::thread other([&] {
      Clock::time_point next = Clock::now();
      while (!stop.load(std::memory_order_relaxed)) {
        next += kPeriod;
        std::this_thread::sleep_until(next);
        const Clock::time_point t0 = Clock::now();
        next = std::max(next, t0);
        auto m = broker->Map(gpu, "gpu0", gpu_page);
        if (!m.ok() || !broker->Unmap(gpu, "gpu0", {m->dma_addr}).ok()) std::abort();
        const Clock::time_point t1 = Clock::now();
        if (samples.size() < samples.capacity()) {
          samples.push_back({t0, std::chrono::duration<double, std::micro>(t1 - t0).count()});
        }
        made.store(samples.size(), std::memory_order_release);
      }
    });
    std::vector<std::pair<Clock::time_point, Clock::time_point>> windows;
    for (int storm = 0; storm < storms; ++storm) {
      for (int i = 0; i < sessions; ++i) {
        auto sid = broker->OpenSession(Caller::Device("nic0"), absl::Seconds(10));
        if (!sid.ok()) std::abort();
        const Caller c = Caller::Device("nic0", *sid);
        auto b = broker->AllocBuffer(c, "nic0", 4 * KiB, Placement::kContiguous);
        if (!b.ok()) std::abort();
        if (!broker->Map(c, "nic0", {.mem = {.buffer_id = b->buffer_id, .length_bytes = 4 * KiB}})
                 .ok()) {
          std::abort();
        }
      }
      const size_t before = made.load(std::memory_order_acquire);
      while (made.load(std::memory_order_acquire) < before + 200) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      now_s += 11;  // every lease has run out
      state.ResumeTiming();
      const Clock::time_point storm_start = Clock::now();
      const int released = broker->Tick();
      const Clock::time_point storm_end = Clock::now();
      state.PauseTiming();
      if (released != sessions) std::abort();
      windows.push_back({storm_start, storm_end});
    }
    stop = true;
    other.join();

    std::vector<double> quiet, storm;
    double longest_ms = 0;
    for (const auto& [start, end] : windows) {
      longest_ms =
          std::max(longest_ms, std::chrono::duration<double, std::milli>(end - start).count());
    }
    for (const Sample& s : samples) {
      const bool in_storm = std::any_of(windows.begin(), windows.end(), [&](const auto& w) {
        return s.start >= w.first && s.start < w.second;
      });
      (in_storm ? storm : quiet).push_back(s.us);
    }
    state.counters["storm_ms"] = longest_ms;
    state.counters["storm_calls"] = static_cast<double>(storm.size());
    state.counters["quiet_p50_us"] = Percentile(quiet, 0.50);
    state.counters["quiet_p99_us"] = Percentile(quiet, 0.99);
    state.counters["storm_p50_us"] = Percentile(storm, 0.50);
    state.counters["storm_p99_us"] = Percentile(storm, 0.99);
    state.counters["storm_max_us"] =
        storm.empty() ? 0 : *std::max_element(storm.begin(), storm.end());
    broker.reset();
    state.ResumeTiming();
  }
}
BENCHMARK(BM_ExpiryStorm)
    ->Args({2800, 200000, 1})
    ->Args({2800, 200000, 20})
    ->Args({2800, 0, 20})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The periodic Tick with nothing to expire and range(0) lazy (DMA_FQ)
// domains on smmu0, none of whose flush queues is due: what housekeeping
// costs a broker with many domains (docs/performance.md#expiry-storm). A
// Tick that polled every lazy domain took each one's lock in turn.
void BM_TickWithIdleLazyDomains(benchmark::State& state) {
  const int domains = static_cast<int>(state.range(0));
  Topology topology = DefaultTopology();
  topology.smmus[0].num_contexts = static_cast<unsigned>(domains) + 64;
  auto created = Broker::Create(topology, BrokerOptions{});
  if (!created.ok()) std::abort();
  std::unique_ptr<Broker> broker = *std::move(created);
  for (int i = 0; i < domains; ++i) {
    if (!broker->CreateDomain(Caller::Admin(), {.smmu = "smmu0", .type = DomainType::kDmaFq})
             .ok()) {
      std::abort();
    }
  }
  for (auto _ : state) benchmark::DoNotOptimize(broker->Tick());
}
BENCHMARK(BM_TickWithIdleLazyDomains)->Arg(16)->Arg(1024)->Arg(16384);

}  // namespace
}  // namespace iommu::core
