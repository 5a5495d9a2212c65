// EarlyExitMonitor driven by hand-made confidence sequences: the exit fires
// exactly when the window mean reaches the threshold, never before the
// window is full or before min_tokens are kept.
#include "engine/runtime/early_exit.h"

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

TEST(EarlyExitTest, WindowAndMinTokensAreBounded) {
  EXPECT_TRUE(ValidateEarlyExitConfig({.window = kMaxEarlyExitWindow}).ok());
  const absl::Status over =
      ValidateEarlyExitConfig({.window = kMaxEarlyExitWindow + 1});
  EXPECT_EQ(over.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(over.message(), HasSubstr("early_exit.window"));
  EXPECT_THAT(over.message(), HasSubstr("4096"));
  EXPECT_FALSE(ValidateEarlyExitConfig({.window = 1'000'000'000'000}).ok());
  EXPECT_TRUE(ValidateEarlyExitConfig(
                  {.window = 2, .min_tokens = kMaxEarlyExitMinTokens})
                  .ok());
  EXPECT_THAT(ValidateEarlyExitConfig(
                  {.window = 2, .min_tokens = kMaxEarlyExitMinTokens + 1})
                  .message(),
              HasSubstr("early_exit.min_tokens"));
}

// The FIFO grows with the tokens pushed: a monitor for a huge window costs
// nothing up front (the old ring buffer allocated `window` floats, so 1e12
// threw std::bad_alloc) and behaves as before.
TEST(EarlyExitTest, MonitorDoesNotAllocateTheWindowUpFront) {
  EarlyExitMonitor huge({.window = 1'000'000'000'000, .threshold = 0.5f});
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(huge.Push(Prob(0.1f), i));
  EXPECT_NEAR(huge.mean(), 0.1, 1e-6);
  // Filling then wrapping keeps the mean over exactly the last `window`.
  EarlyExitMonitor small({.window = 3, .threshold = 0.0f});
  for (float p : {0.9f, 0.9f, 0.9f, 0.3f, 0.3f}) small.Push(Prob(p), 0);
  EXPECT_NEAR(small.mean(), (0.9 + 0.3 + 0.3) / 3, 1e-6);
}

}  // namespace
}  // namespace litestage
