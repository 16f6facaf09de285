// SPDX-License-Identifier: Apache-2.0
#include "client/ctl/args.h"

#include "gtest/gtest.h"

namespace iommu::client::ctl {
namespace {

TEST(ParseNumberTest, DecimalHexAndSuffixes) {
  struct Case {
    const char* text;
    uint64_t want;
  };
  for (const Case& c : std::vector<Case>{{"0", 0},
                                         {"4096", 4096},
                                         {"0x1000", 0x1000},
                                         {"0XfFfF", 0xffff},
                                         {"4K", 4096},
                                         {"2m", 2 << 20},
                                         {"1G", uint64_t{1} << 30},
                                         {"0xffffffffffffffff", ~uint64_t{0}},
                                         {"0xB", 0xb}}) {
    absl::StatusOr<uint64_t> v = ParseNumber("--n", c.text);
    ASSERT_TRUE(v.ok()) << c.text << ": " << v.status();
    EXPECT_EQ(*v, c.want) << c.text;
  }
}

TEST(ParseNumberTest, RejectsGarbageAndOverflow) {
  for (const char* text :
       {"", "x", "0x", "-1", "12Q", "K", "18446744073709551616", "17179869184G", "1.5"}) {
    absl::StatusOr<uint64_t> v = ParseNumber("--size", text);
    EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_EQ(v.status().message().rfind("--size=\"", 0), 0u) << v.status();
  }
}

TEST(ArgsTest, FlagsPositionalsAndDashes) {
  absl::StatusOr<Args> args =
      Args::Parse({"--dma-addr=0x10", "pos", "--json", "--", "--not-a-flag"});
  ASSERT_TRUE(args.ok());
  EXPECT_EQ(*args->U64("dma_addr"), 0x10u);
  EXPECT_TRUE(*args->Bool("json"));
  EXPECT_FALSE(*args->Bool("absent"));
  EXPECT_EQ(args->positional(), (std::vector<std::string>{"pos", "--not-a-flag"}));
  EXPECT_TRUE(args->CheckAllUsed("x").ok());
}

TEST(ArgsTest, DuplicateAndUnusedFlagsAreErrors) {
  EXPECT_EQ(Args::Parse({"--a=1", "--a=2"}).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<Args> args = Args::Parse({"--iova=1", "--lenght=4"});
  ASSERT_TRUE(args.ok());
  ASSERT_TRUE(args->U64("iova").ok());
  const absl::Status unused = args->CheckAllUsed("translate");
  EXPECT_EQ(unused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(unused.message(), "flag=\"--lenght\": is not a flag of 'translate'");
}

TEST(ArgsTest, TypedGetters) {
  absl::StatusOr<Args> args = Args::Parse({"--mode=MERGE", "--bad=maybe", "--rate=2.5", "--name="});
  ASSERT_TRUE(args.ok());
  enum class M { kA, kMerge };
  EXPECT_EQ(*args->Enum<M>("mode", {{"a", M::kA}, {"merge", M::kMerge}}, M::kA), M::kMerge);
  EXPECT_EQ(*args->Enum<M>("absent", {{"a", M::kA}}, M::kMerge), M::kMerge);
  absl::StatusOr<M> bad = args->Enum<M>("bad", {{"a", M::kA}, {"merge", M::kMerge}}, M::kA);
  EXPECT_EQ(bad.status().message(), "--bad=\"maybe\": must be one of a|merge");
  EXPECT_EQ(args->Bool("bad").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_DOUBLE_EQ(*args->DoubleOr("rate", 0), 2.5);
  EXPECT_EQ(args->String("name").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(args->U64("missing").status().message(), "--missing=\"\": is required");
  EXPECT_EQ(*args->U64Or("missing", 7), 7u);
  EXPECT_FALSE(args->OptionalU64("missing")->has_value());
}

}  // namespace
}  // namespace iommu::client::ctl
