// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_STORE_STATE_CODEC_H_
#define IOMMU_STORE_STATE_CODEC_H_

// The broker's state records as key-value entries: keys that name each live
// object and sort by it, values framed as a CRC-32C and a protobuf message
// (proto/iommu/state/v1/records.proto; docs/design.md#durable-state).
//
// Keys: "v" schema; "c"+counter byte; "k" session key; "d"+domain;
// "a"+device name; "b"+buffer; "e"+export; "s"+session; "m"+domain+IOVA;
// "r"+principal+NUL+request id (from version 2).
// Numbers are 8-byte big-endian, so a prefix scan returns them in order.
// Value: crc32c(key || message) as 4 bytes little-endian, then the message.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "core/broker/state.h"
#include "store/kv_store.h"

namespace iommu::store {

// The version this build writes; it reads every version from 1 up to it.
// Version 2 added request records ("r"); opening an earlier store upgrades
// its schema record before anything is written.
inline constexpr uint32_t kSchemaVersion = 2;

// The key-value writes of one commit, owning their bytes. Reused across
// commits (clear() keeps capacity).
class EncodedChanges {
 public:
  void Encode(const core::StateChanges& changes);
  absl::Span<const KvWrite> writes() const { return writes_; }
  size_t size() const { return writes_.size(); }

 private:
  struct Entry {
    size_t key_at, key_size, value_at, value_size;
    bool is_delete;
  };
  // Appends a key to buf_ and returns where it starts.
  size_t BeginKey(char prefix);
  void Put(size_t key_at, std::string_view message_bytes);
  void Delete(size_t key_at);
  // The mapping record's value, encoded in place after its key.
  void PutMapping(size_t key_at, const core::MappingState& m);
  // Encodes a message as its entry's value (framed).
  template <typename Message>
  void PutMessage(size_t key_at, const Message& m);

  // Every key and value of the commit, back to back: one buffer, reused.
  std::string buf_;
  std::vector<Entry> entries_;
  std::vector<KvWrite> writes_;
  std::string scratch_;
};

// A mapping record in the wire format of iommu.state.v1.MappingRecord,
// written directly (the commit path's hot record; the generated parser
// reads it, and a test checks both agree field by field).
void AppendMappingRecord(const core::MappingState& m, std::string* out);

// The schema record's entry.
KvWrite SchemaWrite(std::string* key, std::string* value, std::string_view written_by);

// Decodes one stored entry into `state` (appending). DATA_LOSS naming the
// key for a checksum mismatch or an unparseable message; FAILED_PRECONDITION
// for a schema version newer than this build reads; INVALID_ARGUMENT for an
// unknown key prefix. `schema_version` receives the version record's value.
absl::Status DecodeEntry(std::string_view key, std::string_view value, core::DurableState* state,
                         uint32_t* schema_version);

// The key, printable (for messages): "m/3/0x1000", "b/17", "a/nic0", ...
std::string DescribeKey(std::string_view key);

}  // namespace iommu::store

#endif  // IOMMU_STORE_STATE_CODEC_H_
