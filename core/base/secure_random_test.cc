// SPDX-License-Identifier: Apache-2.0
#include "core/base/secure_random.h"

#include <set>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

TEST(SecureRandomTest, TokenHasPrefixAndTwoHexDigitsPerByte) {
  const std::string t = SecureToken("iexp_", 16);
  ASSERT_TRUE(absl::StartsWith(t, "iexp_"));
  const std::string hex = t.substr(5);
  EXPECT_EQ(hex.size(), 32u);
  for (char c : hex) EXPECT_TRUE((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) << t;
}

TEST(SecureRandomTest, ValuesDoNotRepeatAndUseEveryBit) {
  std::set<std::string> tokens;
  std::set<uint64_t> ids;
  uint64_t ored = 0, anded = ~uint64_t{0};
  for (int i = 0; i < 1000; ++i) {
    EXPECT_TRUE(tokens.insert(SecureToken("", 16)).second);
    const uint64_t v = SecureRandomNonZero64();
    EXPECT_NE(v, 0u);
    EXPECT_TRUE(ids.insert(v).second);
    ored |= v;
    anded &= v;
  }
  // 1000 draws leave no bit stuck at 0 or 1 (a counter or a short seed would).
  EXPECT_EQ(ored, ~uint64_t{0});
  EXPECT_EQ(anded, 0u);
}

TEST(SecureRandomTest, SipHashMatchesTheReferenceVector) {
  // The SipHash paper's key 00 01 .. 0f, read as little-endian words, and
  // the 8-byte message 00 01 .. 07: 0x93f5f5799a932462 is its published
  // SipHash-2-4 output (vector 8 of the reference implementation).
  EXPECT_EQ(SipHash24(0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull, 0x0706050403020100ull),
            0x93f5f5799a932462ull);
}

TEST(SecureRandomTest, IdPermutationIsInjectiveAndKeyDependent) {
  const IdPermutation p(1, 2), q(1, 3);
  std::set<uint64_t> out;
  int same = 0;
  for (uint64_t i = 0; i < 20000; ++i) {
    EXPECT_TRUE(out.insert(p.Apply(i)).second) << i;
    same += p.Apply(i) == q.Apply(i);
  }
  EXPECT_EQ(same, 0);
  // Consecutive counters give unrelated ids: no small differences.
  for (uint64_t i = 1; i < 1000; ++i) {
    const uint64_t a = p.Apply(i), b = p.Apply(i + 1);
    EXPECT_GT(a > b ? a - b : b - a, uint64_t{1} << 20) << i;
  }
}

}  // namespace
}  // namespace iommu::core
