// SPDX-License-Identifier: Apache-2.0
// The process kv_store_test kills: opens a store, commits batch after batch
// and reports each acknowledged batch on a pipe, until it is SIGKILLed.
//
//   kv_store_crash_child ENGINE DURABILITY DIR FD KEYS_PER_BATCH
//
// Batch i (from 1) puts keys "b<i:8 digits>/<j:4 digits>" for j < KEYS_PER_BATCH, each
// with BatchValue(i), and key "last" = BatchValue(i); after Commit (and, in
// kPowerLoss, WaitDurable) returns it writes i as 8 native bytes to FD.

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "store/kv_store.h"

using iommu::store::Durability;
using iommu::store::KvOptions;
using iommu::store::KvStore;
using iommu::store::KvWrite;

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s ENGINE DURABILITY DIR FD KEYS_PER_BATCH\n", argv[0]);
    return 2;
  }
  KvOptions options;
  const auto engine = iommu::store::ParseKvEngine(argv[1]);
  if (!engine.has_value()) return 2;
  options.engine = *engine;
  options.durability =
      std::string(argv[2]) == "power" ? Durability::kPowerLoss : Durability::kProcessCrash;
  options.dir = argv[3];
  const int fd = std::atoi(argv[4]);
  const int keys = std::atoi(argv[5]);
  auto store = KvStore::Open(options);
  if (!store.ok()) {
    std::fprintf(stderr, "%s\n", store.status().ToString().c_str());
    return 1;
  }
  for (uint64_t i = 1;; ++i) {
    const std::string value = absl::StrFormat("batch %08d %0100d", i, i);
    std::vector<std::string> names;
    names.reserve(keys);
    for (int j = 0; j < keys; ++j) names.push_back(absl::StrFormat("b%08d/%04d", i, j));
    std::vector<KvWrite> writes;
    for (const std::string& n : names) writes.push_back({n, value});
    writes.push_back({"last", value});
    auto seq = (*store)->Commit(writes);
    if (!seq.ok()) {
      std::fprintf(stderr, "%s\n", seq.status().ToString().c_str());
      return 1;
    }
    if (options.durability == Durability::kPowerLoss && i % 2 == 0) {
      if (absl::Status s = (*store)->WaitDurable(*seq); !s.ok()) {
        std::fprintf(stderr, "%s\n", s.ToString().c_str());
        return 1;
      }
    }
    if (write(fd, &i, sizeof(i)) != sizeof(i)) return 1;
  }
}
