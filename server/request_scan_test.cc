// SPDX-License-Identifier: Apache-2.0
// RequestScanner: limits read from the wire before parsing, errors naming
// the field's path, the count or length and the flag; malformed bytes refused
// as the parser refuses them, and nothing the parser accepts refused.

#include "server/request_scan.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "google/protobuf/stubs/logging.h"
#include "iommu/v1/device.pb.h"
#include "iommu/v1/dma.pb.h"
#include "iommu/v1/domain.pb.h"
#include "server/rpc_call.h"

namespace iommu::server {
namespace {

using ::testing::HasSubstr;

// `bytes` as gRPC hands them over: in one slice, or cut into slices of
// `slice_bytes`.
grpc::ByteBuffer Buffer(const std::string& bytes, size_t slice_bytes = 0) {
  if (slice_bytes == 0) {
    grpc::Slice slice(bytes);
    return grpc::ByteBuffer(&slice, 1);
  }
  std::vector<grpc::Slice> slices;
  for (size_t at = 0; at < bytes.size(); at += slice_bytes) {
    slices.emplace_back(bytes.substr(at, slice_bytes));
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// The server's way: the slices made one piece (FlatBytes), then scanned.
absl::Status ScanBuffer(const RequestScanner& scanner, const google::protobuf::Descriptor* type,
                        const grpc::ByteBuffer& bytes, RequestScanner::Totals* totals = nullptr) {
  const FlatBytes flat(bytes);
  return scanner.Scan(type, flat.view(), totals);
}

Limits Small() {
  Limits limits;
  limits.max_batch_ops = 16;
  limits.max_sg_segments = 4;
  limits.max_translate_accesses = 3;
  limits.max_string_bytes = 8;
  return limits;
}

v1::BatchRequest MapOps(int n) {
  v1::BatchRequest request;
  request.set_device("nic0");
  for (int i = 0; i < n; ++i) {
    v1::MapRequest* map = request.add_ops()->mutable_map();
    map->mutable_mem()->set_buffer_id(7);
    map->mutable_mem()->set_length_bytes(4096);
    map->set_direction(v1::DMA_DIRECTION_BIDIRECTIONAL);
  }
  return request;
}

TEST(RequestScanTest, EveryRepeatedFieldOfARequestHasALimit) {
  const RequestScanner scanner(Limits(), 12);
  EXPECT_THAT(scanner.UncountedRepeatedFields(), ::testing::IsEmpty());
}

TEST(RequestScanTest, CountsAndStringsAreCheckedNamingThePathAndTheFlag) {
  const RequestScanner scanner(Small(), 12);
  for (size_t slices : {size_t{0}, size_t{3}}) {
    SCOPED_TRACE(slices);
    // Within every limit: accepted, and the totals counted.
    v1::BatchRequest ok = MapOps(5);
    v1::MapSgRequest* sg = ok.add_ops()->mutable_map_sg();
    for (int i = 0; i < 4; ++i) sg->add_segments()->set_buffer_id(1);
    RequestScanner::Totals totals;
    ASSERT_TRUE(ScanBuffer(scanner, v1::BatchRequest::descriptor(),
                           Buffer(ok.SerializeAsString(), slices), &totals)
                    .ok());
    EXPECT_EQ(totals[int(Counted::kBatchOps)], 6u);
    EXPECT_EQ(totals[int(Counted::kSgSegments)], 4u);

    // One segment too many in the second MapSg of a Batch message.
    v1::BatchRequest segments = ok;
    v1::MapSgRequest* second = segments.add_ops()->mutable_map_sg();
    for (int i = 0; i < 5; ++i) second->add_segments();
    absl::Status s = ScanBuffer(scanner, v1::BatchRequest::descriptor(),
                                Buffer(segments.SerializeAsString(), slices));
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(s.message(), "ops[6].map_sg.segments: 5 entries, more than --max_sg_segments=4");

    // A device name too long, deep in a message.
    v1::BatchRequest device = MapOps(3);
    device.mutable_ops(2)->mutable_map()->set_device(std::string(10 << 20, 'd'));
    s = ScanBuffer(scanner, v1::BatchRequest::descriptor(),
                   Buffer(device.SerializeAsString(), slices));
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(s.message(), "ops[2].map.device: 10485760 bytes, more than --max_string_bytes=8");

    // Too many operations: counted whole.
    s = ScanBuffer(scanner, v1::BatchRequest::descriptor(),
                   Buffer(MapOps(40).SerializeAsString(), slices));
    EXPECT_EQ(s.message(), "ops: 40 entries, more than --max_batch_ops=16");

    // Unary requests: accesses, importers (bounded by the topology's devices).
    v1::TranslateBatchRequest accesses;
    for (int i = 0; i < 4; ++i) accesses.add_accesses()->set_length_bytes(1);
    s = ScanBuffer(scanner, v1::TranslateBatchRequest::descriptor(),
                   Buffer(accesses.SerializeAsString(), slices));
    EXPECT_EQ(s.message(), "accesses: 4 entries, more than --max_translate_accesses=3");
    v1::GetSgTableRequest importers;
    for (int i = 0; i < 13; ++i) importers.add_export_importers("gpu0");
    s = ScanBuffer(scanner, v1::GetSgTableRequest::descriptor(),
                   Buffer(importers.SerializeAsString(), slices));
    EXPECT_EQ(s.message(), "export_importers: 13 entries, more than the topology's 12 devices");
    v1::CreateDomainRequest smmu;
    smmu.set_smmu("a-very-long-smmu-name");
    s = ScanBuffer(scanner, v1::CreateDomainRequest::descriptor(),
                   Buffer(smmu.SerializeAsString(), slices));
    EXPECT_EQ(s.message(), "smmu: 21 bytes, more than --max_string_bytes=8");
  }
}

TEST(RequestScanTest, MalformedBytesAreInvalidArgumentNamingTheType) {
  const RequestScanner scanner(Small(), 12);
  const std::string good = MapOps(3).SerializeAsString();
  for (const std::string& bad : {std::string("\xff\xff\xff", 3),   // a broken varint tag
                                 good.substr(0, good.size() - 3),  // cut short
                                 std::string("\x12\x40\x0a", 3),   // ops longer than left
                                 std::string("\x00", 1),           // field number 0
                                 std::string("\x0c", 1),           // an end-group tag
                                 // A tag of six bytes (field 1, padded).
                                 std::string("\x88\x80\x80\x80\x80\x00\x01", 7)}) {
    const absl::Status s = ScanBuffer(scanner, v1::BatchRequest::descriptor(), Buffer(bad));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr("the request could not be parsed as iommu.v1.BatchRequest"));
    v1::BatchRequest parsed;
    EXPECT_FALSE(parsed.ParseFromString(bad));  // the parser refuses each one too
  }
  // Unknown fields and known fields of another wire type are kept as unknown
  // by the parser: accepted.
  std::string unknown = good;
  unknown += std::string("\xf8\x07\x01", 3);      // field 127, varint
  unknown += std::string("\x1a\x02hi", 4);        // device (field 3) is a string: fine
  unknown += std::string("\x10\x05", 2);          // ops (field 2) as a varint: unknown
  unknown += std::string("\x0b\x08\x01\x0c", 4);  // a group holding a varint, as field 1
  // A five-byte tag whose last byte has bits beyond 32: the parser cuts it
  // to 32 bits (field 328609372, fixed32), so the scan must too.
  unknown += std::string("\xe5\xe5\xc5\xe5\x39\x09\x61\x0c\xe5", 9);
  EXPECT_TRUE(ScanBuffer(scanner, v1::BatchRequest::descriptor(), Buffer(unknown)).ok());
  v1::BatchRequest parsed;
  EXPECT_TRUE(parsed.ParseFromString(unknown));
  // A group closed with another field's end.
  const std::string mismatched = good + std::string("\x0b\x14", 2);
  EXPECT_EQ(ScanBuffer(scanner, v1::BatchRequest::descriptor(), Buffer(mismatched)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(parsed.ParseFromString(mismatched));
}

// The parser merges a singular message field that occurs more than once in
// its parent (and a oneof member that occurs again): two MapSg occurrences of
// one operation become one MapSg with the segments of both. Counted as the
// parser will merge them, the limit holds for the merged list, not for each
// occurrence.
TEST(RequestScanTest, ASubMessageSentTwiceIsCountedAsTheParserMergesIt) {
  const RequestScanner scanner(Small(), 12);
  v1::BatchOp half;
  for (int i = 0; i < 3; ++i) half.mutable_map_sg()->add_segments()->set_buffer_id(1);
  const std::string twice = half.SerializeAsString() + half.SerializeAsString();
  v1::BatchRequest request = MapOps(1);
  request.add_ops()->ParseFromString(twice);
  ASSERT_EQ(request.ops(1).map_sg().segments_size(), 6);  // merged
  // Each occurrence (3) is within --max_sg_segments=4; their merge is not.
  std::string bytes = MapOps(1).SerializeAsString();
  bytes += '\x12';  // ops, length-delimited
  ASSERT_LT(twice.size(), 128u);
  bytes += static_cast<char>(twice.size());
  bytes += twice;
  v1::BatchRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  ASSERT_EQ(parsed.ops(1).map_sg().segments_size(), 6);
  RequestScanner::Totals totals;
  const absl::Status s =
      ScanBuffer(scanner, v1::BatchRequest::descriptor(), Buffer(bytes), &totals);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(s.message(), "ops[1].map_sg.segments: 6 entries, more than --max_sg_segments=4");

  // Within the limit once merged (2 + 2): accepted, and counted as merged.
  v1::BatchOp quarter;
  for (int i = 0; i < 2; ++i) quarter.mutable_map_sg()->add_segments()->set_buffer_id(1);
  const std::string two = quarter.SerializeAsString() + quarter.SerializeAsString();
  std::string fits = MapOps(1).SerializeAsString();
  fits += '\x12';
  fits += static_cast<char>(two.size());
  fits += two;
  ASSERT_TRUE(ScanBuffer(scanner, v1::BatchRequest::descriptor(), Buffer(fits), &totals).ok());
  EXPECT_EQ(totals[int(Counted::kSgSegments)], 4u);
}

// Random damage to valid messages: whatever the parser accepts, the scan
// accepts too (it never refuses a well-formed request within the limits).
TEST(RequestScanTest, NothingTheParserAcceptsIsRefused) {
  Limits generous;
  const RequestScanner scanner(generous, 12);
  v1::BatchRequest base = MapOps(4);
  v1::MapSgRequest* sg = base.add_ops()->mutable_map_sg();
  sg->set_device("gpu0");
  sg->add_segments()->set_buffer_id(9);
  base.add_ops()->mutable_translate()->set_device("nic0");
  base.set_request_id("r-1");
  const std::string bytes = base.SerializeAsString();
  std::mt19937 rng(42);
  int accepted = 0;
  const google::protobuf::LogSilencer quiet;  // the parser's UTF-8 complaints
  for (int i = 0; i < 20000; ++i) {
    std::string damaged = bytes;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng() % damaged.size();
      switch (rng() % 3) {
        case 0:
          damaged[at] = static_cast<char>(rng());
          break;
        case 1:
          damaged.erase(at, 1 + rng() % 4);
          break;
        default:
          damaged.insert(at, 1, static_cast<char>(rng()));
      }
      if (damaged.empty()) damaged = "x";
    }
    v1::BatchRequest parsed;
    if (!parsed.ParseFromString(damaged)) continue;
    ++accepted;
    const absl::Status s = ScanBuffer(scanner, v1::BatchRequest::descriptor(), Buffer(damaged, 7));
    ASSERT_TRUE(s.ok()) << s << " for bytes of " << damaged.size();
  }
  EXPECT_GT(accepted, 500);
}

}  // namespace
}  // namespace iommu::server
