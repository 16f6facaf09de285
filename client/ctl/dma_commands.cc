// SPDX-License-Identifier: Apache-2.0
// The Dma and Memory subcommands, and translate: one per RPC.
#include <utility>

#include "absl/strings/str_split.h"
#include "client/ctl/command.h"
#include "client/status.h"

namespace iommu::client::ctl {
namespace {

absl::StatusOr<v1::SgMode> SgModeFlag(Args& args) {
  return args.Enum<v1::SgMode>("mode",
                               {{"dma_api", v1::SG_MODE_DMA_API},
                                {"merge", v1::SG_MODE_MERGE},
                                {"contiguous", v1::SG_MODE_CONTIGUOUS}},
                               v1::SG_MODE_MERGE);
}

absl::StatusOr<v1::AccessKind> AccessFlag(Args& args) {
  return args.Enum<v1::AccessKind>("access",
                                   {{"read", v1::ACCESS_KIND_READ},
                                    {"write", v1::ACCESS_KIND_WRITE},
                                    {"exec", v1::ACCESS_KIND_EXEC}},
                                   v1::ACCESS_KIND_READ);
}

// --segments=BUF:OFFSET:LENGTH[,BUF:OFFSET:LENGTH...]
absl::StatusOr<std::vector<v1::MemRef>> SegmentsFlag(Args& args) {
  ASSIGN_OR_RETURN(std::string text, args.String("segments"));
  std::vector<v1::MemRef> segments;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::vector<absl::string_view> parts = absl::StrSplit(item, ':');
    if (parts.size() != 3)
      return InvalidField("--segments", item, "each segment is BUFFER:OFFSET:LENGTH");
    v1::MemRef& mem = segments.emplace_back();
    ASSIGN_OR_RETURN(uint64_t buffer, ParseNumber("--segments buffer", parts[0]));
    ASSIGN_OR_RETURN(uint64_t offset, ParseNumber("--segments offset", parts[1]));
    ASSIGN_OR_RETURN(uint64_t length, ParseNumber("--segments length", parts[2]));
    mem.set_buffer_id(buffer);
    mem.set_offset_bytes(offset);
    mem.set_length_bytes(length);
  }
  return segments;
}

absl::StatusOr<v1::MapRequest> BuildMap(Context& ctx, Args& args) {
  v1::MapRequest r;
  ASSIGN_OR_RETURN(*r.mutable_mem(), MemRefFlags(ctx, args));
  ASSIGN_OR_RETURN(v1::DmaDirection direction, DirectionFlag(args));
  r.set_direction(direction);
  ASSIGN_OR_RETURN(*r.mutable_attrs(), AttrsFlags(args));
  return r;
}

template <typename Req>
absl::StatusOr<Req> BuildByDmaAddr(Context&, Args& args) {
  Req r;
  ASSIGN_OR_RETURN(uint64_t dma_addr, args.U64("dma_addr"));
  r.set_dma_addr(dma_addr);
  return r;
}

absl::StatusOr<v1::MapSgRequest> BuildMapSg(Context&, Args& args) {
  v1::MapSgRequest r;
  if (args.Has("import_token")) {
    ASSIGN_OR_RETURN(*r.mutable_import_token(), args.String("import_token"));
  } else {
    ASSIGN_OR_RETURN(std::vector<v1::MemRef> segments, SegmentsFlag(args));
    for (v1::MemRef& s : segments) *r.add_segments() = std::move(s);
  }
  ASSIGN_OR_RETURN(v1::SgMode mode, SgModeFlag(args));
  r.set_mode(mode);
  ASSIGN_OR_RETURN(v1::DmaDirection direction, DirectionFlag(args));
  r.set_direction(direction);
  ASSIGN_OR_RETURN(*r.mutable_attrs(), AttrsFlags(args));
  return r;
}

absl::StatusOr<v1::AllocRequest> BuildAlloc(Context&, Args& args) {
  v1::AllocRequest r;
  ASSIGN_OR_RETURN(uint64_t size, args.U64("size"));
  r.set_size_bytes(size);
  ASSIGN_OR_RETURN(v1::DmaDirection direction, DirectionFlag(args));
  r.set_direction(direction);
  ASSIGN_OR_RETURN(*r.mutable_attrs(), AttrsFlags(args));
  r.set_pool(args.StringOr("pool", ""));
  return r;
}

absl::StatusOr<v1::GetSgTableRequest> BuildGetSgTable(Context&, Args& args) {
  v1::GetSgTableRequest r;
  ASSIGN_OR_RETURN(uint64_t dma_addr, args.U64("dma_addr"));
  r.set_dma_addr(dma_addr);
  ASSIGN_OR_RETURN(bool export_token, args.Bool("export"));
  r.set_export_(export_token);
  const std::string importers = args.StringOr("export_to", "");
  for (absl::string_view name : absl::StrSplit(importers, ',', absl::SkipEmpty())) {
    r.add_export_importers(std::string(name));
  }
  ASSIGN_OR_RETURN(bool writable, args.Bool("writable"));
  r.set_export_writable(writable);
  if ((r.export_importers_size() > 0 || writable) && !export_token) {
    return absl::InvalidArgumentError("--export_to and --writable go with --export");
  }
  return r;
}

absl::StatusOr<v1::RevokeExportRequest> BuildRevokeExport(Context&, Args& args) {
  v1::RevokeExportRequest r;
  ASSIGN_OR_RETURN(std::string token, args.String("token"));
  r.set_export_token(std::move(token));
  return r;
}

absl::StatusOr<v1::MsiCookieRequest> BuildMsiCookie(Context&, Args& args) {
  v1::MsiCookieRequest r;
  ASSIGN_OR_RETURN(uint64_t domain, args.U64Or("domain", 0));
  ASSIGN_OR_RETURN(uint64_t base, args.U64Or("window_base", 0));
  ASSIGN_OR_RETURN(uint64_t size, args.U64Or("window_size", 0));
  r.set_domain_id(domain);
  r.set_window_base(base);
  r.set_window_size_bytes(size);
  return r;
}

absl::StatusOr<v1::MapAtRequest> BuildMapAt(Context& ctx, Args& args) {
  v1::MapAtRequest r;
  ASSIGN_OR_RETURN(uint64_t iova, args.U64("iova"));
  r.set_iova(iova);
  ASSIGN_OR_RETURN(*r.mutable_mem(), MemRefFlags(ctx, args));
  ASSIGN_OR_RETURN(v1::DmaDirection direction, DirectionFlag(args));
  r.set_direction(direction);
  ASSIGN_OR_RETURN(*r.mutable_attrs(), AttrsFlags(args));
  return r;
}

absl::StatusOr<v1::UnmapRangeRequest> BuildUnmapRange(Context&, Args& args) {
  v1::UnmapRangeRequest r;
  ASSIGN_OR_RETURN(uint64_t iova, args.U64("iova"));
  ASSIGN_OR_RETURN(uint64_t size, args.U64("size"));
  r.set_iova(iova);
  r.set_size_bytes(size);
  return r;
}

absl::StatusOr<v1::TranslateRequest> BuildTranslate(Context&, Args& args) {
  v1::TranslateRequest r;
  ASSIGN_OR_RETURN(uint64_t iova, args.U64("iova"));
  ASSIGN_OR_RETURN(uint64_t length, args.U64Or("length", 1));
  ASSIGN_OR_RETURN(v1::AccessKind access, AccessFlag(args));
  ASSIGN_OR_RETURN(bool privileged, args.Bool("privileged"));
  r.set_iova(iova);
  r.set_length_bytes(length);
  r.set_access(access);
  r.set_privileged(privileged);
  r.set_smmu(args.StringOr("smmu", ""));
  ASSIGN_OR_RETURN(std::optional<uint64_t> stream_id, args.OptionalU64("stream_id"));
  if (stream_id.has_value()) {
    if (*stream_id > UINT32_MAX) return InvalidField("--stream_id", *stream_id, "must fit 32 bits");
    r.set_stream_id(static_cast<uint32_t>(*stream_id));
  }
  return r;
}

// --iovas=A,B,C with one --length and --access for all.
absl::StatusOr<v1::TranslateBatchRequest> BuildTranslateBatch(Context&, Args& args) {
  v1::TranslateBatchRequest r;
  ASSIGN_OR_RETURN(std::string iovas, args.String("iovas"));
  ASSIGN_OR_RETURN(uint64_t length, args.U64Or("length", 1));
  ASSIGN_OR_RETURN(v1::AccessKind access, AccessFlag(args));
  for (absl::string_view item : absl::StrSplit(iovas, ',', absl::SkipEmpty())) {
    ASSIGN_OR_RETURN(uint64_t iova, ParseNumber("--iovas", item));
    v1::TranslateRequest* t = r.add_accesses();
    t->set_iova(iova);
    t->set_length_bytes(length);
    t->set_access(access);
  }
  return r;
}

absl::StatusOr<v1::AllocBufferRequest> BuildAllocBuffer(Context&, Args& args) {
  v1::AllocBufferRequest r;
  ASSIGN_OR_RETURN(uint64_t size, args.U64("size"));
  r.set_size_bytes(size);
  ASSIGN_OR_RETURN(v1::Placement placement,
                   args.Enum<v1::Placement>("placement",
                                            {{"scattered", v1::PLACEMENT_SCATTERED},
                                             {"contiguous", v1::PLACEMENT_CONTIGUOUS},
                                             {"huge", v1::PLACEMENT_HUGE}},
                                            v1::PLACEMENT_SCATTERED));
  r.set_placement(placement);
  r.set_pool(args.StringOr("pool", ""));
  return r;
}

template <typename Req>
absl::StatusOr<Req> BuildByBufferId(Context&, Args& args) {
  Req r;
  ASSIGN_OR_RETURN(uint64_t buffer, args.U64("buffer"));
  r.set_buffer_id(buffer);
  return r;
}

constexpr char kMemUsage[] = "(--buffer=ID [--offset=N] [--length=N] | --phys=A --length=N)";

Flag DmaAddrSpec(std::string help) {
  return {.name = "dma_addr", .value = "A", .help = std::move(help), .required = true};
}

Flag ModeSpec() {
  return {.name = "mode",
          .value = "dma_api|merge|contiguous",
          .help =
              "how segments are laid out in IOVA space: one IOVA run each (dma_api), "
              "merged where they continue each other (merge), or one contiguous run "
              "(contiguous) (default merge)"};
}

Flag AccessSpec() {
  return {.name = "access", .value = "read|write|exec", .help = "the access (default read)"};
}

Flag LengthSpec(std::string help) { return {.name = "length", .value = "N", .help = help}; }

}  // namespace

