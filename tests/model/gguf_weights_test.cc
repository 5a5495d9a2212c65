// Loading GGUF models (engine/model/gguf_weights.h): config from metadata,
// Q/K row order, biases, dequantization and conversion on request, errors
// naming the file and tensor, and the real SmolLM2-135M-Instruct Q4_1 file
// (LITESTAGE_DEFAULT_GGUF) against transformers through the CPU backend.
#include "engine/model/gguf_weights.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "engine/backend/backend.h"
#include "engine/backend/registry.h"
#include "engine/backends/cpu/matmul.h"
#include "engine/model/dequantize.h"
#include "engine/model/gguf.h"
#include "engine/model/quant_blocks.h"
#include "engine/model/weights.h"
#include "engine/runtime/kv_cache.h"
#include "engine/util/check.h"
#include "engine/util/float16.h"
#include "engine/util/json_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/scoped_temp_dir.h"
#include "tests/model/gguf_writer.h"

namespace litestage {
namespace {

using ::litestage::testing::F32Bytes;
using ::litestage::testing::GgufWriter;
using nlohmann::json;
using ::testing::HasSubstr;

// A tiny model: hidden 32 (so Q8_0 rows fit), 4 heads of 8, 2 KV heads.
constexpr int64_t kHidden = 32, kHeads = 4, kKvHeads = 2, kHeadDim = 8,
                  kInter = 64, kLayers = 2, kVocab = 40;

std::vector<float> Values(int64_t count, int seed) {
  std::vector<float> out(count);
  for (int64_t i = 0; i < count; ++i) {
    out[i] = 0.1f * std::sin(0.37f * static_cast<float>(i) + seed);
  }
  return out;
}

// llama.cpp's LlamaModel.permute: per head, HF rows (first half, second
// half) become interleaved pairs.
std::vector<float> PermuteLikeConverter(const std::vector<float>& hf,
                                        int64_t rows, int64_t cols,
                                        int64_t head_dim) {
  std::vector<float> out(hf.size());
  const int64_t half = head_dim / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t head = r / head_dim, within = r % head_dim;
    const int64_t c = within / half, k = within % half;
    const int64_t gguf_row = head * head_dim + 2 * k + c;
    std::copy_n(hf.begin() + r * cols, cols, out.begin() + gguf_row * cols);
  }
  return out;
}

struct TinyModel {
  std::string arch = "llama";
  bool tied = true;
  bool add_vocab_size = false;
  GgufType matrix_type = GgufType::kF32;
  std::vector<float> q0, k0, v0;  // HF-order layer-0 matrices written.
  std::string skip_tensor;        // Leave this tensor out.
  std::string bad_shape_tensor;   // Write this one transposed.
};

std::string WriteTinyModel(TinyModel& model, const std::string& file_name) {
  GgufWriter w;
  const std::string& a = model.arch;
  w.AddString("general.architecture", a);
  w.AddU32(a + ".block_count", kLayers);
  w.AddU32(a + ".context_length", 256);
  w.AddU32(a + ".embedding_length", kHidden);
  w.AddU32(a + ".feed_forward_length", kInter);
  w.AddU32(a + ".attention.head_count", kHeads);
  w.AddU32(a + ".attention.head_count_kv", kKvHeads);
  w.AddF32(a + ".rope.freq_base", 500000.0f);
  w.AddF32(a + ".attention.layer_norm_rms_epsilon", 1e-5f);
  w.AddU32(a + ".rope.dimension_count", kHeadDim);
  if (model.add_vocab_size) w.AddU32(a + ".vocab_size", kVocab);
  std::vector<std::string> tokens;
  for (int i = 0; i < kVocab; ++i) tokens.push_back("t" + std::to_string(i));
  w.AddStringArray("tokenizer.ggml.tokens", tokens);
  w.AddU32("tokenizer.ggml.bos_token_id", 1);
  w.AddU32("tokenizer.ggml.eos_token_id", 2);
  w.AddU32("tokenizer.ggml.eot_token_id", 3);
  int seed = 0;
  auto add = [&](const std::string& name, int64_t rows, int64_t cols,
                 std::vector<float>* keep = nullptr, int64_t permute = 0) {
    ++seed;
    if (name == model.skip_tensor) return;
    std::vector<float> values = Values(rows > 0 ? rows * cols : cols, seed);
    if (keep != nullptr) *keep = values;
    if (permute > 0) values = PermuteLikeConverter(values, rows, cols, permute);
    std::vector<uint64_t> dims = {static_cast<uint64_t>(cols)};
    if (rows > 0) dims.push_back(static_cast<uint64_t>(rows));
    if (name == model.bad_shape_tensor) std::swap(dims[0], dims[1]);
    if (rows > 0 && model.matrix_type == GgufType::kBF16) {
      std::string bytes;
      for (float v : values) {
        const uint16_t bits = F32ToBf16(v);
        bytes.append(reinterpret_cast<const char*>(&bits), 2);
      }
      w.AddTensor(name, dims, GgufType::kBF16, bytes);
    } else if (rows > 0 && model.matrix_type == GgufType::kQ8_0) {
      // Blocks of 32 with d = 1/64 and codes round(v * 64).
      std::string bytes;
      for (size_t b = 0; b < values.size(); b += 32) {
        const uint16_t d = 0x2400;  // f16 1/64
        bytes.append(reinterpret_cast<const char*>(&d), 2);
        for (size_t j = 0; j < 32; ++j) {
          bytes += static_cast<char>(std::lround(values[b + j] * 64));
        }
      }
      w.AddTensor(name, dims, GgufType::kQ8_0, bytes);
    } else {
      w.AddTensor(name, dims, GgufType::kF32, F32Bytes(values));
    }
  };
  const int64_t q_dim = kHeads * kHeadDim, kv_dim = kKvHeads * kHeadDim;
  const bool llama = a == "llama";
  add("token_embd.weight", kVocab, kHidden);
  for (int64_t i = 0; i < kLayers; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    add(b + "attn_norm.weight", 0, kHidden);
    add(b + "attn_q.weight", q_dim, kHidden, i == 0 ? &model.q0 : nullptr,
        llama ? kHeadDim : 0);
    add(b + "attn_k.weight", kv_dim, kHidden, i == 0 ? &model.k0 : nullptr,
        llama ? kHeadDim : 0);
    add(b + "attn_v.weight", kv_dim, kHidden, i == 0 ? &model.v0 : nullptr);
    if (a == "qwen2") {
      add(b + "attn_q.bias", 0, q_dim);
      add(b + "attn_k.bias", 0, kv_dim);
      add(b + "attn_v.bias", 0, kv_dim);
    }
    add(b + "attn_output.weight", kHidden, q_dim);
    add(b + "ffn_norm.weight", 0, kHidden);
    add(b + "ffn_gate.weight", kInter, kHidden);
    add(b + "ffn_up.weight", kInter, kHidden);
    add(b + "ffn_down.weight", kHidden, kInter);
  }
  add("output_norm.weight", 0, kHidden);
  if (!model.tied) add("output.weight", kVocab, kHidden);
  const std::string path =
      litestage::testing::ProcessTempDir().path() + "/" + file_name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  LS_CHECK(f != nullptr);
  const std::string bytes = w.Build();
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
  return path;
}

std::vector<float> AsFloats(const Tensor& t) {
  EXPECT_EQ(t.dtype, DType::kF32);
  return std::vector<float>(t.f32(), t.f32() + t.numel());
}

TEST(GgufWeightsTest, LoadsLlamaAndRestoresQkRowOrder) {
  TinyModel model;
  const std::string path = WriteTinyModel(model, "tiny_llama.gguf");
  EXPECT_TRUE(IsGgufModelPath(path));
  // LoadModelWeights dispatches on the .gguf file name.
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights =
      LoadModelWeights(path);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelConfig& config = (*weights)->config;
  EXPECT_EQ(config.architecture, "LlamaForCausalLM");
  EXPECT_EQ(config.family, ModelFamily::kLlama);
  EXPECT_EQ(config.vocab_size, kVocab);
  EXPECT_EQ(config.hidden_size, kHidden);
  EXPECT_EQ(config.intermediate_size, kInter);
  EXPECT_EQ(config.num_hidden_layers, kLayers);
  EXPECT_EQ(config.num_attention_heads, kHeads);
  EXPECT_EQ(config.num_key_value_heads, kKvHeads);
  EXPECT_EQ(config.head_dim, kHeadDim);
  EXPECT_EQ(config.max_position_embeddings, 256);
  EXPECT_EQ(config.rope_theta, 500000.0);
  EXPECT_FLOAT_EQ(static_cast<float>(config.rms_norm_eps), 1e-5f);
  EXPECT_TRUE(config.tie_word_embeddings);
  EXPECT_EQ(config.bos_token_id, 1);
  EXPECT_THAT(config.eos_token_ids, ::testing::ElementsAre(2, 3));
  EXPECT_EQ((*weights)->source, path);
  EXPECT_FALSE((*weights)->synthetic);
  EXPECT_EQ((*weights)->matrix_dtype, DType::kF32);
  const LayerWeights& layer = (*weights)->layers[0];
  EXPECT_THAT(layer.q_proj.shape,
              ::testing::ElementsAre(kHeads * kHeadDim, kHidden));
  EXPECT_EQ(AsFloats(layer.q_proj), model.q0);
  EXPECT_EQ(AsFloats(layer.k_proj), model.k0);
  EXPECT_EQ(AsFloats(layer.v_proj), model.v0);
  EXPECT_THAT(layer.input_layernorm.shape, ::testing::ElementsAre(kHidden));
  EXPECT_TRUE(layer.q_bias.empty());
  EXPECT_EQ((*weights)->lm_head.data, (*weights)->embed_tokens.data);
  EXPECT_THAT((*weights)->embed_tokens.shape,
              ::testing::ElementsAre(kVocab, kHidden));
}

TEST(GgufWeightsTest, Qwen2KeepsRowOrderAndLoadsBiases) {
  TinyModel model;
  model.arch = "qwen2";
  model.tied = false;
  model.add_vocab_size = true;
  const std::string path = WriteTinyModel(model, "tiny_qwen2.gguf");
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights = LoadGgufWeights(path);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->config.architecture, "Qwen2ForCausalLM");
  EXPECT_FALSE((*weights)->config.tie_word_embeddings);
  const LayerWeights& layer = (*weights)->layers[1];
  EXPECT_EQ(AsFloats((*weights)->layers[0].q_proj), model.q0);
  EXPECT_EQ(AsFloats((*weights)->layers[0].k_proj), model.k0);
  EXPECT_THAT(layer.q_bias.shape, ::testing::ElementsAre(kHeads * kHeadDim));
  EXPECT_THAT(layer.k_bias.shape, ::testing::ElementsAre(kKvHeads * kHeadDim));
  EXPECT_FALSE(layer.v_bias.empty());
  EXPECT_NE((*weights)->lm_head.data, (*weights)->embed_tokens.data);
}

