// SPDX-License-Identifier: Apache-2.0
// The Domains, Devices (topology), Sessions and Stats subcommands.
#include <utility>

#include "absl/strings/str_split.h"
#include "client/ctl/command.h"
#include "client/status.h"

namespace iommu::client::ctl {
namespace {

template <typename Req>
absl::StatusOr<Req> Empty(Context&, Args&) {
  return Req();
}

template <typename Req>
absl::StatusOr<Req> ByDomainId(Context&, Args& args) {
  Req r;
  ASSIGN_OR_RETURN(uint64_t domain, args.U64("domain"));
  r.set_domain_id(domain);
  return r;
}

absl::StatusOr<v1::WalkDomainRequest> WalkDomainFlags(Context&, Args& args) {
  v1::WalkDomainRequest r;
  ASSIGN_OR_RETURN(uint64_t domain, args.U64("domain"));
  ASSIGN_OR_RETURN(uint64_t start, args.U64Or("start", 0));
  ASSIGN_OR_RETURN(uint64_t max, args.U64Or("max_leaves", 0));
  if (max > UINT32_MAX) return InvalidField("--max_leaves", max, "at most 65536 leaves per call");
  r.set_domain_id(domain);
  r.set_start_iova(start);
  r.set_max_leaves(static_cast<uint32_t>(max));
  return r;
}

template <typename Req>
absl::StatusOr<Req> BySessionId(Context&, Args& args) {
  Req r;
  ASSIGN_OR_RETURN(uint64_t session, args.U64("session"));
  r.set_session_id(session);
  return r;
}

absl::StatusOr<v1::CreateDomainRequest> BuildCreateDomain(Context&, Args& args) {
  v1::CreateDomainRequest r;
  ASSIGN_OR_RETURN(std::string smmu, args.String("smmu"));
  ASSIGN_OR_RETURN(v1::DomainType type,
                   args.Enum<v1::DomainType>("type",
                                             {{"dma", v1::DOMAIN_TYPE_DMA},
                                              {"dma_fq", v1::DOMAIN_TYPE_DMA_FQ},
                                              {"unmanaged", v1::DOMAIN_TYPE_UNMANAGED},
                                              {"identity", v1::DOMAIN_TYPE_IDENTITY},
                                              {"blocked", v1::DOMAIN_TYPE_BLOCKED}},
                                             v1::DOMAIN_TYPE_UNSPECIFIED));
  ASSIGN_OR_RETURN(uint64_t granule, args.U64Or("granule", 0));
  r.set_smmu(std::move(smmu));
  r.set_type(type);
  r.set_granule_bytes(granule);
  for (absl::string_view name :
       absl::StrSplit(args.StringOr("grant", ""), ',', absl::SkipEmpty())) {
    r.add_granted_devices(std::string(name));
  }
  return r;
}

absl::StatusOr<v1::OpenSessionRequest> BuildOpenSession(Context&, Args& args) {
  v1::OpenSessionRequest r;
  ASSIGN_OR_RETURN(uint64_t ttl_ms, args.U64Or("ttl_ms", 0));
  r.set_ttl_ms(ttl_ms);
  return r;
}

Flag DomainSpec(std::string help) {
  return {.name = "domain", .value = "ID", .help = std::move(help), .required = true};
}

Flag TargetDeviceSpec() {
  return {.name = "target_device",
          .value = "DEV",
          .help = "admin: the device to act on (default: the caller's own)"};
}

Flag SessionSpec() {
  return {.name = "session",
          .value = "ID",
          .help = "the session open-session returned",
          .required = true};
}

}  // namespace

std::vector<Command> AdminCommands() {
  return {
      Rpc<v1::CreateDomainRequest, v1::CreateDomainResponse>(
          "create-domain", "iommu_domain_alloc: a domain on an SMMU (identity, blocked: admin)",
          {{.name = "smmu", .value = "S", .help = "the SMMU", .required = true},
           {.name = "type",
            .value = "dma|dma_fq|unmanaged|identity|blocked",
            .help = "the domain type",
            .required = true},
           {.name = "granule",
            .value = "N",
            .help = "the page-table granule in bytes (default: the SMMU's smallest)"},
           {.name = "grant",
            .value = "DEV,...",
            .help = "other devices that may attach to it (default: none)"}},
          BuildCreateDomain, &Client::CreateDomain),
      Rpc<v1::DestroyDomainRequest, v1::DestroyDomainResponse>(
          "destroy-domain", "free a domain with no devices attached", {DomainSpec("the domain")},
          ByDomainId<v1::DestroyDomainRequest>, &Client::DestroyDomain),
      Rpc<v1::GetDomainRequest, v1::GetDomainResponse>(
          "get-domain", "one domain", {DomainSpec("the domain")}, ByDomainId<v1::GetDomainRequest>,
          &Client::GetDomain),
      Rpc<v1::ListDomainsRequest, v1::ListDomainsResponse>(
          "list-domains", "the domains the caller owns or is attached to (all for an admin)", {},
          Empty<v1::ListDomainsRequest>, &Client::ListDomains),
      Rpc<v1::AttachDeviceRequest, v1::AttachDeviceResponse>(
          "attach", "iommu_attach_device: switch the device to a domain",
          {DomainSpec("the domain"), TargetDeviceSpec()},
          [](Context& ctx, Args& args) -> absl::StatusOr<v1::AttachDeviceRequest> {
            ASSIGN_OR_RETURN(v1::AttachDeviceRequest r,
                             ByDomainId<v1::AttachDeviceRequest>(ctx, args));
            r.set_target_device(args.StringOr("target_device", ""));
            return r;
          },
          &Client::AttachDevice),
      Rpc<v1::DetachDeviceRequest, v1::DetachDeviceResponse>(
          "detach", "return the device to its default domain", {TargetDeviceSpec()},
          [](Context&, Args& args) -> absl::StatusOr<v1::DetachDeviceRequest> {
            v1::DetachDeviceRequest r;
            r.set_target_device(args.StringOr("target_device", ""));
            return r;
          },
          &Client::DetachDevice),
      Rpc<v1::GetIovaRangesRequest, v1::GetIovaRangesResponse>(
          "iova-ranges", "usable IOVA ranges and reserved regions of the device's domain", {},
          Empty<v1::GetIovaRangesRequest>, &Client::GetIovaRanges),
      Rpc<v1::WalkDomainRequest, v1::WalkDomainResponse>(
          "walk-domain", "page-table leaves in IOVA order, a page of them per call",
          {DomainSpec("the domain"),
           {.name = "start", .value = "A", .help = "the first IOVA (default 0x0)"},
           {.name = "max_leaves",
            .value = "N",
            .help = "leaves per call (default 4096, at most 65536)"}},
          WalkDomainFlags, &Client::WalkDomain),
      Rpc<v1::ListIommusRequest, v1::ListIommusResponse>("list-iommus", "the SMMU instances", {},
                                                         Empty<v1::ListIommusRequest>,
                                                         &Client::ListIommus),
      Rpc<v1::ListDevicesRequest, v1::ListDevicesResponse>(
          "list-devices", "the devices (the caller's own for a device identity)", {},
          Empty<v1::ListDevicesRequest>, &Client::ListDevices),
      Rpc<v1::OpenSessionRequest, v1::OpenSessionResponse>(
          "open-session",
          "open a lease: later calls with --session=ID belong to it; keep it alive yourself",
          {{.name = "ttl_ms",
            .value = "N",
            .help = "the lease in milliseconds (default 0: the daemon's)"}},
          BuildOpenSession, &Client::OpenSession),
      Rpc<v1::KeepAliveRequest, v1::KeepAliveResponse>(
          "keepalive", "renew a lease", {SessionSpec()}, BySessionId<v1::KeepAliveRequest>,
          &Client::KeepAlive),
      Rpc<v1::CloseSessionRequest, v1::CloseSessionResponse>(
          "close-session", "close a lease, releasing what it owns", {SessionSpec()},
          BySessionId<v1::CloseSessionRequest>, &Client::CloseSession),
      Rpc<v1::GetStatsRequest, v1::GetStatsResponse>(
          "stats", "allocator, page-table, IOTLB, pool and fault statistics", {},
          Empty<v1::GetStatsRequest>, &Client::GetStats),
  };
}

}  // namespace iommu::client::ctl
