// SPDX-License-Identifier: Apache-2.0
#include "store/state_codec.h"

#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "iommu/state/v1/records.pb.h"
#include "store/crc32c.h"

namespace iommu::store {
namespace {

namespace pb = ::iommu::state::v1;
using core::StateCounter;

constexpr char kSchemaKey = 'v';
constexpr char kCounterKey = 'c';
constexpr char kSessionKeyKey = 'k';
constexpr char kDomainKey = 'd';
constexpr char kAttachmentKey = 'a';
constexpr char kBufferKey = 'b';
constexpr char kExportKey = 'e';
constexpr char kSessionKey = 's';
constexpr char kMappingKey = 'm';
constexpr char kRequestKey = 'r';

void AppendRequestKey(std::string& key, std::string_view principal, std::string_view id) {
  key.append(principal);
  key.push_back('\0');
  key.append(id);
}

void AppendBe64(std::string& key, uint64_t v) {
  const uint64_t be = __builtin_bswap64(v);
  key.append(reinterpret_cast<const char*>(&be), 8);
}

// --- protobuf wire format, for the mapping record ---------------------------------

constexpr uint32_t kVarint = 0, kLengthDelimited = 2;

// Writes the wire format through a raw pointer, into room the caller
// reserved (no bounds checks, no reallocation on the commit path).
class WireWriter {
 public:
  explicit WireWriter(char* p) : p_(p) {}
  char* end() const { return p_; }

  void Varint(uint64_t v) {
    while (v >= 0x80) {
      *p_++ = char(v | 0x80);
      v >>= 7;
    }
    *p_++ = char(v);
  }
  // proto3: a zero scalar is not written.
  void Field(uint32_t field, uint64_t v) {
    if (v == 0) return;
    Varint((field << 3) | kVarint);
    Varint(v);
  }
  void Bytes(uint32_t field, std::string_view bytes) {
    if (bytes.empty()) return;
    Varint((field << 3) | kLengthDelimited);
    Varint(bytes.size());
    std::memcpy(p_, bytes.data(), bytes.size());
    p_ += bytes.size();
  }
  // A packed repeated uint64 field of the values visit(emit) emits.
  template <typename Visit>
  void Packed(uint32_t field, Visit visit) {
    size_t size = 0;
    visit([&](uint64_t v) { size += VarintSize(v); });
    if (size == 0) return;
    Varint((field << 3) | kLengthDelimited);
    Varint(size);
    visit([&](uint64_t v) { Varint(v); });
  }

 private:
  static size_t VarintSize(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
      v >>= 7;
      ++n;
    }
    return n;
  }

  char* p_;
};

// At most this many bytes of one field: a tag and a 10-byte varint.
constexpr size_t kMaxFieldBytes = 11;

uint64_t ReadBe64(std::string_view bytes) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | uint8_t(bytes[i]);
  return v;
}

uint32_t RecordCrc(std::string_view key, std::string_view message) {
  return Crc32c(message, Crc32c(key));
}

pb::DomainType ToProto(core::DomainType t) {
  switch (t) {
    case core::DomainType::kDma:
      return pb::DOMAIN_TYPE_DMA;
    case core::DomainType::kDmaFq:
      return pb::DOMAIN_TYPE_DMA_FQ;
    case core::DomainType::kUnmanaged:
      return pb::DOMAIN_TYPE_UNMANAGED;
    case core::DomainType::kIdentity:
      return pb::DOMAIN_TYPE_IDENTITY;
    case core::DomainType::kBlocked:
      return pb::DOMAIN_TYPE_BLOCKED;
  }
  return pb::DOMAIN_TYPE_UNSPECIFIED;
}

pb::Placement ToProto(core::Placement p) {
  switch (p) {
    case core::Placement::kScattered:
      return pb::PLACEMENT_SCATTERED;
    case core::Placement::kContiguous:
      return pb::PLACEMENT_CONTIGUOUS;
    case core::Placement::kHuge:
      return pb::PLACEMENT_HUGE;
  }
  return pb::PLACEMENT_UNSPECIFIED;
}

