// SPDX-License-Identifier: Apache-2.0
#include "server/request_scan.h"

#include <algorithm>
#include <cassert>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/wire_format_lite.h"
#include "server/services.h"

namespace iommu::server {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::internal::WireFormatLite;

struct RequestScanner::FieldPlan {
  const FieldDescriptor* field = nullptr;
  bool is_string = false;       // else a message
  const Plan* child = nullptr;  // a message's plan
  int counted = -1;             // Counted index, for a counted repeated field
  int slot = -1;                // its index among the parent's counted fields
  // A singular message field: where its message's counts start in the
  // parent's counts (the parser merges every occurrence of the field into one
  // message, so their counts add up); -1 when each occurrence counts apart (a
  // repeated field's entries are separate messages, and a field closing a
  // cycle of the message types gets counts of its own).
  int merge_offset = -1;
  uint64_t max_entries = 0;
  std::string limit;  // "--max_sg_segments=65536", for messages
};

struct RequestScanner::Plan {
  const Descriptor* type = nullptr;
  std::vector<FieldPlan> fields;
  std::vector<int> by_number;  // field number -> index in fields, or -1
  int counted_slots = 0;
  // counted_slots plus, for each singular message field with a merge_offset,
  // its message's count_slots: the counts one occurrence of this message
  // needs, laid out own fields first (Walker::Message).
  int count_slots = 0;
  bool open = true;  // being planned (a cycle reaches it)
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
    if (f.child != nullptr && !field->is_repeated() && !f.child->open) {
      f.merge_offset = -2;  // placed below, after the counted fields
    }
    const size_t number = static_cast<size_t>(field->number());
    if (plan->by_number.size() <= number) plan->by_number.resize(number + 1, -1);
    plan->by_number[number] = static_cast<int>(plan->fields.size());
    plan->fields.push_back(std::move(f));
  }
  plan->needs_scan = needs_scan;
  plan->count_slots = plan->counted_slots;
  for (FieldPlan& f : plan->fields) {
    if (f.merge_offset == -2) {
      f.merge_offset = plan->count_slots;
      plan->count_slots += f.child->count_slots;
    }
  }
  plan->open = false;
  return plan;
}

// One scan over the request's bytes, in one contiguous piece. Hand-rolled
// wire-format reading: on success nothing but the cursor moves; the path of
// a problem is collected only as the recursion unwinds from it.
class RequestScanner::Walker {
 public:
  Walker(const RequestScanner& scanner, absl::string_view bytes, Totals* totals)
      : scanner_(scanner),
        begin_(reinterpret_cast<const uint8_t*>(bytes.data())),
        end_(begin_ + bytes.size()),
        at_(begin_),
        totals_(totals) {}

  absl::Status Scan(const Descriptor* type, const Plan& plan) {
    Counts counts(static_cast<size_t>(plan.count_slots), 0);
    if (Message(plan, end_, 0, counts.data())) return absl::OkStatus();
    std::string path;
    for (auto frame = problem_.path.rbegin(); frame != problem_.path.rend(); ++frame) {
      if (!path.empty()) path += '.';
      path += frame->field->name();
      if (frame->index >= 0) absl::StrAppend(&path, "[", frame->index, "]");
    }
    switch (problem_.kind) {
      case Problem::kTooLong:
        return absl::ResourceExhaustedError(
            absl::StrFormat("%s: %d bytes, more than --max_string_bytes=%d", path, problem_.value,
                            scanner_.limits_.max_string_bytes));
      case Problem::kTooMany:
        return absl::ResourceExhaustedError(absl::StrFormat("%s: %d entries, more than %s", path,
                                                            problem_.value, problem_.field->limit));
      case Problem::kMalformed:
        break;
    }
    return absl::InvalidArgumentError(absl::StrFormat(
        "the request could not be parsed as %s: its wire format is broken at "
        "byte %d%s",
        type->full_name(), problem_.value, path.empty() ? "" : absl::StrCat(", in ", path)));
  }

 private:
  // The recursion limit of protobuf's parser.
  static constexpr int kMaxDepth = 100;
  // A message's counts (Plan::count_slots): a handful, on the stack.
  using Counts = absl::InlinedVector<uint64_t, 8>;

  struct Problem {
    enum Kind { kMalformed, kTooLong, kTooMany } kind = kMalformed;
    uint64_t value = 0;                // bytes, entries, or the position
    const FieldPlan* field = nullptr;  // kTooMany: the counted field
    std::vector<Frame> path;           // innermost first
  };

  bool Malformed() {
    problem_.kind = Problem::kMalformed;
    problem_.value = static_cast<uint64_t>(at_ - begin_);
    return false;
  }

