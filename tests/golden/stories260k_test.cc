// The real stories260K model (LITESTAGE_SHARED/models/stories260K) against
// llama2.c's run.c outputs and transformers' logits. Skipped when
// LITESTAGE_SHARED is unset; fails when it is set but the files are missing.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine/runtime/engine.h"
#include "engine/util/json_util.h"
#include "engine/util/mapped_file.h"
#include "gtest/gtest.h"
#include "tests/golden/golden_util.h"

namespace litestage {
namespace {

constexpr int32_t kBos = 1;

class Stories260kTest : public testing::Test {
 protected:
  void SetUp() override {
    const char* shared = std::getenv("LITESTAGE_SHARED");
    if (shared == nullptr || *shared == '\0') {
      GTEST_SKIP() << "LITESTAGE_SHARED is unset";
    }
    model_dir_ = std::string(shared) + "/models/stories260K";
    reference_dir_ = model_dir_ + "/llama2c";
    ASSERT_TRUE(
        std::filesystem::is_regular_file(model_dir_ + "/model.safetensors"))
        << "LITESTAGE_SHARED is set but " << model_dir_
        << "/model.safetensors is missing";
    EngineOptions options;
    options.model = model_dir_;
    options.backend.num_threads = 2;
    options.backend.kv_cache_tokens = 1024;
    absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
  }

  std::string ReadReference(const std::string& name) {
    absl::StatusOr<std::string> text =
        ReadFileToString(reference_dir_ + "/" + name);
    EXPECT_TRUE(text.ok()) << text.status();
    return text.ok() ? *text : std::string();
  }

  std::string model_dir_;
  std::string reference_dir_;
  std::unique_ptr<Engine> engine_;
};

// run.c -t 0.0 (256 steps from BOS) vs the reference ids (BOS first). run.c
// stops early if it samples BOS; the reference must not contain it, or the
// comparison would only hold up to that point.
TEST_F(Stories260kTest, GreedyFromBosMatchesRunC) {
  const std::string path =
      reference_dir_ + "/reference_greedy_n256_token_ids.json";
  absl::StatusOr<nlohmann::json> json = ReadJsonFile(path);
  ASSERT_TRUE(json.ok()) << json.status();
  absl::StatusOr<std::vector<int32_t>> reference = IdList(*json, path);
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_EQ(reference->size(), 257u);
  ASSERT_EQ((*reference)[0], kBos);
  const std::vector<int32_t> want(reference->begin() + 1, reference->end());
  ASSERT_EQ(std::count(want.begin(), want.end(), kBos), 0)
      << "run.c would have stopped at a sampled BOS";

  GenerationRequest request;
  request.prompt_tokens = {kBos};
  request.max_new_tokens = 256;
  request.ignore_eos = true;
  absl::StatusOr<GenerationResult> result = engine_->Generate(request);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->tokens.size(), want.size());
  const auto mismatch =
      std::mismatch(want.begin(), want.end(), result->tokens.begin());
  EXPECT_TRUE(mismatch.first == want.end())
      << "first difference at generated token "
      << (mismatch.first - want.begin());

  // run.c prints every piece after BOS (its leading space stripped) and a
  // final newline.
  std::vector<int32_t> sequence = {kBos};
  sequence.insert(sequence.end(), result->tokens.begin(), result->tokens.end());
  EXPECT_EQ(
      engine_->tokenizer().Decode(sequence, /*skip_special_tokens=*/true) +
          "\n",
      ReadReference("reference_runc_greedy_n256.txt"));
}

TEST_F(Stories260kTest, PromptLogitsMatchTransformers) {
  const std::string path = GoldenDir() + "/stories260K_logits.json";
  absl::StatusOr<nlohmann::json> golden = ReadJsonFile(path);
  ASSERT_TRUE(golden.ok()) << golden.status();
  absl::StatusOr<int64_t> vocab = JsonInt(*golden, "vocab_size", path);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  ASSERT_EQ(engine_->config().vocab_size, *vocab);
  absl::StatusOr<std::vector<int32_t>> ids =
      IdList(golden->value("ids", nlohmann::json()), path + " ids");
  ASSERT_TRUE(ids.ok()) << ids.status();
  absl::StatusOr<std::vector<float>> want = FloatRows(
      golden->value("logits", nlohmann::json()), *vocab, path + " logits");
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_EQ(want->size(), ids->size() * *vocab);

  absl::StatusOr<std::vector<float>> logits = engine_->PromptLogits(*ids);
  ASSERT_TRUE(logits.ok()) << logits.status();
  EXPECT_TRUE(LogitsNear(*logits, *want, *vocab));

  // The engine's tokenizer encodes the prompt as sentencepiece did.
  absl::StatusOr<std::vector<int32_t>> encoded =
      engine_->EncodePrompt(golden->value("prompt_text", std::string()));
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  EXPECT_EQ(*encoded, *ids);
}

// run.c -t 0.0 -n 64 -i "Once upon a time": 64 forward steps (positions
// 0..63) print the pieces of the 64 tokens after BOS, prompt pieces
// included, so the full sequence is 65 tokens with BOS.
TEST_F(Stories260kTest, PromptedGreedyMatchesRunC) {
  constexpr int64_t kSteps = 64;
  absl::StatusOr<std::vector<int32_t>> prompt =
      engine_->EncodePrompt("Once upon a time");
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  ASSERT_GE(prompt->size(), 2u);
  ASSERT_EQ((*prompt)[0], kBos);

  GenerationRequest request;
  request.prompt_tokens = *prompt;
  request.max_new_tokens = kSteps + 1 - static_cast<int64_t>(prompt->size());
  request.ignore_eos = true;
  absl::StatusOr<GenerationResult> result = engine_->Generate(request);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(static_cast<int64_t>(result->tokens.size()),
            request.max_new_tokens);
  ASSERT_EQ(std::count(result->tokens.begin(), result->tokens.end(), kBos), 0)
      << "run.c would have stopped at a sampled BOS";

  std::vector<int32_t> sequence = *prompt;
  sequence.insert(sequence.end(), result->tokens.begin(), result->tokens.end());
  const std::string text =
      engine_->tokenizer().Decode(sequence, /*skip_special_tokens=*/true);
  const std::string want =
      ReadReference("reference_runc_greedy_prompt_once_upon_a_time_n64.txt");
  EXPECT_EQ(text + "\n", want);
  // The streamed continuation text completes the decoded prompt.
  EXPECT_EQ(engine_->tokenizer().Decode(*prompt, /*skip_special_tokens=*/true) +
                result->text,
            text);
}

}  // namespace
}  // namespace litestage
