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

void AppendBe64(std::string& key, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) key.push_back(char((v >> shift) & 0xff));
}

uint64_t ReadBe64(std::string_view bytes) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | uint8_t(bytes[i]);
  return v;
}

std::string IdKey(char prefix, uint64_t id) {
  std::string key(1, prefix);
  AppendBe64(key, id);
  return key;
}

std::string MappingKey(uint64_t domain_id, uint64_t iova) {
  std::string key(1, kMappingKey);
  AppendBe64(key, domain_id);
  AppendBe64(key, iova);
  return key;
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
    r->set_msi_window_base(d.msi_window->first);
    r->set_msi_window_size_bytes(d.msi_window->second);
  }
}

template <typename Runs, typename Field>
void AddRuns(const Runs& runs, Field* out) {
  for (const core::PhysRun& run : runs) {
    out->Add(run.start.value());
    out->Add(run.size_bytes);
  }
}

void EncodeMapping(const core::MappingState& m, pb::MappingRecord* r) {
  r->set_mapping_id(m.mapping_id);
  r->set_kind(ToProto(m.kind));
  r->set_device(m.device);
  r->set_session_id(m.session_id);
  r->set_iova(m.iova.value());
  r->set_iova_size_bytes(m.iova_size_bytes);
  r->set_iova_from_allocator(m.iova_from_allocator);
  r->set_dma_offset(m.dma_offset);
  r->set_prot(uint32_t(m.prot));
  for (const auto& [iova, run] : m.pt_ranges) {
    r->add_pt_ranges(iova.value());
    r->add_pt_ranges(run.start.value());
    r->add_pt_ranges(run.size_bytes);
  }
  for (const core::internal::MappedPiece& p : m.pieces) {
    r->add_pieces(p.iova.value());
    r->add_pieces(p.phys.value());
    r->add_pieces(p.size_bytes);
  }
  for (const core::internal::BufferRef& b : m.buffer_refs) r->add_buffer_ids(b.id);
  r->set_owned_buffer_id(m.owned_buffer_id);
  r->set_export_id(m.export_id);
  r->set_mapped_bytes(m.mapped_bytes);
  for (const core::DmaSegment& s : m.segments) {
    r->add_segments(s.dma_addr.value());
    r->add_segments(s.length_bytes);
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
  pb::MappingRecord r;
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
        d.msi_window = std::make_pair(r.msi_window_base(), r.msi_window_size_bytes());
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
    default:
      return absl::InvalidArgumentError(
          absl::StrFormat("record %s: unknown kind of record", DescribeKey(key)));
  }
}

}  // namespace

void EncodedChanges::Put(std::string key, std::string_view message) {
  std::string value(4 + message.size(), '\0');
  const uint32_t crc = RecordCrc(key, message);
  for (int i = 0; i < 4; ++i) value[i] = char((crc >> (8 * i)) & 0xff);
  std::memcpy(value.data() + 4, message.data(), message.size());
  keys_.push_back(std::move(key));
  values_.push_back(std::move(value));
  is_delete_.push_back(false);
}

void EncodedChanges::Delete(std::string key) {
  keys_.push_back(std::move(key));
  values_.emplace_back();
  is_delete_.push_back(true);
}

void EncodedChanges::Encode(const core::StateChanges& c) {
  keys_.clear();
  values_.clear();
  is_delete_.clear();
  writes_.clear();
  // Deletes of a kind come before its puts: a commit never deletes what it
  // put (the broker sends each key once), so the order is only for clarity.
  for (const auto& [domain_id, iova] : c.mapping_deletes)
    Delete(MappingKey(domain_id, iova.value()));
  if (!c.mapping_puts.empty()) {
    pb::MappingRecord r;
    for (const auto& [domain_id, m] : c.mapping_puts) {
      r.Clear();
      EncodeMapping(*m, &r);
      r.SerializeToString(&scratch_);
      Put(MappingKey(domain_id, m->iova.value()), scratch_);
    }
  }
  for (uint64_t id : c.domain_deletes) Delete(IdKey(kDomainKey, id));
  for (const core::DomainState& d : c.domain_puts) {
    pb::DomainRecord r;
    EncodeDomain(d, &r);
    r.SerializeToString(&scratch_);
    Put(IdKey(kDomainKey, d.domain_id), scratch_);
  }
  for (const core::AttachmentState& a : c.attachment_puts) {
    pb::AttachmentRecord r;
    r.set_device(a.device);
    r.set_domain_id(a.domain_id);
    r.SerializeToString(&scratch_);
    Put(std::string(1, kAttachmentKey) + a.device, scratch_);
  }
  for (uint64_t id : c.buffer_deletes) Delete(IdKey(kBufferKey, id));
  for (const core::BufferState& b : c.buffer_puts) {
    pb::BufferRecord r;
    r.set_buffer_id(b.buffer_id);
    r.set_device(b.device);
    r.set_session_id(b.session_id);
    r.set_pool(b.pool);
    r.set_placement(ToProto(b.placement));
    AddRuns(b.runs, r.mutable_runs());
    r.set_backs_alloc(b.backs_alloc);
    r.SerializeToString(&scratch_);
    Put(IdKey(kBufferKey, b.buffer_id), scratch_);
  }
  for (uint64_t id : c.export_deletes) Delete(IdKey(kExportKey, id));
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
    r.SerializeToString(&scratch_);
    Put(IdKey(kExportKey, e.export_id), scratch_);
  }
  for (uint64_t id : c.session_deletes) Delete(IdKey(kSessionKey, id));
  for (const core::SessionState& s : c.session_puts) {
    pb::SessionRecord r;
    r.set_session_id(s.session_id);
    r.set_device(s.device);
    r.set_ttl_ms(absl::ToInt64Milliseconds(s.ttl));
    r.SerializeToString(&scratch_);
    Put(IdKey(kSessionKey, s.session_id), scratch_);
  }
  for (const auto& [counter, value] : c.counters) {
    pb::CounterRecord r;
    r.set_value(value);
    r.SerializeToString(&scratch_);
    Put(std::string{kCounterKey, char(counter)}, scratch_);
  }
  if (c.session_key) {
    pb::SessionKeyRecord r;
    r.set_key0(c.session_key->first);
    r.set_key1(c.session_key->second);
    r.SerializeToString(&scratch_);
    Put(std::string(1, kSessionKeyKey), scratch_);
  }
  writes_.reserve(keys_.size());
  for (size_t i = 0; i < keys_.size(); ++i) {
    KvWrite w{.key = keys_[i]};
    if (!is_delete_[i]) w.value = std::string_view(values_[i]);
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
    case kMappingKey:
      return key.size() >= 17 ? absl::StrFormat("m/%d/%#x (mapping)", ReadBe64(key.substr(1)),
                                                ReadBe64(key.substr(9)))
                              : "m/? (mapping)";
    default:
      return absl::StrCat("\"", absl::CHexEscape(absl::string_view(key.data(), key.size())), "\"");
  }
}

}  // namespace iommu::store