absl::StatusOr<v1::DmaDirection> DirectionFlag(Args& args) {
  return args.Enum<v1::DmaDirection>("direction",
                                     {{"bidirectional", v1::DMA_DIRECTION_BIDIRECTIONAL},
                                      {"to_device", v1::DMA_DIRECTION_TO_DEVICE},
                                      {"from_device", v1::DMA_DIRECTION_FROM_DEVICE}},
                                     v1::DMA_DIRECTION_BIDIRECTIONAL);
}

absl::StatusOr<v1::DmaAttrs> AttrsFlags(Args& args) {
  v1::DmaAttrs attrs;
  ASSIGN_OR_RETURN(bool privileged, args.Bool("privileged"));
  ASSIGN_OR_RETURN(bool no_kernel_mapping, args.Bool("no_kernel_mapping"));
  ASSIGN_OR_RETURN(bool force_contiguous, args.Bool("force_contiguous"));
  ASSIGN_OR_RETURN(bool single_pages, args.Bool("single_pages"));
  attrs.set_privileged(privileged);
  attrs.set_no_kernel_mapping(no_kernel_mapping);
  attrs.set_force_contiguous(force_contiguous);
  attrs.set_alloc_single_pages(single_pages);
  return attrs;
}

Flag DirectionSpec() {
  return {.name = "direction",
          .value = "bidirectional|to_device|from_device",
          .help = "the DMA direction (default bidirectional)"};
}

