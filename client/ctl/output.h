// iommuctl's output: one JSON object per line with --json (protobuf's JSON
// mapping, field names as in the proto, every field printed), human tables
// otherwise.
//
// The human form of a message, derived from its descriptor: scalar fields as
// aligned `name  value` lines (addresses, masks and stream ids in hex, enums
// without their type prefix), repeated messages as tables whose columns are
// the element's leaf fields. Every field prints, zero or not, so the output
// of a given daemon state is stable (golden tests rely on it).
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

class Printer {
 public:
  Printer(std::ostream& out, bool json) : out_(out), json_(json) {}
  bool json() const { return json_; }
  std::ostream& out() { return out_; }

  void Print(const google::protobuf::Message& message);
  // Human mode only: a title line before a block.
  void Title(absl::string_view title);
  // Human mode only: an aligned table.
  void Table(const std::vector<std::string>& header,
             const std::vector<std::vector<std::string>>& rows);

 private:
  std::ostream& out_;
  const bool json_;
};

// One line of protobuf JSON.
std::string ToJson(const google::protobuf::Message& message);
// The human rendering described above.
std::string ToHuman(const google::protobuf::Message& message);
// A table with columns padded to their widest cell, two spaces apart.
std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows);

}  // namespace iommu::client::ctl

#endif  // IOMMU_CLIENT_CTL_OUTPUT_H_
