// EarlyExitMonitor driven by hand-made confidence sequences: the exit fires
// exactly when the window mean reaches the threshold, never before the
// window is full or before min_tokens are kept.
#include "engine/early_exit.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace litestage {
namespace {

using ::testing::HasSubstr;

TokenConfidence Prob(float p) {
  TokenConfidence c;
  c.max_prob = p;
  c.max_logit = 100.0f * p;  // Distinct so the kind matters.
  return c;
}

// Index (0-based) of the token at which the monitor says stop, or -1.
int FirstExit(const EarlyExitConfig& config, const std::vector<float>& probs) {
  EarlyExitMonitor monitor(config);
  for (size_t i = 0; i < probs.size(); ++i) {
    if (monitor.Push(Prob(probs[i]), static_cast<int64_t>(i))) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

TEST(EarlyExitTest, DisabledNeverFires) {
  EXPECT_EQ(FirstExit({}, {0, 0, 0, 0}), -1);
}

TEST(EarlyExitTest, FiresWhenWindowMeanCrossesThreshold) {
  EarlyExitConfig config{.window = 3, .threshold = 0.5f};
  // Window means from index 2: (.9+.9+.6)/3=.8, (.9+.6+.3)/3=.6,
  // (.6+.3+.3)/3=.4 <= .5 -> exit at index 4.
  EXPECT_EQ(FirstExit(config, {0.9f, 0.9f, 0.6f, 0.3f, 0.3f, 0.1f}), 4);
  // Equality counts ("falls to the threshold").
  EXPECT_EQ(FirstExit(config, {0.5f, 0.5f, 0.5f}), 2);
  // Just above never fires.
  EXPECT_EQ(FirstExit(config, {0.51f, 0.51f, 0.51f, 0.51f}), -1);
}

TEST(EarlyExitTest, NeverBeforeTheWindowIsFull) {
  EarlyExitConfig config{.window = 4, .threshold = 0.5f};
  // Every value is low, yet nothing fires until 4 confidences are in.
  EXPECT_EQ(FirstExit(config, {0.0f, 0.0f, 0.0f, 0.0f, 0.0f}), 3);
  EXPECT_EQ(FirstExit(config, {0.0f, 0.0f, 0.0f}), -1);
}

TEST(EarlyExitTest, OldValuesLeaveTheWindow) {
  EarlyExitConfig config{.window = 2, .threshold = 0.2f};
  // A low value followed by high ones must not linger: means .55, .9, .9,
  // then .1+.1 -> .1 at index 5.
  EXPECT_EQ(FirstExit(config, {0.1f, 1.0f, 0.8f, 1.0f, 0.1f, 0.1f}), 5);
}

TEST(EarlyExitTest, MinTokensDelaysTheExit) {
  EarlyExitConfig config{.window = 2, .threshold = 0.5f, .min_tokens = 5};
  // Full window at index 1 but only 1 token kept; first allowed at 5 kept.
  EXPECT_EQ(FirstExit(config, std::vector<float>(10, 0.0f)), 5);
}

TEST(EarlyExitTest, MaxLogitKindReadsLogits) {
  EarlyExitConfig config{
      .window = 2, .threshold = 40.0f, .kind = ConfidenceKind::kMaxLogit};
  // max_logit = 100 * p: means 60, 45, 35 -> exit at index 3.
  EXPECT_EQ(FirstExit(config, {0.6f, 0.6f, 0.3f, 0.4f}), 3);
}

TEST(EarlyExitTest, ReasonStatesTheMeanAndThreshold) {
  EarlyExitMonitor monitor({.window = 2, .threshold = 0.5f});
  EXPECT_FALSE(monitor.Push(Prob(0.25f), 0));
  EXPECT_TRUE(monitor.Push(Prob(0.25f), 1));
  EXPECT_EQ(monitor.reason(),
            "mean max_prob 0.2500 <= 0.5000 over the last 2 tokens");
  EXPECT_DOUBLE_EQ(monitor.mean(), 0.25);
}

TEST(EarlyExitTest, ValidationNamesTheField) {
  EXPECT_THAT(ValidateEarlyExitConfig({.window = -1}).message(),
              HasSubstr("early_exit.window"));
  EXPECT_THAT(
      ValidateEarlyExitConfig({.window = 2, .min_tokens = -3}).message(),
      HasSubstr("early_exit.min_tokens"));
  EXPECT_THAT(
      ValidateEarlyExitConfig({.window = 2, .threshold = 1.5f}).message(),
      HasSubstr("early_exit.threshold"));
  EXPECT_TRUE(
      ValidateEarlyExitConfig(
          {.window = 2, .threshold = 15.0f, .kind = ConfidenceKind::kMaxLogit})
          .ok());
  EXPECT_TRUE(ValidateEarlyExitConfig({}).ok());
}

}  // namespace
}  // namespace litestage