std::vector<Flag> AttrsSpecs() {
  return {
      {.name = "privileged", .help = "DMA_ATTR_PRIVILEGED: only privileged accesses may use it"},
      {.name = "no_kernel_mapping", .help = "DMA_ATTR_NO_KERNEL_MAPPING"},
      {.name = "force_contiguous", .help = "DMA_ATTR_FORCE_CONTIGUOUS: physically contiguous"},
      {.name = "single_pages", .help = "DMA_ATTR_ALLOC_SINGLE_PAGES: no huge pages"},
  };
}

std::vector<Flag> MemRefSpecs() {
  return {
      {.name = "buffer", .value = "ID", .help = "the buffer (alloc-buffer) to map from"},
      {.name = "offset", .value = "N", .help = "the offset into the buffer (default 0)"},
      {.name = "phys",
       .value = "A",
       .help = "a physical address instead of a buffer (admin; needs --length)"},
      {.name = "length",
       .value = "N",
       .help = "the bytes to map (default: the rest of the buffer after --offset)"},
  };
}

std::vector<Flag> Flags(std::initializer_list<std::vector<Flag>> groups) {
  std::vector<Flag> all;
  for (const std::vector<Flag>& g : groups) all.insert(all.end(), g.begin(), g.end());
  return all;
}