  bool Varint(const uint8_t* end, uint64_t* value) {
    if (at_ < end && *at_ < 0x80) {  // one byte: nearly every tag and length
      *value = *at_++;
      return true;
    }
    return VarintSlow(end, value);
  }
  bool VarintSlow(const uint8_t* end, uint64_t* value) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (at_ >= end) return false;
      const uint8_t byte = *at_++;
      v |= uint64_t{byte & 0x7fu} << shift;
      if (byte < 0x80) {
        *value = v;
        return true;
      }
    }
    return false;  // more than 10 bytes
  }

  // A field's tag as protobuf's parser reads one: a varint of at most five
  // bytes whose value is cut to 32 bits (a fifth byte's high bits are
  // dropped, not refused), naming a field number other than 0.
  bool Tag(const uint8_t* end, uint64_t* tag) {
    uint32_t value = 0;
    for (int i = 0; i < 5; ++i) {
      if (at_ >= end) return false;
      const uint8_t byte = *at_++;
      value |= uint32_t{byte & 0x7fu} << (7 * i);
      if (byte < 0x80) {
        *tag = value;
        return (value >> 3) != 0;
      }
    }
    return false;  // a sixth byte
  }

  // Skips the value of a field the plan does not read, as the parser keeps
  // an unknown field.
  bool Skip(uint64_t tag, const uint8_t* end, int depth) {
    uint64_t n = 0;
    switch (tag & 7) {
      case WireFormatLite::WIRETYPE_VARINT:
        return Varint(end, &n);
      case WireFormatLite::WIRETYPE_FIXED64:
        n = 8;
        break;
      case WireFormatLite::WIRETYPE_FIXED32:
        n = 4;
        break;
      case WireFormatLite::WIRETYPE_LENGTH_DELIMITED:
        if (!Varint(end, &n)) return false;
        break;
      case WireFormatLite::WIRETYPE_START_GROUP: {
        if (depth >= kMaxDepth) return false;
        while (true) {
          uint64_t inner = 0;
          if (!Tag(end, &inner)) return false;
          if ((inner & 7) == WireFormatLite::WIRETYPE_END_GROUP) return (inner >> 3) == (tag >> 3);
          if (!Skip(inner, end, depth + 1)) return false;
        }
      }
      default:  // an end-group with no start, or wire types 6 and 7
        return false;
    }
    if (n > static_cast<uint64_t>(end - at_)) return false;
    at_ += n;
    return true;
  }

  // Reads the fields of a `plan` message up to `end`; false on a problem
  // (problem_), after adding the frame of the field it was in.
  // `counts` holds plan.count_slots entries, zero for the first occurrence
  // of the message in its parent and carried over to the next ones (the
  // parser merges them): the limits hold for the merged lists.
  bool Message(const Plan& plan, const uint8_t* end, int depth, uint64_t* counts) {
    while (at_ < end) {
      uint64_t tag = 0;
      if (!Tag(end, &tag)) return Malformed();
      if ((tag & 7) == WireFormatLite::WIRETYPE_VARINT) {  // a scalar: the commonest
        uint64_t ignored;
        if (!Varint(end, &ignored)) return Malformed();
        continue;
      }
      const FieldPlan* f = (tag & 7) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED
                               ? plan.Find(static_cast<int>(tag >> 3))
                               : nullptr;
      if (f == nullptr) {
        // A field the plan does not read (a scalar, an unknown field, or a
        // known one of another wire type, which the parser keeps as unknown).
        if (!Skip(tag, end, depth)) return Malformed();
        continue;
      }
      uint64_t length = 0;
      if (!Varint(end, &length) || length > static_cast<uint64_t>(end - at_)) {
        Malformed();
        return Fail(f, -1);
      }
      const int64_t index = f->slot >= 0 ? static_cast<int64_t>(counts[f->slot]++) : -1;
      if (f->counted >= 0 && totals_ != nullptr) ++(*totals_)[f->counted];
      const uint8_t* value_end = at_ + length;
      if (f->is_string && length > scanner_.limits_.max_string_bytes) {
        problem_.kind = Problem::kTooLong;
        problem_.value = length;
        return Fail(f, index);
      }
      if (!f->is_string && f->child->needs_scan) {
        if (depth + 1 >= kMaxDepth) {
          Malformed();
          return Fail(f, index);
        }
        bool ok;
        if (f->merge_offset >= 0) {
          ok = Message(*f->child, value_end, depth + 1, counts + f->merge_offset);
        } else {
          Counts own(static_cast<size_t>(f->child->count_slots), 0);
          ok = Message(*f->child, value_end, depth + 1, own.data());
        }
        if (!ok) return Fail(f, index);
      }
      at_ = value_end;
    }
    if (at_ != end) return Malformed();
    if (plan.counted_slots == 0) return true;
    for (const FieldPlan& f : plan.fields) {
      if (f.slot < 0 || counts[f.slot] <= f.max_entries) continue;
      problem_.kind = Problem::kTooMany;
      problem_.value = counts[f.slot];
      problem_.field = &f;
      return Fail(&f, -1);
    }
    return true;
  }

  bool Fail(const FieldPlan* field, int64_t index) {
    problem_.path.push_back({field->field, index});
    return false;
  }

  const RequestScanner& scanner_;
  const uint8_t* const begin_;
  const uint8_t* const end_;
  const uint8_t* at_;
  Totals* totals_;
  Problem problem_;
};

absl::Status RequestScanner::Scan(const Descriptor* type, absl::string_view bytes,
                                  Totals* totals) const {
  if (totals != nullptr) totals->fill(0);
  auto it = plans_.find(type);
  if (it == plans_.end()) {
    return absl::InternalError(absl::StrCat(type->full_name(), " is not a request type"));
  }
  return Walker(*this, bytes, totals).Scan(type, *it->second);
}

}  // namespace iommu::server
