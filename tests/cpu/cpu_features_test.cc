#include "engine/backends/cpu/cpu_features.h"

#include "gtest/gtest.h"

namespace litestage::cpu {
namespace {

TEST(CpuFeaturesTest, ParsesIsaNames) {
  EXPECT_EQ(ParseIsa("scalar"), Isa::kScalar);
  EXPECT_EQ(ParseIsa("avx2"), Isa::kAvx2);
  EXPECT_EQ(ParseIsa("avx512"), Isa::kAvx512);
  EXPECT_EQ(ParseIsa("AVX2"), std::nullopt);
  EXPECT_EQ(ParseIsa(""), std::nullopt);
  EXPECT_EQ(ParseIsa("sse"), std::nullopt);
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    EXPECT_EQ(ParseIsa(IsaName(isa)), isa);
  }
}

TEST(CpuFeaturesTest, OverrideIsClampedToTheHardware) {
  const Isa before = ActiveIsa();
  EXPECT_LE(static_cast<int>(before), static_cast<int>(DetectedIsa()));
  EXPECT_EQ(SetActiveIsaForTesting(Isa::kScalar), Isa::kScalar);
  EXPECT_EQ(ActiveIsa(), Isa::kScalar);
  EXPECT_EQ(SetActiveIsaForTesting(Isa::kAvx512), DetectedIsa());
  EXPECT_EQ(ActiveIsa(), DetectedIsa());
  SetActiveIsaForTesting(before);
}

TEST(CpuFeaturesTest, Avx512Bf16ImpliesAvx512) {
  if (HasAvx512Bf16()) {
    EXPECT_EQ(DetectedIsa(), Isa::kAvx512);
  }
}

}  // namespace
}  // namespace litestage::cpu
