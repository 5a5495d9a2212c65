// Agreement of the engine with Hugging Face transformers on tiny random models
// of every supported architecture (tests/golden/models/<name>/, made with
// tests/reference/make_golden.py): full prompt logits within tolerance,
// greedy continuations token-for-token, and sub-layer skip references.
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "engine/runtime/engine.h"
#include "engine/util/json_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/golden/golden_util.h"

namespace litestage {
namespace {

// Every folder under tests/golden/models; AllModelFoldersAreListed keeps this
// list and the folder in step so no model goes untested.
const char* const kGoldenModels[] = {
    "llama_f32_tied_gqa",
    "llama_bf16_untied",
    "llama3_rope_scaling",
    "qwen2_f32",
    "qwen3_f32",
    "mistral_f32",
    "mistral_sliding_window",
    "llama_sharded",
};

constexpr int64_t kGreedyTokens = 24;  // make_golden.py NEW_TOKENS.

std::string ModelDir(const std::string& name) {
  return GoldenDir() + "/models/" + name;
}

absl::StatusOr<std::unique_ptr<Engine>> MakeEngine(const std::string& name) {
  EngineOptions options;
  options.model = ModelDir(name);
  options.backend.num_threads = 2;
  options.backend.kv_cache_tokens = 2048;
  return Engine::Create(options);
}

class GoldenModelTest : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string path = ModelDir(GetParam()) + "/golden.json";
    absl::StatusOr<nlohmann::json> golden = ReadJsonFile(path);
    ASSERT_TRUE(golden.ok()) << golden.status();
    golden_ = *std::move(golden);
    absl::StatusOr<int64_t> vocab = JsonInt(golden_, "vocab_size", path);
    ASSERT_TRUE(vocab.ok()) << vocab.status();
    vocab_ = *vocab;
    absl::StatusOr<nlohmann::json> prompts = Member(golden_, "prompts", path);
    ASSERT_TRUE(prompts.ok()) << prompts.status();
    ASSERT_TRUE(prompts->is_array() && prompts->size() == 3)
        << path << ": want 3 prompts";
    prompts_ = *std::move(prompts);
    absl::StatusOr<std::unique_ptr<Engine>> engine = MakeEngine(GetParam());
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
  }

  std::vector<int32_t> PromptIds(size_t i) {
    absl::StatusOr<std::vector<int32_t>> ids =
        IdList(prompts_[i].value("ids", nlohmann::json()), "prompt ids");
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }

  nlohmann::json golden_;
  nlohmann::json prompts_;
  int64_t vocab_ = 0;
  std::unique_ptr<Engine> engine_;
};

TEST_P(GoldenModelTest, ConfigMatchesTransformers) {
  EXPECT_EQ(engine_->config().vocab_size, vocab_);
  EXPECT_EQ(engine_->config().architecture,
            golden_.value("architecture", std::string()));
  const nlohmann::json& bos = golden_["bos_token_id"];
  EXPECT_EQ(engine_->config().bos_token_id,
            bos.is_number_integer() ? bos.get<int64_t>() : -1);
}

TEST_P(GoldenModelTest, PromptLogitsMatchTransformers) {
  int checked_rows = 0;
  for (size_t i = 0; i < prompts_.size(); ++i) {
    SCOPED_TRACE(testing::Message() << GetParam() << " prompt " << i);
    const std::vector<int32_t> ids = PromptIds(i);
    ASSERT_FALSE(ids.empty());
    absl::StatusOr<std::vector<float>> logits = engine_->PromptLogits(ids);
    ASSERT_TRUE(logits.ok()) << logits.status();
    ASSERT_EQ(logits->size(), ids.size() * vocab_);
    if (prompts_[i].contains("logits")) {
      absl::StatusOr<std::vector<float>> want =
          FloatRows(prompts_[i]["logits"], vocab_, "logits");
      ASSERT_TRUE(want.ok()) << want.status();
      EXPECT_TRUE(LogitsNear(*logits, *want, vocab_));
      checked_rows += ids.size();
    } else {
      absl::StatusOr<std::vector<float>> want = FloatList(
          prompts_[i].value("last_logits", nlohmann::json()), "last_logits");
      ASSERT_TRUE(want.ok()) << want.status();
      const std::vector<float> last(logits->end() - vocab_, logits->end());
      EXPECT_TRUE(LogitsNear(last, *want, vocab_));
      ++checked_rows;
    }
  }
  EXPECT_GE(checked_rows, 3);
}

