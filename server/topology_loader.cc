// SPDX-License-Identifier: Apache-2.0
#include "server/topology_loader.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/base/errors.h"
#include "iommu/v1/topology.pb.h"
#include "server/proto_convert.h"

namespace iommu::server {
namespace {

// Collects the first parse error with its position.
class FirstError : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (error_.empty()) error_ = absl::StrCat("line ", line + 1, ":", column + 1, ": ", message);
  }
  const std::string& error() const { return error_; }

 private:
  std::string error_;
};

}  // namespace

absl::StatusOr<core::Topology> ParseTopology(const std::string& textproto) {
  v1::Topology proto;
  google::protobuf::TextFormat::Parser parser;
  FirstError errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(textproto, &proto)) {
    return core::FieldError(absl::StatusCode::kInvalidArgument, "topology", "",
                            absl::StrCat("bad text format: ", errors.error()));
  }
  return FromProto(proto);
}

absl::StatusOr<core::Topology> LoadTopology(const std::string& path) {
  if (path.empty()) return core::DefaultTopology();
  std::ifstream in(path);
  if (!in) {
    return core::FieldError(absl::StatusCode::kNotFound, "topology", path, "cannot read the file");
  }
  std::stringstream text;
  text << in.rdbuf();
  return ParseTopology(text.str());
}

}  // namespace iommu::server
