// SPDX-License-Identifier: Apache-2.0
#include "client/ctl/output.h"

#include <algorithm>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/json_util.h"

namespace iommu::client::ctl {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

// The columns of a table row in the default format, by the row's message;
// a message not listed shows every column, as -o wide does.
const std::map<std::string, std::vector<std::string>, std::less<>>& NarrowColumns() {
  static const auto* columns = new std::map<std::string, std::vector<std::string>, std::less<>>{
      {"iommu.v1.DeviceInfo",
       {"name", "smmu", "stream_id", "dma_mask_bits", "untrusted", "current_domain_id", "mappings",
        "mapped_bytes"}},
      {"iommu.v1.Domain",
       {"domain_id", "smmu", "type", "owner", "is_default", "granule_bytes", "devices", "mappings",
        "mapped_bytes"}},
      {"iommu.v1.DomainStats",
       {"domain_id", "smmu", "type", "allocated_bytes", "free_bytes", "fragmentation_ratio",
        "mappings"}},
      {"iommu.v1.PageTableLeaf", {"iova", "phys_addr", "size_bytes", "read", "write", "exec"}},
  };
  return *columns;
}

bool IsTimeField(const FieldDescriptor* field) {
  return absl::EndsWith(field->name(), "_unix_nanos");
}

bool IsHexField(const FieldDescriptor* field) {
  const std::string& name = field->name();
  // Sizes and bit counts read better in decimal.
  if (absl::EndsWith(name, "_bytes") || absl::EndsWith(name, "_bits")) return false;
  for (absl::string_view part :
       {"addr", "iova", "base", "start", "end", "mask", "bitmap", "window", "stream_id"}) {
    if (absl::StrContains(name, part)) return true;
  }
  return false;
}

std::string EnumName(const google::protobuf::EnumValueDescriptor* value) {
  const google::protobuf::EnumValueDescriptor* zero = value->type()->FindValueByNumber(0);
  absl::string_view name = value->name();
  if (zero != nullptr && absl::EndsWith(zero->name(), "UNSPECIFIED")) {
    absl::string_view prefix = zero->name();
    prefix.remove_suffix(std::string("UNSPECIFIED").size());
    absl::ConsumePrefix(&name, prefix);
  }
  return std::string(name);
}

// One value of a scalar field; index < 0 for a singular field.
std::string Scalar(const Message& m, const FieldDescriptor* f, int index) {
  const Reflection* r = m.GetReflection();
  const bool rep = index >= 0;
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_UINT64: {
      const uint64_t v = rep ? r->GetRepeatedUInt64(m, f, index) : r->GetUInt64(m, f);
      return IsHexField(f) ? absl::StrFormat("0x%x", v) : absl::StrCat(v);
    }
    case FieldDescriptor::CPPTYPE_UINT32: {
      const uint32_t v = rep ? r->GetRepeatedUInt32(m, f, index) : r->GetUInt32(m, f);
      return IsHexField(f) ? absl::StrFormat("0x%x", v) : absl::StrCat(v);
    }
    case FieldDescriptor::CPPTYPE_INT64: {
      const int64_t v = rep ? r->GetRepeatedInt64(m, f, index) : r->GetInt64(m, f);
      return IsTimeField(f) ? FormatUnixNanos(v) : absl::StrCat(v);
    }
    case FieldDescriptor::CPPTYPE_INT32:
      return absl::StrCat(rep ? r->GetRepeatedInt32(m, f, index) : r->GetInt32(m, f));
    case FieldDescriptor::CPPTYPE_DOUBLE:
      return absl::StrFormat("%.4f", rep ? r->GetRepeatedDouble(m, f, index) : r->GetDouble(m, f));
    case FieldDescriptor::CPPTYPE_FLOAT:
      return absl::StrFormat("%.4f", rep ? r->GetRepeatedFloat(m, f, index) : r->GetFloat(m, f));
    case FieldDescriptor::CPPTYPE_BOOL:
      return (rep ? r->GetRepeatedBool(m, f, index) : r->GetBool(m, f)) ? "true" : "false";
    case FieldDescriptor::CPPTYPE_ENUM:
      return EnumName(rep ? r->GetRepeatedEnum(m, f, index) : r->GetEnum(m, f));
    case FieldDescriptor::CPPTYPE_STRING: {
      std::string s = rep ? r->GetRepeatedString(m, f, index) : r->GetString(m, f);
      return s.empty() ? "-" : s;
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      break;
  }
  return "?";
}

// A field that fits one cell: a scalar, repeated scalars joined by ',', a map
// as k=v pairs, a repeated message as its count.
std::string Cell(const Message& m, const FieldDescriptor* f) {
  const Reflection* r = m.GetReflection();
  if (f->is_map()) {
    std::vector<std::string> pairs;
    for (int i = 0; i < r->FieldSize(m, f); ++i) {
      const Message& entry = r->GetRepeatedMessage(m, f, i);
      const auto* d = entry.GetDescriptor();
      pairs.push_back(absl::StrCat(Scalar(entry, d->FindFieldByNumber(1), -1), "=",
                                   Scalar(entry, d->FindFieldByNumber(2), -1)));
    }
    std::sort(pairs.begin(), pairs.end());
    return pairs.empty() ? "-" : absl::StrJoin(pairs, ",");
  }
  if (f->is_repeated()) {
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE)
      return absl::StrCat("[", r->FieldSize(m, f), "]");
    std::vector<std::string> values;
    for (int i = 0; i < r->FieldSize(m, f); ++i) values.push_back(Scalar(m, f, i));
    return values.empty() ? "-" : absl::StrJoin(values, ",");
  }
  return Scalar(m, f, -1);
}

