// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_STORE_STATE_FUZZ_INPUT_H_
#define IOMMU_STORE_STATE_FUZZ_INPUT_H_

// The input format of the state store's recovery fuzzer (state_store_fuzz.cc):
// stored key-value entries, one after another, each as
//
//   flags (1 byte) | key size (1 byte) | value size (2 bytes, little-endian) |
//   key | value
//
// With kFixChecksum in flags the fuzzer overwrites the value's first 4 bytes
// with the record's correct CRC-32C before decoding it, so that mutations of
// the message reach the parser and Broker::Restore instead of stopping at the
// checksum; without it the bytes are decoded as given (the checksum check
// itself is fuzzed). A truncated last entry is dropped.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/broker/topology.h"

namespace iommu::store::fuzz {

inline constexpr uint8_t kFixChecksum = 1;

struct Entry {
  uint8_t flags = 0;
  std::string key;
  std::string value;
};

// The topology the fuzzer restores on (and its seeds were written on): the
// default one with its DRAM cut to 64 MiB per region, so that building a
// broker is cheap enough to run thousands of times a second.
inline core::Topology FuzzTopology() {
  constexpr uint64_t kDramBytes = uint64_t{64} << 20;
  core::Topology t = core::DefaultTopology();
  for (core::MemoryRegionConfig& r : t.memory.regions) {
    if (r.name.starts_with("dram")) r.size_bytes = kDramBytes;
  }
  for (core::PoolConfig& p : t.memory.pools) {
    if (p.name == "dram") {
      for (core::PoolRangeConfig& range : p.ranges) range.size_bytes = kDramBytes;
    }
  }
  return t;
}

// The entries of `data`, at most `max_entries` of them.
inline std::vector<Entry> SplitInput(const uint8_t* data, size_t size, size_t max_entries) {
  std::vector<Entry> entries;
  size_t at = 0;
  while (entries.size() < max_entries && size - at >= 4) {
    const uint8_t flags = data[at];
    const size_t key_size = data[at + 1];
    const size_t value_size = size_t{data[at + 2]} | size_t{data[at + 3]} << 8;
    at += 4;
    if (size - at < key_size + value_size) break;
    const char* p = reinterpret_cast<const char*>(data + at);
    entries.push_back({flags, std::string(p, key_size), std::string(p + key_size, value_size)});
    at += key_size + value_size;
  }
  return entries;
}

// The input SplitInput reads back as `entries`. REQUIRES: keys of at most 255
// bytes, values of at most 65535.
inline std::string JoinInput(const std::vector<Entry>& entries) {
  std::string out;
  for (const Entry& e : entries) {
    out.push_back(char(e.flags));
    out.push_back(char(e.key.size()));
    out.push_back(char(e.value.size() & 0xff));
    out.push_back(char(e.value.size() >> 8));
    out += e.key;
    out += e.value;
  }
  return out;
}

}  // namespace iommu::store::fuzz

#endif  // IOMMU_STORE_STATE_FUZZ_INPUT_H_
