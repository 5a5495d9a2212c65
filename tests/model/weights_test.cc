#include "engine/model/weights.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "engine/model/safetensors.h"
#include "engine/util/float16.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model/safetensors_writer.h"

namespace litestage {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::ModelTensors;
using testing::PatternValues;
using testing::SerializeSafetensors;
using testing::TensorBytes;
using testing::WriteFile;

ModelConfig SmallConfig(bool tied) {
  auto config = ParseModelConfig(
      nlohmann::json::parse(testing::SmallLlamaConfigJson(tied)), "test");
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

// Reads element i of a weight as fp32, whatever its dtype.
float At(const Tensor& tensor, size_t i) {
  switch (tensor.dtype) {
    case DType::kF32:
      return tensor.f32()[i];
    case DType::kBF16:
      return Bf16ToF32(static_cast<const uint16_t*>(tensor.data)[i]);
    case DType::kF16:
      return F16ToF32(static_cast<const uint16_t*>(tensor.data)[i]);
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ8_0:
      ADD_FAILURE() << "safetensors never load as " << DTypeName(tensor.dtype);
  }
  return 0;
}

// The index of `name` in ModelTensors' order, which seeds its pattern.
int TensorId(const ModelConfig& config, const std::string& name) {
  std::vector<TensorBytes> tensors = ModelTensors(config, "F32");
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].name == name) return static_cast<int>(i);
  }
  ADD_FAILURE() << name;
  return -1;
}

void ExpectPattern(const Tensor& tensor, const ModelConfig& config,
                   const std::string& name) {
  ASSERT_FALSE(tensor.empty()) << name;
  const std::vector<float> expected = PatternValues(
      static_cast<size_t>(tensor.numel()), TensorId(config, name));
  for (size_t i = 0; i < expected.size(); ++i) {
    ASSERT_EQ(At(tensor, i), expected[i]) << name << "[" << i << "]";
  }
}

bool PointsInto(const Tensor& tensor, const ModelWeights& weights) {
  const auto* p = static_cast<const uint8_t*>(tensor.data);
  for (const MappedFile& file : weights.mapped_files) {
    if (p >= file.data() && p < file.data() + file.size()) return true;
  }
  return false;
}

void ExpectShapes(const ModelWeights& weights) {
  const ModelConfig& c = weights.config;
  EXPECT_THAT(weights.embed_tokens.shape,
              ElementsAre(c.vocab_size, c.hidden_size));
  EXPECT_THAT(weights.lm_head.shape, ElementsAre(c.vocab_size, c.hidden_size));
  EXPECT_THAT(weights.norm.shape, ElementsAre(c.hidden_size));
  EXPECT_EQ(weights.norm.dtype, DType::kF32);
  ASSERT_EQ(weights.layers.size(), static_cast<size_t>(c.num_hidden_layers));
  for (const LayerWeights& layer : weights.layers) {
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
    EXPECT_THAT(layer.input_layernorm.shape, ElementsAre(c.hidden_size));
    EXPECT_THAT(layer.post_attention_layernorm.shape,
                ElementsAre(c.hidden_size));
    EXPECT_EQ(layer.input_layernorm.dtype, DType::kF32);
    EXPECT_EQ(layer.post_attention_layernorm.dtype, DType::kF32);
    for (const Tensor* matrix :
         {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj,
          &layer.gate_proj, &layer.up_proj, &layer.down_proj}) {
      EXPECT_EQ(matrix->dtype, weights.matrix_dtype);
      EXPECT_FALSE(matrix->empty());
    }
    EXPECT_EQ(layer.q_bias.empty(), !c.attention_bias);
    EXPECT_EQ(layer.k_bias.empty(), !c.attention_bias);
    EXPECT_EQ(layer.v_bias.empty(), !c.attention_bias);
    EXPECT_EQ(layer.q_norm.empty(), !c.qk_norm);
    EXPECT_EQ(layer.k_norm.empty(), !c.qk_norm);
    if (c.attention_bias) {
      EXPECT_THAT(layer.q_bias.shape, ElementsAre(c.q_dim()));
      EXPECT_THAT(layer.k_bias.shape, ElementsAre(c.kv_dim()));
      EXPECT_EQ(layer.q_bias.dtype, DType::kF32);
    }
    if (c.qk_norm) {
      EXPECT_THAT(layer.q_norm.shape, ElementsAre(c.head_dim));
      EXPECT_EQ(layer.k_norm.dtype, DType::kF32);
    }
  }
  EXPECT_EQ(weights.embed_tokens.dtype, weights.matrix_dtype);
  EXPECT_EQ(weights.lm_head.dtype, weights.matrix_dtype);
}

