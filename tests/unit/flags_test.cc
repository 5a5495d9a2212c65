#include "engine/util/flags.h"

#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace litestage {
namespace {

TEST(FlagsTest, DashesInFlagNamesBecomeUnderscores) {
  std::vector<std::string> args = {"prog",         "--max-new-tokens=4",
                                   "--top-k",      "3",
                                   "--prompt=a-b", "-x-y",
                                   "pos-arg",      "--",
                                   "--keep-me"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  EXPECT_THAT(NormalizeFlagNames(static_cast<int>(argv.size()), argv.data()),
              testing::ElementsAre("prog", "--max_new_tokens=4", "--top_k", "3",
                                   "--prompt=a-b", "-x_y", "pos-arg", "--",
                                   "--keep-me"));
}

TEST(FlagsTest, CheckFlagRangeAcceptsTheBoundsAndNamesTheFlag) {
  EXPECT_TRUE(CheckFlagRange("threads", 0, 0, 1024).ok());
  EXPECT_TRUE(CheckFlagRange("threads", 1024, 0, 1024).ok());
  const absl::Status over = CheckFlagRange("threads", 1025, 0, 1024);
  EXPECT_EQ(over.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(over.message(), "--threads: 1025 is out of range [0, 1024]");
  EXPECT_FALSE(CheckFlagRange("threads", -1, 0, 1024).ok());
  EXPECT_FALSE(CheckFlagRange("kv-cache-tokens",
                              std::numeric_limits<int64_t>::max(), 1,
                              kMaxKvCacheTokensFlag)
                   .ok());
  EXPECT_FALSE(CheckFlagRange("kv-cache-tokens",
                              std::numeric_limits<int64_t>::min(), 1,
                              kMaxKvCacheTokensFlag)
                   .ok());
}

TEST(FlagsTest, CheckDoubleFlagRangeRejectsNonFinite) {
  EXPECT_TRUE(CheckDoubleFlagRange("grace-period", 0, 0, 3600).ok());
  EXPECT_TRUE(CheckDoubleFlagRange("grace-period", 3600, 0, 3600).ok());
  EXPECT_FALSE(CheckDoubleFlagRange("grace-period", 3600.5, 0, 3600).ok());
  EXPECT_FALSE(CheckDoubleFlagRange("grace-period", -0.1, 0, 3600).ok());
  EXPECT_FALSE(CheckDoubleFlagRange("grace-period", 1e300, 0, 3600).ok());
  const absl::Status nan = CheckDoubleFlagRange(
      "grace-period", std::numeric_limits<double>::quiet_NaN(), 0, 3600);
  EXPECT_EQ(nan.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(nan.message()),
              testing::AllOf(testing::HasSubstr("--grace-period: nan"),
                             testing::HasSubstr("[0, 3600]"),
                             testing::HasSubstr("must be finite")));
  EXPECT_FALSE(CheckDoubleFlagRange("grace-period",
                                    std::numeric_limits<double>::infinity(), 0,
                                    3600)
                   .ok());
  // An unbounded range still rejects infinities.
  EXPECT_FALSE(CheckDoubleFlagRange("x",
                                    -std::numeric_limits<double>::infinity(),
                                    -std::numeric_limits<double>::max(),
                                    std::numeric_limits<double>::max())
                   .ok());
}

TEST(FlagsTest, FirstErrorReturnsTheFirstFailure) {
  EXPECT_TRUE(FirstError({}).ok());
  EXPECT_TRUE(FirstError({absl::OkStatus(), absl::OkStatus()}).ok());
  EXPECT_EQ(FirstError({absl::OkStatus(), absl::InvalidArgumentError("a"),
                        absl::InvalidArgumentError("b")})
                .message(),
            "a");
}

}  // namespace
}  // namespace litestage