TEST(GgufWeightsTest, KeepsQuantBlocksAndConvertsOnRequest) {
  TinyModel model;
  model.matrix_type = GgufType::kQ8_0;
  const std::string path = WriteTinyModel(model, "tiny_q8.gguf");
  // By default the Q8_0 blocks are kept, their values exactly the f32
  // dequantization, Q rows de-interleaved like whole rows.
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights = LoadGgufWeights(path);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->matrix_dtype, DType::kQ8_0);
  EXPECT_EQ((*weights)->embed_tokens.dtype, DType::kQ8_0);
  EXPECT_EQ((*weights)->layers[0].input_layernorm.dtype, DType::kF32);
  for (const auto& [tensor, values] :
       {std::pair{&(*weights)->layers[0].q_proj, &model.q0},
        std::pair{&(*weights)->layers[0].v_proj, &model.v0}}) {
    ASSERT_EQ(tensor->dtype, DType::kQ8_0);
    ASSERT_EQ(tensor->nbytes(),
              static_cast<size_t>(tensor->numel() / 32 * sizeof(BlockQ8_0)));
    std::vector<float> row(static_cast<size_t>(tensor->cols()));
    for (int64_t r = 0; r < tensor->rows(); ++r) {
      cpu::WeightRow(*tensor, r, row.data());
      for (int64_t c = 0; c < tensor->cols(); ++c) {
        ASSERT_EQ(row[c],
                  std::lround((*values)[r * tensor->cols() + c] * 64) / 64.0f)
            << r << "," << c;
      }
    }
  }

  weights = LoadGgufWeights(path, LoadOptions{DType::kF32});
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->matrix_dtype, DType::kF32);
  const std::vector<float> v = AsFloats((*weights)->layers[0].v_proj);
  ASSERT_EQ(v.size(), model.v0.size());
  for (size_t i = 0; i < v.size(); ++i) {
    ASSERT_EQ(v[i], std::lround(model.v0[i] * 64) / 64.0f) << i;
  }
  // Q rows de-interleaved after dequantization too.
  const std::vector<float> q = AsFloats((*weights)->layers[0].q_proj);
  for (size_t i = 0; i < q.size(); ++i) {
    ASSERT_EQ(q[i], std::lround(model.q0[i] * 64) / 64.0f) << i;
  }

  weights = LoadGgufWeights(path, LoadOptions{DType::kBF16});
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->matrix_dtype, DType::kBF16);
  const Tensor& k = (*weights)->layers[0].k_proj;
  ASSERT_EQ(k.dtype, DType::kBF16);
  const auto* bits = static_cast<const uint16_t*>(k.data);
  for (size_t i = 0; i < model.k0.size(); ++i) {
    ASSERT_EQ(Bf16ToF32(bits[i]),
              Bf16ToF32(F32ToBf16(std::lround(model.k0[i] * 64) / 64.0f)));
  }
  EXPECT_EQ((*weights)->layers[0].input_layernorm.dtype, DType::kF32);

  for (DType refused : {DType::kF16, DType::kQ4_1}) {
    absl::StatusOr<std::unique_ptr<ModelWeights>> loaded =
        LoadGgufWeights(path, LoadOptions{refused});
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument)
        << DTypeName(refused);
  }
}

