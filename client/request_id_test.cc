// SPDX-License-Identifier: Apache-2.0
#include "client/request_id.h"

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace iommu::client::internal {
namespace {

std::string Str(const RequestId& id) { return std::string(id.data(), id.size()); }

bool IsLowerHex(const std::string& s) {
  return s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// The protocol's id: 1..64 characters of [A-Za-z0-9._:-]; the SDK's are 32
// lowercase hex digits.
TEST(RequestIdTest, ThirtyTwoLowercaseHexDigits) {
  for (int i = 0; i < 1000; ++i) {
    const std::string id = Str(NewRequestId());
    ASSERT_EQ(id.size(), 32u) << id;
    ASSERT_TRUE(IsLowerHex(id)) << id;
  }
}

// 128 random bits: no repeat among many ids from many threads, and every
// digit position takes many values (no constant or counter-like part).
TEST(RequestIdTest, UniqueAcrossThreadsAndRandomInEveryDigit) {
  constexpr int kThreads = 4, kPerThread = 20000;
  absl::Mutex mu;
  std::set<std::string> ids;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      std::vector<std::string> mine;
      for (int i = 0; i < kPerThread; ++i) mine.push_back(Str(NewRequestId()));
      absl::MutexLock lock(&mu);
      ids.insert(mine.begin(), mine.end());
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ids.size(), size_t{kThreads} * kPerThread);
  for (size_t position = 0; position < kRequestIdChars; ++position) {
    std::set<char> digits;
    for (const std::string& id : ids) digits.insert(id[position]);
    EXPECT_EQ(digits.size(), 16u) << "position " << position;
  }
}

}  // namespace
}  // namespace iommu::client::internal
