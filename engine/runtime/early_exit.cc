#include "engine/runtime/early_exit.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/util/check.h"

namespace litestage {

absl::Status ValidateEarlyExitConfig(const EarlyExitConfig& config) {
  if (config.window < 0 || config.window > kMaxEarlyExitWindow) {
    return absl::InvalidArgumentError(
        absl::StrCat("early_exit.window must be in [0, ", kMaxEarlyExitWindow,
                     "] (0 disables), got ", config.window));
  }
  if (config.min_tokens < 0 || config.min_tokens > kMaxEarlyExitMinTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("early_exit.min_tokens must be in [0, ",
                     kMaxEarlyExitMinTokens, "], got ", config.min_tokens));
  }
  if (!std::isfinite(config.threshold)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "early_exit.threshold must be finite, got ", config.threshold));
  }
  if (config.kind == ConfidenceKind::kMaxProb &&
      !(config.threshold >= 0.0f && config.threshold <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("early_exit.threshold must be in [0, 1] for max_prob "
                     "confidence, got ",
                     config.threshold));
  }
  return absl::OkStatus();
}

EarlyExitMonitor::EarlyExitMonitor(const EarlyExitConfig& config)
    : config_(config) {}

bool EarlyExitMonitor::Push(const TokenConfidence& confidence,
                            int64_t kept_tokens) {
  if (!config_.enabled()) return false;
  const float value = ConfidenceValue(confidence, config_.kind);
  if (static_cast<int64_t>(window_.size()) < config_.window) {
    window_.push_back(value);  // Still filling: one slot per token pushed.
  } else {
    window_[pushed_ % config_.window] = value;
  }
  ++pushed_;
  if (pushed_ < config_.window || kept_tokens < config_.min_tokens) {
    return false;
  }
  const double window_mean = mean();
  if (window_mean > config_.threshold) return false;
  reason_ = absl::StrFormat("mean %s %.4f <= %.4f over the last %d tokens",
                            ConfidenceKindName(config_.kind), window_mean,
                            config_.threshold, config_.window);
  return true;
}

double EarlyExitMonitor::mean() const {
  if (window_.empty()) return 0;
  double sum = 0;
  for (const float value : window_) sum += value;
  return sum / static_cast<double>(window_.size());
}

}  // namespace litestage
