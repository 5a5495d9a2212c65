#include "engine/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace litestage {
namespace {

TEST(SamplerTest, GreedyPicksArgmaxAndReportsConfidence) {
  Sampler sampler(SamplingParams{});
  std::vector<float> logits = {0.0f, 2.0f, 1.0f, 2.0f};
  TokenConfidence confidence;
  EXPECT_EQ(sampler.Sample(logits.data(), 4, &confidence),
            1);  // First of ties.
  const double z = 1 + 2 * std::exp(2.0) + std::exp(1.0);
  EXPECT_NEAR(confidence.max_prob, std::exp(2.0) / z, 1e-6);
  EXPECT_FLOAT_EQ(confidence.max_logit, 2.0f);
  double entropy = 0;
  for (float l : {0.0f, 2.0f, 1.0f, 2.0f}) {
    const double p = std::exp(l) / z;
    entropy -= p * std::log(p);
  }
  EXPECT_NEAR(confidence.entropy, entropy, 1e-5);
}

TEST(SamplerTest, SeededSamplingIsReproducibleAndFollowsTheDistribution) {
  SamplingParams params;
  params.temperature = 1.0f;
  params.seed = 7;
  const std::vector<float> base = {std::log(0.5f), std::log(0.3f),
                                   std::log(0.2f)};
  Sampler a(params), b(params);
  std::map<int32_t, int> counts;
  constexpr int kDraws = 20000;
  for (int i = 0; i < kDraws; ++i) {
    std::vector<float> l1 = base, l2 = base;
    const int32_t x = a.Sample(l1.data(), 3, nullptr);
    ASSERT_EQ(x, b.Sample(l2.data(), 3, nullptr));
    ++counts[x];
  }
  // Binomial standard deviation at p=0.5 over 20000 draws is ~0.0035.
  EXPECT_NEAR(counts[0] / double(kDraws), 0.5, 0.02);
  EXPECT_NEAR(counts[1] / double(kDraws), 0.3, 0.02);
  EXPECT_NEAR(counts[2] / double(kDraws), 0.2, 0.02);
}

TEST(SamplerTest, TopKAndTopPRestrictTheCandidates) {
  const std::vector<float> base = {std::log(0.4f), std::log(0.3f),
                                   std::log(0.2f), std::log(0.1f)};
  SamplingParams top_k;
  top_k.temperature = 1.0f;
  top_k.top_k = 2;
  SamplingParams top_p;
  top_p.temperature = 1.0f;
  top_p.top_p = 0.65f;  // 0.4 + 0.3 reaches it: ids 0 and 1 only.
  Sampler k_sampler(top_k), p_sampler(top_p);
  for (int i = 0; i < 2000; ++i) {
    std::vector<float> l1 = base, l2 = base;
    EXPECT_LT(k_sampler.Sample(l1.data(), 4, nullptr), 2);
    EXPECT_LT(p_sampler.Sample(l2.data(), 4, nullptr), 2);
  }
}

TEST(SamplerTest, RejectsBadParameters) {
  SamplingParams params;
  params.temperature = -1;
  EXPECT_EQ(ValidateSamplingParams(params).code(),
            absl::StatusCode::kInvalidArgument);
  params = {};
  params.top_k = -3;
  EXPECT_NE(ValidateSamplingParams(params).message().find("top_k"),
            std::string::npos);
  params = {};
  params.top_p = 0;
  EXPECT_NE(ValidateSamplingParams(params).message().find("top_p"),
            std::string::npos);
  params = {};
  params.top_p = 1.5f;
  EXPECT_FALSE(ValidateSamplingParams(params).ok());
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams{}).ok());
}

}  // namespace
}  // namespace litestage
