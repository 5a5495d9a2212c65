#include "engine/model/config.h"

#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model/safetensors_writer.h"

namespace litestage {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;

constexpr char kSource[] = "/models/x/config.json";

json LlamaJson() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
    "num_hidden_layers": 22, "num_attention_heads": 32,
    "num_key_value_heads": 4, "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "rope_scaling": null,
    "hidden_act": "silu", "tie_word_embeddings": false,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"})");
}

absl::Status ParseError(const json& document) {
  auto config = ParseModelConfig(document, kSource);
  EXPECT_FALSE(config.ok());
  return config.ok() ? absl::OkStatus() : config.status();
}

TEST(ConfigTest, ParsesLlama) {
  auto config = ParseModelConfig(LlamaJson(), kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "LlamaForCausalLM");
  EXPECT_EQ(config->family, ModelFamily::kLlama);
  EXPECT_EQ(config->vocab_size, 32000);
  EXPECT_EQ(config->hidden_size, 2048);
  EXPECT_EQ(config->intermediate_size, 5632);
  EXPECT_EQ(config->num_hidden_layers, 22);
  EXPECT_EQ(config->num_attention_heads, 32);
  EXPECT_EQ(config->num_key_value_heads, 4);
  EXPECT_EQ(config->head_dim, 64);  // Derived: 2048 / 32.
  EXPECT_EQ(config->q_dim(), 2048);
  EXPECT_EQ(config->kv_dim(), 256);
  EXPECT_EQ(config->max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(config->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(config->rope_theta, 10000.0);
  EXPECT_EQ(config->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_FALSE(config->attention_bias);
  EXPECT_FALSE(config->qk_norm);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_EQ(config->sliding_window, 0);
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2));
  EXPECT_EQ(config->torch_dtype, "bfloat16");
  EXPECT_STREQ(ModelFamilyName(config->family), "llama");
}

TEST(ConfigTest, KvHeadsDefaultToHeadsAndIdsMayBeAbsent) {
  json document = LlamaJson();
  document.erase("num_key_value_heads");
  document.erase("bos_token_id");
  document["eos_token_id"] = nullptr;
  auto config = ParseModelConfig(document, kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_key_value_heads, 32);
  EXPECT_EQ(config->bos_token_id, -1);
  EXPECT_TRUE(config->eos_token_ids.empty());
}

TEST(ConfigTest, ExplicitHeadDimNeedNotDivideHidden) {
  json document = LlamaJson();
  document["hidden_size"] = 100;  // Not a multiple of 32 heads.
  document["head_dim"] = 8;
  auto config = ParseModelConfig(document, kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 8);
  EXPECT_EQ(config->q_dim(), 256);
}

TEST(ConfigTest, EosMayBeAList) {
  json document = LlamaJson();
  document["eos_token_id"] = {128001, 128008, 128009};
  auto config = ParseModelConfig(document, kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(config->eos_token_ids, ElementsAre(128001, 128008, 128009));
}

TEST(ConfigTest, ParsesLlama3RopeScaling) {
  json document = LlamaJson();
  document["rope_scaling"] = json::parse(R"({
    "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})");
  auto config = ParseModelConfig(document, kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(config->rope_scaling.factor, 32.0);
  EXPECT_DOUBLE_EQ(config->rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(config->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(config->rope_scaling.original_max_position_embeddings, 8192);
}

// transformers >= 5 saves rope_theta and the scaling in "rope_parameters".
TEST(ConfigTest, ParsesTransformers5RopeParameters) {
  json document = LlamaJson();
  document.erase("rope_theta");
  document["rope_parameters"] = json::parse(R"({
    "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192})");
  auto config = ParseModelConfig(document, kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_DOUBLE_EQ(config->rope_theta, 500000.0);
  EXPECT_EQ(config->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(config->rope_scaling.factor, 8.0);

  document["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  auto plain = ParseModelConfig(document, kSource);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_DOUBLE_EQ(plain->rope_theta, 1e6);
  EXPECT_EQ(plain->rope_scaling.type, RopeScaling::Type::kNone);

  document["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_THAT(std::string(ParseError(document).message()),
              HasSubstr("rope_parameters"));
}

TEST(ConfigTest, ParsesLinearAndDefaultRopeScalingWithLegacyTypeKey) {
  json document = LlamaJson();
  document["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  auto linear = ParseModelConfig(document, kSource);
  ASSERT_TRUE(linear.ok()) << linear.status();
  EXPECT_EQ(linear->rope_scaling.type, RopeScaling::Type::kLinear);
  EXPECT_DOUBLE_EQ(linear->rope_scaling.factor, 2.0);

  document["rope_scaling"] = {{"rope_type", "default"}};
  auto fallback = ParseModelConfig(document, kSource);
  ASSERT_TRUE(fallback.ok()) << fallback.status();
  EXPECT_EQ(fallback->rope_scaling.type, RopeScaling::Type::kNone);
}

TEST(ConfigTest, RejectsUnknownRopeScaling) {
  json document = LlamaJson();
  document["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  absl::Status status = ParseError(document);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr(kSource));
  EXPECT_THAT(status.message(), HasSubstr("yarn"));
}

TEST(ConfigTest, RejectsIncompleteOrInvalidLlama3RopeScaling) {
  json document = LlamaJson();
  document["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  absl::Status missing = ParseError(document);
  EXPECT_THAT(missing.message(), HasSubstr("low_freq_factor"));
  EXPECT_THAT(missing.message(), HasSubstr(kSource));

  document["rope_scaling"] = json::parse(R"({
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
    "high_freq_factor": 1.0, "original_max_position_embeddings": 8192})");
  EXPECT_THAT(ParseError(document).message(), HasSubstr("high_freq_factor"));

  document["rope_scaling"] = "llama3";
  EXPECT_THAT(ParseError(document).message(), HasSubstr("rope_scaling"));
}

TEST(ConfigTest, ParsesMistralSlidingWindow) {
  json document = LlamaJson();
  document["architectures"] = {"MistralForCausalLM"};
  document["sliding_window"] = 4096;
  auto config = ParseModelConfig(document, kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->family, ModelFamily::kMistral);
  EXPECT_EQ(config->sliding_window, 4096);

  document["sliding_window"] = nullptr;
  config = ParseModelConfig(document, kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->sliding_window, 0);
}

json Qwen2Json() {
  return json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
    "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "max_window_layers": 21, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "use_sliding_window": false,
    "tie_word_embeddings": true, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "torch_dtype": "bfloat16"})");
}

TEST(ConfigTest, ParsesQwen2WithForcedBiasAndNoSlidingWindow) {
  auto config = ParseModelConfig(Qwen2Json(), kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->family, ModelFamily::kQwen2);
  EXPECT_TRUE(config->attention_bias);
  EXPECT_FALSE(config->qk_norm);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_EQ(config->head_dim, 64);
  EXPECT_EQ(config->sliding_window, 0);  // use_sliding_window is false.
  EXPECT_DOUBLE_EQ(config->rope_theta, 1e6);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(151645));
}

TEST(ConfigTest, Qwen2SlidingWindowOnAllLayersOrUnsupportedMix) {
  json document = Qwen2Json();
  document["use_sliding_window"] = true;
  document["max_window_layers"] = 0;
  document["sliding_window"] = 4096;
  auto all_layers = ParseModelConfig(document, kSource);
  ASSERT_TRUE(all_layers.ok()) << all_layers.status();
  EXPECT_EQ(all_layers->sliding_window, 4096);

  document["max_window_layers"] = 21;  // Only layers 21.. would slide.
  absl::Status status = ParseError(document);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(status.message(), HasSubstr("max_window_layers"));
}

TEST(ConfigTest, ParsesQwen3) {
  json document = json::parse(R"({
    "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936,
    "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
    "max_position_embeddings": 40960, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000, "attention_bias": false,
    "tie_word_embeddings": true, "use_sliding_window": false,
    "sliding_window": null, "eos_token_id": 151645, "bos_token_id": 151643})");
  auto config = ParseModelConfig(document, kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->family, ModelFamily::kQwen3);
  EXPECT_TRUE(config->qk_norm);
  EXPECT_FALSE(config->attention_bias);
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_EQ(config->q_dim(), 2048);  // Not hidden_size: Qwen3 widens q.
  EXPECT_EQ(config->kv_dim(), 1024);
  EXPECT_EQ(config->sliding_window, 0);

  document["attention_bias"] = true;
  absl::Status status = ParseError(document);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(status.message(), HasSubstr("attention_bias"));
}

TEST(ConfigTest, ModelTypeStandsInForMissingArchitectures) {
  json document = Qwen2Json();
  document.erase("architectures");
  auto config = ParseModelConfig(document, kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "Qwen2ForCausalLM");
}

TEST(ConfigTest, RejectsUnknownArchitectureByName) {
  json document = LlamaJson();
  document["architectures"] = {"GPT2LMHeadModel"};
  absl::Status status = ParseError(document);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(status.message(), HasSubstr("GPT2LMHeadModel"));
  EXPECT_THAT(status.message(), HasSubstr(kSource));

  document.erase("architectures");
  document.erase("model_type");
  EXPECT_THAT(ParseError(document).message(), HasSubstr("architectures"));

  document["architectures"] = json::array();
  EXPECT_THAT(ParseError(document).message(), HasSubstr("architectures"));
}

struct BadField {
  const char* key;
  json value;
};

class ConfigBadFieldTest : public ::testing::TestWithParam<BadField> {};

TEST_P(ConfigBadFieldTest, RejectsNamingFileAndKey) {
  json document = LlamaJson();
  if (GetParam().value.is_discarded()) {
    document.erase(GetParam().key);
  } else {
    document[GetParam().key] = GetParam().value;
  }
  absl::Status status = ParseError(document);
  EXPECT_THAT(status.message(), HasSubstr(kSource));
  EXPECT_THAT(status.message(), HasSubstr(GetParam().key));
}

INSTANTIATE_TEST_SUITE_P(
    Fields, ConfigBadFieldTest,
    ::testing::Values(
        BadField{"vocab_size", 0}, BadField{"vocab_size", -5},
        BadField{"vocab_size", "big"},
        BadField{"vocab_size", json(json::value_t::discarded)},
        BadField{"hidden_size", 0},
        BadField{"hidden_size", json(json::value_t::discarded)},
        BadField{"intermediate_size", -1}, BadField{"num_hidden_layers", 0},
        BadField{"num_hidden_layers", 1.5}, BadField{"num_attention_heads", 0},
        BadField{"num_key_value_heads", 0},
        BadField{"num_key_value_heads", 5},   // 32 % 5 != 0.
        BadField{"num_attention_heads", 48},  // 2048 % 48 != 0, no head_dim.
        BadField{"head_dim", 0}, BadField{"head_dim", 7},
        BadField{"max_position_embeddings", 0}, BadField{"rms_norm_eps", 0.0},
        BadField{"rms_norm_eps", -1e-5}, BadField{"rope_theta", 0.0},
        BadField{"rope_theta", "x"}, BadField{"tie_word_embeddings", "yes"},
        BadField{"eos_token_id", "2"}, BadField{"eos_token_id", json{2, "x"}},
        BadField{"eos_token_id", -2}, BadField{"bos_token_id", -1},
        BadField{"hidden_act", "gelu"}, BadField{"mlp_bias", true},
        BadField{"attention_bias", true}));

TEST(ConfigTest, RejectsNonObjectDocument) {
  absl::Status status = ParseError(json::array({1, 2}));
  EXPECT_THAT(status.message(), HasSubstr(kSource));
}

TEST(LoadModelConfigTest, GenerationConfigOverridesSpecialIds) {
  const std::string dir = testing::MakeTempDir("generation_config");
  testing::WriteFile(dir + "/config.json", LlamaJson().dump());
  testing::WriteFile(dir + "/generation_config.json",
                     R"({"bos_token_id": 5, "eos_token_id": [7, 8]})");
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->bos_token_id, 5);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(7, 8));

  // Keys it leaves out keep config.json's values.
  testing::WriteFile(dir + "/generation_config.json", R"({"do_sample": true})");
  config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2));
}

TEST(LoadModelConfigTest, ErrorsNameTheFile) {
  const std::string dir = testing::MakeTempDir("bad_generation_config");
  auto missing = LoadModelConfig(dir);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr(dir + "/config.json"));

  testing::WriteFile(dir + "/config.json", "{not json");
  auto invalid = LoadModelConfig(dir);
  ASSERT_FALSE(invalid.ok());
  EXPECT_THAT(invalid.status().message(), HasSubstr(dir + "/config.json"));

  testing::WriteFile(dir + "/config.json", LlamaJson().dump());
  testing::WriteFile(dir + "/generation_config.json",
                     R"({"eos_token_id": "x"})");
  auto bad_generation = LoadModelConfig(dir);
  ASSERT_FALSE(bad_generation.ok());
  EXPECT_THAT(bad_generation.status().message(),
              HasSubstr(dir + "/generation_config.json"));
  EXPECT_THAT(bad_generation.status().message(), HasSubstr("eos_token_id"));
}

}  // namespace
}  // namespace litestage
