#include "engine/util/flags.h"

#include <cmath>
#include <cstdio>
#include <string>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"

namespace litestage {

absl::Status CheckFlagRange(absl::string_view name, int64_t value, int64_t lo,
                            int64_t hi) {
  if (value >= lo && value <= hi) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "--", name, ": ", value, " is out of range [", lo, ", ", hi, "]"));
}

absl::Status CheckDoubleFlagRange(absl::string_view name, double value,
                                  double lo, double hi) {
  // Written so that NaN fails: every comparison with NaN is false.
  if (std::isfinite(value) && value >= lo && value <= hi) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--", name, ": ", value, " is out of range [", lo, ", ", hi,
                   "]", std::isfinite(value) ? "" : " (must be finite)"));
}

absl::Status CheckSamplingFlags(double temperature, int64_t top_k,
                                double top_p) {
  return FirstError({
      CheckDoubleFlagRange("temperature", temperature, 0, kMaxTemperatureFlag),
      CheckFlagRange("top-k", top_k, 0, kMaxTopKFlag),
      CheckDoubleFlagRange("top-p", top_p, 0, 1),
  });
}

absl::Status CheckEarlyExitFlags(int64_t window, double threshold,
                                 int64_t min_tokens, int64_t max_window,
                                 int64_t max_min_tokens) {
  return FirstError({
      CheckFlagRange("early-exit-window", window, -1, max_window),
      CheckDoubleFlagRange("early-exit-threshold", threshold,
                           -kMaxEarlyExitThresholdFlag,
                           kMaxEarlyExitThresholdFlag),
      CheckFlagRange("early-exit-min-tokens", min_tokens, 0, max_min_tokens),
  });
}

absl::Status FirstError(std::initializer_list<absl::Status> checks) {
  for (const absl::Status& status : checks) {
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

std::vector<std::string> NormalizeFlagNames(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  for (size_t i = 1; i < args.size(); ++i) {
    std::string& arg = args[i];
    if (arg == "--") break;
    if (arg.size() < 3 || arg[0] != '-') continue;
    const size_t name_begin = arg[1] == '-' ? 2 : 1;
    const size_t name_end = arg.find('=');
    for (size_t j = name_begin; j < std::min(name_end, arg.size()); ++j) {
      if (arg[j] == '-') arg[j] = '_';
    }
  }
  return args;
}

std::vector<char*> ParseFlagsAllowingDashes(int argc, char** argv) {
  // absl keeps pointers into argv for positional arguments, so the
  // normalised strings must outlive the call: they live for the process.
  static std::vector<std::string>* normalized = new std::vector<std::string>();
  *normalized = NormalizeFlagNames(argc, argv);
  static std::vector<char*>* pointers = new std::vector<char*>();
  pointers->clear();
  for (std::string& arg : *normalized) pointers->push_back(arg.data());
  return absl::ParseCommandLine(static_cast<int>(pointers->size()),
                                pointers->data());
}

int RunCommandLineTool(const char* tool, const char* usage, int argc,
                       char** argv, absl::Status (*validate_flags)(),
                       absl::Status (*run)()) {
  absl::SetProgramUsageMessage(
      absl::StrCat(usage, "Flags may be spelled with dashes or underscores."));
  ParseFlagsAllowingDashes(argc, argv);
  if (const absl::Status flags = validate_flags(); !flags.ok()) {
    std::fprintf(stderr, "%s: %s\n", tool,
                 std::string(flags.message()).c_str());
    return kUsageExitCode;
  }
  const absl::Status status = run();
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", tool, status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace litestage
