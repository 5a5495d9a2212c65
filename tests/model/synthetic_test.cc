#include <cmath>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "engine/model/weights.h"
#include "engine/util/float16.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace litestage {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

float At(const Tensor& tensor, size_t i) {
  if (tensor.dtype == DType::kF32) return tensor.f32()[i];
  return Bf16ToF32(static_cast<const uint16_t*>(tensor.data)[i]);
}

TEST(SyntheticTest, PresetNames) {
  EXPECT_THAT(SyntheticPresetNames(),
              ElementsAre("tiny", "smollm2-135m", "qwen2.5-0.5b",
                          "tinyllama-1.1b", "qwen3-0.6b"));
  for (const std::string& name : SyntheticPresetNames()) {
    auto config = SyntheticPresetConfig(name);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->hidden_size % 2, 0) << name;
    EXPECT_EQ(config->num_attention_heads % config->num_key_value_heads, 0)
        << name;
    EXPECT_GT(config->max_position_embeddings, 0) << name;
    EXPECT_FALSE(config->eos_token_ids.empty()) << name;
  }
}

TEST(SyntheticTest, PresetConfigsMatchTheRealModels) {
  auto smollm = SyntheticPresetConfig("smollm2-135m");
  ASSERT_TRUE(smollm.ok());
  EXPECT_EQ(smollm->architecture, "LlamaForCausalLM");
  EXPECT_EQ(smollm->hidden_size, 576);
  EXPECT_EQ(smollm->intermediate_size, 1536);
  EXPECT_EQ(smollm->num_hidden_layers, 30);
  EXPECT_EQ(smollm->num_attention_heads, 9);
  EXPECT_EQ(smollm->num_key_value_heads, 3);
  EXPECT_EQ(smollm->head_dim, 64);
  EXPECT_EQ(smollm->vocab_size, 49152);
  EXPECT_TRUE(smollm->tie_word_embeddings);
  EXPECT_DOUBLE_EQ(smollm->rope_theta, 100000.0);
  EXPECT_EQ(smollm->max_position_embeddings, 8192);

  auto qwen2 = SyntheticPresetConfig("qwen2.5-0.5b");
  ASSERT_TRUE(qwen2.ok());
  EXPECT_EQ(qwen2->architecture, "Qwen2ForCausalLM");
  EXPECT_EQ(qwen2->family, ModelFamily::kQwen2);
  EXPECT_TRUE(qwen2->attention_bias);
  EXPECT_EQ(qwen2->head_dim, 64);
  EXPECT_EQ(qwen2->kv_dim(), 128);
  EXPECT_EQ(qwen2->vocab_size, 151936);
  EXPECT_DOUBLE_EQ(qwen2->rms_norm_eps, 1e-6);

  auto tinyllama = SyntheticPresetConfig("tinyllama-1.1b");
  ASSERT_TRUE(tinyllama.ok());
  EXPECT_FALSE(tinyllama->tie_word_embeddings);
  EXPECT_EQ(tinyllama->kv_dim(), 256);
  EXPECT_EQ(tinyllama->bos_token_id, 1);
  EXPECT_THAT(tinyllama->eos_token_ids, ElementsAre(2));

  auto qwen3 = SyntheticPresetConfig("qwen3-0.6b");
  ASSERT_TRUE(qwen3.ok());
  EXPECT_EQ(qwen3->family, ModelFamily::kQwen3);
  EXPECT_TRUE(qwen3->qk_norm);
  EXPECT_FALSE(qwen3->attention_bias);
  EXPECT_EQ(qwen3->q_dim(), 2048);
  EXPECT_EQ(qwen3->max_position_embeddings, 40960);
}

TEST(SyntheticTest, UnknownPresetAndF16AreRejected) {
  auto unknown = MakeSyntheticWeights("gpt-5", DType::kF32);
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.status().message(), HasSubstr("gpt-5"));
  EXPECT_THAT(unknown.status().message(), HasSubstr("tiny"));  // Lists options.
  auto f16 = MakeSyntheticWeights("tiny", DType::kF16);
  ASSERT_FALSE(f16.ok());
  EXPECT_THAT(f16.status().message(), HasSubstr("f16"));
}

void ExpectShapes(const ModelWeights& w) {
  const ModelConfig& c = w.config;
  EXPECT_THAT(w.embed_tokens.shape, ElementsAre(c.vocab_size, c.hidden_size));
  EXPECT_THAT(w.lm_head.shape, ElementsAre(c.vocab_size, c.hidden_size));
  EXPECT_THAT(w.norm.shape, ElementsAre(c.hidden_size));
  ASSERT_EQ(w.layers.size(), static_cast<size_t>(c.num_hidden_layers));
  for (const LayerWeights& layer : w.layers) {
    EXPECT_THAT(layer.q_proj.shape, ElementsAre(c.q_dim(), c.hidden_size));
    EXPECT_THAT(layer.k_proj.shape, ElementsAre(c.kv_dim(), c.hidden_size));
    EXPECT_THAT(layer.v_proj.shape, ElementsAre(c.kv_dim(), c.hidden_size));
    EXPECT_THAT(layer.o_proj.shape, ElementsAre(c.hidden_size, c.q_dim()));
    EXPECT_THAT(layer.gate_proj.shape,
                ElementsAre(c.intermediate_size, c.hidden_size));
    EXPECT_THAT(layer.up_proj.shape,
                ElementsAre(c.intermediate_size, c.hidden_size));
    EXPECT_THAT(layer.down_proj.shape,
                ElementsAre(c.hidden_size, c.intermediate_size));
    EXPECT_EQ(layer.q_proj.dtype, w.matrix_dtype);
    EXPECT_EQ(layer.down_proj.dtype, w.matrix_dtype);
    EXPECT_EQ(layer.input_layernorm.dtype, DType::kF32);
    EXPECT_EQ(layer.q_bias.empty(), !c.attention_bias);
    EXPECT_EQ(layer.v_bias.empty(), !c.attention_bias);
    EXPECT_EQ(layer.q_norm.empty(), !c.qk_norm);
    if (c.attention_bias) {
      EXPECT_THAT(layer.k_bias.shape, ElementsAre(c.kv_dim()));
    }
    if (c.qk_norm) {
      EXPECT_THAT(layer.k_norm.shape, ElementsAre(c.head_dim));
    }
  }
  EXPECT_EQ(w.lm_head.data == w.embed_tokens.data, c.tie_word_embeddings);
}

