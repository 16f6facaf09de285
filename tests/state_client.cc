// SPDX-License-Identifier: Apache-2.0
// A device client for the crash test (iommud_state_test): mixed mutating
// traffic as one device — AllocBuffer, Map, Unmap, FreeBuffer — until
// SIGTERM, logging every outcome to a file, one line per call:
//
//   B <buffer_id> <start>:<size>,...      AllocBuffer acknowledged (its runs)
//   F <buffer_id>                         FreeBuffer acknowledged
//   M <dma_addr> <buffer_id> <offset> <mapping_id> <domain_id>   Map acknowledged
//   U <dma_addr>                          Unmap acknowledged
//   ?B | ?F <id> | ?M <buffer_id> | ?U <dma_addr>   the call failed without an answer
//                                         (the daemon died): applied or not
//   x <code>                              refused with an answer (nothing changed)
//   R                                     the next line's answer was a replay
//
// A line is written after the answer arrives, so the log holds exactly what
// the daemon acknowledged. The client keeps going across daemon restarts
// (its channel reconnects; calls in between fail UNAVAILABLE).
//
// With --request_ids every call carries a fresh iommu-request-id and a call
// left without an answer is retried with the same id until it gets one, as
// the SDKs do: the log then has no "?" line, and the daemon must hold
// exactly what it says (each call applied once, however many kills).
//
// Usage: state_client --target=ADDR --device=NAME --log=FILE --seed=N [--request_ids]

#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "iommu/v1/dma.grpc.pb.h"
#include "iommu/v1/memory.grpc.pb.h"

namespace {

std::atomic<bool> stop{false};

std::string Flag(int argc, char** argv, const std::string& name) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) return argv[i] + prefix.size();
  }
  return "";
}

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  ctx->set_wait_for_ready(false);
  return ctx;
}

// No answer: the daemon may or may not have applied the call.
bool Unanswered(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
         s.error_code() == grpc::StatusCode::CANCELLED ||
         s.error_code() == grpc::StatusCode::UNKNOWN ||
         s.error_code() == grpc::StatusCode::INTERNAL;
}

