// Every profile shipped in profiles/*.json (compiled in) parses, has a
// unique name that is not a built-in's, and names its model: the server
// skips a broken one with an error line, so the build must not ship one.
#include "engine/stages/shipped_profiles.h"

#include <set>
#include <string>

#include "engine/stages/profile.h"
#include "gtest/gtest.h"

namespace litestage {
namespace {

TEST(ShippedProfilesTest, EveryShippedProfileParses) {
  std::set<std::string> names;
  for (const ShippedProfile& shipped : ShippedProfiles()) {
    absl::StatusOr<Profile> profile =
        ParseProfile(shipped.json, shipped.source);
    ASSERT_TRUE(profile.ok()) << profile.status();
    EXPECT_FALSE(IsBuiltinProfileSpec(profile->name)) << shipped.source;
    EXPECT_TRUE(names.insert(profile->name).second)
        << shipped.source << ": name '" << profile->name
        << "' is shipped twice";
    EXPECT_FALSE(profile->model.architecture.empty()) << shipped.source;
  }
}

}  // namespace
}  // namespace litestage
