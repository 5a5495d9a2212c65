#include "engine/util/flags.h"

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

}  // namespace
}  // namespace litestage