TEST(GgufWeightsTest, Bf16FilesStayBf16ByDefault) {
  TinyModel model;
  model.matrix_type = GgufType::kBF16;
  const std::string path = WriteTinyModel(model, "tiny_bf16.gguf");
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights = LoadGgufWeights(path);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->matrix_dtype, DType::kBF16);
  const auto* bits =
      static_cast<const uint16_t*>((*weights)->layers[0].q_proj.data);
  for (size_t i = 0; i < model.q0.size(); ++i) {
    ASSERT_EQ(bits[i], F32ToBf16(model.q0[i])) << i;
  }
}

TEST(GgufWeightsTest, ErrorsNameTheFileAndTensor) {
  {
    TinyModel model;
    model.skip_tensor = "blk.1.ffn_up.weight";
    const std::string path = WriteTinyModel(model, "missing_tensor.gguf");
    auto weights = LoadGgufWeights(path);
    ASSERT_FALSE(weights.ok());
    EXPECT_EQ(weights.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(std::string(weights.status().message()),
                HasSubstr(path + ": missing tensor 'blk.1.ffn_up.weight'"));
  }
  {
    TinyModel model;
    model.bad_shape_tensor = "blk.0.ffn_up.weight";
    const std::string path = WriteTinyModel(model, "bad_shape.gguf");
    auto weights = LoadGgufWeights(path);
    ASSERT_FALSE(weights.ok());
    EXPECT_THAT(
        std::string(weights.status().message()),
        HasSubstr("tensor 'blk.0.ffn_up.weight' has GGUF dims [64, 32] but "
                  "the metadata implies [32, 64]"));
  }
  {
    TinyModel model;
    model.arch = "gpt2";
    const std::string path = WriteTinyModel(model, "gpt2.gguf");
    auto weights = LoadGgufWeights(path);
    ASSERT_FALSE(weights.ok());
    EXPECT_EQ(weights.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_THAT(std::string(weights.status().message()),
                HasSubstr("general.architecture 'gpt2'"));
  }
  {
    GgufWriter w;
    w.AddString("general.architecture", "llama");
    const std::string path =
        litestage::testing::ProcessTempDir().path() + "/no_keys.gguf";
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    const std::string bytes = w.Build();
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
    auto weights = LoadModelWeights(path);
    ASSERT_FALSE(weights.ok());
    EXPECT_EQ(weights.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(std::string(weights.status().message()),
                HasSubstr("no_keys.gguf: key 'llama.embedding_length'"));
  }
  {
    auto weights = LoadModelWeights(
        litestage::testing::ProcessTempDir().path() + "/absent.gguf");
    EXPECT_FALSE(weights.ok());  // Not a file: treated as a directory.
  }
}

// --- The real default model ------------------------------------------------

// SmolLM2-135M-Instruct Q4_1 (token_embd Q8_0, norms F32): the loader alone
// (no tokenizer) against transformers' logits for the same token ids
// (tests/golden/gguf/smollm2_135m_instruct_q4_1.json, made by
// tests/reference/make_gguf_golden.py). Tolerance as in
// tests/golden/gguf_test.cc: fp32 on both sides over 30 layers.
TEST(GgufWeightsTest, RealSmolLm2MatchesTransformers) {
  const char* path = std::getenv("LITESTAGE_DEFAULT_GGUF");
  if (path == nullptr || *path == '\0') {
    GTEST_SKIP() << "LITESTAGE_DEFAULT_GGUF is unset";
  }
  ASSERT_TRUE(std::filesystem::is_regular_file(path))
      << "LITESTAGE_DEFAULT_GGUF=" << path << " is set but missing";
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights =
      LoadModelWeights(path);
  const double load_ms = std::chrono::duration<double, std::milli>(
                             std::chrono::steady_clock::now() - start)
                             .count();
  ASSERT_TRUE(weights.ok()) << weights.status();
  std::cout << "[ load ] " << path << " in " << load_ms << " ms\n";
  const ModelConfig& config = (*weights)->config;
  EXPECT_EQ(config.architecture, "LlamaForCausalLM");
  EXPECT_EQ(config.num_hidden_layers, 30);
  EXPECT_EQ(config.hidden_size, 576);
  EXPECT_EQ(config.intermediate_size, 1536);
  EXPECT_EQ(config.num_attention_heads, 9);
  EXPECT_EQ(config.num_key_value_heads, 3);
  EXPECT_EQ(config.head_dim, 64);
  EXPECT_EQ(config.vocab_size, 49152);
  EXPECT_EQ(config.max_position_embeddings, 8192);
  EXPECT_EQ(config.rope_theta, 100000.0);
  EXPECT_TRUE(config.tie_word_embeddings);
  EXPECT_EQ(config.bos_token_id, 1);
  EXPECT_THAT(config.eos_token_ids, ::testing::ElementsAre(2));

  const std::string golden_path =
      std::string(LITESTAGE_TEST_DATA_DIR) +
      "/golden/gguf/smollm2_135m_instruct_q4_1.json";
  absl::StatusOr<json> golden = ReadJsonFile(golden_path);
  ASSERT_TRUE(golden.ok()) << golden.status();
  ASSERT_TRUE((*golden)["prompts"].is_array());
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      CreateBackend("cpu", **weights, BackendOptions{});
  ASSERT_TRUE(backend.ok()) << backend.status();
  const int64_t vocab = config.vocab_size;
  for (const json& prompt : (*golden)["prompts"]) {
    const std::vector<int32_t> ids = prompt["ids"].get<std::vector<int32_t>>();
    const json& expected = prompt["last_logits"];
    // The backend alone, below the runtime: the test lays out the block
    // table the runtime's KvBlockManager would.
    KvBlockManager blocks((*backend)->num_kv_blocks(),
                          (*backend)->kv_block_size());
    const SequenceId sequence = blocks.AddSequence();
    ASSERT_TRUE(
        blocks.Reserve(sequence, static_cast<int64_t>(ids.size())).ok());
    ForwardBatch batch;
    batch.chunks.push_back(SequenceChunk{absl::MakeConstSpan(ids), 0, kNoSkip,
                                         LogitsMode::kLast,
                                         blocks.block_table(sequence)});
    ForwardResult result;
    ASSERT_TRUE((*backend)->Forward(batch, &result).ok());
    ASSERT_EQ(static_cast<int64_t>(result.logits.size()), vocab);
    const int64_t stride = expected["stride"].get<int64_t>();
    const std::vector<float> strided =
        expected["strided"].get<std::vector<float>>();
    double worst = 0;
    for (size_t i = 0; i < strided.size(); ++i) {
      worst = std::max(
          worst, std::fabs(double{result.logits[i * stride]} - strided[i]));
    }
    EXPECT_LE(worst, 2e-3) << prompt["text"];
    const std::vector<int64_t> top =
        expected["top_ids"].get<std::vector<int64_t>>();
    int64_t argmax = 0;
    for (int64_t v = 1; v < vocab; ++v) {
      if (result.logits[v] > result.logits[argmax]) argmax = v;
    }
    EXPECT_EQ(argmax, top[0]) << prompt["text"];
    std::cout << "[ logits ] max |diff| " << worst << " over " << strided.size()
              << " strided logits\n";
  }
}

}  // namespace
}  // namespace litestage
