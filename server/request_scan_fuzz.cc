// SPDX-License-Identifier: Apache-2.0
// The request scanner's fuzzer, differential against protobuf's own parser.
// The input's first byte picks a request type (the input types of every
// iommu.v1 method, in order of their full names), the rest is the request's
// wire bytes. The scanner (server/request_scan.h) runs with small limits,
// then the parser, and:
//
//   * the scan answers OK, RESOURCE_EXHAUSTED or INVALID_ARGUMENT, with a
//     message;
//   * what the scan accepts and the parser parses is within every limit: no
//     string or bytes value longer than --max_string_bytes, no counted list
//     (Batch operations, MapSg segments, TranslateBatch accesses, device
//     lists) longer than its limit, in the message as parsed (occurrences
//     merged, oneofs resolved); and the scan's totals are at least the parsed
//     lists' lengths;
//   * what the scan calls malformed (INVALID_ARGUMENT) the parser refuses
//     too: no well-formed request is refused as broken.
//
// The scan may refuse more than the parsed message shows (a string sent
// twice, the first one too long; a oneof member replaced by another): it
// counts the wire, conservatively, so a refusal for a limit is not checked
// against the parse.
//
// Built as a libFuzzer target with IOMMU_FUZZ=ON (`make fuzz`), and with the
// normal toolchain as request_scan_fuzz_replay, which runs every file of
// server/fuzz_corpus/request_scan through this entry point under ctest.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "google/protobuf/stubs/logging.h"
#include "iommu/v1/device.pb.h"
#include "iommu/v1/dma.pb.h"
#include "iommu/v1/domain.pb.h"
#include "iommu/v1/memory.pb.h"
#include "iommu/v1/session.pb.h"
#include "iommu/v1/stats.pb.h"
#include "server/request_scan.h"
#include "server/services.h"