TEST_P(GoldenModelTest, GreedyMatchesTransformers) {
  for (size_t i = 0; i < prompts_.size(); ++i) {
    SCOPED_TRACE(testing::Message() << GetParam() << " prompt " << i);
    absl::StatusOr<std::vector<int32_t>> want = IdList(
        prompts_[i].value("greedy_tokens", nlohmann::json()), "greedy_tokens");
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_EQ(static_cast<int64_t>(want->size()), kGreedyTokens);
    GenerationRequest request;
    request.prompt_tokens = PromptIds(i);
    request.max_new_tokens = kGreedyTokens;
    request.ignore_eos = true;
    absl::StatusOr<GenerationResult> result = engine_->Generate(request);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->tokens, *want);
    EXPECT_EQ(result->finish_reason, FinishReason::kLength);
  }
}

// The same continuations when all prompts share batched prefill and decode.
TEST_P(GoldenModelTest, BatchedGreedyMatchesTransformers) {
  std::vector<GenerationRequest> requests;
  std::vector<std::vector<int32_t>> wants;
  for (size_t i = 0; i < prompts_.size(); ++i) {
    absl::StatusOr<std::vector<int32_t>> want = IdList(
        prompts_[i].value("greedy_tokens", nlohmann::json()), "greedy_tokens");
    ASSERT_TRUE(want.ok()) << want.status();
    wants.push_back(*want);
    GenerationRequest request;
    request.prompt_tokens = PromptIds(i);
    request.max_new_tokens = kGreedyTokens;
    request.ignore_eos = true;
    requests.push_back(std::move(request));
  }
  absl::StatusOr<std::vector<GenerationResult>> results =
      engine_->GenerateBatch(requests);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), wants.size());
  for (size_t i = 0; i < wants.size(); ++i) {
    EXPECT_EQ((*results)[i].tokens, wants[i]) << GetParam() << " prompt " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllModels, GoldenModelTest,
    testing::ValuesIn(std::vector<std::string>(std::begin(kGoldenModels),
                                               std::end(kGoldenModels))),
    [](const testing::TestParamInfo<std::string>& info) { return info.param; });

// Sub-layer skip references: transformers with layer 1's attention output
// (resp. layer 0's MLP output) replaced by zeros, so the residual passes
// unchanged, as the engine's SkipSet specifies.
struct SkipCase {
  const char* model;
  const char* key;
};

class GoldenSkipTest : public testing::TestWithParam<SkipCase> {};

