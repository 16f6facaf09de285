#include "server/request_scan.h"

#include <grpcpp/support/proto_buffer_reader.h>

#include <algorithm>
#include <cassert>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "server/grpc_metrics.h"

namespace iommu::server {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;

struct RequestScanner::FieldPlan {
  const FieldDescriptor* field = nullptr;
  bool is_string = false;       // else a message
  const Plan* child = nullptr;  // a message's plan
  int counted = -1;             // Counted index, for a counted repeated field
  int slot = -1;                // its index among the parent's counted fields
  uint64_t max_entries = 0;
  std::string limit;  // "--max_sg_segments=65536", for messages
};

struct RequestScanner::Plan {
  const Descriptor* type = nullptr;
  std::vector<FieldPlan> fields;
  std::vector<int> by_number;  // field number -> index in fields, or -1
  int counted_slots = 0;
  // Whether anything inside needs reading (a string or a counted field);
  // otherwise the message is skipped whole.
  bool needs_scan = true;

  const FieldPlan* Find(int number) const {
    if (number < 0 || static_cast<size_t>(number) >= by_number.size()) return nullptr;
    const int i = by_number[number];
    return i < 0 ? nullptr : &fields[i];
  }
};

// Where the walk is, for error messages: a field and, for a repeated one,
// the entry's index.
struct RequestScanner::Frame {
  const FieldDescriptor* field;
  int64_t index;  // -1: a singular field
};

namespace {

struct CountedField {
  const char* full_name;
  Counted counted;
};
constexpr CountedField kCountedFields[] = {
    {"iommu.v1.BatchRequest.ops", Counted::kBatchOps},
    {"iommu.v1.MapSgRequest.segments", Counted::kSgSegments},
    {"iommu.v1.TranslateBatchRequest.accesses", Counted::kTranslateAccesses},
    {"iommu.v1.GetSgTableRequest.export_importers", Counted::kExportImporters},
    {"iommu.v1.CreateDomainRequest.granted_devices", Counted::kGrantedDevices},
};

}  // namespace

RequestScanner::RequestScanner(const Limits& limits, size_t topology_devices)
    : limits_(limits), topology_devices_(topology_devices) {
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  for (const char* name : ServiceNames()) {
    const google::protobuf::ServiceDescriptor* service = pool->FindServiceByName(name);
    if (service == nullptr) continue;  // health, served by gRPC itself
    for (int m = 0; m < service->method_count(); ++m) PlanFor(service->method(m)->input_type());
  }
}

RequestScanner::~RequestScanner() = default;

std::vector<std::string> RequestScanner::UncountedRepeatedFields() const { return uncounted_; }

const RequestScanner::Plan* RequestScanner::PlanFor(const Descriptor* type) {
  if (auto it = plans_.find(type); it != plans_.end()) return it->second.get();
  Plan* plan = (plans_[type] = std::make_unique<Plan>()).get();
  plan->type = type;  // needs_scan stays true (conservative) while a cycle is open
  bool needs_scan = false;
  for (int i = 0; i < type->field_count(); ++i) {
    const FieldDescriptor* field = type->field(i);
    FieldPlan f{.field = field};
    switch (field->type()) {
      case FieldDescriptor::TYPE_STRING:
      case FieldDescriptor::TYPE_BYTES:
        f.is_string = true;
        break;
      case FieldDescriptor::TYPE_MESSAGE:
        f.child = PlanFor(field->message_type());
        break;
      default:
        continue;  // scalars: skipped as unknown fields are
    }
    if (field->is_repeated()) {
      const auto* known =
          std::find_if(std::begin(kCountedFields), std::end(kCountedFields),
                       [&](const CountedField& c) { return field->full_name() == c.full_name; });
      if (known == std::end(kCountedFields)) {
        uncounted_.push_back(field->full_name());
      } else {
        f.counted = int(known->counted);
        f.slot = plan->counted_slots++;
        switch (known->counted) {
          case Counted::kBatchOps:
            f.max_entries = limits_.max_batch_ops;
            f.limit = absl::StrCat("--max_batch_ops=", limits_.max_batch_ops);
            break;
          case Counted::kSgSegments:
            f.max_entries = limits_.max_sg_segments;
            f.limit = absl::StrCat("--max_sg_segments=", limits_.max_sg_segments);
            break;
          case Counted::kTranslateAccesses:
            f.max_entries = limits_.max_translate_accesses;
            f.limit = absl::StrCat("--max_translate_accesses=", limits_.max_translate_accesses);
            break;
          case Counted::kExportImporters:
          case Counted::kGrantedDevices:
            f.max_entries = topology_devices_;
            f.limit = absl::StrCat("the topology's ", topology_devices_, " devices");
            break;
        }
      }
    }
    needs_scan = needs_scan || f.is_string || f.counted >= 0 || f.child->needs_scan;
    const size_t number = static_cast<size_t>(field->number());
    if (plan->by_number.size() <= number) plan->by_number.resize(number + 1, -1);
    plan->by_number[number] = static_cast<int>(plan->fields.size());
    plan->fields.push_back(std::move(f));
  }
  plan->needs_scan = needs_scan;
  return plan;
}

// One scan: the input, the path to the field being read, and the totals.
class RequestScanner::Walker {
 public:
  Walker(const RequestScanner& scanner, const Descriptor* type, CodedInputStream* in, uint64_t size,
         Totals* totals)
      : scanner_(scanner), type_(type), in_(in), size_(size), totals_(totals) {}