pb::MappingKind ToProto(core::internal::MappingKind k) {
  using K = core::internal::MappingKind;
  switch (k) {
    case K::kMap:
      return pb::MAPPING_KIND_MAP;
    case K::kMapSg:
      return pb::MAPPING_KIND_MAP_SG;
    case K::kAlloc:
      return pb::MAPPING_KIND_ALLOC;
    case K::kMapAt:
      return pb::MAPPING_KIND_MAP_AT;
    case K::kMsi:
      return pb::MAPPING_KIND_MSI;
    case K::kImport:
      return pb::MAPPING_KIND_IMPORT;
  }
  return pb::MAPPING_KIND_UNSPECIFIED;
}

// --- encoding --------------------------------------------------------------------

void EncodeDomain(const core::DomainState& d, pb::DomainRecord* r) {
  r->set_domain_id(d.domain_id);
  r->set_smmu(d.smmu);
  r->set_type(ToProto(d.type));
  r->set_granule_bytes(d.granule_bytes);
  r->set_owner(d.owner);
  r->set_default_of(d.default_of);
  for (const std::string& g : d.granted) r->add_granted(g);
  r->set_session_id(d.session_id);
  r->set_mapping_ids_reserved(d.mapping_ids_reserved);
  if (d.msi_window) {
    r->set_has_msi_window(true);
    r->set_msi_window_base(d.msi_window->base.value());
    r->set_msi_window_size_bytes(d.msi_window->size_bytes);
  }
}

template <typename Runs, typename Field>
void AddRuns(const Runs& runs, Field* out) {
  for (const core::PhysRun& run : runs) {
    out->Add(run.start.value());
    out->Add(run.size_bytes);
  }
}

// --- decoding --------------------------------------------------------------------

absl::Status Damaged(std::string_view key, absl::string_view why) {
  return absl::DataLossError(absl::StrFormat("record %s: %s", DescribeKey(key), why));
}

template <typename Message>
absl::Status Parse(std::string_view key, std::string_view bytes, Message* m) {
  if (!m->ParseFromArray(bytes.data(), int(bytes.size()))) {
    return Damaged(key, absl::StrFormat("not a valid %s", Message::descriptor()->name()));
  }
  return absl::OkStatus();
}

absl::Status KeyLength(std::string_view key, size_t want) {
  if (key.size() != want) {
    return Damaged(key, absl::StrFormat("key of %d bytes, want %d", key.size(), want));
  }
  return absl::OkStatus();
}

absl::Status Pairs(std::string_view key, int n, int arity, absl::string_view field) {
  if (n % arity != 0) {
    return Damaged(key,
                   absl::StrFormat("%s holds %d values, not a multiple of %d", field, n, arity));
  }
  return absl::OkStatus();
}

absl::StatusOr<core::DomainType> FromProto(std::string_view key, pb::DomainType t) {
  switch (t) {
    case pb::DOMAIN_TYPE_DMA:
      return core::DomainType::kDma;
    case pb::DOMAIN_TYPE_DMA_FQ:
      return core::DomainType::kDmaFq;
    case pb::DOMAIN_TYPE_UNMANAGED:
      return core::DomainType::kUnmanaged;
    case pb::DOMAIN_TYPE_IDENTITY:
      return core::DomainType::kIdentity;
    case pb::DOMAIN_TYPE_BLOCKED:
      return core::DomainType::kBlocked;
    default:
      return Damaged(key, absl::StrFormat("unknown domain type %d", int(t)));
  }
}

absl::StatusOr<core::Placement> FromProto(std::string_view key, pb::Placement p) {
  switch (p) {
    case pb::PLACEMENT_SCATTERED:
      return core::Placement::kScattered;
    case pb::PLACEMENT_CONTIGUOUS:
      return core::Placement::kContiguous;
    case pb::PLACEMENT_HUGE:
      return core::Placement::kHuge;
    default:
      return Damaged(key, absl::StrFormat("unknown placement %d", int(p)));
  }
}

