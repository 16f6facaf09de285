// SPDX-License-Identifier: Apache-2.0
// Measures what the daemon adds to an RPC: starts the real iommud and, over
// the Unix socket, runs closed-loop unary calls from T threads for S seconds:
//   empty      grpc.health.v1.Health/Check (the cheapest RPC on the server)
//   map_unmap  Dma.Map then Dma.Unmap of one 4 KiB page (each counted as a call)
//   batch      Dma.Batch with 2 x 512 ops per message (maps, then unmaps)
// and prints calls/s, the map_unmap / empty ratio and p50/p99/p99.9 latency.
// Usage: iommud_rpc_bench [threads=2] [seconds=3] [iommud flags...]
// (e.g. --no_store, --store_engine=sqlite, --durability=power: the store's
// cost at the product level; scripts/store_bench.sh alternates them).
// (`iommuctl bench` is the user-facing benchmark; this isolates the server.)

#include <grpcpp/generic/generic_stub.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>

#include "tests/daemon_harness.h"
#include "tests/test_clients.h"

namespace iommu::testing {
namespace {

using Clock = std::chrono::steady_clock;

struct Result {
  double calls_per_s = 0;
  std::vector<double> latencies_us;
};

double Percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(p * v.size()));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

template <typename Body>
Result Run(int threads, double seconds, Body body) {
  std::atomic<uint64_t> calls{0};
  std::vector<std::vector<double>> lat(threads);
  std::vector<std::thread> workers;
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  const auto t0 = Clock::now();
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      auto state = body.Init(t);
      while (Clock::now() < end) {
        const auto a = Clock::now();
        const int n = body.Call(state);
        lat[t].push_back(std::chrono::duration<double, std::micro>(Clock::now() - a).count() / n);
        calls += n;
      }
    });
  }
  for (auto& w : workers) w.join();
  Result r;
  r.calls_per_s = calls / std::chrono::duration<double>(Clock::now() - t0).count();
  for (auto& l : lat) r.latencies_us.insert(r.latencies_us.end(), l.begin(), l.end());
  return r;
}

void Print(const char* name, Result& r) {
  std::printf("%-10s %12.0f calls/s   p50 %7.1f us  p99 %7.1f us  p99.9 %7.1f us\n", name,
              r.calls_per_s, Percentile(r.latencies_us, 0.5), Percentile(r.latencies_us, 0.99),
              Percentile(r.latencies_us, 0.999));
}

const char* kDevices[] = {"nic0", "nvme0", "gpu0", "sata0", "tbt0", "vf0"};

