// SPDX-License-Identifier: Apache-2.0
// `iommuctl simulate --profile=...`: a device traffic generator. Each profile
// repeats one realistic step (map, let the device access, unmap) at --rate
// steps per second for --seconds, under a session (so a killed simulator's
// mappings are reclaimed), and prints one summary line per second.
#include <chrono>
#include <memory>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/ctl/command.h"
#include "client/session.h"
#include "client/status.h"

namespace iommu::client::ctl {
namespace {

constexpr uint64_t kPage = 4096;

struct Counters {
  uint64_t steps = 0, rpcs = 0, maps = 0, unmaps = 0, translates = 0, faults = 0, errors = 0;
};

// xorshift64, as the workloads use.
class Rng {
 public:
  uint64_t Next() {
    x_ ^= x_ << 13;
    x_ ^= x_ >> 7;
    x_ ^= x_ << 17;
    return x_;
  }
  uint64_t Below(uint64_t n) { return Next() % n; }

 private:
  uint64_t x_ = 42;
};

// One simulated device. Setup() once, Step() per iteration; every RPC is
// counted, and a failed one is an error (reported once per message).
class Profile {
 public:
  // `client` carries the device's session; `peer_client` (no session) acts
  // for the peer, whose resources a session of this device cannot own.
  Profile(const Client& client, const Client& peer_client, std::string device, std::string peer)
      : client_(client),
        peer_client_(peer_client),
        device_(std::move(device)),
        peer_(std::move(peer)) {}
  virtual ~Profile() = default;
  virtual absl::Status Setup() { return absl::OkStatus(); }
  void RunStep() {
    Step();
    ++counters_.steps;
  }
  const Counters& counters() const { return counters_; }

 protected:
  virtual void Step() = 0;
  // Counts the call; returns the value or nullopt after reporting the error.
  template <typename T>
  std::optional<T> Check(absl::StatusOr<T> result) {
    ++counters_.rpcs;
    if (result.ok()) return *std::move(result);
    ++counters_.errors;
    if (reported_.insert(std::string(result.status().message())).second && reported_.size() <= 20) {
      std::cerr << "simulate: " << result.status() << "\n";
    }
    return std::nullopt;
  }

  absl::Status AllocBuffers(int count, uint64_t size_bytes, v1::Placement placement) {
    for (int i = 0; i < count; ++i) {
      v1::AllocBufferRequest r;
      r.set_device(device_);
      r.set_size_bytes(size_bytes);
      r.set_placement(placement);
      absl::StatusOr<Buffer> buffer = client_.AllocBufferScoped(std::move(r));
      if (!buffer.ok()) return buffer.status();
      buffers_.push_back(*std::move(buffer));
    }
    return absl::OkStatus();
  }

  // Whole-page segments [first_page, first_page + pages) of a buffer.
  v1::MapSgRequest PageSegments(const Buffer& buffer, uint64_t first_page, uint64_t pages,
                                v1::SgMode mode, v1::DmaDirection direction) {
    v1::MapSgRequest r;
    r.set_device(device_);
    r.set_mode(mode);
    r.set_direction(direction);
    for (uint64_t p = first_page; p < first_page + pages; ++p) {
      v1::MemRef* s = r.add_segments();
      s->set_buffer_id(buffer.id());
      s->set_offset_bytes(p * kPage);
      s->set_length_bytes(kPage);
    }
    return r;
  }

  void Translate(const std::string& device, uint64_t iova, v1::AccessKind access) {
    v1::TranslateRequest t;
    t.set_device(device);
    t.set_iova(iova);
    t.set_length_bytes(kPage);
    t.set_access(access);
    if (std::optional<v1::TranslateResponse> r = Check(client_.Translate(std::move(t)))) {
      ++counters_.translates;
      if (r->faulted()) ++counters_.faults;
    }
  }