// Runs `call(context)` once, or with --request_ids until it is answered,
// every attempt under one request id; `replayed` tells whether the answer
// was a recorded one.
template <typename Call>
grpc::Status Once(bool request_ids, std::mt19937_64& rng, bool* replayed, Call&& call) {
  char id[33];
  std::snprintf(id, sizeof id, "%016lx%016lx", static_cast<unsigned long>(rng()),
                static_cast<unsigned long>(rng()));
  *replayed = false;
  while (true) {
    auto ctx = Ctx();
    if (request_ids) ctx->AddMetadata("iommu-request-id", id);
    const grpc::Status s = call(ctx.get());
    const auto& trailers = ctx->GetServerTrailingMetadata();
    *replayed = trailers.find("iommu-request-replayed") != trailers.end();
    if (!request_ids || !Unanswered(s)) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string target = Flag(argc, argv, "target");
  const std::string device = Flag(argc, argv, "device");
  const std::string log_path = Flag(argc, argv, "log");
  std::mt19937_64 rng(
      std::stoull(Flag(argc, argv, "seed").empty() ? "1" : Flag(argc, argv, "seed")));
  bool request_ids = false;
  for (int i = 1; i < argc; ++i) request_ids |= std::strcmp(argv[i], "--request_ids") == 0;
  // Ids from another generator: the traffic stays the seed's.
  std::mt19937_64 ids(std::random_device{}());
  bool replayed = false;
  if (target.empty() || device.empty() || log_path.empty()) {
    std::fprintf(stderr, "usage: state_client --target=ADDR --device=NAME --log=FILE --seed=N\n");
    return 2;
  }
  struct sigaction sa {};
  sa.sa_handler = [](int) { stop = true; };
  sigaction(SIGTERM, &sa, nullptr);
  FILE* log = std::fopen(log_path.c_str(), "a");
  if (log == nullptr) return 2;
  setvbuf(log, nullptr, _IOLBF, 0);

  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 200);
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  auto dma = iommu::v1::Dma::NewStub(channel);
  auto memory = iommu::v1::Memory::NewStub(channel);

  // What this client knows to be live (acknowledged and not since removed).
  std::map<uint64_t, uint64_t> buffers;   // id -> size
  std::map<uint64_t, uint64_t> mappings;  // dma_addr -> buffer id
  std::set<uint64_t> tainted;             // buffers a ?M may map: never freed
  while (!stop) {
    const int dice = int(rng() % 100);
    grpc::Status s;
    if (buffers.size() < 2 || (dice < 10 && buffers.size() < 12)) {
      iommu::v1::AllocBufferRequest req;
      req.set_device(device);
      req.set_size_bytes((1 + rng() % 8) * 8192);
      req.set_placement(rng() % 2 ? iommu::v1::PLACEMENT_SCATTERED
                                  : iommu::v1::PLACEMENT_CONTIGUOUS);
      iommu::v1::AllocBufferResponse resp;
      s = Once(request_ids, ids, &replayed, [&](grpc::ClientContext* ctx) {
        resp.Clear();
        return memory->AllocBuffer(ctx, req, &resp);
      });
      if (s.ok()) {
        std::string runs;
        for (const auto& r : resp.buffer().runs()) {
          if (!runs.empty()) runs += ",";
          runs += std::to_string(r.phys_addr()) + ":" + std::to_string(r.size_bytes());
        }
        buffers[resp.buffer().buffer_id()] = resp.buffer().size_bytes();
        if (replayed) std::fprintf(log, "R\n");
        std::fprintf(log, "B %lu %s\n", resp.buffer().buffer_id(), runs.c_str());
      } else if (Unanswered(s)) {
        std::fprintf(log, "?B\n");
      }
    } else if (dice < 55 && mappings.size() < 64) {
      auto it = buffers.begin();
      std::advance(it, rng() % buffers.size());
      const uint64_t pages = it->second / 4096;
      const uint64_t offset = (rng() % pages) * 4096 + (rng() % 2 ? 0x100 : 0);
      iommu::v1::MapRequest req;
      req.set_device(device);
      req.mutable_mem()->set_buffer_id(it->first);
      req.mutable_mem()->set_offset_bytes(offset);
      req.mutable_mem()->set_length_bytes(
          std::min<uint64_t>(4096 - (offset & 0xfff), it->second - offset));
      req.set_direction(iommu::v1::DMA_DIRECTION_BIDIRECTIONAL);
      iommu::v1::MapResponse resp;
      s = Once(request_ids, ids, &replayed, [&](grpc::ClientContext* ctx) {
        resp.Clear();
        return dma->Map(ctx, req, &resp);
      });
      if (s.ok()) {
        mappings[resp.dma_addr()] = it->first;
        if (replayed) std::fprintf(log, "R\n");
        std::fprintf(log, "M %lu %lu %lu %lu %lu\n", resp.dma_addr(), it->first, offset,
                     resp.mapping_id(), resp.domain_id());
      } else if (Unanswered(s)) {
        tainted.insert(it->first);
        std::fprintf(log, "?M %lu\n", it->first);
      }
    } else if (dice < 90 && !mappings.empty()) {
      auto it = mappings.begin();
      std::advance(it, rng() % mappings.size());
      const uint64_t dma_addr = it->first;
      iommu::v1::UnmapRequest req;
      req.set_device(device);
      req.set_dma_addr(dma_addr);
      iommu::v1::UnmapResponse resp;
      s = Once(request_ids, ids, &replayed,
               [&](grpc::ClientContext* ctx) { return dma->Unmap(ctx, req, &resp); });
      if (s.ok()) {
        if (replayed) std::fprintf(log, "R\n");
        std::fprintf(log, "U %lu\n", dma_addr);
        mappings.erase(it);
      } else if (Unanswered(s)) {
        std::fprintf(log, "?U %lu\n", dma_addr);
        tainted.insert(it->second);
        mappings.erase(it);
      }
    } else if (!buffers.empty()) {
      // A buffer none of this client's live mappings use.
      std::vector<uint64_t> idle;
      for (const auto& [id, size] : buffers) {
        bool mapped = tainted.contains(id);
        for (const auto& [addr, buf] : mappings) mapped |= buf == id;
        if (!mapped) idle.push_back(id);
      }
      if (idle.empty()) continue;
      const uint64_t id = idle[rng() % idle.size()];
      iommu::v1::FreeBufferRequest req;
      req.set_device(device);
      req.set_buffer_id(id);
      iommu::v1::FreeBufferResponse resp;
      s = Once(request_ids, ids, &replayed,
               [&](grpc::ClientContext* ctx) { return memory->FreeBuffer(ctx, req, &resp); });
      if (s.ok()) {
        if (replayed) std::fprintf(log, "R\n");
        std::fprintf(log, "F %lu\n", id);
        buffers.erase(id);
      } else if (Unanswered(s)) {
        std::fprintf(log, "?F %lu\n", id);
        buffers.erase(id);
      }
    } else {
      continue;
    }
    if (!s.ok() && !Unanswered(s)) std::fprintf(log, "x %d\n", int(s.error_code()));
    if (Unanswered(s)) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::fclose(log);
  return 0;
}