absl::StatusOr<core::internal::MappingKind> FromProto(std::string_view key, pb::MappingKind k) {
  using K = core::internal::MappingKind;
  switch (k) {
    case pb::MAPPING_KIND_MAP:
      return K::kMap;
    case pb::MAPPING_KIND_MAP_SG:
      return K::kMapSg;
    case pb::MAPPING_KIND_ALLOC:
      return K::kAlloc;
    case pb::MAPPING_KIND_MAP_AT:
      return K::kMapAt;
    case pb::MAPPING_KIND_MSI:
      return K::kMsi;
    case pb::MAPPING_KIND_IMPORT:
      return K::kImport;
    default:
      return Damaged(key, absl::StrFormat("unknown mapping kind %d", int(k)));
  }
}

template <typename Field>
std::vector<core::PhysRun> RunsFrom(const Field& f) {
  std::vector<core::PhysRun> runs;
  for (int i = 0; i + 1 < f.size(); i += 2) runs.push_back({core::PhysAddr(f[i]), f[i + 1]});
  return runs;
}

absl::Status DecodeMapping(std::string_view key, std::string_view bytes,
                           core::DurableState* state) {
  if (absl::Status s = KeyLength(key, 17); !s.ok()) return s;
  // One message per thread, cleared for each record: a recovery of a
  // million mappings reuses its repeated fields' storage.
  thread_local pb::MappingRecord r;
  r.Clear();
  if (absl::Status s = Parse(key, bytes, &r); !s.ok()) return s;
  const uint64_t domain_id = ReadBe64(key.substr(1));
  const uint64_t iova = ReadBe64(key.substr(9));
  if (r.iova() != iova) return Damaged(key, absl::StrFormat("holds IOVA %#x", r.iova()));
  for (auto [field, n, arity] :
       {std::tuple{"pt_ranges", r.pt_ranges_size(), 3}, std::tuple{"pieces", r.pieces_size(), 3},
        std::tuple{"segments", r.segments_size(), 2}}) {
    if (absl::Status s = Pairs(key, n, arity, field); !s.ok()) return s;
  }
  if (r.pt_ranges_size() == 0) return Damaged(key, "no page-table ranges");
  auto kind = FromProto(key, r.kind());
  if (!kind.ok()) return kind.status();
  core::MappingState m;
  m.mapping_id = r.mapping_id();
  m.kind = *kind;
  m.device = r.device();
  m.session_id = r.session_id();
  m.iova = core::Iova(iova);
  m.iova_size_bytes = r.iova_size_bytes();
  m.iova_from_allocator = r.iova_from_allocator();
  m.dma_offset = r.dma_offset();
  m.prot = core::Prot(r.prot());
  for (int i = 0; i < r.pt_ranges_size(); i += 3) {
    m.pt_ranges.push_back(
        {core::Iova(r.pt_ranges(i)), {core::PhysAddr(r.pt_ranges(i + 1)), r.pt_ranges(i + 2)}});
  }
  for (int i = 0; i < r.pieces_size(); i += 3) {
    m.pieces.push_back({core::Iova(r.pieces(i)), core::PhysAddr(r.pieces(i + 1)), r.pieces(i + 2)});
  }
  for (uint64_t id : r.buffer_ids()) m.buffer_refs.push_back({.id = id});
  m.owned_buffer_id = r.owned_buffer_id();
  m.export_id = r.export_id();
  m.mapped_bytes = r.mapped_bytes();
  for (int i = 0; i < r.segments_size(); i += 2) {
    m.segments.push_back({core::Iova(r.segments(i)), r.segments(i + 1)});
  }
  state->mappings.emplace_back(domain_id, std::move(m));
  return absl::OkStatus();
}