  template <typename Req, typename Resp>
  void Unmap(absl::StatusOr<Resp> (Client::*call)(Req) const, const std::string& device,
             uint64_t dma_addr) {
    Req r;
    r.set_device(device);
    r.set_dma_addr(dma_addr);
    if (Check((client_.*call)(std::move(r)))) ++counters_.unmaps;
  }

  Client client_;
  Client peer_client_;
  std::string device_;
  std::string peer_;
  std::vector<Buffer> buffers_;
  Counters counters_;
  Rng rng_;
  absl::flat_hash_set<std::string> reported_;
};

// A NIC: MERGE scatter lists over ring buffers, TX read and RX written.
class NicProfile final : public Profile {
 public:
  using Profile::Profile;
  absl::Status Setup() override { return AllocBuffers(8, 64 * 1024, v1::PLACEMENT_SCATTERED); }

 private:
  void Step() override {
    const Buffer& ring = buffers_[rng_.Below(buffers_.size())];
    const uint64_t pages = 1 + rng_.Below(8);
    const uint64_t first = rng_.Below(16 - pages + 1);
    const bool tx = rng_.Below(2) == 0;
    std::optional<v1::MapSgResponse> m = Check(client_.MapSg(
        PageSegments(ring, first, pages, v1::SG_MODE_MERGE,
                     tx ? v1::DMA_DIRECTION_TO_DEVICE : v1::DMA_DIRECTION_FROM_DEVICE)));
    if (!m) return;
    ++counters_.maps;
    for (int i = 0; i < 2; ++i) {
      Translate(device_, m->iova() + rng_.Below(pages) * kPage,
                tx ? v1::ACCESS_KIND_READ : v1::ACCESS_KIND_WRITE);
    }
    Unmap(&Client::UnmapSg, device_, m->iova());
  }
};

// NVMe: large MERGE lists (the 4 GiB segment boundary applies).
class NvmeProfile final : public Profile {
 public:
  using Profile::Profile;
  absl::Status Setup() override { return AllocBuffers(4, 1024 * 1024, v1::PLACEMENT_SCATTERED); }
  void Step() override {
    const Buffer& buffer = buffers_[rng_.Below(buffers_.size())];
    const uint64_t pages = 32 + rng_.Below(225);
    std::optional<v1::MapSgResponse> m = Check(client_.MapSg(
        PageSegments(buffer, 0, pages, v1::SG_MODE_MERGE, v1::DMA_DIRECTION_BIDIRECTIONAL)));
    if (!m) return;
    ++counters_.maps;
    Translate(device_, m->iova(), v1::ACCESS_KIND_WRITE);
    Translate(device_, m->iova() + (pages - 1) * kPage, v1::ACCESS_KIND_READ);
    Unmap(&Client::UnmapSg, device_, m->iova());
  }
};

// A GPU: dma_alloc of large buffers, one exported with GetSgTable and imported
// (CONTIGUOUS) into a peer device, as a dma-buf would be.
class GpuProfile final : public Profile {
 public:
  using Profile::Profile;
  void Step() override {
    v1::AllocRequest alloc;
    alloc.set_device(device_);
    alloc.set_size_bytes((1 + rng_.Below(4)) * 1024 * 1024);
    alloc.set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
    std::optional<v1::AllocResponse> a = Check(client_.Alloc(std::move(alloc)));
    if (!a) return;
    ++counters_.maps;
    Translate(device_, a->dma_addr(), v1::ACCESS_KIND_WRITE);
    v1::GetSgTableRequest sgt;
    sgt.set_device(device_);
    sgt.set_dma_addr(a->dma_addr());
    sgt.set_export_(true);
    if (std::optional<v1::GetSgTableResponse> t = Check(client_.GetSgTable(std::move(sgt)))) {
      v1::MapSgRequest import;
      import.set_device(peer_);
      import.set_import_token(t->export_token());
      import.set_mode(v1::SG_MODE_CONTIGUOUS);
      import.set_direction(v1::DMA_DIRECTION_TO_DEVICE);
      if (std::optional<v1::MapSgResponse> m = Check(peer_client_.MapSg(std::move(import)))) {
        ++counters_.maps;
        Translate(peer_, m->iova(), v1::ACCESS_KIND_READ);
        Unmap(&Client::UnmapSg, peer_, m->iova());
      }
    }
    Unmap(&Client::Free, device_, a->dma_addr());
  }
};

// A camera with no scatter-gather: each frame one IOVA-contiguous segment.
class CameraProfile final : public Profile {
 public:
  using Profile::Profile;
  absl::Status Setup() override { return AllocBuffers(4, 256 * 1024, v1::PLACEMENT_SCATTERED); }
  void Step() override {
    const Buffer& frame = buffers_[rng_.Below(buffers_.size())];
    std::optional<v1::MapSgResponse> m =
        Check(client_.MapSg(PageSegments(frame, 0, frame.size_bytes() / kPage,
                                         v1::SG_MODE_CONTIGUOUS, v1::DMA_DIRECTION_FROM_DEVICE)));
    if (!m) return;
    ++counters_.maps;
    Translate(device_, m->iova(), v1::ACCESS_KIND_WRITE);
    Translate(device_, m->iova() + m->iova_size_bytes() - kPage, v1::ACCESS_KIND_WRITE);
    Unmap(&Client::UnmapSg, device_, m->iova());
  }
};

// An untrusted external device: single pages, and now and then an access to
// an IOVA it no longer owns or a write to a read-only page, so faults happen.
class UntrustedProfile final : public Profile {
 public:
  using Profile::Profile;
  absl::Status Setup() override { return AllocBuffers(1, 64 * 1024, v1::PLACEMENT_SCATTERED); }
  void Step() override {
    v1::MapRequest map;
    map.set_device(device_);
    map.mutable_mem()->set_buffer_id(buffers_[0].id());
    map.mutable_mem()->set_offset_bytes(rng_.Below(16) * kPage);
    map.mutable_mem()->set_length_bytes(kPage);
    map.set_direction(v1::DMA_DIRECTION_TO_DEVICE);
    std::optional<v1::MapResponse> m = Check(client_.Map(std::move(map)));
    if (!m) return;
    ++counters_.maps;
    Translate(device_, m->dma_addr(), v1::ACCESS_KIND_READ);
    if (rng_.Below(10) == 0)
      Translate(device_, m->dma_addr(), v1::ACCESS_KIND_WRITE);  // permission fault
    Unmap(&Client::Unmap, device_, m->dma_addr());
    if (rng_.Below(5) == 0)
      Translate(device_, m->dma_addr(), v1::ACCESS_KIND_READ);  // use after unmap
  }
};

struct ProfileSpec {
  const char* name;
  const char* device;
  std::unique_ptr<Profile> (*make)(const Client&, const Client&, std::string, std::string);
};

template <typename P>
std::unique_ptr<Profile> Make(const Client& c, const Client& peer_client, std::string device,
                              std::string peer) {
  return std::make_unique<P>(c, peer_client, std::move(device), std::move(peer));
}

const std::vector<ProfileSpec>& Profiles() {
  static const auto* profiles = new std::vector<ProfileSpec>{
      {"nic", "nic0", Make<NicProfile>},
      {"nvme", "nvme0", Make<NvmeProfile>},
      {"gpu", "gpu0", Make<GpuProfile>},
      {"camera", "cam0", Make<CameraProfile>},
      {"untrusted", "tbt0", Make<UntrustedProfile>},
  };
  return *profiles;
}

void PrintSecond(Context& ctx, const std::string& profile, const std::string& device,
                 int64_t second, const Counters& total, const Counters& last) {
  const Counters d{total.steps - last.steps,
                   total.rpcs - last.rpcs,
                   total.maps - last.maps,
                   total.unmaps - last.unmaps,
                   total.translates - last.translates,
                   total.faults - last.faults,
                   total.errors - last.errors};
  if (ctx.printer->json()) {
    ctx.printer->out() << absl::StrFormat(
        "{\"t\":%d,\"profile\":\"%s\",\"device\":\"%s\",\"steps\":%d,\"rpcs\":%d,\"maps\":%d,"
        "\"unmaps\":%d,"
        "\"translates\":%d,\"faults\":%d,\"errors\":%d}\n",
        second, profile, device, d.steps, d.rpcs, d.maps, d.unmaps, d.translates, d.faults,
        d.errors);
  } else {
    ctx.printer->out() << absl::StrFormat(
        "t=%ds profile=%s device=%s steps=%d rpcs=%d maps=%d unmaps=%d translates=%d faults=%d "
        "errors=%d\n",
        second, profile, device, d.steps, d.rpcs, d.maps, d.unmaps, d.translates, d.faults,
        d.errors);
  }
  ctx.printer->out().flush();
}

absl::Status Simulate(Context& ctx, Args& args) {
  ASSIGN_OR_RETURN(std::string profile_name, args.String("profile"));
  ASSIGN_OR_RETURN(uint64_t seconds, args.U64Or("seconds", 0));
  ASSIGN_OR_RETURN(double rate, args.DoubleOr("rate", 50));
  std::string peer = args.StringOr("peer", "nic0");
  ASSIGN_OR_RETURN(uint64_t ttl_ms, args.U64Or("session_ttl_ms", 10000));
  RETURN_IF_ERROR(args.CheckAllUsed(ctx.name));
  const ProfileSpec* spec = nullptr;
  std::string names;
  for (const ProfileSpec& p : Profiles()) {
    if (p.name == profile_name) spec = &p;
    absl::StrAppend(&names, names.empty() ? "" : "|", p.name);
  }
  if (spec == nullptr)
    return InvalidField("--profile", profile_name, absl::StrCat("must be one of ", names));
  const std::string device = ctx.client.device().empty() ? spec->device : ctx.client.device();

  ASSIGN_OR_RETURN(std::unique_ptr<Session> session,
                   Session::Open(ctx.client, absl::Milliseconds(ttl_ms), device));
  std::unique_ptr<Profile> profile = spec->make(session->client(), ctx.client, device, peer);
  RETURN_IF_ERROR(profile->Setup());

  const absl::Time start = absl::Now();
  const absl::Duration step_period = rate > 0 ? absl::Seconds(1.0 / rate) : absl::ZeroDuration();
  absl::Time next_step = start;
  int64_t second = 1;
  Counters last;
  while (!ctx.interrupted->load() &&
         (seconds == 0 || absl::Now() - start < absl::Seconds(seconds))) {
    if (step_period > absl::ZeroDuration()) {
      const absl::Time now = absl::Now();
      if (now < next_step) absl::SleepFor(std::min(next_step - now, absl::Milliseconds(100)));
      if (absl::Now() < next_step) continue;
      next_step += step_period;
    }
    profile->RunStep();
    const Counters& c = profile->counters();
    if (absl::Now() - start >= absl::Seconds(second)) {
      PrintSecond(ctx, spec->name, device, second, c, last);
      last = c;
      ++second;
    }
  }
  profile.reset();  // unmap and free what is left, then close the session
  return session->Close();
}

}  // namespace

std::vector<Command> SimulateCommands() {
  return {
      {.name = "simulate",
       .summary = "a device traffic generator: one line of counts per second",
       .flags = {{.name = "profile",
                  .value = "nic|nvme|gpu|camera|untrusted",
                  .help = "the traffic: each profile acts as its device (or --device)",
                  .required = true},
                 {.name = "seconds", .value = "N", .help = "how long (default 0: until Ctrl-C)"},
                 {.name = "rate",
                  .value = "STEPS_PER_S",
                  .help = "steps per second (default 50; 0: flat out)"},
                 {.name = "peer",
                  .value = "DEV",
                  .help = "the device the gpu profile exports to (default nic0)"},
                 {.name = "session_ttl_ms",
                  .value = "N",
                  .help = "the lease of its session (default 10000)"}},
       .run = Simulate}};
}

}  // namespace iommu::client::ctl
