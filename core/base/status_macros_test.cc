// SPDX-License-Identifier: Apache-2.0
#include "core/base/status_macros.h"

#include <memory>
#include <utility>

#include "gtest/gtest.h"

namespace iommu::core {
namespace {

int g_evaluations = 0;

absl::Status Counted(absl::Status s) {
  ++g_evaluations;
  return s;
}

absl::Status PropagatesError(absl::Status inner, bool* reached_end) {
  RETURN_IF_ERROR(Counted(std::move(inner)));
  *reached_end = true;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<int>> MakeInt(bool ok) {
  if (!ok) return absl::NotFoundError("buffer_id 7 not found");
  return std::make_unique<int>(42);
}

absl::StatusOr<int> Unwrap(bool ok) {
  ASSIGN_OR_RETURN(auto p, MakeInt(ok));  // move-only value
  return *p + 1;
}

TEST(StatusMacrosTest, ReturnIfErrorReturnsTheErrorAndEvaluatesOnce) {
  g_evaluations = 0;
  bool reached_end = false;
  absl::Status s = PropagatesError(absl::OutOfRangeError("iova"), &reached_end);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(s.message(), "iova");
  EXPECT_FALSE(reached_end);
  EXPECT_EQ(g_evaluations, 1);
}

TEST(StatusMacrosTest, ReturnIfErrorContinuesOnOk) {
  bool reached_end = false;
  EXPECT_TRUE(PropagatesError(absl::OkStatus(), &reached_end).ok());
  EXPECT_TRUE(reached_end);
}

TEST(StatusMacrosTest, AssignOrReturnMovesValueOrPropagates) {
  ASSERT_TRUE(Unwrap(true).ok());
  EXPECT_EQ(*Unwrap(true), 43);
  absl::StatusOr<int> err = Unwrap(false);
  EXPECT_EQ(err.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(err.status().message(), "buffer_id 7 not found");
}

}  // namespace
}  // namespace iommu::core