TEST(LoadModelWeightsTest, LoadsF32ZeroCopyWithTiedHead) {
  const std::string dir = testing::WriteSmallModel("f32_tied", true, "F32");
  auto weights = LoadModelWeights(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelWeights& w = **weights;
  ExpectShapes(w);
  EXPECT_EQ(w.matrix_dtype, DType::kF32);
  EXPECT_FALSE(w.synthetic);
  EXPECT_EQ(w.source, dir);
  EXPECT_EQ(w.lm_head.data, w.embed_tokens.data);  // Tied: aliases.
  EXPECT_TRUE(PointsInto(w.layers[0].q_proj, w));  // Aligned f32: a view.
  EXPECT_FALSE(PointsInto(w.norm, w));             // Vectors are owned.
  ExpectPattern(w.embed_tokens, w.config, "model.embed_tokens.weight");
  ExpectPattern(w.layers[1].down_proj, w.config,
                "model.layers.1.mlp.down_proj.weight");
  ExpectPattern(w.layers[1].input_layernorm, w.config,
                "model.layers.1.input_layernorm.weight");
  ExpectPattern(w.norm, w.config, "model.norm.weight");
}

TEST(LoadModelWeightsTest, LoadsUntiedHead) {
  const std::string dir = testing::WriteSmallModel("f32_untied", false, "F32");
  auto weights = LoadModelWeights(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  ExpectShapes(**weights);
  EXPECT_NE((*weights)->lm_head.data, (*weights)->embed_tokens.data);
  ExpectPattern((*weights)->lm_head, (*weights)->config, "lm_head.weight");
}

TEST(LoadModelWeightsTest, TiedModelPrefersStoredLmHead) {
  const std::string dir = testing::MakeTempDir("tied_with_head");
  WriteFile(dir + "/config.json", testing::SmallLlamaConfigJson(true));
  // Tensors of the untied model include lm_head.weight.
  WriteFile(dir + "/model.safetensors",
            SerializeSafetensors(ModelTensors(SmallConfig(false), "F32")));
  auto weights = LoadModelWeights(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_NE((*weights)->lm_head.data, (*weights)->embed_tokens.data);
  ExpectPattern((*weights)->lm_head, SmallConfig(false), "lm_head.weight");
}

TEST(LoadModelWeightsTest, KeepsBf16AsViews) {
  const std::string dir = testing::WriteSmallModel("bf16", false, "BF16");
  auto weights = LoadModelWeights(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelWeights& w = **weights;
  ExpectShapes(w);
  EXPECT_EQ(w.matrix_dtype, DType::kBF16);
  EXPECT_TRUE(PointsInto(w.layers[0].gate_proj, w));
  ExpectPattern(w.layers[0].gate_proj, w.config,
                "model.layers.0.mlp.gate_proj.weight");
  ExpectPattern(w.norm, w.config, "model.norm.weight");  // Stored bf16 -> f32.
}

TEST(LoadModelWeightsTest, WidensF16MatricesToF32) {
  const std::string dir = testing::WriteSmallModel("f16", false, "F16");
  auto weights = LoadModelWeights(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelWeights& w = **weights;
  ExpectShapes(w);
  EXPECT_EQ(w.matrix_dtype, DType::kF32);
  EXPECT_FALSE(PointsInto(w.layers[0].q_proj, w));
  ExpectPattern(w.layers[0].q_proj, w.config,
                "model.layers.0.self_attn.q_proj.weight");
  ExpectPattern(w.lm_head, w.config, "lm_head.weight");
}

TEST(LoadModelWeightsTest, ConvertsF32ToBf16WithRoundToNearestEven) {
  const std::string dir = testing::MakeTempDir("to_bf16");
  WriteFile(dir + "/config.json", testing::SmallLlamaConfigJson(true));
  ModelConfig config = SmallConfig(true);
  std::vector<TensorBytes> tensors = ModelTensors(config, "F32");
  // Values whose bf16 rounding is known: 1 + 2^-8 is a tie that rounds down
  // to even (1.0); 1 + 3 * 2^-8 rounds up to 1 + 2^-6; -2^-8 + tiny rounds
  // to nearest.
  std::vector<float> values(
      static_cast<size_t>(config.q_dim() * config.hidden_size), 0.25f);
  values[0] = 1.0f + 1.0f / 256;
  values[1] = 1.0f + 3.0f / 256;
  values[2] = 3.0f;
  values[3] = 1.0f + 1.0f / 128 + 1.0f / 256;  // Tie, odd below: rounds up.
  for (TensorBytes& tensor : tensors) {
    if (tensor.name == "model.layers.0.self_attn.q_proj.weight") {
      tensor.bytes = testing::EncodeValues(values, "F32");
    }
  }
  WriteFile(dir + "/model.safetensors", SerializeSafetensors(tensors));
  auto weights = LoadModelWeights(dir, LoadOptions{DType::kBF16});
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelWeights& w = **weights;
  ExpectShapes(w);
  EXPECT_EQ(w.matrix_dtype, DType::kBF16);
  const auto* q = static_cast<const uint16_t*>(w.layers[0].q_proj.data);
  EXPECT_EQ(q[0], 0x3f80);  // 1.0
  EXPECT_EQ(q[1], 0x3f82);  // 1 + 2^-6
  EXPECT_EQ(q[2], 0x4040);  // 3.0
  EXPECT_EQ(q[3], 0x3f82);  // 1 + 2^-6
  EXPECT_EQ(q[4], 0x3e80);  // 0.25
  ExpectPattern(w.embed_tokens, config, "model.embed_tokens.weight");
  EXPECT_EQ(w.lm_head.data, w.embed_tokens.data);
  EXPECT_EQ(w.norm.dtype, DType::kF32);
}

TEST(LoadModelWeightsTest, ConvertsBf16ToF32Exactly) {
  const std::string dir =
      testing::WriteSmallModel("bf16_to_f32", false, "BF16");
  auto weights = LoadModelWeights(dir, LoadOptions{DType::kF32});
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelWeights& w = **weights;
  ExpectShapes(w);
  EXPECT_EQ(w.matrix_dtype, DType::kF32);
  ExpectPattern(w.layers[1].o_proj, w.config,
                "model.layers.1.self_attn.o_proj.weight");
  ExpectPattern(w.embed_tokens, w.config, "model.embed_tokens.weight");
}

TEST(LoadModelWeightsTest, MixedEmbeddingDtypeFollowsMatrices) {
  const std::string dir = testing::MakeTempDir("mixed");
  WriteFile(dir + "/config.json", testing::SmallLlamaConfigJson(true));
  ModelConfig config = SmallConfig(true);
  std::vector<TensorBytes> tensors = ModelTensors(config, "BF16");
  tensors[0] = ModelTensors(config, "F32")[0];  // embed_tokens in f32.
  WriteFile(dir + "/model.safetensors", SerializeSafetensors(tensors));
  auto weights = LoadModelWeights(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->matrix_dtype, DType::kBF16);
  EXPECT_EQ((*weights)->embed_tokens.dtype, DType::kBF16);
  ExpectPattern((*weights)->embed_tokens, config, "model.embed_tokens.weight");
}

TEST(LoadModelWeightsTest, CopiesUnalignedTensors) {
  for (const char* dtype : {"F32", "BF16"}) {
    SCOPED_TRACE(dtype);
    const std::string dir =
        testing::MakeTempDir(std::string("unaligned_") + dtype);
    WriteFile(dir + "/config.json", testing::SmallLlamaConfigJson(false));
    ModelConfig config = SmallConfig(false);
    WriteFile(
        dir + "/model.safetensors",
        SerializeSafetensors(ModelTensors(config, dtype), /*misalignment=*/1));
    auto weights = LoadModelWeights(dir);
    ASSERT_TRUE(weights.ok()) << weights.status();
    const ModelWeights& w = **weights;
    for (const Tensor* matrix :
         {&w.embed_tokens, &w.layers[0].q_proj, &w.lm_head}) {
      EXPECT_EQ(
          reinterpret_cast<uintptr_t>(matrix->data) % DTypeSize(matrix->dtype),
          0u);
    }
    ExpectPattern(w.layers[0].up_proj, config,
                  "model.layers.0.mlp.up_proj.weight");
  }
}

TEST(LoadModelWeightsTest, ExtraTensorsAreIgnored) {
  const std::string dir = testing::MakeTempDir("extra");
  WriteFile(dir + "/config.json", testing::SmallLlamaConfigJson(true));
  std::vector<TensorBytes> tensors = ModelTensors(SmallConfig(true), "F32");
  tensors.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq",
                     "F32",
                     {2},
                     testing::EncodeValues({1, 2}, "F32")});
  tensors.push_back({"position_ids", "I64", {1}, std::string(8, '\0')});
  WriteFile(dir + "/model.safetensors", SerializeSafetensors(tensors));
  auto weights = LoadModelWeights(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
}

TEST(LoadModelWeightsTest, RejectsF16Request) {
  const std::string dir = testing::WriteSmallModel("f16_request", true, "F32");
  auto weights = LoadModelWeights(dir, LoadOptions{DType::kF16});
  ASSERT_FALSE(weights.ok());
  EXPECT_THAT(weights.status().message(), HasSubstr(dir));
}

// Writes the small model with `edit` applied to its tensor list and returns
// the load error.
absl::Status LoadEdited(
    const std::string& name,
    const std::function<void(std::vector<TensorBytes>&)>& edit,
    std::string* file_path) {
  const std::string dir = testing::MakeTempDir(name);
  WriteFile(dir + "/config.json", testing::SmallLlamaConfigJson(false));
  std::vector<TensorBytes> tensors = ModelTensors(SmallConfig(false), "F32");
  edit(tensors);
  *file_path = dir + "/model.safetensors";
  WriteFile(*file_path, SerializeSafetensors(tensors));
  auto weights = LoadModelWeights(dir);
  EXPECT_FALSE(weights.ok());
  return weights.ok() ? absl::OkStatus() : weights.status();
}

void Remove(std::vector<TensorBytes>& tensors, const std::string& name) {
  std::erase_if(tensors, [&](const TensorBytes& t) { return t.name == name; });
}

TEST(LoadModelWeightsTest, MissingTensorIsNamed) {
  for (const char* name :
       {"model.layers.1.self_attn.k_proj.weight", "model.norm.weight",
        "lm_head.weight", "model.embed_tokens.weight",
        "model.layers.0.post_attention_layernorm.weight"}) {
    std::string path;
    absl::Status status = LoadEdited(
        "missing", [&](auto& tensors) { Remove(tensors, name); }, &path);
    EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << name;
    EXPECT_THAT(status.message(), HasSubstr(name));
    EXPECT_THAT(status.message(), HasSubstr(path));
  }
}

TEST(LoadModelWeightsTest, WrongShapeIsNamed) {
  std::string path;
  absl::Status status = LoadEdited(
      "wrong_shape",
      [](auto& tensors) {
        for (TensorBytes& t : tensors) {
          if (t.name == "model.layers.1.mlp.up_proj.weight") t.shape = {16, 24};
        }
      },
      &path);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("model.layers.1.mlp.up_proj.weight"));
  EXPECT_THAT(status.message(), HasSubstr("[16, 24]"));
  EXPECT_THAT(status.message(), HasSubstr("[24, 16]"));
  EXPECT_THAT(status.message(), HasSubstr(path));

  status = LoadEdited(
      "wrong_rank",
      [](auto& tensors) {
        for (TensorBytes& t : tensors) {
          if (t.name == "model.norm.weight") t.shape = {4, 4};
        }
      },
      &path);
  EXPECT_THAT(status.message(), HasSubstr("model.norm.weight"));
  EXPECT_THAT(status.message(), HasSubstr(path));
}

TEST(LoadModelWeightsTest, UnsupportedDtypeIsNamed) {
  std::string path;
  absl::Status status = LoadEdited(
      "unsupported_dtype",
      [](auto& tensors) {
        for (TensorBytes& t : tensors) {
          if (t.name == "model.layers.0.self_attn.v_proj.weight") {
            t.dtype = "F64";
            t.bytes += t.bytes;  // 8 bytes per element.
          }
        }
      },
      &path);
  EXPECT_THAT(status.message(),
              HasSubstr("model.layers.0.self_attn.v_proj.weight"));
  EXPECT_THAT(status.message(), HasSubstr("F64"));
  EXPECT_THAT(status.message(), HasSubstr(path));
}

TEST(LoadModelWeightsTest, CorruptFileIsNamed) {
  const std::string dir = testing::WriteSmallModel("corrupt", true, "F32");
  const std::string path = dir + "/model.safetensors";
  WriteFile(path, "garbage!garbage");
  auto weights = LoadModelWeights(dir);
  ASSERT_FALSE(weights.ok());
  EXPECT_THAT(weights.status().message(), HasSubstr(path));
}

TEST(LoadModelWeightsTest, MissingWeightsFileIsNotFound) {
  const std::string dir = testing::MakeTempDir("no_weights");
  WriteFile(dir + "/config.json", testing::SmallLlamaConfigJson(true));
  auto weights = LoadModelWeights(dir);
  ASSERT_FALSE(weights.ok());
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(weights.status().message(), HasSubstr(dir));
}

// Splits the small model over two shards with an index.
std::string WriteShardedModel(const std::string& name,
                              nlohmann::json* weight_map_out = nullptr) {
  const std::string dir = testing::MakeTempDir(name);
  WriteFile(dir + "/config.json", testing::SmallLlamaConfigJson(false));
  std::vector<TensorBytes> tensors = ModelTensors(SmallConfig(false), "BF16");
  std::vector<TensorBytes> first(tensors.begin(),
                                 tensors.begin() + tensors.size() / 2);
  std::vector<TensorBytes> second(tensors.begin() + tensors.size() / 2,
                                  tensors.end());
  WriteFile(dir + "/model-00001-of-00002.safetensors",
            SerializeSafetensors(first));
  WriteFile(dir + "/model-00002-of-00002.safetensors",
            SerializeSafetensors(second));
  nlohmann::json weight_map = nlohmann::json::object();
  for (const TensorBytes& t : first)
    weight_map[t.name] = "model-00001-of-00002.safetensors";
  for (const TensorBytes& t : second)
    weight_map[t.name] = "model-00002-of-00002.safetensors";
  if (weight_map_out != nullptr) *weight_map_out = weight_map;
  nlohmann::json index = {{"metadata", {{"total_size", 0}}},
                          {"weight_map", weight_map}};
  WriteFile(dir + "/model.safetensors.index.json", index.dump());
  return dir;
}

TEST(LoadModelWeightsTest, LoadsShardedIndex) {
  const std::string dir = WriteShardedModel("sharded");
  auto weights = LoadModelWeights(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelWeights& w = **weights;
  ExpectShapes(w);
  EXPECT_EQ(w.matrix_dtype, DType::kBF16);
  EXPECT_EQ(w.mapped_files.size(), 2u);  // Each shard mapped once.
  ExpectPattern(w.embed_tokens, w.config, "model.embed_tokens.weight");
  ExpectPattern(w.lm_head, w.config, "lm_head.weight");
  ExpectPattern(w.layers[1].v_proj, w.config,
                "model.layers.1.self_attn.v_proj.weight");
}

absl::Status LoadWithWeightMapEntry(const std::string& name,
                                    const std::string& tensor,
                                    const nlohmann::json& shard,
                                    std::string* index_path) {
  nlohmann::json weight_map;
  const std::string dir = WriteShardedModel(name, &weight_map);
  weight_map[tensor] = shard;
  *index_path = dir + "/model.safetensors.index.json";
  WriteFile(*index_path, nlohmann::json({{"weight_map", weight_map}}).dump());
  auto weights = LoadModelWeights(dir);
  EXPECT_FALSE(weights.ok());
  return weights.ok() ? absl::OkStatus() : weights.status();
}

TEST(LoadModelWeightsTest, ShardIndexRejectsMissingShard) {
  std::string index_path;
  absl::Status status =
      LoadWithWeightMapEntry("missing_shard", "model.norm.weight",
                             "model-00003-of-00002.safetensors", &index_path);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("model-00003-of-00002.safetensors"));
  EXPECT_THAT(status.message(), HasSubstr(index_path));
}

TEST(LoadModelWeightsTest, ShardIndexRejectsPathsOutsideTheDirectory) {
  for (const char* shard :
       {"../x", "sub/model.safetensors", "/etc/passwd", "..", ""}) {
    std::string index_path;
    absl::Status status = LoadWithWeightMapEntry("escape", "model.norm.weight",
                                                 shard, &index_path);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << shard;
    EXPECT_THAT(status.message(), HasSubstr("model.norm.weight"));
    EXPECT_THAT(status.message(), HasSubstr(index_path));
    EXPECT_THAT(status.message(), HasSubstr("plain file name"));
  }
}

TEST(LoadModelWeightsTest, ShardIndexMustMatchShards) {
  std::string index_path;
  // The tensor is in shard 2 but the index claims shard 1.
  absl::Status status =
      LoadWithWeightMapEntry("wrong_shard", "lm_head.weight",
                             "model-00001-of-00002.safetensors", &index_path);
  EXPECT_THAT(status.message(), HasSubstr("lm_head.weight"));
  EXPECT_THAT(status.message(), HasSubstr(index_path));

  status =
      LoadWithWeightMapEntry("bad_entry", "lm_head.weight", 7, &index_path);
  EXPECT_THAT(status.message(), HasSubstr("lm_head.weight"));
  EXPECT_THAT(status.message(), HasSubstr(index_path));
}

// Writes a small model of `architecture` (Qwen2 or Qwen3) and loads it.
absl::StatusOr<std::unique_ptr<ModelWeights>> LoadSmallQwen(
    const std::string& architecture, const std::string& dtype,
    const std::string& drop = "") {
  nlohmann::json config_json =
      nlohmann::json::parse(testing::SmallLlamaConfigJson(true));
  config_json["architectures"] = {architecture};
  config_json["head_dim"] = 8;  // Qwen3: q_dim 32 != hidden 16.
  const std::string dir = testing::MakeTempDir(architecture + dtype + drop);
  WriteFile(dir + "/config.json", config_json.dump());
  auto config = ParseModelConfig(config_json, "test");
  EXPECT_TRUE(config.ok()) << config.status();
  std::vector<TensorBytes> tensors = ModelTensors(*config, dtype);
  if (!drop.empty()) Remove(tensors, drop);
  WriteFile(dir + "/model.safetensors", SerializeSafetensors(tensors));
  return LoadModelWeights(dir);
}

TEST(LoadModelWeightsTest, LoadsQwen2Biases) {
  auto weights = LoadSmallQwen("Qwen2ForCausalLM", "BF16");
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelWeights& w = **weights;
  EXPECT_TRUE(w.config.attention_bias);
  ExpectShapes(w);
  ExpectPattern(w.layers[1].k_bias, w.config,
                "model.layers.1.self_attn.k_proj.bias");
  EXPECT_EQ(w.layers[1].k_bias.dtype, DType::kF32);

  auto missing = LoadSmallQwen("Qwen2ForCausalLM", "F32",
                               "model.layers.0.self_attn.v_proj.bias");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(),
              HasSubstr("model.layers.0.self_attn.v_proj.bias"));
}

TEST(LoadModelWeightsTest, LoadsQwen3QkNorms) {
  auto weights = LoadSmallQwen("Qwen3ForCausalLM", "F32");
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelWeights& w = **weights;
  EXPECT_TRUE(w.config.qk_norm);
  EXPECT_EQ(w.config.q_dim(), 32);
  ExpectShapes(w);
  ExpectPattern(w.layers[0].q_norm, w.config,
                "model.layers.0.self_attn.q_norm.weight");
  ExpectPattern(w.layers[1].o_proj, w.config,
                "model.layers.1.self_attn.o_proj.weight");

  auto missing = LoadSmallQwen("Qwen3ForCausalLM", "F32",
                               "model.layers.1.self_attn.k_norm.weight");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(),
              HasSubstr("model.layers.1.self_attn.k_norm.weight"));
}

TEST(LoadModelWeightsTest, LoadsStories260K) {
  const char* shared = std::getenv("LITESTAGE_SHARED");
  if (shared == nullptr) GTEST_SKIP() << "LITESTAGE_SHARED is not set";
  const std::string dir = std::string(shared) + "/models/stories260K";
  ASSERT_TRUE(std::filesystem::exists(dir + "/model.safetensors"))
      << "LITESTAGE_SHARED is set but " << dir << " is missing";
  auto weights = LoadModelWeights(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelWeights& w = **weights;
  ExpectShapes(w);
  EXPECT_EQ(w.config.num_hidden_layers, 5);
  EXPECT_EQ(w.config.vocab_size, 512);
  EXPECT_EQ(w.config.hidden_size, 64);
  EXPECT_EQ(w.config.head_dim, 8);
  EXPECT_TRUE(w.config.tie_word_embeddings);
  EXPECT_EQ(w.lm_head.data, w.embed_tokens.data);
  EXPECT_EQ(w.matrix_dtype, DType::kF32);
  EXPECT_EQ(w.config.bos_token_id, 1);
  EXPECT_THAT(w.config.eos_token_ids, ElementsAre(2));
  // Trained norms are not all ones, and the weights are finite.
  bool norm_differs_from_one = false;
  for (int64_t i = 0; i < w.norm.numel(); ++i) {
    ASSERT_TRUE(std::isfinite(w.norm.f32()[i]));
    norm_differs_from_one |= w.norm.f32()[i] != 1.0f;
  }
  EXPECT_TRUE(norm_differs_from_one);

  auto bf16 = LoadModelWeights(dir, LoadOptions{DType::kBF16});
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_EQ((*bf16)->matrix_dtype, DType::kBF16);
  EXPECT_EQ(At((*bf16)->layers[2].q_proj, 5),
            Bf16ToF32(F32ToBf16(w.layers[2].q_proj.f32()[5])));
}

}  // namespace
}  // namespace litestage
