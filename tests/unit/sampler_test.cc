#include "engine/runtime/sampler.h"

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

// Tokens the sampler gave for these seeds before the draw moved into the
// forward step (recorded at 21361a1 with the host-side Sampler::Sample):
// the split into Sampler::Next (host) and SampleToken (backend) must give
// the same stream, bit for bit.
TEST(SamplerTest, SeededStreamsAreTheOnesRecordedBeforeTheSplit) {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = std::sin(i * 1.7f) * 3.0f;
  struct Case {
    SamplingParams params;
    std::vector<int32_t> tokens;
  };
  const std::vector<Case> cases = {
      {{1.0f, 0, 1.0f, 1}, {5,  5,  23, 1,  16, 46, 23, 1,  27, 34, 4,  27,
                            39, 12, 20, 12, 13, 41, 23, 12, 12, 38, 23, 16}},
      {{0.7f, 5, 1.0f, 2}, {38, 38, 23, 38, 49, 12, 49, 12, 12, 23, 23, 38,
                            23, 12, 12, 12, 38, 1,  49, 49, 12, 12, 1,  1}},
      {{1.3f, 0, 0.8f, 3}, {45, 1,  45, 38, 45, 38, 8,  34, 8,  49, 49, 45,
                            45, 30, 23, 12, 23, 5,  41, 27, 38, 1,  12, 12}},
      {{0.9f, 10, 0.5f, 4}, {23, 1,  1,  12, 1,  12, 38, 12, 23, 23, 23, 1,
                             1,  49, 38, 23, 49, 12, 38, 23, 38, 49, 38, 1}},
  };
  for (const Case& c : cases) {
    Sampler host(c.params);
    Sampler streamed(c.params);
    SamplingScratch scratch;
    for (size_t i = 0; i < c.tokens.size(); ++i) {
      EXPECT_EQ(host.Sample(logits.data(), 50, nullptr), c.tokens[i])
          << "seed " << c.params.seed << " token " << i;
      // What a backend computes from the draw the step carries.
      EXPECT_EQ(
          SampleToken(logits.data(), 50, streamed.Next(), nullptr, &scratch),
          c.tokens[i])
          << "seed " << c.params.seed << " token " << i;
    }
  }
}

TEST(SamplerTest, GreedyDrawsTakeNothingFromTheStream) {
  SamplingParams params;
  params.seed = 9;
  Sampler sampler(params);
  for (int i = 0; i < 3; ++i) {
    const TokenDraw draw = sampler.Next();
    EXPECT_TRUE(draw.greedy());
    EXPECT_EQ(draw.uniform, 0.0);
  }
  params.temperature = 1.0f;
  Sampler random(params);
  const double first = random.Next().uniform;
  EXPECT_GE(first, 0.0);
  EXPECT_LT(first, 1.0);
  EXPECT_NE(first, random.Next().uniform);
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
