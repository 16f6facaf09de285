// SPDX-License-Identifier: Apache-2.0
// iommuctl's output, chosen by -o: one JSON object per line (json:
// protobuf's JSON mapping, field names as in the proto, every field
// printed), or human text (table, the default, and wide).
//
// The human form of a message, derived from its descriptor: scalar fields as
// aligned `name  value` lines (addresses, masks and stream ids in hex, sizes
// in bytes, times as UTC timestamps, enums without their type prefix),
// repeated messages as tables whose columns are the element's leaf fields:
// in table format the columns a user scans for (kNarrowColumns in
// output.cc), in wide format all of them. Every field prints, zero or not, so
// the output of a given daemon state is stable (golden tests rely on it).
//
// Thread-compatible.
#ifndef IOMMU_CLIENT_CTL_OUTPUT_H_
#define IOMMU_CLIENT_CTL_OUTPUT_H_

#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"

namespace iommu::client::ctl {

enum class Format { kTable, kWide, kJson };

class Printer {
 public:
  Printer(std::ostream& out, Format format) : out_(out), format_(format) {}
  bool json() const { return format_ == Format::kJson; }
  Format format() const { return format_; }
  std::ostream& out() { return out_; }

  void Print(const google::protobuf::Message& message);
  // Human mode only: a title line before a block.
  void Title(absl::string_view title);
  // Human mode only: an aligned table.
  void Table(const std::vector<std::string>& header,
             const std::vector<std::vector<std::string>>& rows);

 private:
  std::ostream& out_;
  const Format format_;
};

// One line of protobuf JSON.
std::string ToJson(const google::protobuf::Message& message);
// The human rendering described above.
std::string ToHuman(const google::protobuf::Message& message, Format format = Format::kTable);
// "2026-12-07T18:01:18.123Z" (UTC, milliseconds).
std::string FormatUnixNanos(int64_t nanos);
// A table with columns padded to their widest cell, two spaces apart.
std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows);

}  // namespace iommu::client::ctl

#endif  // IOMMU_CLIENT_CTL_OUTPUT_H_
