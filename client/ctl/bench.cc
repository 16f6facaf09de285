// SPDX-License-Identifier: Apache-2.0
// `iommuctl bench`: dma_map_benchmark over gRPC. Knobs as the kernel tool
// (threads, seconds, dma mask bits, direction, pages per mapping, single or
// sg mode) plus --api=unary|batch; prints throughput and p50/p99/p99.9.
//
// --baseline measures the empty RPC instead: Sync of the device's domain,
// which carries the same identity and device lookup as Map and, on a strict
// domain with nothing pending, does no work — the floor a Map RPC is
// compared against ("Map >= 0.9x an empty RPC").
#include <algorithm>
#include <deque>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "client/batch.h"
#include "client/ctl/command.h"
#include "client/status.h"

namespace iommu::client::ctl {
namespace {

constexpr uint64_t kPage = 4096;

enum class Api { kUnary, kBatch };
enum class Mode { kSingle, kSg };

struct BenchOptions {
  int threads = 1;
  absl::Duration duration = absl::Seconds(5);
  std::string device;
  uint32_t dma_mask_bits = 0;
  v1::DmaDirection direction = v1::DMA_DIRECTION_BIDIRECTIONAL;
  uint64_t pages = 1;
  Mode mode = Mode::kSingle;
  Api api = Api::kUnary;
  uint64_t batch_size = 64;
  uint64_t inflight = 4;
  bool baseline = false;
};

struct ThreadResult {
  uint64_t ops = 0;   // maps (or empty RPCs) that succeeded
  uint64_t rpcs = 0;  // RPCs or Batch messages sent
  uint64_t errors = 0;
  absl::Status first_error;
  std::vector<int64_t> map_ns;    // per Map RPC, or per Batch message
  std::vector<int64_t> unmap_ns;  // per Unmap RPC (unary only)
  void Error(const absl::Status& s) {
    ++errors;
    if (first_error.ok()) first_error = s;
  }
};

int64_t Ns(absl::Time from, absl::Time to) { return absl::ToInt64Nanoseconds(to - from); }

double Percentile(std::vector<int64_t>& v, double p) {
  if (v.empty()) return 0;
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + i, v.end());
  return static_cast<double>(v[i]) / 1000.0;  // microseconds
}

absl::StatusOr<Buffer> BenchBuffer(const Client& client, const BenchOptions& o) {
  v1::AllocBufferRequest r;
  r.set_device(o.device);
  r.set_size_bytes(o.pages * kPage);
  r.set_placement(o.mode == Mode::kSingle ? v1::PLACEMENT_CONTIGUOUS : v1::PLACEMENT_SCATTERED);
  return client.AllocBufferScoped(std::move(r));
}

v1::MapSgRequest SgRequest(const Buffer& buffer, const BenchOptions& o) {
  v1::MapSgRequest r;
  r.set_device(o.device);
  r.set_mode(v1::SG_MODE_MERGE);
  r.set_direction(o.direction);
  for (uint64_t p = 0; p < o.pages; ++p) {
    v1::MemRef* s = r.add_segments();
    s->set_buffer_id(buffer.id());
    s->set_offset_bytes(p * kPage);
    s->set_length_bytes(kPage);
  }
  return r;
}

void UnaryWorker(const Client& client, const BenchOptions& o, absl::Time end, ThreadResult* out) {
  if (o.baseline) {
    v1::SyncRequest sync;
    sync.set_device(o.device);
    while (absl::Now() < end) {
      const absl::Time t0 = absl::Now();
      absl::Status s = client.Sync(sync).status();
      out->map_ns.push_back(Ns(t0, absl::Now()));
      ++out->rpcs;
      s.ok() ? void(++out->ops) : out->Error(s);
    }
    return;
  }
  absl::StatusOr<Buffer> buffer = BenchBuffer(client, o);
  if (!buffer.ok()) return out->Error(buffer.status());
  v1::MapRequest map;
  map.set_device(o.device);
  map.mutable_mem()->set_buffer_id(buffer->id());
  map.mutable_mem()->set_length_bytes(o.pages * kPage);
  map.set_direction(o.direction);
  const v1::MapSgRequest map_sg = SgRequest(*buffer, o);
  while (absl::Now() < end) {
    const absl::Time t0 = absl::Now();
    uint64_t dma_addr = 0;
    absl::Status s;
    if (o.mode == Mode::kSingle) {
      absl::StatusOr<v1::MapResponse> r = client.Map(map);
      s = r.status();
      if (r.ok()) dma_addr = r->dma_addr();
    } else {
      absl::StatusOr<v1::MapSgResponse> r = client.MapSg(map_sg);
      s = r.status();
      if (r.ok()) dma_addr = r->iova();
    }
    const absl::Time t1 = absl::Now();
    ++out->rpcs;
    out->map_ns.push_back(Ns(t0, t1));
    if (!s.ok()) {
      out->Error(s);
      continue;
    }
    if (o.mode == Mode::kSingle) {
      v1::UnmapRequest u;
      u.set_device(o.device);
      u.set_dma_addr(dma_addr);
      s = client.Unmap(std::move(u)).status();
    } else {
      v1::UnmapSgRequest u;
      u.set_device(o.device);
      u.set_dma_addr(dma_addr);
      s = client.UnmapSg(std::move(u)).status();
    }
    out->unmap_ns.push_back(Ns(t1, absl::Now()));
    ++out->rpcs;
    s.ok() ? void(++out->ops) : out->Error(s);
  }
}

// `inflight` independent chains: each message of a chain unmaps what the
// chain's previous message mapped and maps batch_size more.
void BatchWorker(const Client& client, const BenchOptions& o, absl::Time end, ThreadResult* out) {
  absl::StatusOr<Buffer> buffer = BenchBuffer(client, o);
  if (!buffer.ok()) return out->Error(buffer.status());
  absl::StatusOr<std::unique_ptr<BatchStream>> opened = BatchStream::Open(client);
  if (!opened.ok()) return out->Error(opened.status());
  BatchStream& batch = **opened;
  v1::BatchOp map_op;  // sg mode
  if (o.mode == Mode::kSg) *map_op.mutable_map_sg() = SgRequest(*buffer, o);
  struct InFlight {
    BatchStream::ResponseFuture future;
    absl::Time sent;
    size_t unmaps;
  };
  std::deque<InFlight> window;
  // The stream names the client's device once per message; an op names it
  // only when it differs.
  const absl::string_view device =
      o.device == client.device() ? absl::string_view() : absl::string_view(o.device);
  // Single mode builds its ops in place in the stream's message (no copy).
  auto send = [&](const std::vector<uint64_t>& to_unmap, uint64_t maps) {
    for (uint64_t dma_addr : to_unmap) {
      if (o.mode == Mode::kSingle) {
        batch.AddUnmap(dma_addr, device);
        continue;
      }
      v1::BatchOp op;
      op.mutable_unmap_sg()->set_device(o.device);
      op.mutable_unmap_sg()->set_dma_addr(dma_addr);
      batch.Add(std::move(op));
    }
    for (uint64_t i = 0; i < maps; ++i) {
      if (o.mode == Mode::kSingle) {
        batch.AddMap(buffer->id(), 0, o.pages * kPage, o.direction, device);
      } else {
        batch.Add(map_op);
      }
    }
    window.push_back({batch.Send(), absl::Now(), to_unmap.size()});
    ++out->rpcs;
  };
  for (uint64_t i = 0; i < o.inflight; ++i) send({}, o.batch_size);
  while (!window.empty()) {
    InFlight f = std::move(window.front());
    window.pop_front();
    absl::StatusOr<BatchReply> response = f.future.get();
    out->map_ns.push_back(Ns(f.sent, absl::Now()));
    if (!response.ok()) {
      out->Error(response.status());
      continue;
    }
    std::vector<uint64_t> mapped;
    mapped.reserve(response->results_size());
    for (int i = 0; i < response->results_size(); ++i) {
      const v1::BatchResult& r = response->results(i);
      if (absl::Status s = BatchResultStatus(r); !s.ok()) {
        out->Error(s);
        continue;
      }
      if (static_cast<size_t>(i) < f.unmaps) continue;
      ++out->ops;
      mapped.push_back(o.mode == Mode::kSingle ? r.map().dma_addr() : r.map_sg().iova());
    }
    // Past the end a chain only unmaps what it holds, then stops.
    const bool more = absl::Now() < end;
    if (more || !mapped.empty()) send(mapped, more ? o.batch_size : 0);
  }
  (void)batch.Close();
}

// The device to benchmark: --device, else the first device whose DMA mask
// has --dma_mask_bits (default 32, as dma_map_benchmark).
absl::Status ChooseDevice(const Client& client, BenchOptions* o) {
  ASSIGN_OR_RETURN(v1::ListDevicesResponse devices, client.ListDevices());
  std::vector<std::string> have;
  for (const v1::DeviceInfo& d : devices.devices()) {
    const v1::DeviceConfig& c = d.config();
    have.push_back(absl::StrCat(c.name(), ":", c.dma_mask_bits()));
    const bool name_ok = o->device.empty() || c.name() == o->device;
    const bool mask_ok = o->dma_mask_bits == 0 || c.dma_mask_bits() == o->dma_mask_bits;
    const bool sg_ok = o->mode == Mode::kSingle || !c.no_scatter_gather();
    if (name_ok && mask_ok && sg_ok) {
      o->device = c.name();
      o->dma_mask_bits = c.dma_mask_bits();
      return absl::OkStatus();
    }
  }
  return FieldStatus(absl::StatusCode::kNotFound, "dma_mask_bits", o->dma_mask_bits,
                     absl::StrCat("no device", o->device.empty() ? "" : " " + o->device,
                                  " with this mask (devices: ", absl::StrJoin(have, " "), ")"));
}

absl::Status Bench(Context& ctx, Args& args) {
  BenchOptions o;
  ASSIGN_OR_RETURN(uint64_t threads, args.U64Or("threads", 1));
  ASSIGN_OR_RETURN(uint64_t seconds, args.U64Or("seconds", 5));
  ASSIGN_OR_RETURN(uint64_t mask,
                   args.U64Or("dma_mask_bits", ctx.client.device().empty() ? 32 : 0));
  ASSIGN_OR_RETURN(o.direction, DirectionFlag(args));
  ASSIGN_OR_RETURN(o.pages, args.U64Or("pages", 1));
  ASSIGN_OR_RETURN(o.mode, args.Enum<Mode>("mode", {{"single", Mode::kSingle}, {"sg", Mode::kSg}},
                                           Mode::kSingle));
  ASSIGN_OR_RETURN(
      o.api, args.Enum<Api>("api", {{"unary", Api::kUnary}, {"batch", Api::kBatch}}, Api::kUnary));
  ASSIGN_OR_RETURN(o.batch_size, args.U64Or("batch_size", 64));
  ASSIGN_OR_RETURN(o.inflight, args.U64Or("inflight", 4));
  ASSIGN_OR_RETURN(o.baseline, args.Bool("baseline"));
  RETURN_IF_ERROR(args.CheckAllUsed(ctx.name));
  if (threads < 1 || threads > 256) return InvalidField("--threads", threads, "must be 1..256");
  if (seconds < 1 || seconds > 3600) return InvalidField("--seconds", seconds, "must be 1..3600");
  if (mask > 64) return InvalidField("--dma_mask_bits", mask, "must be 12..64");
  if (o.pages < 1 || o.pages > 4096) return InvalidField("--pages", o.pages, "must be 1..4096");
  // A message carries its chain's previous unmaps too: 2 x batch_size
  // operations, within the daemon's --max_batch_ops.
  const uint64_t most_batch = ctx.client.options().limits.max_batch_ops / 2;
  if (o.batch_size < 1 || o.batch_size > most_batch) {
    return InvalidField("--batch_size", o.batch_size,
                        absl::StrCat("must be 1..", most_batch,
                                     " (each message also unmaps the previous one's: twice "
                                     "that within --max_batch_ops)"));
  }
  if (o.inflight < 1 || o.inflight > 64)
    return InvalidField("--inflight", o.inflight, "must be 1..64");
  if (o.baseline && o.api == Api::kBatch)
    return InvalidField("--baseline", "true", "measures unary RPCs only");
  o.threads = static_cast<int>(threads);
  o.duration = absl::Seconds(seconds);
  o.dma_mask_bits = static_cast<uint32_t>(mask);
  o.device = ctx.client.device();
  RETURN_IF_ERROR(ChooseDevice(ctx.client, &o));

  std::vector<ThreadResult> results(o.threads);
  std::vector<std::thread> workers;
  const absl::Time start = absl::Now();
  const absl::Time end = start + o.duration;
  for (int t = 0; t < o.threads; ++t) {
    workers.emplace_back([&, t] {
      (o.api == Api::kUnary ? UnaryWorker : BatchWorker)(ctx.client, o, end, &results[t]);
    });
  }
  for (std::thread& w : workers) w.join();
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);

