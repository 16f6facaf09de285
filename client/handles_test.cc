// SPDX-License-Identifier: Apache-2.0
#include "client/handles.h"

#include <utility>

#include "gtest/gtest.h"

namespace iommu::client {
namespace {

Closer Counting(int* runs, absl::Status result = absl::OkStatus()) {
  return [runs, result] {
    ++*runs;
    return result;
  };
}

Mapping::Info MapInfo(uint64_t dma_addr) {
  return {.kind = Mapping::Kind::kMap, .dma_addr = dma_addr};
}

TEST(MappingTest, DestructionUndoesOnce) {
  int runs = 0;
  {
    Mapping m(MapInfo(0x1000), Counting(&runs));
    EXPECT_TRUE(m.valid());
  }
  EXPECT_EQ(runs, 1);
}

TEST(MappingTest, CloseReturnsTheUndoStatusAndEmptiesTheHandle) {
  int runs = 0;
  Mapping m(MapInfo(0x1000), Counting(&runs, absl::NotFoundError("dma_addr=0x1000: gone")));
  EXPECT_EQ(m.Close().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(m.valid());
  EXPECT_TRUE(m.Close().ok());
  EXPECT_EQ(runs, 1);
}

TEST(MappingTest, ReleaseDetaches) {
  int runs = 0;
  {
    Mapping m(MapInfo(0xabc000), Counting(&runs));
    EXPECT_EQ(m.Release(), 0xabc000u);
    EXPECT_FALSE(m.valid());
  }
  EXPECT_EQ(runs, 0);
}

TEST(MappingTest, MoveTransfersOwnershipAndAssignmentClosesTheOld) {
  int a = 0, b = 0;
  Mapping first(MapInfo(1), Counting(&a));
  Mapping second(std::move(first));
  EXPECT_FALSE(first.valid());  // NOLINT(bugprone-use-after-move): moved-from state is specified
  EXPECT_TRUE(second.valid());
  Mapping third(MapInfo(2), Counting(&b));
  third = std::move(second);  // closes mapping 2
  EXPECT_EQ(a, 0);
  EXPECT_EQ(b, 1);
  EXPECT_EQ(third.dma_addr(), 1u);
  third = Mapping();
  EXPECT_EQ(a, 1);
}

TEST(BufferTest, LifecycleMirrorsMapping) {
  int runs = 0;
  iommu::v1::Buffer info;
  info.set_buffer_id(7);
  info.set_size_bytes(8192);
  {
    Buffer buffer(info, Counting(&runs));
    EXPECT_EQ(buffer.id(), 7u);
    EXPECT_EQ(buffer.size_bytes(), 8192u);
    Buffer moved = std::move(buffer);
    EXPECT_FALSE(buffer.valid());  // NOLINT(bugprone-use-after-move)
  }
  EXPECT_EQ(runs, 1);
  Buffer released(info, Counting(&runs));
  EXPECT_EQ(released.Release(), 7u);
  EXPECT_TRUE(released.Close().ok());
  EXPECT_EQ(runs, 1);
}

}  // namespace
}  // namespace iommu::client