namespace iommu::server {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

constexpr size_t kTopologyDevices = 3;

Limits SmallLimits() {
  Limits limits;
  limits.max_batch_ops = 4;
  limits.max_sg_segments = 3;
  limits.max_translate_accesses = 3;
  limits.max_string_bytes = 8;
  return limits;
}

[[noreturn]] void Fail(const char* what, const std::string& detail, const Message* parsed) {
  std::fprintf(stderr, "request_scan_fuzz: %s: %s\n%s\n", what, detail.c_str(),
               parsed != nullptr ? parsed->DebugString().c_str() : "");
  std::abort();
}

// The request types, ordered by full name (the first input byte's choice).
std::vector<const Descriptor*> RequestTypes() {
  // The services' descriptors are in the generated pool once their files are
  // linked in: one message of each file makes sure of it.
  for (const Descriptor* linked :
       {v1::TranslateBatchRequest::descriptor(), v1::BatchRequest::descriptor(),
        v1::CreateDomainRequest::descriptor(), v1::AllocBufferRequest::descriptor(),
        v1::OpenSessionRequest::descriptor(), v1::GetStatsRequest::descriptor()}) {
    (void)linked;
  }
  std::vector<const Descriptor*> types;
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  for (const char* name : ServiceNames()) {
    const google::protobuf::ServiceDescriptor* service = pool->FindServiceByName(name);
    if (service == nullptr) continue;
    for (int m = 0; m < service->method_count(); ++m) {
      types.push_back(service->method(m)->input_type());
    }
  }
  std::sort(types.begin(), types.end(), [](const Descriptor* a, const Descriptor* b) {
    return a->full_name() < b->full_name();
  });
  types.erase(std::unique(types.begin(), types.end()), types.end());
  if (types.empty()) Fail("no request types", "the iommu.v1 services are not linked in", nullptr);
  return types;
}

// The limit of a counted list, by its field's full name; -1 for a list the
// scanner does not count (request_scan_test makes sure none exists).
int CountedOf(const FieldDescriptor* field) {
  const std::string& name = field->full_name();
  if (name == "iommu.v1.BatchRequest.ops") return int(Counted::kBatchOps);
  if (name == "iommu.v1.MapSgRequest.segments") return int(Counted::kSgSegments);
  if (name == "iommu.v1.TranslateBatchRequest.accesses") return int(Counted::kTranslateAccesses);
  if (name == "iommu.v1.GetSgTableRequest.export_importers") return int(Counted::kExportImporters);
  if (name == "iommu.v1.CreateDomainRequest.granted_devices") return int(Counted::kGrantedDevices);
  return -1;
}

uint64_t LimitOf(int counted, const Limits& limits) {
  switch (Counted(counted)) {
    case Counted::kBatchOps:
      return limits.max_batch_ops;
    case Counted::kSgSegments:
      return limits.max_sg_segments;
    case Counted::kTranslateAccesses:
      return limits.max_translate_accesses;
    case Counted::kExportImporters:
    case Counted::kGrantedDevices:
      return kTopologyDevices;
  }
  return 0;
}

// Checks a parsed message against the limits, adding its lists' lengths to
// `lengths`.
void CheckWithinLimits(const Message& m, const Limits& limits, const Message& whole,
                       RequestScanner::Totals* lengths) {
  const Reflection* r = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    const bool is_string = f->cpp_type() == FieldDescriptor::CPPTYPE_STRING;
    const bool is_message = f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE;
    if (!is_string && !is_message) continue;
    if (f->is_repeated()) {
      const int n = r->FieldSize(m, f);
      const int counted = CountedOf(f);
      if (counted < 0) Fail("a list the scanner does not count", f->full_name(), &whole);
      if (uint64_t(n) > LimitOf(counted, limits)) {
        Fail("a list longer than its limit was accepted", f->full_name(), &whole);
      }
      (*lengths)[counted] += uint64_t(n);
      for (int i = 0; i < n; ++i) {
        if (is_string) {
          if (r->GetRepeatedString(m, f, i).size() > limits.max_string_bytes) {
            Fail("a string longer than --max_string_bytes was accepted", f->full_name(), &whole);
          }
        } else {
          CheckWithinLimits(r->GetRepeatedMessage(m, f, i), limits, whole, lengths);
        }
      }
    } else if (is_string) {
      if (r->GetString(m, f).size() > limits.max_string_bytes) {
        Fail("a string longer than --max_string_bytes was accepted", f->full_name(), &whole);
      }
    } else {
      CheckWithinLimits(r->GetMessage(m, f), limits, whole, lengths);
    }
  }
}

struct Fixture {
  Limits limits = SmallLimits();
  RequestScanner scanner{limits, kTopologyDevices};
  std::vector<const Descriptor*> types = RequestTypes();
  google::protobuf::LogSilencer quiet;  // the parser's UTF-8 complaints
};

}  // namespace
}  // namespace iommu::server

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iommu::server;
  static Fixture* fixture = new Fixture;
  if (size == 0) return 0;
  const google::protobuf::Descriptor* type = fixture->types[data[0] % fixture->types.size()];
  const absl::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);

  RequestScanner::Totals totals;
  const absl::Status scanned = fixture->scanner.Scan(type, bytes, &totals);
  if (scanned.message().empty() != scanned.ok()) {
    Fail("a refusal without a message (or OK with one)", scanned.ToString(), nullptr);
  }
  if (!scanned.ok() && !absl::IsResourceExhausted(scanned) && !absl::IsInvalidArgument(scanned)) {
    Fail("an unexpected code", scanned.ToString(), nullptr);
  }

  std::unique_ptr<google::protobuf::Message> parsed(
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(type)->New());
  const bool parses = parsed->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));

  if (absl::IsInvalidArgument(scanned) && parses) {
    Fail("the scan calls malformed what the parser parses", std::string(scanned.message()),
         parsed.get());
  }
  if (scanned.ok() && parses) {
    RequestScanner::Totals lengths{};
    CheckWithinLimits(*parsed, fixture->limits, *parsed, &lengths);
    for (int c = 0; c < kNumCounted; ++c) {
      if (totals[c] < lengths[c]) {
        Fail("the scan's totals are below the parsed lists' lengths", std::to_string(c),
             parsed.get());
      }
    }
  }
  return 0;
}
