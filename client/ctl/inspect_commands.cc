// SPDX-License-Identifier: Apache-2.0
// watch-faults (the fault event stream) and dump (a domain, its statistics
// and a page-table walk of chosen IOVA ranges).
#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/ctl/command.h"
#include "client/health.h"
#include "client/status.h"

namespace iommu::client::ctl {
namespace {

std::string Hex(uint64_t v) { return absl::StrFormat("0x%x", v); }

std::string Name(const google::protobuf::EnumValueDescriptor* v) {
  // FAULT_TYPE_TRANSLATION -> TRANSLATION, as output.cc prints enums.
  const std::string& zero = v->type()->FindValueByNumber(0)->name();
  const std::string prefix = zero.substr(0, zero.size() - std::string("UNSPECIFIED").size());
  return v->name().rfind(prefix, 0) == 0 ? v->name().substr(prefix.size()) : v->name();
}

// -o wide adds the SMMU and the privilege of the access.
std::vector<std::string> FaultRow(const v1::FaultRecord& f, bool wide) {
  std::vector<std::string> row = {absl::StrCat(f.seq()),
                                  FormatUnixNanos(f.timestamp_unix_nanos()),
                                  Name(v1::FaultType_descriptor()->FindValueByNumber(f.type())),
                                  f.device().empty() ? "-" : f.device(),
                                  Hex(f.stream_id()),
                                  absl::StrCat(f.domain_id()),
                                  Hex(f.iova()),
                                  Name(v1::AccessKind_descriptor()->FindValueByNumber(f.access()))};
  if (wide) {
    row.insert(row.begin() + 4, f.smmu());
    row.push_back(f.privileged() ? "true" : "false");
  }
  return row;
}

absl::Status WatchFaults(Context& ctx, Args& args) {
  v1::WatchFaultsRequest request;
  ASSIGN_OR_RETURN(uint64_t after_seq, args.U64Or("after_seq", 0));
  ASSIGN_OR_RETURN(uint64_t count, args.U64Or("count", 0));
  RETURN_IF_ERROR(args.CheckAllUsed(ctx.name));
  request.set_after_seq(after_seq);
  ASSIGN_OR_RETURN(std::unique_ptr<FaultStream> stream, ctx.client.WatchFaults(std::move(request)));

  // Read() blocks; a helper cancels the stream on Ctrl-C or once done.
  std::atomic<bool> done{false};
  std::thread canceller([&] {
    while (!done.load() && !(ctx.interrupted != nullptr && ctx.interrupted->load())) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    stream->Cancel();
  });
  const bool wide = ctx.printer->format() == Format::kWide;
  std::vector<std::string> header = {"SEQ",    "TIME",   "TYPE", "DEVICE",
                                     "STREAM", "DOMAIN", "IOVA", "ACCESS"};
  if (wide) {
    header.insert(header.begin() + 4, "SMMU");
    header.push_back("PRIV");
  }
  uint64_t seen = 0;
  bool first = true;
  v1::FaultEvent event;
  while ((count == 0 || seen < count) && stream->Read(&event)) {
    if (count != 0 && seen + event.records_size() > count) {
      event.mutable_records()->DeleteSubrange(
          static_cast<int>(count - seen), static_cast<int>(seen + event.records_size() - count));
    }
    seen += event.records_size();
    if (ctx.printer->json()) {
      ctx.printer->Print(event);
      continue;
    }
    if (event.lost() != 0) ctx.printer->out() << "lost " << event.lost() << " records\n";
    std::vector<std::vector<std::string>> rows;
    for (const v1::FaultRecord& f : event.records()) rows.push_back(FaultRow(f, wide));
    // Stream rows: the header once, columns sized for typical values.
    std::string table = FormatTable(header, rows);
    if (!first) table = table.substr(table.find('\n') + 1);
    first = false;
    ctx.printer->out() << table << std::flush;
  }
  done.store(true);
  canceller.join();
  absl::Status status = stream->Finish();
  // Ending on purpose (count reached, Ctrl-C) cancels the stream: that is success.
  if (status.code() == absl::StatusCode::kCancelled) return absl::OkStatus();
  return status;
}

// "rw-/rw-": what unprivileged / privileged accesses may do.
std::string Perm(const v1::PageTableLeaf& l) {
  return absl::StrCat(l.read() ? "r" : "-", l.write() ? "w" : "-", l.exec() ? "x" : "-", "/",
                      l.privileged_read() ? "r" : "-", l.privileged_write() ? "w" : "-",
                      l.privileged_exec() ? "x" : "-");
}

std::string Attr(const v1::PageTableLeaf& l) {
  return l.mmio() ? "mmio" : (l.cacheable() ? "cached" : "normal");
}

// Consecutive leaves that continue each other in IOVA and physical address,
// with the same permissions and attributes, as one run.
struct LeafRun {
  v1::PageTableLeaf first;
  uint64_t size_bytes = 0;
  uint64_t leaves = 0;
  uint64_t leaf_size = 0;  // 0 when the run mixes leaf sizes
};

void AddLeaf(std::vector<LeafRun>& runs, const v1::PageTableLeaf& l) {
  if (!runs.empty()) {
    LeafRun& r = runs.back();
    if (r.first.iova() + r.size_bytes == l.iova() &&
        r.first.phys_addr() + r.size_bytes == l.phys_addr() && Perm(r.first) == Perm(l) &&
        Attr(r.first) == Attr(l)) {
      r.size_bytes += l.size_bytes();
      ++r.leaves;
      if (r.leaf_size != l.size_bytes()) r.leaf_size = 0;
      return;
    }
  }
  runs.push_back({l, l.size_bytes(), 1, l.size_bytes()});
}

absl::Status Dump(Context& ctx, Args& args) {
  ASSIGN_OR_RETURN(std::optional<uint64_t> domain_flag, args.OptionalU64("domain"));
  ASSIGN_OR_RETURN(uint64_t max_leaves, args.U64Or("max_leaves", 65536));
  const std::string iovas = args.StringOr("iova", "");
  ASSIGN_OR_RETURN(uint64_t length, args.U64Or("length", 4096));
  ASSIGN_OR_RETURN(bool write, args.Bool("write"));
  RETURN_IF_ERROR(args.CheckAllUsed(ctx.name));

  uint64_t domain_id = 0;
  if (domain_flag.has_value()) {
    domain_id = *domain_flag;
  } else {
    ASSIGN_OR_RETURN(v1::GetIovaRangesResponse ranges, ctx.client.GetIovaRanges());
    domain_id = ranges.domain_id();
  }
  v1::GetDomainRequest get;
  get.set_domain_id(domain_id);
  ASSIGN_OR_RETURN(v1::GetDomainResponse domain, ctx.client.GetDomain(std::move(get)));
  ASSIGN_OR_RETURN(v1::GetStatsResponse stats, ctx.client.GetStats());
  v1::DomainStats domain_stats;
  for (const v1::DomainStats& d : stats.domains()) {
    if (d.domain_id() == domain_id) domain_stats = d;
  }

  // The page table, walked in pages of leaves (at most --max_leaves; 0: all).
  std::vector<LeafRun> runs;
  uint64_t leaves_seen = 0;
  bool leaves_truncated = false;
  for (uint64_t start = 0;;) {
    v1::WalkDomainRequest w;
    w.set_domain_id(domain_id);
    w.set_start_iova(start);
    w.set_max_leaves(4096);
    ASSIGN_OR_RETURN(v1::WalkDomainResponse page, ctx.client.WalkDomain(std::move(w)));
    for (const v1::PageTableLeaf& l : page.leaves()) {
      if (max_leaves != 0 && leaves_seen == max_leaves) {
        leaves_truncated = true;
        break;
      }
      AddLeaf(runs, l);
      ++leaves_seen;
    }
    if (leaves_truncated || page.next_iova() == 0) break;
    start = page.next_iova();
  }

  // The walk: each IOVA range translated through the device's SMMU (the
  // device must be attached to the domain for the walk to be of it).
  std::vector<v1::TranslateResponse> walks;
  std::vector<std::vector<std::string>> rows;
  for (absl::string_view item : absl::StrSplit(iovas, ',', absl::SkipEmpty())) {
    ASSIGN_OR_RETURN(uint64_t iova, ParseNumber("--iova", item));
    v1::TranslateRequest t;
    t.set_iova(iova);
    t.set_length_bytes(length);
    t.set_access(write ? v1::ACCESS_KIND_WRITE : v1::ACCESS_KIND_READ);
    ASSIGN_OR_RETURN(v1::TranslateResponse walk, ctx.client.Translate(std::move(t)));
    for (const v1::TranslatedPage& p : walk.pages()) {
      rows.push_back({Hex(p.iova()), Hex(p.phys_addr()), absl::StrCat(p.length_bytes()),
                      p.iotlb_hit() ? "hit" : "miss", p.stale() ? "stale" : "-"});
    }
    if (walk.faulted()) {
      rows.push_back(
          {Hex(walk.fault_iova()), "-", "-", "-",
           absl::StrCat("FAULT ",
                        Name(v1::FaultType_descriptor()->FindValueByNumber(walk.fault_type())),
                        " seq=", walk.fault_seq())});
    }
    walks.push_back(std::move(walk));
  }

  if (ctx.printer->json()) {
    std::vector<std::string> walk_json;
    for (const v1::TranslateResponse& w : walks) walk_json.push_back(ToJson(w));
    std::vector<std::string> run_json;
    for (const LeafRun& r : runs) {
      run_json.push_back(absl::StrFormat(
          "{\"iova\":\"%d\",\"phys_addr\":\"%d\",\"size_bytes\":\"%d\",\"leaves\":\"%d\","
          "\"leaf_size_bytes\":\"%d\",\"perm\":\"%s\",\"attr\":\"%s\"}",
          r.first.iova(), r.first.phys_addr(), r.size_bytes, r.leaves, r.leaf_size, Perm(r.first),
          Attr(r.first)));
    }
    ctx.printer->out() << "{\"domain\":" << ToJson(domain.domain())
                       << ",\"stats\":" << ToJson(domain_stats) << ",\"mapped_runs\":["
                       << absl::StrJoin(run_json, ",") << "],\"leaves\":\"" << leaves_seen
                       << "\",\"leaves_truncated\":" << (leaves_truncated ? "true" : "false")
                       << ",\"walk\":[" << absl::StrJoin(walk_json, ",") << "]}\n";
    return absl::OkStatus();
  }
  ctx.printer->Title(absl::StrCat("domain ", domain_id));
  ctx.printer->Print(domain.domain());
  ctx.printer->Title("page table");
  std::vector<std::vector<std::string>> leaves;
  for (const auto& [size, count] : domain_stats.pagetable().leaves_by_size_bytes()) {
    leaves.push_back({absl::StrCat(size), absl::StrCat(count)});
  }
  std::sort(leaves.begin(), leaves.end(),
            [](const auto& a, const auto& b) { return std::stoull(a[0]) < std::stoull(b[0]); });
  ctx.printer->out() << "tables       " << domain_stats.pagetable().tables() << "\n"
                     << "table_bytes  " << domain_stats.pagetable().table_bytes() << "\n"
                     << "mapped_bytes " << domain_stats.pagetable().mapped_bytes() << "\n";
  ctx.printer->Table({"LEAF_BYTES", "LEAVES"}, leaves);
  ctx.printer->Title(absl::StrCat("mapped runs (", leaves_seen, " leaves",
                                  leaves_truncated ? ", truncated" : "", ")"));
  std::vector<std::vector<std::string>> run_rows;
  for (const LeafRun& r : runs) {
    run_rows.push_back(
        {Hex(r.first.iova()), Hex(r.first.iova() + r.size_bytes - 1), Hex(r.first.phys_addr()),
         absl::StrCat(r.size_bytes), absl::StrCat(r.leaves),
         r.leaf_size != 0 ? absl::StrCat(r.leaf_size) : "mixed", Perm(r.first), Attr(r.first)});
  }
  ctx.printer->Table(
      {"IOVA", "IOVA_END", "PHYS", "BYTES", "LEAVES", "LEAF_BYTES", "PERM(USER/PRIV)", "ATTR"},
      run_rows);
  if (domain_stats.has_iova()) {
    ctx.printer->Title("iova allocator");
    ctx.printer->Print(domain_stats.iova());
  }
  if (!rows.empty()) {
    ctx.printer->Title("walk");
    ctx.printer->Table({"IOVA", "PHYS", "BYTES", "IOTLB", "NOTE"}, rows);
  }
  return absl::OkStatus();
}

// The gRPC health check, for probes: exit code 0 only when SERVING.
absl::Status Health(Context& ctx, Args& args) {
  const std::string service = args.StringOr("service", "");
  RETURN_IF_ERROR(args.CheckAllUsed(ctx.name));
  ASSIGN_OR_RETURN(HealthStatus status, CheckHealth(ctx.client, service));
  const absl::string_view name = HealthStatusName(status);
  if (ctx.printer->json()) {
    ctx.printer->out() << "{\"service\":\"" << service << "\",\"status\":\"" << name << "\"}\n";
  } else {
    ctx.printer->out() << name << "\n";
  }
  if (status != HealthStatus::kServing) {
    return absl::UnavailableError(absl::StrCat("service=\"", service, "\": ", name));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<Command> InspectCommands() {
  return {
      {.name = "watch-faults",
       .summary = "stream fault records as they happen, until Ctrl-C or --count records",
       .flags = {{.name = "after_seq",
                  .value = "N",
                  .help = "start after this record (default 0: the oldest the daemon keeps)"},
                 {.name = "count",
                  .value = "N",
                  .help = "stop after N records (default 0: never)"}},
       .run = WatchFaults},
      {.name = "dump",
       .summary = "a domain: its page-table and allocator statistics, its mappings (leaves "
                  "merged into runs) and a walk of chosen IOVAs through the device",
       .flags = {{.name = "domain",
                  .value = "ID",
                  .help = "the domain (default: the device's current one)"},
                 {.name = "max_leaves",
                  .value = "N",
                  .help = "at most N page-table leaves (default 65536; 0: all)"},
                 {.name = "iova", .value = "A,B,...", .help = "IOVAs to translate, each shown"},
                 {.name = "length", .value = "N", .help = "the bytes of each walk (default 4096)"},
                 {.name = "write", .help = "walk as writes (default: reads)"}},
       .run = Dump,
       .usage = "[--domain=ID] [--max_leaves=N] [--iova=A,B,... [--length=N] [--write]]"},
      {.name = "health",
       .summary = "the daemon's gRPC health check: exit 0 only when SERVING",
       .flags = {{.name = "service",
                  .value = "NAME",
                  .help = "one service (default: the daemon as a whole)"}},
       .run = Health},
  };
}

}  // namespace iommu::client::ctl
