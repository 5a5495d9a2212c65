// Lets command lines spell absl flags with dashes (--max-new-tokens) as well
// as underscores (--max_new_tokens): C++ identifiers cannot hold dashes, and
// dashed long options are what users of serving tools expect.
#ifndef LITESTAGE_ENGINE_UTIL_FLAGS_H_
#define LITESTAGE_ENGINE_UTIL_FLAGS_H_

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace litestage {

// Exit status of the binaries for a bad command line (flag value out of
// range, unknown subcommand). 1, because absl::ParseCommandLine already exits
// 1 for a flag value it cannot parse ("--threads abc") and scripts should see
// one code for every bad command line.
inline constexpr int kUsageExitCode = 1;

// Bounds shared by the binaries' flags (docs/server.md, "Limits").
// Worker threads: more threads than cores only add contention, and the pool
// starts every thread up front; 1024 covers the largest hosts.
inline constexpr int64_t kMaxThreadsFlag = 1024;
// Tokens of KV cache: block ids are int32 and 2^30 tokens is terabytes of
// cache for any model; the real bound is memory (CheckKvCacheFitsMemory).
inline constexpr int64_t kMaxKvCacheTokensFlag = int64_t{1} << 30;
// Tokens one generation may ask for: above the largest context a served
// model has (128k) with room to spare.
inline constexpr int64_t kMaxNewTokensFlag = int64_t{1} << 20;
// Seconds-valued flags (grace period, RPC timeout, bench duration): an hour
// for the grace period (orchestrators kill long before), a day otherwise.
inline constexpr double kMaxGracePeriodSeconds = 3600;
// Sampling: temperatures past ~2 are already near-uniform; top-k past the
// largest vocabulary (256k) means "all"; early-exit thresholds are
// probabilities in [0, 1] or logits, which stay far inside +-1e6.
inline constexpr double kMaxTemperatureFlag = 100;
inline constexpr int64_t kMaxTopKFlag = int64_t{1} << 20;
inline constexpr double kMaxEarlyExitThresholdFlag = 1e6;
// Counts of items or repetitions (questions, requests, benchmark reps).
inline constexpr int64_t kMaxCountFlag = int64_t{1} << 20;
// --batch of litestage-eval and litestage-search (questions per batched
// run): beyond a few dozen the KV cache, not the weights, bounds a batch.
inline constexpr int64_t kMaxEvalBatchFlag = 1024;
inline constexpr double kMaxDurationSeconds = 86400;

// OK when lo <= value <= hi; otherwise InvalidArgument
// "--<name>: <value> is out of range [lo, hi]". `name` is given without the
// dashes, spelled as users type it ("kv-cache-tokens").
absl::Status CheckFlagRange(absl::string_view name, int64_t value, int64_t lo,
                            int64_t hi);
// The same for a floating-point flag; NaN and infinities are always out of
// range (absl parses "inf", "nan" and "1e300" as valid doubles).
absl::Status CheckDoubleFlagRange(absl::string_view name, double value,
                                  double lo, double hi);

// --temperature, --top-k and --top-p, which litestage-run and litestage-cli
// share (0 for top-k / top-p: "no cut" / the server's default).
absl::Status CheckSamplingFlags(double temperature, int64_t top_k,
                                double top_p);

// --early-exit-window (-1: the profile's), --early-exit-threshold and
// --early-exit-min-tokens, shared the same way; `max_window` and
// `max_min_tokens` are engine/runtime/early_exit.h's bounds.
absl::Status CheckEarlyExitFlags(int64_t window, double threshold,
                                 int64_t min_tokens, int64_t max_window,
                                 int64_t max_min_tokens);

// The first non-OK status of `checks`, else OK: lets a binary list every
// flag check in one expression.
absl::Status FirstError(std::initializer_list<absl::Status> checks);

// Returns argv with '-' turned into '_' inside every "--flag-name" (before any
// '='); values and positional arguments are untouched. Stops at "--".
std::vector<std::string> NormalizeFlagNames(int argc, char** argv);

// Parses absl flags from a dashed or underscored command line; returns the
// positional arguments (argv[0] first), as absl::ParseCommandLine does.
std::vector<char*> ParseFlagsAllowingDashes(int argc, char** argv);

// The main() of the command-line tools (litestage-run, -eval, -search):
// sets `usage`, parses the flags (ParseFlagsAllowingDashes), runs
// `validate_flags` (an error: "<tool>: <message>", kUsageExitCode) and then
// `run` (an error: "<tool>: <status>", exit code 1). Returns the exit code.
int RunCommandLineTool(const char* tool, const char* usage, int argc,
                       char** argv, absl::Status (*validate_flags)(),
                       absl::Status (*run)());

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_UTIL_FLAGS_H_
