// SPDX-License-Identifier: Apache-2.0
// The recovery fuzzer: what iommud does with whatever a state store holds.
// The input is a list of stored entries (store/state_fuzz_input.h); each is
// decoded as StateStore::Open decodes it, and a state whose every entry
// decodes is restored into a broker on fuzz::FuzzTopology() (without a
// journal), whose invariants must then hold. Whatever the bytes, neither the
// decoder nor Broker::Restore may crash, hang, leak or trip a sanitizer: they
// return an error or a consistent broker.
//
// Built as a libFuzzer target with IOMMU_FUZZ=ON (`make fuzz`), and with the
// normal toolchain as state_store_fuzz_replay, which runs every file of
// store/fuzz_corpus/state_store through this entry point under ctest.

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/broker/broker.h"
#include "core/broker/state.h"
#include "store/crc32c.h"
#include "store/state_codec.h"
#include "store/state_fuzz_input.h"

namespace {

// More than any seed holds; bounds the work of one input.
constexpr size_t kMaxEntries = 1024;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iommu;
  core::DurableState state;
  uint32_t schema_version = 0;
  for (store::fuzz::Entry& e : store::fuzz::SplitInput(data, size, kMaxEntries)) {
    if ((e.flags & store::fuzz::kFixChecksum) != 0 && e.value.size() >= 4) {
      const uint32_t crc = store::Crc32c(std::string_view(e.value).substr(4), store::Crc32c(e.key));
      for (int i = 0; i < 4; ++i) e.value[i] = char((crc >> (8 * i)) & 0xff);
    }
    if (!store::DecodeEntry(e.key, e.value, &state, &schema_version).ok()) return 0;
  }
  // StateStore::Open would refuse records without a schema record or of a
  // newer schema; Broker::Restore is held to any state, so both go on.
  static const core::Topology* const topology = new core::Topology(store::fuzz::FuzzTopology());
  auto broker = core::Broker::Restore(*topology, core::BrokerOptions{}, state);
  if (broker.ok()) (*broker)->CheckInvariants();
  return 0;
}
