// The embedded default model, SmolLM2-135M-Instruct Q4_1 GGUF
// (scripts/fetch-default-model.sh), against transformers loading the same
// file (tests/reference/make_gguf_golden.py ->
// tests/golden/gguf/smollm2_135m_instruct_q4_1.json): tokenizer, chat prompt,
// last-position logits and greedy continuations.
//
// Needs LITESTAGE_DEFAULT_GGUF (the GGUF's path): skipped when unset, fails
// when it is set but the file is missing or is not the file the references
// were made from (size check).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "engine/runtime/engine.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/golden/golden_util.h"

namespace litestage {
namespace {

using nlohmann::json;

// Logit tolerance |actual - expected| <= kGgufLogitAbsTol. Both sides
// dequantize the identical Q4_1 blocks (f16 scale and min, 4-bit codes) to
// f32 weights and run the forward pass in fp32, so they differ only in
// summation order and transcendental implementations, as in golden_util.h's
// kLogitAbsTol (1e-4) case -- but over 30 layers instead of 2-5, with dot
// products 576 and 1536 long and logits of magnitude 20-30. The measured
// worst difference is 7.6e-5 (printed by LastLogitsMatchTransformers);
// 1e-3 leaves >10x headroom for other CPUs and thread counts. Real defects
// (a wrong dequantization of one block type, RoPE layout, norm epsilon, tied
// embedding) move logits by 1e-1 or more. Every recorded greedy path has a
// top-1/top-2 margin of at least 1.2e-2 (greedy_min_margin, checked below to
// exceed 4x the tolerance), so the exact-token comparison cannot flip on
// rounding.
constexpr double kGgufLogitAbsTol = 1e-3;

std::string GoldenPath() {
  return GoldenDir() + "/gguf/smollm2_135m_instruct_q4_1.json";
}

class GgufGoldenTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<json> golden = ReadJsonFile(GoldenPath());
    if (golden.ok()) golden_ = new json(*std::move(golden));
  }
  static void TearDownTestSuite() {
    delete golden_;
    golden_ = nullptr;
    delete engine_;
    engine_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(golden_, nullptr) << GoldenPath() << " is missing or invalid";
    const char* path = std::getenv("LITESTAGE_DEFAULT_GGUF");
    if (path == nullptr || *path == '\0') {
      GTEST_SKIP() << "LITESTAGE_DEFAULT_GGUF is unset (scripts/"
                      "fetch-default-model.sh prints the path)";
    }
    path_ = path;
    std::error_code error;
    ASSERT_TRUE(std::filesystem::is_regular_file(path_, error))
        << "LITESTAGE_DEFAULT_GGUF=" << path_ << " is set but missing";
    const uintmax_t size = std::filesystem::file_size(path_, error);
    ASSERT_EQ(size, (*golden_)["gguf_size"].get<uintmax_t>())
        << path_ << " is not the file the references were made from (sha256 "
        << (*golden_)["gguf_sha256"].get<std::string>() << ")";
  }

  // The engine on the GGUF, created once for the suite.
  Engine* GetEngine() {
    if (engine_ == nullptr) {
      EngineOptions options;
      options.model = path_;
      options.matrix_dtype = DType::kF32;  // Compare fp32 against fp32.
      options.backend.num_threads = 2;
      options.backend.kv_cache_tokens = 512;
      absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
      EXPECT_TRUE(engine.ok()) << engine.status();
      if (!engine.ok()) return nullptr;
      engine_ = engine->release();
    }
    return engine_;
  }

  static std::vector<int32_t> Ids(const json& list) {
    absl::StatusOr<std::vector<int32_t>> ids = IdList(list, "golden ids");
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>();
  }

  std::string path_;
  static json* golden_;
  static Engine* engine_;
};

json* GgufGoldenTest::golden_ = nullptr;
Engine* GgufGoldenTest::engine_ = nullptr;

