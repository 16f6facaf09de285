// SPDX-License-Identifier: Apache-2.0
#include "store/crc32c.h"

#include <random>
#include <string>

#include "gtest/gtest.h"

namespace iommu::store {
namespace {

TEST(Crc32cTest, StandardVectors) {
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string ascending, descending;
  for (int i = 0; i < 32; ++i) {
    ascending.push_back(static_cast<char>(i));
    descending.push_back(static_cast<char>(31 - i));
  }
  EXPECT_EQ(Crc32c(ascending), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(descending), 0x113FDB5Cu);
}

TEST(Crc32cTest, PortableMatchesVectors) {
  EXPECT_EQ(internal::Crc32cPortable("123456789", 0), 0xE3069283u);
  EXPECT_EQ(internal::Crc32cPortable(std::string(32, '\0'), 0), 0x8A9136AAu);
}

TEST(Crc32cTest, ExtendsAcrossPieces) {
  const std::string s = "The quick brown fox jumps over the lazy dog";
  for (size_t cut = 0; cut <= s.size(); ++cut) {
    EXPECT_EQ(Crc32c(s.substr(cut), Crc32c(s.substr(0, cut))), Crc32c(s)) << cut;
  }
}

TEST(Crc32cTest, ImplementationsAgreeOnEveryLengthAndAlignment) {
  if (!internal::Crc32cHardwareAvailable()) GTEST_SKIP() << "no SSE4.2 on this CPU";
  std::mt19937_64 rng(42);
  std::string buf(300 + 16, '\0');
  for (char& c : buf) c = static_cast<char>(rng());
  for (size_t offset = 0; offset < 16; ++offset) {
    for (size_t len = 0; len <= 300; ++len) {
      const std::string_view piece(buf.data() + offset, len);
      const uint32_t init = static_cast<uint32_t>(rng());
      ASSERT_EQ(internal::Crc32cHardware(piece, 0), internal::Crc32cPortable(piece, 0))
          << "offset " << offset << " len " << len;
      ASSERT_EQ(internal::Crc32cHardware(piece, init), internal::Crc32cPortable(piece, init))
          << "offset " << offset << " len " << len;
    }
  }
}

}  // namespace
}  // namespace iommu::store