absl::StatusOr<v1::MemRef> MemRefFlags(const Context& ctx, Args& args) {
  v1::MemRef mem;
  if (args.Has("phys")) {
    if (args.Has("buffer")) return InvalidField("--phys", "", "give --buffer or --phys, not both");
    ASSIGN_OR_RETURN(uint64_t phys, args.U64("phys"));
    ASSIGN_OR_RETURN(uint64_t length, args.U64("length"));
    mem.set_phys_addr(phys);
    mem.set_length_bytes(length);
    return mem;
  }
  ASSIGN_OR_RETURN(uint64_t buffer, args.U64("buffer"));
  ASSIGN_OR_RETURN(uint64_t offset, args.U64Or("offset", 0));
  mem.set_buffer_id(buffer);
  mem.set_offset_bytes(offset);
  if (args.Has("length")) {
    ASSIGN_OR_RETURN(uint64_t length, args.U64("length"));
    mem.set_length_bytes(length);
    return mem;
  }
  v1::GetBufferRequest get;
  get.set_buffer_id(buffer);
  ASSIGN_OR_RETURN(v1::GetBufferResponse info, ctx.client.GetBuffer(std::move(get)));
  if (offset >= info.buffer().size_bytes()) {
    return InvalidField("--offset", offset, "is not inside the buffer (give --length)");
  }
  mem.set_length_bytes(info.buffer().size_bytes() - offset);
  return mem;
}