absl::Status DecodeRecord(std::string_view key, std::string_view bytes, core::DurableState* state,
                          uint32_t* schema_version) {
  switch (key[0]) {
    case kSchemaKey: {
      pb::SchemaRecord r;
      if (absl::Status s = Parse(key, bytes, &r); !s.ok()) return s;
      *schema_version = r.version();
      return absl::OkStatus();
    }
    case kCounterKey: {
      if (absl::Status s = KeyLength(key, 2); !s.ok()) return s;
      pb::CounterRecord r;
      if (absl::Status s = Parse(key, bytes, &r); !s.ok()) return s;
      state->counters.push_back({StateCounter(uint8_t(key[1])), r.value()});
      return absl::OkStatus();
    }
    case kSessionKeyKey: {
      pb::SessionKeyRecord r;
      if (absl::Status s = Parse(key, bytes, &r); !s.ok()) return s;
      state->session_key = std::make_pair(r.key0(), r.key1());
      return absl::OkStatus();
    }
    case kDomainKey: {
      if (absl::Status s = KeyLength(key, 9); !s.ok()) return s;
      pb::DomainRecord r;
      if (absl::Status s = Parse(key, bytes, &r); !s.ok()) return s;
      if (r.domain_id() != ReadBe64(key.substr(1))) return Damaged(key, "holds another id");
      auto type = FromProto(key, r.type());
      if (!type.ok()) return type.status();
      core::DomainState d{.domain_id = r.domain_id(),
                          .smmu = r.smmu(),
                          .type = *type,
                          .granule_bytes = r.granule_bytes(),
                          .owner = r.owner(),
                          .default_of = r.default_of(),
                          .granted = {r.granted().begin(), r.granted().end()},
                          .session_id = r.session_id(),
                          .mapping_ids_reserved = r.mapping_ids_reserved()};
      if (r.has_msi_window()) {
        d.msi_window = core::IovaWindow{.base = core::Iova(r.msi_window_base()),
                                        .size_bytes = r.msi_window_size_bytes()};
      }
      state->domains.push_back(std::move(d));
      return absl::OkStatus();
    }
    case kAttachmentKey: {
      pb::AttachmentRecord r;
      if (absl::Status s = Parse(key, bytes, &r); !s.ok()) return s;
      if (r.device() != key.substr(1)) return Damaged(key, "holds another device");
      state->attachments.push_back({r.device(), r.domain_id()});
      return absl::OkStatus();
    }
    case kBufferKey: {
      if (absl::Status s = KeyLength(key, 9); !s.ok()) return s;
      pb::BufferRecord r;
      if (absl::Status s = Parse(key, bytes, &r); !s.ok()) return s;
      if (r.buffer_id() != ReadBe64(key.substr(1))) return Damaged(key, "holds another id");
      if (absl::Status s = Pairs(key, r.runs_size(), 2, "runs"); !s.ok()) return s;
      auto placement = FromProto(key, r.placement());
      if (!placement.ok()) return placement.status();
      state->buffers.push_back({.buffer_id = r.buffer_id(),
                                .device = r.device(),
                                .session_id = r.session_id(),
                                .pool = r.pool(),
                                .placement = *placement,
                                .runs = RunsFrom(r.runs()),
                                .backs_alloc = r.backs_alloc()});
      return absl::OkStatus();
    }
    case kExportKey: {
      if (absl::Status s = KeyLength(key, 9); !s.ok()) return s;
      pb::ExportRecord r;
      if (absl::Status s = Parse(key, bytes, &r); !s.ok()) return s;
      if (r.export_id() != ReadBe64(key.substr(1))) return Damaged(key, "holds another id");
      if (absl::Status s = Pairs(key, r.chunks_size(), 2, "chunks"); !s.ok()) return s;
      state->exports.push_back(
          {.export_id = r.export_id(),
           .token = r.token(),
           .exporter = r.exporter(),
           .exporter_granule = r.exporter_granule_bytes(),
           .chunks = RunsFrom(r.chunks()),
           .buffer_ids = {r.buffer_ids().begin(), r.buffer_ids().end()},
           .importers_allowed = {r.importers_allowed().begin(), r.importers_allowed().end()},
           .writable = r.writable()});
      return absl::OkStatus();
    }
    case kSessionKey: {
      if (absl::Status s = KeyLength(key, 9); !s.ok()) return s;
      pb::SessionRecord r;
      if (absl::Status s = Parse(key, bytes, &r); !s.ok()) return s;
      if (r.session_id() != ReadBe64(key.substr(1))) return Damaged(key, "holds another id");
      if (r.ttl_ms() <= 0) return Damaged(key, absl::StrFormat("ttl_ms %d", r.ttl_ms()));
      state->sessions.push_back({.session_id = r.session_id(),
                                 .device = r.device(),
                                 .ttl = absl::Milliseconds(r.ttl_ms())});
      return absl::OkStatus();
    }
    case kMappingKey:
      return DecodeMapping(key, bytes, state);
    case kRequestKey: {
      pb::RequestRecord r;
      if (absl::Status s = Parse(key, bytes, &r); !s.ok()) return s;
      std::string want(1, kRequestKey);
      AppendRequestKey(want, r.principal(), r.request_id());
      if (key != want) return Damaged(key, "holds another request");
      state->requests.push_back({.principal = r.principal(),
                                 .request_id = r.request_id(),
                                 .fingerprint = r.fingerprint(),
                                 .reply = r.reply(),
                                 .recorded = absl::FromUnixNanos(r.recorded_unix_nanos())});
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrFormat("record %s: unknown kind of record", DescribeKey(key)));
  }
}

}  // namespace