TEST_P(GoldenSkipTest, SkippedLogitsMatchTransformers) {
  const std::string path = ModelDir(GetParam().model) + "/golden.json";
  absl::StatusOr<nlohmann::json> golden = ReadJsonFile(path);
  ASSERT_TRUE(golden.ok()) << golden.status();
  absl::StatusOr<int64_t> vocab = JsonInt(*golden, "vocab_size", path);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  absl::StatusOr<nlohmann::json> entry = Member(*golden, GetParam().key, path);
  ASSERT_TRUE(entry.ok()) << entry.status();
  absl::StatusOr<std::vector<int32_t>> ids =
      IdList(entry->value("ids", nlohmann::json()), "skip ids");
  ASSERT_TRUE(ids.ok()) << ids.status();
  absl::StatusOr<std::vector<float>> want = FloatRows(
      entry->value("logits", nlohmann::json()), *vocab, "skip logits");
  ASSERT_TRUE(want.ok()) << want.status();
  SkipSet skip;
  const nlohmann::json spec = entry->value("skip", nlohmann::json::object());
  for (const auto& flag : spec.value("attention", nlohmann::json::array())) {
    skip.attention.push_back(flag.is_boolean() && flag.get<bool>());
  }
  for (const auto& flag : spec.value("mlp", nlohmann::json::array())) {
    skip.mlp.push_back(flag.is_boolean() && flag.get<bool>());
  }
  ASSERT_EQ(skip.num_skipped(), 1) << path << ": " << GetParam().key;

  absl::StatusOr<std::unique_ptr<Engine>> engine = MakeEngine(GetParam().model);
  ASSERT_TRUE(engine.ok()) << engine.status();
  absl::StatusOr<std::vector<float>> skipped =
      (*engine)->PromptLogits(*ids, skip);
  ASSERT_TRUE(skipped.ok()) << skipped.status();
  EXPECT_TRUE(LogitsNear(*skipped, *want, *vocab));

  // The skip must matter far beyond the tolerance, in the reference and in
  // the engine, or the comparison above could not tell skip from no skip.
  absl::StatusOr<std::vector<float>> full = (*engine)->PromptLogits(*ids);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_GT(MaxAbsDiff(*full, *skipped), kMustResolveDiff);
  EXPECT_GT(MaxAbsDiff(*full, *want), kMustResolveDiff);
}

INSTANTIATE_TEST_SUITE_P(
    Skips, GoldenSkipTest,
    testing::Values(SkipCase{"llama_f32_tied_gqa", "skip_attention_1"},
                    SkipCase{"llama_f32_tied_gqa", "skip_mlp_0"},
                    SkipCase{"qwen2_f32", "skip_attention_1"},
                    SkipCase{"qwen2_f32", "skip_mlp_0"}),
    [](const testing::TestParamInfo<SkipCase>& info) {
      return std::string(info.param.model) + "_" + info.param.key;
    });

TEST(GoldenModelsTest, AllModelFoldersAreListed) {
  std::set<std::string> on_disk;
  std::error_code error;
  for (const auto& entry :
       std::filesystem::directory_iterator(GoldenDir() + "/models", error)) {
    if (entry.is_directory()) on_disk.insert(entry.path().filename().string());
  }
  ASSERT_FALSE(error) << error.message();
  const std::set<std::string> listed(std::begin(kGoldenModels),
                                     std::end(kGoldenModels));
  EXPECT_EQ(on_disk, listed);
}

TEST(GoldenModelsTest, LoadsEveryGoldenModel) {
  int loaded = 0;
  std::error_code error;
  for (const auto& entry :
       std::filesystem::directory_iterator(GoldenDir() + "/models", error)) {
    if (!entry.is_directory()) continue;
    absl::StatusOr<std::unique_ptr<Engine>> engine =
        MakeEngine(entry.path().filename().string());
    EXPECT_TRUE(engine.ok()) << entry.path() << ": " << engine.status();
    if (engine.ok()) {
      EXPECT_THAT((*engine)->Describe(),
                  testing::HasSubstr(entry.path().filename().string()));
      ++loaded;
    }
  }
  ASSERT_FALSE(error) << error.message();
  EXPECT_EQ(loaded, static_cast<int>(std::size(kGoldenModels)));
}

// Sharded checkpoints (model.safetensors.index.json) load the same weights:
// the sharded model's index really spans several files.
TEST(GoldenModelsTest, ShardedModelHasSeveralShards) {
  absl::StatusOr<nlohmann::json> index =
      ReadJsonFile(ModelDir("llama_sharded") + "/model.safetensors.index.json");
  ASSERT_TRUE(index.ok()) << index.status();
  std::set<std::string> files;
  for (const auto& [name, file] : (*index)["weight_map"].items()) {
    if (file.is_string()) files.insert(file.get<std::string>());
  }
  EXPECT_GE(files.size(), 2u);
}

}  // namespace
}  // namespace litestage
