// SPDX-License-Identifier: Apache-2.0
#include "core/base/types.h"

#include <type_traits>

#include "core/base/bits.h"
#include "gtest/gtest.h"

namespace iommu::core {
namespace {

// The two address kinds never convert into one another.
static_assert(!std::is_convertible_v<Iova, PhysAddr>);
static_assert(!std::is_convertible_v<PhysAddr, Iova>);
static_assert(!std::is_convertible_v<uint64_t, Iova>);
static_assert(sizeof(Iova) == sizeof(uint64_t));

static_assert(IsPowerOfTwo(4096) && !IsPowerOfTwo(0) && !IsPowerOfTwo(12288));
static_assert(RoundUpPowerOfTwo(1) == 1 && RoundUpPowerOfTwo(3) == 4 &&
              RoundUpPowerOfTwo(256) == 256 && RoundUpPowerOfTwo(257) == 512);
static_assert(Log2(4096) == 12 && Log2(uint64_t{1} << 63) == 63);
static_assert(LowMask(0) == 0 && LowMask(12) == 0xfff && LowMask(64) == ~uint64_t{0});

TEST(AddressTest, ArithmeticKeepsTheKind) {
  Iova a(0x1000);
  Iova b = a + 0x234;
  EXPECT_EQ(b.value(), 0x1234u);
  EXPECT_EQ(b - a, 0x234u);
  EXPECT_EQ(b & 0xfff, 0x234u);
  EXPECT_LT(a, b);
  b += 0x10;
  EXPECT_EQ(b, Iova(0x1244));
  EXPECT_EQ(PhysAddr(0x80000000).Hex(), "0x80000000");
}

TEST(BitsTest, AlignUpReportsOverflow) {
  EXPECT_EQ(AlignUp(0x1001, 0x1000), 0x2000u);
  EXPECT_EQ(AlignUp(0x1000, 0x1000), 0x1000u);
  EXPECT_EQ(AlignUp(~uint64_t{0} - 5, 0x1000), std::nullopt);
  EXPECT_EQ(AlignDown(0x1fff, 0x1000), 0x1000u);
}

TEST(BitsTest, CheckedArithmeticCatchesWrap) {
  EXPECT_EQ(CheckedAdd(1, 2), 3u);
  EXPECT_EQ(CheckedAdd(~uint64_t{0}, 1), std::nullopt);
  EXPECT_EQ(LastOfRange(0x1000, 0x1000), 0x1fffu);
  EXPECT_EQ(LastOfRange(0x1000, 0), std::nullopt);
  // A range may end exactly at the top of the address space ...
  EXPECT_EQ(LastOfRange(~uint64_t{0} - 0xfff, 0x1000), ~uint64_t{0});
  // ... but not pass it.
  EXPECT_EQ(LastOfRange(~uint64_t{0} - 0xfff, 0x1001), std::nullopt);
}

}  // namespace
}  // namespace iommu::core