int Main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const double seconds = argc > 2 ? std::atof(argv[2]) : 3;
  std::vector<std::string> flags;
  // --request_ids: every Map, Unmap and Batch message carries a fresh
  // request id, as the SDKs send them (the cost of exactly-once); the other
  // arguments are iommud's flags.
  bool request_ids = false;
  for (int i = 3; i < argc; ++i) {
    if (std::string(argv[i]) == "--request_ids") {
      request_ids = true;
    } else {
      flags.push_back(argv[i]);
    }
  }
  std::atomic<uint64_t> next_id{0};
  auto new_id = [&] { return "bench-" + std::to_string(next_id.fetch_add(1)); };
  DaemonProcess daemon;
  if (!daemon.Start(flags)) {
    std::fprintf(stderr, "iommud did not start:\n%s", daemon.log().c_str());
    return 1;
  }
  const std::string target = daemon.unix_target();

  struct Empty {
    std::string target;
    struct State {
      std::shared_ptr<grpc::Channel> ch;
      std::unique_ptr<grpc::GenericStub> stub;
      grpc::CompletionQueue cq;
    };
    std::unique_ptr<State> Init(int) {
      auto s = std::make_unique<State>();
      s->ch = Insecure(target);
      s->stub = std::make_unique<grpc::GenericStub>(s->ch);
      return s;
    }
    int Call(std::unique_ptr<State>& s) {
      grpc::ClientContext ctx;
      grpc::ByteBuffer req, resp;
      grpc::Slice empty("");
      req = grpc::ByteBuffer(&empty, 1);
      auto call = s->stub->PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", req, &s->cq);
      call->StartCall();
      grpc::Status status;
      call->Finish(&resp, &status, reinterpret_cast<void*>(1));
      void* tag;
      bool ok;
      s->cq.Next(&tag, &ok);
      return 1;
    }
  };
  struct MapUnmap {
    std::string target;
    bool request_ids;
    std::function<std::string()> new_id;
    struct State {
      std::unique_ptr<Stubs> stubs;
      std::string device;
      uint64_t buffer_id = 0;
    };
    std::unique_ptr<State> Init(int t) {
      auto s = std::make_unique<State>();
      s->stubs = std::make_unique<Stubs>(Insecure(target));
      s->device = kDevices[t % 6];
      v1::AllocBufferRequest ab;
      ab.set_device(s->device);
      ab.set_size_bytes(4096);
      ab.set_placement(v1::PLACEMENT_SCATTERED);
      v1::AllocBufferResponse out;
      s->stubs->memory->AllocBuffer(Ctx().get(), ab, &out);
      s->buffer_id = out.buffer().buffer_id();
      return s;
    }
    int Call(std::unique_ptr<State>& s) {
      v1::MapRequest map;
      map.set_device(s->device);
      *map.mutable_mem() = BufferRef(s->buffer_id, 0, 4096);
      map.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
      v1::MapResponse mapped;
      grpc::ClientContext c1, c2;
      if (request_ids) {
        c1.AddMetadata("iommu-request-id", new_id());
        c2.AddMetadata("iommu-request-id", new_id());
      }
      s->stubs->dma->Map(&c1, map, &mapped);
      v1::UnmapRequest unmap;
      unmap.set_device(s->device);
      unmap.set_dma_addr(mapped.dma_addr());
      v1::UnmapResponse unmapped;
      s->stubs->dma->Unmap(&c2, unmap, &unmapped);
      return 2;
    }
  };
  struct BatchMaps {
    std::string target;
    bool request_ids;
    std::function<std::string()> new_id;
    struct State {
      std::unique_ptr<Stubs> stubs;
      std::unique_ptr<grpc::ClientContext> ctx;
      std::unique_ptr<grpc::ClientReaderWriter<v1::BatchRequest, v1::BatchResponse>> stream;
      v1::BatchRequest maps;
      std::string device;
    };
    std::unique_ptr<State> Init(int t) {
      auto s = std::make_unique<State>();
      s->stubs = std::make_unique<Stubs>(Insecure(target));
      s->device = kDevices[t % 6];
      v1::AllocBufferRequest ab;
      ab.set_device(s->device);
      ab.set_size_bytes(512 * 4096);
      ab.set_placement(v1::PLACEMENT_SCATTERED);
      v1::AllocBufferResponse out;
      s->stubs->memory->AllocBuffer(Ctx().get(), ab, &out);
      for (int i = 0; i < 512; ++i) {
        v1::MapRequest* m = s->maps.add_ops()->mutable_map();
        m->set_device(s->device);
        *m->mutable_mem() = BufferRef(out.buffer().buffer_id(), uint64_t(i) * 4096, 4096);
        m->set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
      }
      s->ctx = std::make_unique<grpc::ClientContext>();
      s->stream = s->stubs->dma->Batch(s->ctx.get());
      return s;
    }
    int Call(std::unique_ptr<State>& s) {
      v1::BatchResponse mapped, unmapped;
      if (request_ids) s->maps.set_request_id(new_id());
      s->stream->Write(s->maps);
      s->stream->Read(&mapped);
      v1::BatchRequest unmaps;
      if (request_ids) unmaps.set_request_id(new_id());
      for (const v1::BatchResult& r : mapped.results()) {
        v1::UnmapRequest* u = unmaps.add_ops()->mutable_unmap();
        u->set_device(s->device);
        u->set_dma_addr(r.map().dma_addr());
      }
      s->stream->Write(unmaps);
      s->stream->Read(&unmapped);
      return 2 * mapped.results_size();
    }
  };

  std::string flag_text;
  for (const std::string& f : flags) flag_text += " " + f;
  std::printf("iommud%s over %s, %d client threads, %.1f s each%s\n", flag_text.c_str(),
              target.c_str(), threads, seconds, request_ids ? ", request ids" : "");
  Result empty = Run(threads, seconds, Empty{target});
  Result map_unmap = Run(threads, seconds, MapUnmap{target, request_ids, new_id});
  Result batch = Run(threads, seconds, BatchMaps{target, request_ids, new_id});
  Print("empty", empty);
  Print("map_unmap", map_unmap);
  Print("batch", batch);
  std::printf("map_unmap / empty = %.3f\n", map_unmap.calls_per_s / empty.calls_per_s);
  std::printf("batch: %.2f M map+unmap ops/s (%.2f M maps/s)\n", batch.calls_per_s / 1e6,
              batch.calls_per_s / 2e6);
  return daemon.Stop() == 0 ? 0 : 1;
}

}  // namespace
}  // namespace iommu::testing

int main(int argc, char** argv) { return iommu::testing::Main(argc, argv); }