// The corpus of make_tokenizer_golden.py with the GGUF-built tokenizer.
// Expected ids are "ids_smollm_split": transformers' tokenizer from this file
// with SmolLM's own pre-tokenizer (llama.cpp's "smollm"); see
// make_gguf_golden.py for why transformers' GGUF path differs on non-ASCII
// digits.
TEST_F(GgufGoldenTest, TokenizerCorpusMatchesTransformers) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(path_);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& tok = **tokenizer;
  EXPECT_EQ(tok.vocab_size(), (*golden_)["vocab_size"].get<int32_t>());
  EXPECT_EQ(tok.bos_id(), (*golden_)["bos_token_id"].get<int32_t>());
  EXPECT_EQ(tok.eos_ids(),
            std::vector<int32_t>{(*golden_)["eos_token_id"].get<int32_t>()});
  int checked = 0, transformers_differs = 0;
  for (const json& entry : (*golden_)["tokenizer"]) {
    const std::string text = entry["text"].get<std::string>();
    const std::vector<int32_t> want = Ids(entry["ids_smollm_split"]);
    absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(text, false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, want) << "text: " << text;
    // SmolLM2's GGUF says add_bos_token = false: nothing is added.
    absl::StatusOr<std::vector<int32_t>> with_special = tok.Encode(text, true);
    ASSERT_TRUE(with_special.ok());
    EXPECT_EQ(*with_special, want) << "text: " << text;
    if (Ids(entry["ids"]) != want) ++transformers_differs;
    const std::vector<int32_t> hf_ids = Ids(entry["ids_with_special"]);
    EXPECT_EQ(tok.Decode(hf_ids, false), entry["decoded"].get<std::string>())
        << "text: " << text;
    EXPECT_EQ(tok.Decode(hf_ids, true),
              entry["decoded_skip_special"].get<std::string>())
        << "text: " << text;
    ++checked;
  }
  EXPECT_GE(checked, 30);
  // Only the one corpus line with non-ASCII digits ("٣٤ ½") tells the two
  // splits apart.
  EXPECT_LE(transformers_differs, 1);
}

TEST_F(GgufGoldenTest, ChatTemplateFromGguf) {
  absl::StatusOr<ChatTemplate> chat = ChatTemplate::FromModelDir(path_);
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(chat->style(), ChatTemplate::Style::kChatML);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(path_);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  int checked = 0;
  for (const json& prompt : (*golden_)["prompts"]) {
    if (prompt["kind"] != "chat") continue;
    const std::vector<ChatMessage> messages = {
        {"user", prompt["text"].get<std::string>()}};
    const std::string rendered = chat->Render(messages, true);
    EXPECT_EQ(rendered, prompt["rendered"].get<std::string>());
    absl::StatusOr<std::vector<int32_t>> ids =
        (*tokenizer)->Encode(rendered, false);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*ids, Ids(prompt["ids"]));
    ++checked;
  }
  EXPECT_EQ(checked, 3);
}