size_t EncodedChanges::BeginKey(char prefix) {
  const size_t at = buf_.size();
  buf_.push_back(prefix);
  return at;
}

void EncodedChanges::Put(size_t key_at, std::string_view message) {
  const size_t key_size = buf_.size() - key_at;
  const size_t value_at = buf_.size();
  const uint32_t crc = RecordCrc(std::string_view(buf_).substr(key_at, key_size), message);
  char frame[4];
  for (int i = 0; i < 4; ++i) frame[i] = char((crc >> (8 * i)) & 0xff);
  buf_.append(frame, 4);
  buf_.append(message);
  entries_.push_back({key_at, key_size, value_at, buf_.size() - value_at, false});
}

void EncodedChanges::Delete(size_t key_at) {
  entries_.push_back({key_at, buf_.size() - key_at, 0, 0, true});
}

template <typename Message>
void EncodedChanges::PutMessage(size_t key_at, const Message& m) {
  m.SerializeToString(&scratch_);
  Put(key_at, scratch_);
}

void AppendMappingRecord(const core::MappingState& m, std::string* out) {
  const size_t bound = kMaxFieldBytes * (16 + 3 * m.pt_ranges.size() + 3 * m.pieces.size() +
                                         m.buffer_refs.size() + 2 * m.segments.size()) +
                       m.device.size();
  const size_t at = out->size();
  out->resize(at + bound);
  WireWriter w(out->data() + at);
  w.Field(1, m.mapping_id);
  w.Field(2, uint64_t(ToProto(m.kind)));
  w.Bytes(3, m.device);
  w.Field(4, m.session_id);
  w.Field(5, m.iova.value());
  w.Field(6, m.iova_size_bytes);
  w.Field(7, m.iova_from_allocator ? 1 : 0);
  w.Field(8, m.dma_offset);
  w.Field(9, uint32_t(m.prot));
  w.Packed(10, [&](auto emit) {
    for (const auto& [iova, run] : m.pt_ranges) {
      emit(iova.value());
      emit(run.start.value());
      emit(run.size_bytes);
    }
  });
  w.Packed(11, [&](auto emit) {
    for (const core::internal::MappedPiece& p : m.pieces) {
      emit(p.iova.value());
      emit(p.phys.value());
      emit(p.size_bytes);
    }
  });
  w.Packed(12, [&](auto emit) {
    for (const core::internal::BufferRef& b : m.buffer_refs) emit(b.id);
  });
  w.Field(13, m.owned_buffer_id);
  w.Field(14, m.export_id);
  w.Field(15, m.mapped_bytes);
  w.Packed(16, [&](auto emit) {
    for (const core::DmaSegment& seg : m.segments) {
      emit(seg.dma_addr.value());
      emit(seg.length_bytes);
    }
  });
  out->resize(size_t(w.end() - out->data()));
}

void EncodedChanges::PutMapping(size_t key_at, const core::MappingState& m) {
  const size_t key_size = buf_.size() - key_at;
  const size_t value_at = buf_.size();
  buf_.append(4, '\0');  // the frame's checksum, written below
  AppendMappingRecord(m, &buf_);
  const std::string_view all(buf_);
  const uint32_t crc = RecordCrc(all.substr(key_at, key_size), all.substr(value_at + 4));
  for (int i = 0; i < 4; ++i) buf_[value_at + i] = char((crc >> (8 * i)) & 0xff);
  entries_.push_back({key_at, key_size, value_at, buf_.size() - value_at, false});
}

