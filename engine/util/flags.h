// Lets command lines spell absl flags with dashes (--max-new-tokens) as well
// as underscores (--max_new_tokens): C++ identifiers cannot hold dashes, and
// dashed long options are what users of serving tools expect.
#ifndef LITESTAGE_ENGINE_UTIL_FLAGS_H_
#define LITESTAGE_ENGINE_UTIL_FLAGS_H_

#include <string>
#include <vector>

namespace litestage {

// Returns argv with '-' turned into '_' inside every "--flag-name" (before any
// '='); values and positional arguments are untouched. Stops at "--".
std::vector<std::string> NormalizeFlagNames(int argc, char** argv);

// Parses absl flags from a dashed or underscored command line; returns the
// positional arguments (argv[0] first), as absl::ParseCommandLine does.
std::vector<char*> ParseFlagsAllowingDashes(int argc, char** argv);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_UTIL_FLAGS_H_