TEST_F(GgufGoldenTest, LastLogitsMatchTransformers) {
  Engine* engine = GetEngine();
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  ASSERT_EQ(vocab, (*golden_)["vocab_size"].get<int64_t>());
  double worst = 0;
  for (const json& prompt : (*golden_)["prompts"]) {
    const std::vector<int32_t> ids = Ids(prompt["ids"]);
    if (prompt["kind"] == "plain") {
      absl::StatusOr<std::vector<int32_t>> encoded =
          engine->EncodePrompt(prompt["text"].get<std::string>());
      ASSERT_TRUE(encoded.ok());
      EXPECT_EQ(*encoded, ids);
    } else {
      absl::StatusOr<std::vector<int32_t>> encoded =
          engine->EncodeChat(prompt["text"].get<std::string>());
      ASSERT_TRUE(encoded.ok()) << encoded.status();
      EXPECT_EQ(*encoded, ids);
    }
    absl::StatusOr<std::vector<float>> all = engine->PromptLogits(ids);
    ASSERT_TRUE(all.ok()) << all.status();
    ASSERT_EQ(all->size(), ids.size() * vocab);
    const std::vector<float> last(all->end() - vocab, all->end());
    const json& ref = prompt["last_logits"];
    const std::string what = prompt["text"].get<std::string>();

    // Top-64 ids and values. Ids may only swap between near-equal values.
    const std::vector<int32_t> top_ids = Ids(ref["top_ids"]);
    absl::StatusOr<std::vector<float>> top_values =
        FloatList(ref["top_values"], "top_values");
    ASSERT_TRUE(top_values.ok());
    for (size_t i = 0; i < top_ids.size(); ++i) {
      const double diff = std::abs(last[top_ids[i]] - (*top_values)[i]);
      worst = std::max(worst, diff);
      EXPECT_LE(diff, kGgufLogitAbsTol)
          << what << ": token " << top_ids[i] << " logit " << last[top_ids[i]]
          << " vs " << (*top_values)[i];
    }
    const int32_t argmax = static_cast<int32_t>(
        std::max_element(last.begin(), last.end()) - last.begin());
    EXPECT_EQ(argmax, top_ids[0]) << what;

    // Every 16th logit, and whole-vocabulary statistics.
    const int64_t stride = ref["stride"].get<int64_t>();
    absl::StatusOr<std::vector<float>> strided =
        FloatList(ref["strided"], "strided");
    ASSERT_TRUE(strided.ok());
    ASSERT_EQ(static_cast<int64_t>(strided->size()),
              (vocab + stride - 1) / stride);
    for (size_t i = 0; i < strided->size(); ++i) {
      const double diff = std::abs(last[i * stride] - (*strided)[i]);
      worst = std::max(worst, diff);
      EXPECT_LE(diff, kGgufLogitAbsTol)
          << what << ": token " << i * stride << " logit " << last[i * stride]
          << " vs " << (*strided)[i];
    }
    double sum = 0, sum_sq = 0, max_logit = -INFINITY;
    for (float v : last) {
      sum += v;
      max_logit = std::max(max_logit, static_cast<double>(v));
    }
    const double mean = sum / vocab;
    double exp_sum = 0;
    for (float v : last) {
      sum_sq += (v - mean) * (v - mean);
      exp_sum += std::exp(v - max_logit);
    }
    const double std_dev = std::sqrt(sum_sq / (vocab - 1));  // torch.std.
    EXPECT_NEAR(mean, ref["mean"].get<double>(), kGgufLogitAbsTol) << what;
    EXPECT_NEAR(std_dev, ref["std"].get<double>(), kGgufLogitAbsTol) << what;
    EXPECT_NEAR(max_logit + std::log(exp_sum), ref["logsumexp"].get<double>(),
                kGgufLogitAbsTol)
        << what;
  }
  std::cout << "max |logit - transformers| = " << worst << "\n";
}

TEST_F(GgufGoldenTest, GreedyMatchesTransformersGenerate) {
  Engine* engine = GetEngine();
  ASSERT_NE(engine, nullptr);
  for (const json& prompt : (*golden_)["prompts"]) {
    ASSERT_GE(prompt["greedy_min_margin"].get<double>(), 4 * kGgufLogitAbsTol)
        << "a near-tie in the reference would make this test flaky";
    GenerationRequest request;
    request.prompt_tokens = Ids(prompt["ids"]);
    request.max_new_tokens = prompt["max_new_tokens"].get<int64_t>();
    absl::StatusOr<GenerationResult> result = engine->Generate(request);
    ASSERT_TRUE(result.ok()) << result.status();
    // generate() returns the EOS it stopped on; the engine reports it as the
    // finish reason instead.
    std::vector<int32_t> tokens = result->tokens;
    if (result->finish_reason == FinishReason::kEos) {
      tokens.push_back((*golden_)["eos_token_id"].get<int32_t>());
    }
    EXPECT_EQ(tokens, Ids(prompt["greedy_ids"]))
        << prompt["text"].get<std::string>() << " -> " << result->text;
    EXPECT_EQ(result->text, prompt["greedy_text"].get<std::string>());
  }
}