  ThreadResult all;
  for (ThreadResult& r : results) {
    all.ops += r.ops;
    all.rpcs += r.rpcs;
    all.errors += r.errors;
    if (all.first_error.ok()) all.first_error = r.first_error;
    all.map_ns.insert(all.map_ns.end(), r.map_ns.begin(), r.map_ns.end());
    all.unmap_ns.insert(all.unmap_ns.end(), r.unmap_ns.begin(), r.unmap_ns.end());
  }
  if (all.ops == 0 && !all.first_error.ok()) return all.first_error;
  const char* what =
      o.baseline ? "empty_rpc(Sync)" : (o.api == Api::kBatch ? "map(batched)" : "map+unmap");
  const double ops_per_s = static_cast<double>(all.ops) / elapsed;
  const double rpcs_per_s = static_cast<double>(all.rpcs) / elapsed;
  const char* lat = o.api == Api::kBatch ? "batch_rtt" : (o.baseline ? "rpc" : "map");
  const double p50 = Percentile(all.map_ns, 0.5), p99 = Percentile(all.map_ns, 0.99),
               p999 = Percentile(all.map_ns, 0.999);
  const double u50 = Percentile(all.unmap_ns, 0.5), u99 = Percentile(all.unmap_ns, 0.99),
               u999 = Percentile(all.unmap_ns, 0.999);
  const std::string mode = o.mode == Mode::kSingle ? "single" : "sg";
  const std::string api = o.api == Api::kUnary ? "unary" : "batch";
  const std::string direction =
      v1::DmaDirection_Name(o.direction).substr(std::string("DMA_DIRECTION_").size());
  if (ctx.printer->json()) {
    ctx.printer->out() << absl::StrFormat(
        "{\"what\":\"%s\",\"api\":\"%s\",\"mode\":\"%s\",\"device\":\"%s\",\"dma_mask_bits\":%d,"
        "\"pages\":%d,"
        "\"direction\":\"%s\",\"threads\":%d,\"batch_size\":%d,\"seconds\":%.3f,\"ops\":%d,\"ops_"
        "per_s\":%.1f,"
        "\"rpcs_per_s\":%.1f,\"errors\":%d,\"%s_p50_us\":%.2f,\"%s_p99_us\":%.2f,\"%s_p999_us\":%."
        "2f,"
        "\"unmap_p50_us\":%.2f,\"unmap_p99_us\":%.2f,\"unmap_p999_us\":%.2f}\n",
        what, api, mode, o.device, o.dma_mask_bits, o.pages, direction, o.threads, o.batch_size,
        elapsed, all.ops, ops_per_s, rpcs_per_s, all.errors, lat, p50, lat, p99, lat, p999, u50,
        u99, u999);
    return absl::OkStatus();
  }
  std::ostream& out = ctx.printer->out();
  out << absl::StrFormat(
      "bench %s: api=%s mode=%s device=%s dma_mask_bits=%d pages=%d direction=%s threads=%d%s "
      "seconds=%.2f\n",
      what, api, mode, o.device, o.dma_mask_bits, o.pages, direction, o.threads,
      o.api == Api::kBatch ? absl::StrFormat(" batch_size=%d inflight=%d", o.batch_size, o.inflight)
                           : "",
      elapsed);
  out << absl::StrFormat("  throughput  %.0f ops/s (%.0f %s/s), %d errors\n", ops_per_s, rpcs_per_s,
                         o.api == Api::kBatch ? "messages" : "rpcs", all.errors);
  out << absl::StrFormat("  %-9s   p50=%.1fus p99=%.1fus p99.9=%.1fus\n", lat, p50, p99, p999);
  if (!all.unmap_ns.empty()) {
    out << absl::StrFormat("  %-9s   p50=%.1fus p99=%.1fus p99.9=%.1fus\n", "unmap", u50, u99,
                           u999);
  }
  if (!all.first_error.ok()) out << "  first error: " << all.first_error << "\n";
  return absl::OkStatus();
}

}  // namespace

std::vector<Command> BenchCommands() {
  return {{.name = "bench",
           .summary = "map+unmap throughput and latency over gRPC (dma_map_benchmark)",
           .flags = {{.name = "threads", .value = "N", .help = "client threads (default 1)"},
                     {.name = "seconds", .value = "N", .help = "how long (default 5)"},
                     {.name = "dma_mask_bits",
                      .value = "N",
                      .help = "pick a device with this DMA mask (default 32 as admin; "
                              "a device identity uses its own)"},
                     DirectionSpec(),
                     {.name = "pages", .value = "N", .help = "pages per map (default 1)"},
                     {.name = "mode",
                      .value = "single|sg",
                      .help = "map one run or a scatterlist of single pages (default single)"},
                     {.name = "api",
                      .value = "unary|batch",
                      .help = "one RPC per call, or Batch streams (default unary)"},
                     {.name = "batch_size",
                      .value = "N",
                      .help = "maps per Batch message (default 64)"},
                     {.name = "inflight",
                      .value = "N",
                      .help = "Batch messages in flight per thread (default 4)"},
                     {.name = "baseline", .help = "time the empty RPC (Sync) instead"}},
           .run = Bench}};
}

}  // namespace iommu::client::ctl