  absl::Status Message(const Plan& plan) {
    uint64_t counts[8] = {};  // of this message's counted fields, by slot
    assert(plan.counted_slots <= 8);
    while (true) {
      const uint32_t tag = in_->ReadTag();
      if (tag == 0) break;
      const FieldPlan* f = plan.Find(WireFormatLite::GetTagFieldNumber(tag));
      if (f == nullptr ||
          WireFormatLite::GetTagWireType(tag) != WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
        // A field the plan does not read (a scalar, an unknown field, or a
        // known one of another wire type, which the parser keeps as unknown).
        if (!WireFormatLite::SkipField(in_, tag)) return Malformed(nullptr);
        continue;
      }
      uint32_t length = 0;
      if (!in_->ReadVarint32(&length) || length > Remaining()) return Malformed(f);
      const int64_t index = f->slot >= 0 ? static_cast<int64_t>(counts[f->slot]++) : -1;
      if (f->counted >= 0 && totals_ != nullptr) ++(*totals_)[f->counted];
      if (f->is_string) {
        if (length > scanner_.limits_.max_string_bytes) {
          path_.push_back({f->field, index});
          return absl::ResourceExhaustedError(
              absl::StrFormat("%s: %d bytes, more than --max_string_bytes=%d", Path(), length,
                              scanner_.limits_.max_string_bytes));
        }
        if (!in_->Skip(static_cast<int>(length))) return Malformed(f);
      } else if (!f->child->needs_scan) {
        if (!in_->Skip(static_cast<int>(length))) return Malformed(f);
      } else {
        const CodedInputStream::Limit limit = in_->PushLimit(static_cast<int>(length));
        if (!in_->IncrementRecursionDepth()) return Malformed(f);
        path_.push_back({f->field, index});
        if (absl::Status s = Message(*f->child); !s.ok()) return s;
        if (!in_->ConsumedEntireMessage()) return Malformed(nullptr);
        path_.pop_back();
        in_->DecrementRecursionDepth();
        in_->PopLimit(limit);
      }
    }
    if (!in_->ConsumedEntireMessage()) return Malformed(nullptr);
    for (const FieldPlan& f : plan.fields) {
      if (f.slot < 0 || counts[f.slot] <= f.max_entries) continue;
      path_.push_back({f.field, -1});
      return absl::ResourceExhaustedError(
          absl::StrFormat("%s: %d entries, more than %s", Path(), counts[f.slot], f.limit));
    }
    return absl::OkStatus();
  }

 private:
  uint64_t Remaining() const {
    const uint64_t at = static_cast<uint64_t>(in_->CurrentPosition());
    return at < size_ ? size_ - at : 0;
  }

  std::string Path() const {
    std::string out;
    for (const Frame& f : path_) {
      if (!out.empty()) out += '.';
      out += f.field->name();
      if (f.index >= 0) absl::StrAppend(&out, "[", f.index, "]");
    }
    return out;
  }

  absl::Status Malformed(const FieldPlan* field) {
    if (field != nullptr) path_.push_back({field->field, -1});
    const std::string where = path_.empty() ? "" : absl::StrCat(", in ", Path());
    return absl::InvalidArgumentError(
        absl::StrFormat("the request could not be parsed as %s: its wire format is broken at "
                        "byte %d%s",
                        type_->full_name(), in_->CurrentPosition(), where));
  }

  const RequestScanner& scanner_;
  const Descriptor* const type_;
  CodedInputStream* in_;
  const uint64_t size_;
  Totals* totals_;
  std::vector<Frame> path_;
};

absl::Status RequestScanner::Scan(const Descriptor* type, const grpc::ByteBuffer& bytes,
                                  Totals* totals) const {
  if (totals != nullptr) totals->fill(0);
  auto it = plans_.find(type);
  if (it == plans_.end()) {
    return absl::InternalError(absl::StrCat(type->full_name(), " is not a request type"));
  }
  const uint64_t size = bytes.Length();
  grpc::Slice slice;
  if (bytes.TrySingleSlice(&slice).ok()) {
    CodedInputStream in(slice.begin(), static_cast<int>(slice.size()));
    return Walker(*this, type, &in, size, totals).Message(*it->second);
  }
  grpc::ByteBuffer copy(bytes);  // shares the slices; the reader needs a mutable one
  grpc::ProtoBufferReader reader(&copy);
  CodedInputStream in(&reader);
  return Walker(*this, type, &in, size, totals).Message(*it->second);
}

}  // namespace iommu::server