void EncodedChanges::Encode(const core::StateChanges& c) {
  buf_.clear();
  entries_.clear();
  writes_.clear();
  for (const auto& [domain_id, iova] : c.mapping_deletes) {
    const size_t at = BeginKey(kMappingKey);
    AppendBe64(buf_, domain_id);
    AppendBe64(buf_, iova.value());
    Delete(at);
  }
  for (const auto& [domain_id, m] : c.mapping_puts) {
    const size_t at = BeginKey(kMappingKey);
    AppendBe64(buf_, domain_id);
    AppendBe64(buf_, m->iova.value());
    PutMapping(at, *m);
  }
  for (uint64_t id : c.domain_deletes) {
    const size_t at = BeginKey(kDomainKey);
    AppendBe64(buf_, id);
    Delete(at);
  }
  for (const core::DomainState& d : c.domain_puts) {
    pb::DomainRecord r;
    EncodeDomain(d, &r);
    const size_t at = BeginKey(kDomainKey);
    AppendBe64(buf_, d.domain_id);
    PutMessage(at, r);
  }
  for (const core::AttachmentState& a : c.attachment_puts) {
    pb::AttachmentRecord r;
    r.set_device(a.device);
    r.set_domain_id(a.domain_id);
    const size_t at = BeginKey(kAttachmentKey);
    buf_.append(a.device);
    PutMessage(at, r);
  }
  for (uint64_t id : c.buffer_deletes) {
    const size_t at = BeginKey(kBufferKey);
    AppendBe64(buf_, id);
    Delete(at);
  }
  for (const core::BufferState& b : c.buffer_puts) {
    pb::BufferRecord r;
    r.set_buffer_id(b.buffer_id);
    r.set_device(b.device);
    r.set_session_id(b.session_id);
    r.set_pool(b.pool);
    r.set_placement(ToProto(b.placement));
    AddRuns(b.runs, r.mutable_runs());
    r.set_backs_alloc(b.backs_alloc);
    const size_t at = BeginKey(kBufferKey);
    AppendBe64(buf_, b.buffer_id);
    PutMessage(at, r);
  }
  for (uint64_t id : c.export_deletes) {
    const size_t at = BeginKey(kExportKey);
    AppendBe64(buf_, id);
    Delete(at);
  }
  for (const core::ExportState& e : c.export_puts) {
    pb::ExportRecord r;
    r.set_export_id(e.export_id);
    r.set_token(e.token);
    r.set_exporter(e.exporter);
    r.set_exporter_granule_bytes(e.exporter_granule);
    AddRuns(e.chunks, r.mutable_chunks());
    for (uint64_t id : e.buffer_ids) r.add_buffer_ids(id);
    for (const std::string& d : e.importers_allowed) r.add_importers_allowed(d);
    r.set_writable(e.writable);
    const size_t at = BeginKey(kExportKey);
    AppendBe64(buf_, e.export_id);
    PutMessage(at, r);
  }
  for (uint64_t id : c.session_deletes) {
    const size_t at = BeginKey(kSessionKey);
    AppendBe64(buf_, id);
    Delete(at);
  }
  for (const core::SessionState& x : c.session_puts) {
    pb::SessionRecord r;
    r.set_session_id(x.session_id);
    r.set_device(x.device);
    r.set_ttl_ms(absl::ToInt64Milliseconds(x.ttl));
    const size_t at = BeginKey(kSessionKey);
    AppendBe64(buf_, x.session_id);
    PutMessage(at, r);
  }
  for (const auto& [counter, value] : c.counters) {
    pb::CounterRecord r;
    r.set_value(value);
    const size_t at = BeginKey(kCounterKey);
    buf_.push_back(char(counter));
    PutMessage(at, r);
  }
  for (const auto& [principal, id] : c.request_deletes) {
    const size_t at = BeginKey(kRequestKey);
    AppendRequestKey(buf_, principal, id);
    Delete(at);
  }
  if (const core::RequestState* q = c.request_put) {
    pb::RequestRecord r;
    r.set_principal(q->principal);
    r.set_request_id(q->request_id);
    r.set_fingerprint(q->fingerprint);
    r.set_reply(q->reply);
    r.set_recorded_unix_nanos(absl::ToUnixNanos(q->recorded));
    const size_t at = BeginKey(kRequestKey);
    AppendRequestKey(buf_, q->principal, q->request_id);
    PutMessage(at, r);
  }
  if (c.session_key) {
    pb::SessionKeyRecord r;
    r.set_key0(c.session_key->first);
    r.set_key1(c.session_key->second);
    PutMessage(BeginKey(kSessionKeyKey), r);
  }
  // Views last: buf_ no longer moves.
  const std::string_view all(buf_);
  writes_.reserve(entries_.size());
  for (const Entry& e : entries_) {
    KvWrite w{.key = all.substr(e.key_at, e.key_size)};
    if (!e.is_delete) w.value = all.substr(e.value_at, e.value_size);
    writes_.push_back(w);
  }
}