// The leaf cells of a message, nested singular messages flattened.
void Flatten(const Message& m, const std::string& prefix, std::vector<std::string>* names,
             std::vector<std::string>* cells) {
  const auto* d = m.GetDescriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !f->is_repeated()) {
      Flatten(m.GetReflection()->GetMessage(m, f), absl::StrCat(prefix, f->name(), "."), names,
              cells);
      continue;
    }
    if (names != nullptr) names->push_back(absl::StrCat(prefix, f->name()));
    cells->push_back(Cell(m, f));
  }
}

void RenderTable(const Message& m, const FieldDescriptor* f, Format format, std::string* out) {
  const Reflection* r = m.GetReflection();
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  for (int i = 0; i < r->FieldSize(m, f); ++i) {
    std::vector<std::string> cells;
    Flatten(r->GetRepeatedMessage(m, f, i), "", i == 0 ? &header : nullptr, &cells);
    rows.push_back(std::move(cells));
  }
  // Columns are named by leaf field (config.name -> name) unless two leaves
  // share a name (pagetable.mapped_bytes and mapped_bytes).
  std::vector<std::string> leaves;
  for (const std::string& h : header) leaves.push_back(h.substr(h.rfind('.') + 1));
  for (size_t i = 0; i < header.size(); ++i) {
    if (std::count(leaves.begin(), leaves.end(), leaves[i]) == 1) header[i] = leaves[i];
  }
  const auto narrow = NarrowColumns().find(f->message_type()->full_name());
  if (format == Format::kTable && narrow != NarrowColumns().end() && !rows.empty()) {
    std::vector<size_t> keep;
    for (const std::string& name : narrow->second) {
      const auto at = std::find(header.begin(), header.end(), name);
      if (at != header.end()) keep.push_back(at - header.begin());
    }
    auto select = [&keep](const std::vector<std::string>& cells) {
      std::vector<std::string> out;
      for (size_t k : keep) out.push_back(cells[k]);
      return out;
    };
    header = select(header);
    for (auto& row : rows) row = select(row);
  }
  absl::StrAppend(out, f->name(), " (", rows.size(), "):\n");
  if (!rows.empty()) absl::StrAppend(out, FormatTable(header, rows));
}

}  // namespace

std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths(header.size(), 0);
  for (size_t c = 0; c < header.size(); ++c) widths[c] = header[c].size();
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size() && c < widths.size(); ++c)
      widths[c] = std::max(widths[c], row[c].size());
  }
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    std::string text;
    for (size_t c = 0; c < cells.size(); ++c) {
      absl::StrAppend(&text, cells[c]);
      if (c + 1 < cells.size()) text.append(widths[c] - cells[c].size() + 2, ' ');
    }
    absl::StrAppend(&out, text, "\n");
  };
  std::vector<std::string> upper;
  for (const std::string& h : header) upper.push_back(absl::AsciiStrToUpper(h));
  line(upper);
  for (const auto& row : rows) line(row);
  return out;
}

std::string ToJson(const Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

std::string FormatUnixNanos(int64_t nanos) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixNanos(nanos), absl::UTCTimeZone());
}

std::string ToHuman(const Message& message, Format format) {
  const auto* d = message.GetDescriptor();
  const Reflection* r = message.GetReflection();
  // A response wrapping one message (GetBufferResponse{buffer}) prints as it.
  if (d->field_count() == 1 && d->field(0)->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE &&
      !d->field(0)->is_repeated()) {
    return ToHuman(r->GetMessage(message, d->field(0)), format);
  }
  if (d->field_count() == 0) return "OK\n";
  std::vector<std::string> names;
  std::vector<std::string> cells;
  std::vector<const FieldDescriptor*> tables;
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && f->is_repeated() && !f->is_map()) {
      tables.push_back(f);
    } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !f->is_repeated()) {
      Flatten(r->GetMessage(message, f), absl::StrCat(f->name(), "."), &names, &cells);
    } else {
      names.push_back(f->name());
      cells.push_back(Cell(message, f));
    }
  }
  size_t width = 0;
  for (const std::string& n : names) width = std::max(width, n.size());
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    absl::StrAppend(&out, names[i], std::string(width - names[i].size() + 2, ' '), cells[i], "\n");
  }
  for (const FieldDescriptor* f : tables) RenderTable(message, f, format, &out);
  return out;
}

void Printer::Print(const Message& message) {
  out_ << (json() ? ToJson(message) + "\n" : ToHuman(message, format_));
  out_.flush();
}

void Printer::Title(absl::string_view title) {
  if (!json()) out_ << "== " << title << "\n";
}

void Printer::Table(const std::vector<std::string>& header,
                    const std::vector<std::vector<std::string>>& rows) {
  if (!json()) out_ << FormatTable(header, rows);
}

}  // namespace iommu::client::ctl