std::vector<Command> DmaCommands() {
  const std::string mem_dir = absl::StrCat(kMemUsage, " [--direction=D] [ATTRS]");
  return {
      Rpc<v1::MapRequest, v1::MapResponse>(
          "map", "dma_map_page: map memory for the device, at an IOVA the daemon chooses",
          Flags({MemRefSpecs(), {DirectionSpec()}, AttrsSpecs()}), BuildMap, &Client::Map, mem_dir),
      Rpc<v1::UnmapRequest, v1::UnmapResponse>("unmap", "dma_unmap_page: unmap a whole allocation",
                                               {DmaAddrSpec("the DMA address map returned")},
                                               BuildByDmaAddr<v1::UnmapRequest>, &Client::Unmap),
      Rpc<v1::MapSgRequest, v1::MapSgResponse>(
          "map-sg", "dma_map_sg: map a scatterlist (or an imported export)",
          Flags({{{.name = "segments",
                   .value = "BUF:OFF:LEN,...",
                   .help = "the segments: buffer, offset and length of each"},
                  {.name = "import_token",
                   .value = "T",
                   .help = "map another device's export (get-sgtable --export) instead"},
                  ModeSpec(),
                  DirectionSpec()},
                 AttrsSpecs()}),
          BuildMapSg, &Client::MapSg,
          "(--segments=BUF:OFF:LEN,... | --import_token=T) [--mode=M] [--direction=D] [ATTRS]"),
      Rpc<v1::UnmapSgRequest, v1::UnmapSgResponse>("unmap-sg", "dma_unmap_sg: unmap a scatterlist",
                                                   {DmaAddrSpec("the DMA address map-sg returned")},
                                                   BuildByDmaAddr<v1::UnmapSgRequest>,
                                                   &Client::UnmapSg),
      Rpc<v1::AllocRequest, v1::AllocResponse>(
          "alloc", "dma_alloc_attrs: allocate memory and map it for the device",
          Flags({{{.name = "size", .value = "N", .help = "the bytes to allocate", .required = true},
                  {.name = "pool", .value = "P", .help = "the memory pool (default: the device's)"},
                  DirectionSpec()},
                 AttrsSpecs()}),
          BuildAlloc, &Client::Alloc),
      Rpc<v1::FreeRequest, v1::FreeResponse>("free",
                                             "dma_free_attrs: unmap and free what alloc returned",
                                             {DmaAddrSpec("the DMA address alloc returned")},
                                             BuildByDmaAddr<v1::FreeRequest>, &Client::Free),
      Rpc<v1::GetSgTableRequest, v1::GetSgTableResponse>(
          "get-sgtable", "dma_get_sgtable: the pages behind an allocation, optionally exported",
          {DmaAddrSpec("the DMA address alloc returned"),
           {.name = "export", .help = "also return an export token another device can map"},
           {.name = "export_to",
            .value = "DEV,...",
            .help = "the devices that may import it (default: any)"},
           {.name = "writable", .help = "importers may write (default: read-only)"}},
          BuildGetSgTable, &Client::GetSgTable,
          "--dma_addr=A [--export [--export_to=DEV,...] [--writable]]"),
      Rpc<v1::RevokeExportRequest, v1::RevokeExportResponse>(
          "revoke-export", "revoke an export token, unmapping every import of it",
          {{.name = "token", .value = "T", .help = "the export token", .required = true}},
          BuildRevokeExport, &Client::RevokeExport),
      Rpc<v1::MsiCookieRequest, v1::MsiCookieResponse>(
          "msi-cookie", "map the MSI doorbell (or set an UNMANAGED domain's MSI window)",
          {{.name = "domain", .value = "ID", .help = "the UNMANAGED domain whose window to set"},
           {.name = "window_base", .value = "A", .help = "the window's first IOVA"},
           {.name = "window_size", .value = "N", .help = "the window's bytes"}},
          BuildMsiCookie, &Client::MsiCookie, "[--domain=ID --window_base=A --window_size=N]"),
      Rpc<v1::MapAtRequest, v1::MapAtResponse>(
          "map-at", "iommu_map: map at a chosen IOVA of an UNMANAGED domain",
          Flags({{{.name = "iova", .value = "A", .help = "where to map", .required = true}},
                 MemRefSpecs(),
                 {DirectionSpec()},
                 AttrsSpecs()}),
          BuildMapAt, &Client::MapAt, absl::StrCat("--iova=A ", mem_dir)),
      Rpc<v1::UnmapRangeRequest, v1::UnmapRangeResponse>(
          "unmap-range", "iommu_unmap: unmap whole mappings in a range of an UNMANAGED domain",
          {{.name = "iova", .value = "A", .help = "the range's first IOVA", .required = true},
           {.name = "size", .value = "N", .help = "the range's bytes", .required = true}},
          BuildUnmapRange, &Client::UnmapRange),
      Rpc<v1::SyncRequest, v1::SyncResponse>(
          "sync", "complete the pending invalidations of the device's domain", {},
          [](Context&, Args&) -> absl::StatusOr<v1::SyncRequest> { return v1::SyncRequest(); },
          &Client::Sync),
      Rpc<v1::TranslateRequest, v1::TranslateResponse>(
          "translate", "a device access through its SMMU, as the IOTLB and page table answer it",
          {{.name = "iova", .value = "A", .help = "the address the device uses", .required = true},
           LengthSpec("the bytes accessed (default 1)"),
           AccessSpec(),
           {.name = "privileged", .help = "a privileged access"},
           {.name = "smmu", .value = "S", .help = "admin: an access by stream id on this SMMU"},
           {.name = "stream_id", .value = "N", .help = "admin: the stream id (with --smmu)"}},
          BuildTranslate, &Client::Translate,
          "--iova=A [--length=N] [--access=K] [--privileged] [--smmu=S --stream_id=N]"),
      Rpc<v1::TranslateBatchRequest, v1::TranslateBatchResponse>(
          "translate-batch", "many device accesses in one call",
          {{.name = "iovas", .value = "A,B,...", .help = "the addresses", .required = true},
           LengthSpec("the bytes of each access (default 1)"),
           AccessSpec()},
          BuildTranslateBatch, &Client::TranslateBatch),
      Rpc<v1::AllocBufferRequest, v1::AllocBufferResponse>(
          "alloc-buffer", "pin pages the device owns (map, map-sg and map-at name them)",
          {{.name = "size", .value = "N", .help = "the bytes", .required = true},
           {.name = "placement",
            .value = "scattered|contiguous|huge",
            .help = "how the pages lie in physical memory (default scattered)"},
           {.name = "pool", .value = "P", .help = "the memory pool (default: the device's)"}},
          BuildAllocBuffer, &Client::AllocBuffer),
      Rpc<v1::FreeBufferRequest, v1::FreeBufferResponse>(
          "free-buffer", "unpin a buffer",
          {{.name = "buffer", .value = "ID", .help = "the buffer", .required = true}},
          BuildByBufferId<v1::FreeBufferRequest>, &Client::FreeBuffer),
      Rpc<v1::GetBufferRequest, v1::GetBufferResponse>(
          "get-buffer", "a buffer and its physical runs",
          {{.name = "buffer", .value = "ID", .help = "the buffer", .required = true}},
          BuildByBufferId<v1::GetBufferRequest>, &Client::GetBuffer),
  };
}

}  // namespace iommu::client::ctl