KvWrite SchemaWrite(std::string* key, std::string* value, std::string_view written_by) {
  pb::SchemaRecord r;
  r.set_version(kSchemaVersion);
  r.set_written_by(std::string(written_by));
  std::string message;
  r.SerializeToString(&message);
  *key = std::string(1, kSchemaKey);
  const uint32_t crc = RecordCrc(*key, message);
  value->assign(4, '\0');
  for (int i = 0; i < 4; ++i) (*value)[i] = char((crc >> (8 * i)) & 0xff);
  value->append(message);
  return KvWrite{.key = *key, .value = std::string_view(*value)};
}

absl::Status DecodeEntry(std::string_view key, std::string_view value, core::DurableState* state,
                         uint32_t* schema_version) {
  if (key.empty()) return absl::DataLossError("a record with an empty key");
  if (value.size() < 4) return Damaged(key, "value shorter than its checksum");
  uint32_t stored = 0;
  for (int i = 0; i < 4; ++i) stored |= uint32_t(uint8_t(value[i])) << (8 * i);
  const std::string_view message = value.substr(4);
  if (const uint32_t crc = RecordCrc(key, message); crc != stored) {
    return Damaged(key,
                   absl::StrFormat("checksum mismatch (stored %08x, computed %08x)", stored, crc));
  }
  return DecodeRecord(key, message, state, schema_version);
}

std::string DescribeKey(std::string_view key) {
  if (key.empty()) return "\"\"";
  auto id = [&](size_t at) {
    return key.size() >= at + 8 ? absl::StrFormat("%d", ReadBe64(key.substr(at))) : "?";
  };
  switch (key[0]) {
    case kSchemaKey:
      return "v (schema)";
    case kCounterKey:
      return key.size() == 2 ? absl::StrFormat("c/%d (counter)", int(uint8_t(key[1])))
                             : "c/? (counter)";
    case kSessionKeyKey:
      return "k (session key)";
    case kDomainKey:
      return absl::StrCat("d/", id(1), " (domain)");
    case kAttachmentKey:
      return absl::StrCat("a/", absl::CEscape(absl::string_view(key.data() + 1, key.size() - 1)),
                          " (attachment)");
    case kBufferKey:
      return absl::StrCat("b/", id(1), " (buffer)");
    case kExportKey:
      return absl::StrCat("e/", id(1), " (export)");
    case kSessionKey:
      return absl::StrCat("s/", id(1), " (session)");
    case kRequestKey: {
      const absl::string_view rest(key.data() + 1, key.size() - 1);
      const size_t nul = rest.find('\0');
      if (nul == absl::string_view::npos)
        return absl::StrCat("r/", absl::CHexEscape(rest), " (request)");
      return absl::StrCat("r/", absl::CHexEscape(rest.substr(0, nul)), "/",
                          absl::CHexEscape(rest.substr(nul + 1)), " (request)");
    }
    case kMappingKey:
      return key.size() >= 17 ? absl::StrFormat("m/%d/%#x (mapping)", ReadBe64(key.substr(1)),
                                                ReadBe64(key.substr(9)))
                              : "m/? (mapping)";
    default:
      return absl::StrCat("\"", absl::CHexEscape(absl::string_view(key.data(), key.size())), "\"");
  }
}

}  // namespace iommu::store