// The acceptance question: the chat answer names Paris.
TEST_F(GgufGoldenTest, ChatAnswerNamesParis) {
  Engine* engine = GetEngine();
  ASSERT_NE(engine, nullptr);
  absl::StatusOr<std::vector<int32_t>> prompt =
      engine->EncodeChat("What is the capital of France?");
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  GenerationRequest request;
  request.prompt_tokens = *prompt;
  request.max_new_tokens = 16;
  absl::StatusOr<GenerationResult> result = engine->Generate(request);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_NE(result->text.find("Paris"), std::string::npos) << result->text;
  EXPECT_EQ(result->finish_reason, FinishReason::kEos) << result->text;
}

// The default representation (--dtype auto) keeps the file's Q4_1 and Q8_0
// blocks and computes on them: every logit of every golden prompt is the
// f32 engine's bit for bit (the comparison above then covers it too), at
// the file's size rather than 4 bytes per weight, and greedy continuations
// are transformers'.
TEST_F(GgufGoldenTest, QuantBlocksGiveTheF32Bits) {
  Engine* f32 = GetEngine();
  ASSERT_NE(f32, nullptr);
  EngineOptions options;
  options.model = path_;
  options.backend.num_threads = 2;
  options.backend.kv_cache_tokens = 512;
  absl::StatusOr<std::unique_ptr<Engine>> blocks = Engine::Create(options);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  const ModelWeights& weights = (*blocks)->weights();
  EXPECT_EQ(weights.matrix_dtype, DType::kQ4_1);
  EXPECT_EQ(weights.embed_tokens.dtype, DType::kQ8_0);
  size_t matrix_bytes = weights.embed_tokens.nbytes();
  for (const LayerWeights& layer : weights.layers) {
    for (const Tensor* m :
         {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj,
          &layer.gate_proj, &layer.up_proj, &layer.down_proj}) {
      EXPECT_EQ(m->dtype, DType::kQ4_1);
      matrix_bytes += m->nbytes();
    }
  }
  // Q4_1 with f32 scales is 24 bytes per 32 weights against the file's 20.
  const double file_bytes = (*golden_)["gguf_size"].get<double>();
  EXPECT_LT(matrix_bytes, 1.25 * file_bytes);
  for (const json& prompt : (*golden_)["prompts"]) {
    const std::vector<int32_t> ids = Ids(prompt["ids"]);
    absl::StatusOr<std::vector<float>> expected = f32->PromptLogits(ids);
    absl::StatusOr<std::vector<float>> got = (*blocks)->PromptLogits(ids);
    ASSERT_TRUE(expected.ok() && got.ok());
    ASSERT_EQ(got->size(), expected->size());
    EXPECT_EQ(
        std::memcmp(got->data(), expected->data(), got->size() * sizeof(float)),
        0)
        << prompt["text"].get<std::string>();
    // The greedy continuation is transformers' (as the f32 engine's is,
    // GreedyMatchesTransformersGenerate).
    GenerationRequest request;
    request.prompt_tokens = ids;
    request.max_new_tokens = prompt["max_new_tokens"].get<int64_t>();
    absl::StatusOr<GenerationResult> result = (*blocks)->Generate(request);
    ASSERT_TRUE(result.ok()) << result.status();
    std::vector<int32_t> tokens = result->tokens;
    if (result->finish_reason == FinishReason::kEos) {
      tokens.push_back((*golden_)["eos_token_id"].get<int32_t>());
    }
    EXPECT_EQ(tokens, Ids(prompt["greedy_ids"]))
        << prompt["text"].get<std::string>();
  }
}

}  // namespace
}  // namespace litestage