TEST(SyntheticTest, TinyHasShapesAndPlausibleValues) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    auto weights = MakeSyntheticWeights("tiny", dtype, 7);
    ASSERT_TRUE(weights.ok()) << weights.status();
    const ModelWeights& w = **weights;
    EXPECT_TRUE(w.synthetic);
    EXPECT_EQ(w.source, "synthetic:tiny");
    EXPECT_EQ(w.matrix_dtype, dtype);
    EXPECT_EQ(w.config.architecture, "LlamaForCausalLM");
    EXPECT_EQ(w.config.hidden_size, 64);
    EXPECT_EQ(w.config.num_hidden_layers, 2);
    ExpectShapes(w);

    // Matrix entries: mean ~0, std ~0.02. Norms: ~1.
    const Tensor& q = w.layers[0].q_proj;
    double sum = 0, sum_squares = 0;
    for (int64_t i = 0; i < q.numel(); ++i) {
      const double v = At(q, static_cast<size_t>(i));
      ASSERT_TRUE(std::isfinite(v));
      sum += v;
      sum_squares += v * v;
    }
    const double mean = sum / static_cast<double>(q.numel());
    const double std =
        std::sqrt(sum_squares / static_cast<double>(q.numel()) - mean * mean);
    EXPECT_NEAR(mean, 0.0, 0.002);
    EXPECT_NEAR(std, 0.02, 0.002);
    for (int64_t i = 0; i < w.norm.numel(); ++i) {
      EXPECT_NEAR(w.norm.f32()[i], 1.0f, 0.1f);
    }
  }
}

bool SameBytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() &&
         std::memcmp(a.data, b.data, a.nbytes()) == 0;
}

TEST(SyntheticTest, DeterministicPerSeedAndDifferentAcrossSeeds) {
  auto a = MakeSyntheticWeights("tiny", DType::kBF16, 1);
  auto b = MakeSyntheticWeights("tiny", DType::kBF16, 1);
  auto c = MakeSyntheticWeights("tiny", DType::kBF16, 2);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_TRUE(SameBytes((*a)->embed_tokens, (*b)->embed_tokens));
  EXPECT_TRUE(SameBytes((*a)->layers[1].down_proj, (*b)->layers[1].down_proj));
  EXPECT_TRUE(SameBytes((*a)->norm, (*b)->norm));
  EXPECT_FALSE(SameBytes((*a)->embed_tokens, (*c)->embed_tokens));
  EXPECT_FALSE(SameBytes((*a)->layers[1].down_proj, (*c)->layers[1].down_proj));
  // Tensors of one model differ from each other too.
  EXPECT_FALSE(SameBytes((*a)->layers[0].gate_proj, (*a)->layers[0].up_proj));

  // f32 and bf16 draw the same values, bf16 being the rounded f32.
  auto f32 = MakeSyntheticWeights("tiny", DType::kF32, 1);
  ASSERT_TRUE(f32.ok());
  const Tensor& wide = (*f32)->layers[0].k_proj;
  const Tensor& narrow = (*a)->layers[0].k_proj;
  for (size_t i = 0; i < 100; ++i) {
    EXPECT_EQ(static_cast<const uint16_t*>(narrow.data)[i],
              F32ToBf16(wide.f32()[i]));
  }
}

TEST(SyntheticTest, RealPresetHasRightShapes) {
  // One full-size preset (the smallest); the others share the code path and
  // are covered by shrunk copies below, keeping Debug runs fast.
  auto weights = MakeSyntheticWeights("smollm2-135m", DType::kBF16, 3);
  ASSERT_TRUE(weights.ok()) << weights.status();
  ExpectShapes(**weights);
  EXPECT_EQ((*weights)->source, "synthetic:smollm2-135m");
}

TEST(SyntheticTest, ShrunkQwenPresetsHaveBiasesAndQkNorms) {
  for (const char* preset : {"qwen2.5-0.5b", "qwen3-0.6b", "tinyllama-1.1b"}) {
    SCOPED_TRACE(preset);
    auto config = SyntheticPresetConfig(preset);
    ASSERT_TRUE(config.ok());
    config->vocab_size = 300;
    config->num_hidden_layers = 2;
    config->intermediate_size = 64;
    auto weights =
        MakeSyntheticWeightsForConfig(*config, "small", DType::kF32, 5);
    ASSERT_TRUE(weights.ok()) << weights.status();
    ExpectShapes(**weights);
    EXPECT_EQ((*weights)->source, "synthetic:small");
    EXPECT_TRUE((*weights)->synthetic);
    const LayerWeights& layer = (*weights)->layers[1];
    if (config->attention_bias) {
      for (int64_t i = 0; i < layer.q_bias.numel(); ++i) {
        ASSERT_LT(std::fabs(layer.q_bias.f32()[i]), 0.1f);
      }
    }
    if (config->qk_norm) {
      for (int64_t i = 0; i < layer.q_norm.numel(); ++i) {
        ASSERT_NEAR(layer.q_norm.f32()[i], 1.0f, 0.1f);
      }
    }
  }
}

}  // namespace
}  // namespace litestage
