// LiteStage's confidence early exit (litestage-method.md, "Online"): while a
// stage decodes, a FIFO keeps the confidences of its most recent tokens; when
// the FIFO is full and its mean falls to the threshold, the stage stops.
#ifndef LITESTAGE_ENGINE_RUNTIME_EARLY_EXIT_H_
#define LITESTAGE_ENGINE_RUNTIME_EARLY_EXIT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/runtime/sampler.h"

namespace litestage {

// LiteStage's confidence early exit: a FIFO of the confidences of the last
// `window` generated tokens (the current one included); once it is full and
// at least `min_tokens` tokens are kept, when its mean is <= `threshold` the
// sequence ends as if EOS were sampled in place of the current token, which
// is dropped (finish reason kEarlyExit).
struct EarlyExitConfig {
  int64_t window = 0;  // n; 0 disables early exit.
  float threshold = 0;
  ConfidenceKind kind = ConfidenceKind::kMaxProb;
  int64_t min_tokens = 0;  // No exit before this many generated tokens.

  bool enabled() const { return window > 0; }
  bool operator==(const EarlyExitConfig& other) const = default;
};
// Largest early-exit window. The paper's windows are 4-16 tokens; a window
// longer than any generation never fills, so it only disables the exit while
// costing memory. 4096 is far above useful and above the default
// max_new_tokens of every binary, yet keeps the FIFO at 16 KiB.
inline constexpr int64_t kMaxEarlyExitWindow = 4096;
// Largest min_tokens: no generation is longer than the model context, and no
// context litestage serves comes near 2^20 tokens (the same bound as
// --max-new-tokens); larger values are typos.
inline constexpr int64_t kMaxEarlyExitMinTokens = int64_t{1} << 20;

// InvalidArgument naming the field: window outside [0, kMaxEarlyExitWindow],
// min_tokens outside [0, kMaxEarlyExitMinTokens], a non-finite threshold, or
// a max_prob threshold outside [0, 1].
absl::Status ValidateEarlyExitConfig(const EarlyExitConfig& config);

// The FIFO of one sequence (one stage: a new stage gets a new monitor, so
// the cache resets). Feed it every sampled token's confidence in order.
class EarlyExitMonitor {
 public:
  explicit EarlyExitMonitor(const EarlyExitConfig& config);

  // Pushes the confidence of the token just sampled, with `kept_tokens`
  // tokens already kept before it. True when the stage must end here: the
  // FIFO is full, kept_tokens >= min_tokens and the mean <= threshold.
  bool Push(const TokenConfidence& confidence, int64_t kept_tokens);

  // After Push returned true: "mean max_prob 0.2100 <= 0.3000 over the last
  // 8 tokens".
  const std::string& reason() const { return reason_; }
  // Mean of the FIFO (of the values pushed so far while it is filling).
  double mean() const;

 private:
  EarlyExitConfig config_;
  // Ring buffer of at most config.window values. Grown as tokens are pushed
  // (never reserved up front), so memory follows the tokens generated, not
  // the configured window.
  std::vector<float> window_;
  int64_t pushed_ = 0;
  std::string reason_;
};

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_RUNTIME_EARLY_EXIT_H_
