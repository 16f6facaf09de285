// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_REQUEST_SCAN_H_
#define IOMMU_SERVER_REQUEST_SCAN_H_

// Checks a serialized request against the limits before it is parsed
// (docs/design.md#limits). Protobuf turns a few wire bytes into a much larger
// object (an empty scatterlist segment is 2 bytes on the wire and ~60 in
// memory), so a count checked after parsing comes after the memory was
// taken. The scan reads the wire format in place, allocating nothing, and a
// request beyond a limit is refused before any of it is parsed.
//
// It walks a message as its descriptor describes it:
//   - every string (and bytes) field against --max_string_bytes;
//   - every repeated message or string field of a request against its limit,
//     per parent message (Counted below); a request type with a repeated
//     field that has no limit is a bug, which request_scan_test catches.
//     The parser merges every occurrence of a singular message field in one
//     parent (a oneof member sent twice, say ops[i].map_sg) into one message,
//     so the counts of such occurrences add up and the limit holds for the
//     merged list. Counting stays conservative: a oneof member sent, then
//     replaced by another member, then sent again counts both times, though
//     the parser keeps only the last. (A field closing a cycle of message
//     types would count each occurrence apart; no request type has one.)
//   - the wire format itself: a truncated or malformed message is refused as
//     the parser would refuse it, so the parse that follows cannot fail for
//     a reason the scan did not name (proto3 UTF-8 checks aside).
// Fields it does not know are skipped, as the parser keeps them as unknown
// fields (their bytes, no larger than on the wire). A request's totals per
// counted field are reported: a Batch message weighs its operations plus
// their MapSg segments.
//
// Cost: O(bytes) of tag reads over one contiguous piece (the server's
// FlatBytes, server/rpc_call.h, copies a message that came in several
// slices), without allocation; a sub-message
// with no string or counted field inside (a MemRef) is skipped by its length.
//
// Thread-safe: immutable after construction.

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "server/limits.h"

namespace iommu::server {

// The repeated fields of the requests, each with its limit.
enum class Counted : int {
  kBatchOps,           // BatchRequest.ops: --max_batch_ops
  kSgSegments,         // MapSgRequest.segments: --max_sg_segments
  kTranslateAccesses,  // TranslateBatchRequest.accesses: --max_translate_accesses
  kExportImporters,    // GetSgTableRequest.export_importers: the topology's devices
  kGrantedDevices,     // CreateDomainRequest.granted_devices: the topology's devices
};
inline constexpr int kNumCounted = int(Counted::kGrantedDevices) + 1;

class RequestScanner {
 public:
  // The entries of each counted field over a whole request.
  using Totals = std::array<uint64_t, kNumCounted>;

  // Scans requests of every method of the iommu.v1 services (their input
  // types and everything they contain). `topology_devices` bounds the lists
  // of device names.
  RequestScanner(const Limits& limits, size_t topology_devices);
  ~RequestScanner();

  // OK, or the first problem: RESOURCE_EXHAUSTED naming the field's path
  // ("ops[12].map_sg.segments"), its count or length and the flag with its
  // value; INVALID_ARGUMENT when the bytes are not a well-formed `type`.
  // `type` must be one of the request types. `totals` may be null.
  absl::Status Scan(const google::protobuf::Descriptor* type, absl::string_view bytes,
                    Totals* totals = nullptr) const;

  // Repeated message or string fields of a request type that no Counted
  // limit covers, by full name (empty unless the proto grew one).
  std::vector<std::string> UncountedRepeatedFields() const;

 private:
  struct Plan;
  struct FieldPlan;
  struct Frame;
  class Walker;

  const Plan* PlanFor(const google::protobuf::Descriptor* type);

  Limits limits_;
  size_t topology_devices_;
  absl::flat_hash_map<const google::protobuf::Descriptor*, std::unique_ptr<Plan>> plans_;
  std::vector<std::string> uncounted_;
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_REQUEST_SCAN_H_
