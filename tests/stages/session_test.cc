// ReasoningSession / RunReasoning on the synthetic `tiny` model and on the
// real stories260K model: stage records, sub-layer accounting, `full` equal
// to plain generation, skip profiles applied, early exit per stage.
#include "engine/stages/session.h"

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/stages/tiny_pipeline.h"

namespace litestage {
namespace {

using ::testing::HasSubstr;

ReasoningRequest Question() {
  ReasoningRequest request;
  request.question = "Which one is a fruit?";
  request.choices = {"stone", "apple", "chair", "cloud"};
  return request;
}

// The invariants every result must keep, whatever the profile. `batched`:
// from RunReasoningBatch, where any stage may take prefix KV from another
// request.
void ExpectConsistentRecords(const ReasoningResult& result,
                             const Pipeline& pipeline, int64_t layers,
                             bool batched = false) {
  ASSERT_EQ(result.stages.size(), pipeline.stages.size());
  int64_t prompt_tokens = 0, generated_tokens = 0;
  for (size_t s = 0; s < result.stages.size(); ++s) {
    const StageRecord& stage = result.stages[s];
    const PipelineStage& spec = pipeline.stages[s];
    SCOPED_TRACE(stage.name);
    EXPECT_EQ(stage.name, spec.name);
    EXPECT_EQ(stage.branches.size(),
              spec.fan_out ? result.choices.size() : size_t{1});
    int64_t branch_prompt = 0, branch_generated = 0, branch_cached = 0;
    for (const BranchRecord& branch : stage.branches) {
      EXPECT_LE(branch.generated_tokens, spec.max_new_tokens);
      EXPECT_LT(branch.cached_prompt_tokens, branch.prompt_tokens);
      branch_prompt += branch.prompt_tokens;
      branch_generated += branch.generated_tokens;
      branch_cached += branch.cached_prompt_tokens;
    }
    EXPECT_EQ(stage.cached_prompt_tokens, branch_cached);
    if (!spec.fan_out && !batched) {
      EXPECT_EQ(stage.cached_prompt_tokens, 0);
    }
    EXPECT_EQ(stage.prompt_tokens, branch_prompt);
    EXPECT_EQ(stage.generated_tokens, branch_generated);
    // Every prompt token not taken from a shared prefix and every sampled
    // token but each branch's last is fed, so the tokens fed lie between
    // fed - branches and fed, with fed = prompt - cached + generated.
    const int64_t fed = branch_prompt - branch_cached + branch_generated;
    EXPECT_LE(stage.forwarded_tokens, fed);
    EXPECT_GE(stage.forwarded_tokens,
              fed - static_cast<int64_t>(stage.branches.size()));
    // Accounting: executed + skipped == 2 x layers x processed tokens, and
    // the skipped part is exactly the profile's skip set per token.
    EXPECT_EQ(stage.sublayers.total(), 2 * layers * stage.forwarded_tokens);
    EXPECT_EQ(stage.sublayers.attention_skipped,
              stage.skipped_attention_layers * stage.forwarded_tokens);
    EXPECT_EQ(stage.sublayers.mlp_skipped,
              stage.skipped_mlp_layers * stage.forwarded_tokens);
    EXPECT_GE(stage.seconds, 0);
    EXPECT_NEAR(stage.prefill_seconds + stage.decode_seconds, stage.seconds,
                1e-9);
    EXPECT_EQ(stage.early_exit_fired, stage.early_exits > 0);
    prompt_tokens += stage.prompt_tokens;
    generated_tokens += stage.generated_tokens;
  }
  EXPECT_EQ(result.prompt_tokens, prompt_tokens);
  EXPECT_EQ(result.generated_tokens, generated_tokens);
  EXPECT_EQ(
      result.answer_index,
      ExtractAnswer(pipeline, result.stages.back().output, result.choices));
}

TEST(SessionTest, FullProfileEqualsPlainGenerationStageByStage) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(6, 5, 7);
  const int64_t layers = engine->config().num_hidden_layers;
  auto result =
      RunReasoning(*engine, pipeline, Builtin("full", layers), Question());
  ASSERT_TRUE(result.ok()) << result.status();
  ExpectConsistentRecords(*result, pipeline, layers);

  // Rebuild each stage's prompts from the recorded outputs and generate them
  // one at a time with no skip set: the texts must be identical.
  PromptInputs inputs;
  inputs.question = Question().question;
  inputs.choices = Question().choices;
  for (size_t s = 0; s < pipeline.stages.size(); ++s) {
    const StageRecord& stage = result->stages[s];
    for (size_t b = 0; b < stage.branches.size(); ++b) {
      auto prompt = RenderStagePrompt(
          pipeline, s, inputs,
          pipeline.stages[s].fan_out ? std::optional<size_t>(b) : std::nullopt);
      ASSERT_TRUE(prompt.ok()) << prompt.status();
      GenerationRequest plain;
      plain.prompt_tokens = *engine->EncodePrompt(*prompt);
      plain.max_new_tokens = pipeline.stages[s].max_new_tokens;
      auto alone = engine->Generate(plain);
      ASSERT_TRUE(alone.ok());
      EXPECT_EQ(alone->text, stage.branches[b].text) << stage.name << b;
      EXPECT_EQ(static_cast<int64_t>(alone->tokens.size()),
                stage.branches[b].generated_tokens);
    }
    inputs.stage_outputs[stage.name] = stage.output;
  }
  EXPECT_EQ(result->stages[1].branches[2].option, "C");
  EXPECT_EQ(result->sublayers.skipped(), 0);
}

TEST(SessionTest, ProfileThatSkipsNothingEqualsFull) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(6, 5, 7);
  const int64_t layers = engine->config().num_hidden_layers;
  const std::string document = absl::StrReplaceAll(
      R"json({"schema": "litestage.profile/v1", "name": "nothing",
        "model": {"architecture": "ARCH", "num_layers": LAYERS,
                  "hidden_size": HIDDEN, "fingerprint": "FINGERPRINT"},
        "pipeline": "short",
        "stages": {"recall": {"skip": []}, "analysis": {"skip": []},
                   "summary": {"skip": []}}})json",
      {{"ARCH", engine->fingerprint().architecture},
       {"LAYERS", absl::StrCat(layers)},
       {"HIDDEN", absl::StrCat(engine->config().hidden_size)},
       {"FINGERPRINT", engine->fingerprint().ToString()}});
  auto nothing = ParseProfile(document, "test:nothing");
  ASSERT_TRUE(nothing.ok()) << nothing.status();
  auto full =
      RunReasoning(*engine, pipeline, Builtin("full", layers), Question());
  auto same = RunReasoning(*engine, pipeline, *nothing, Question());
  auto even0 =
      RunReasoning(*engine, pipeline, Builtin("even:0", layers), Question());
  ASSERT_TRUE(full.ok() && same.ok() && even0.ok());
  for (const auto* other : {&*same, &*even0}) {
    ASSERT_EQ(other->stages.size(), full->stages.size());
    for (size_t s = 0; s < full->stages.size(); ++s) {
      EXPECT_EQ(other->stages[s].output, full->stages[s].output);
      EXPECT_EQ(other->stages[s].sublayers, full->stages[s].sublayers);
    }
    EXPECT_EQ(other->answer, full->answer);
  }
}

TEST(SessionTest, SkipProfileIsAppliedToEveryStage) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(6, 5, 7);
  const int64_t layers = engine->config().num_hidden_layers;
  auto full =
      RunReasoning(*engine, pipeline, Builtin("full", layers), Question());
  auto skipped =
      RunReasoning(*engine, pipeline, Builtin("last:1", layers), Question());
  ASSERT_TRUE(full.ok() && skipped.ok());
  ExpectConsistentRecords(*skipped, pipeline, layers);
  for (const StageRecord& stage : skipped->stages) {
    EXPECT_EQ(stage.skipped_attention_layers, 1);
    EXPECT_EQ(stage.skipped_mlp_layers, 1);
    EXPECT_GT(stage.sublayers.skipped(), 0);
  }
  // Dropping a whole layer of a random model changes what it says.
  EXPECT_NE(skipped->stages[0].branches[0].text,
            full->stages[0].branches[0].text);
}

TEST(SessionTest, EarlyExitResetsAtEveryStage) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(6, 5, 7);
  const int64_t layers = engine->config().num_hidden_layers;
  ReasoningRequest request = Question();
  // Threshold 1 is reached as soon as the window is full: every branch of
  // every stage keeps window - 1 tokens. Were the FIFO carried over from the
  // previous stage, later stages would exit at their first token.
  request.early_exit_override = EarlyExitConfig{.window = 3, .threshold = 1};
  auto result =
      RunReasoning(*engine, pipeline, Builtin("full", layers), request);
  ASSERT_TRUE(result.ok()) << result.status();
  ExpectConsistentRecords(*result, pipeline, layers);
  for (const StageRecord& stage : result->stages) {
    SCOPED_TRACE(stage.name);
    EXPECT_TRUE(stage.early_exit_fired);
    EXPECT_EQ(stage.early_exits, static_cast<int64_t>(stage.branches.size()));
    EXPECT_EQ(stage.early_exit.window, 3);
    EXPECT_THAT(stage.early_exit_reason, HasSubstr("over the last 3 tokens"));
    for (const BranchRecord& branch : stage.branches) {
      EXPECT_EQ(branch.generated_tokens, 2);
      EXPECT_EQ(branch.finish_reason, "early_exit");
    }
    // The dropped token is never fed back: prompt + kept tokens exactly.
    EXPECT_EQ(stage.forwarded_tokens, stage.prompt_tokens -
                                          stage.cached_prompt_tokens +
                                          stage.generated_tokens);
  }
  // Window 0 disables the profile's (here: none) early exit explicitly.
  request.early_exit_override = EarlyExitConfig{};
  auto disabled =
      RunReasoning(*engine, pipeline, Builtin("full", layers), request);
  ASSERT_TRUE(disabled.ok());
  EXPECT_FALSE(disabled->stages[0].early_exit_fired);
}

// Fan-out branches share their common prefix's KV by default; the outputs
// equal recomputing it per branch, and the work saved shows in the records.
TEST(SessionTest, FanOutPrefixSharingChangesNothingButWork) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(6, 5, 7);
  const int64_t layers = engine->config().num_hidden_layers;
  ReasoningRequest request = Question();
  auto shared =
      RunReasoning(*engine, pipeline, Builtin("last:1", layers), request);
  request.share_fan_out_prefix = false;
  auto recomputed =
      RunReasoning(*engine, pipeline, Builtin("last:1", layers), request);
  ASSERT_TRUE(shared.ok() && recomputed.ok());
  ExpectConsistentRecords(*shared, pipeline, layers);
  ExpectConsistentRecords(*recomputed, pipeline, layers);
  const StageRecord& analysis = shared->stages[1];
  // 4 branches: the first prefills the prefix, three reuse whole blocks.
  EXPECT_GT(analysis.cached_prompt_tokens, 0);
  EXPECT_EQ(analysis.branches[0].cached_prompt_tokens, 0);
  EXPECT_EQ(analysis.branches[1].cached_prompt_tokens,
            analysis.branches[3].cached_prompt_tokens);
  EXPECT_EQ(recomputed->stages[1].cached_prompt_tokens, 0);
  EXPECT_EQ(analysis.forwarded_tokens + analysis.cached_prompt_tokens,
            recomputed->stages[1].forwarded_tokens);
  for (size_t s = 0; s < shared->stages.size(); ++s) {
    EXPECT_EQ(shared->stages[s].output, recomputed->stages[s].output);
  }
}

// Questions behind one long common prefix (a few-shot prompt), 2 to 5
// choices, one with an early exit: run together, each gets token for token
// what it gets alone, and later questions take the common prefix from the
// first instead of computing it.
TEST(SessionTest, BatchedRequestsEqualRunningEachAlone) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(6, 5, 7);
  const int64_t layers = engine->config().num_hidden_layers;
  const std::string context =
      "Read this first, it is the same for every question: the quick brown "
      "fox jumps over the lazy dog, and then it runs far away. ";
  std::vector<ReasoningRequest> requests;
  const std::vector<std::vector<std::string>> choices = {
      {"stone", "apple"},
      {"red", "green", "blue"},
      {"one", "two", "three", "four"},
      {"a", "b", "c", "d", "e"}};
  for (size_t q = 0; q < choices.size(); ++q) {
    ReasoningRequest request;
    request.question = absl::StrCat(context, "Question number ", q, "?");
    request.choices = choices[q];
    requests.push_back(request);
  }
  requests[2].early_exit_override =
      EarlyExitConfig{.window = 3, .threshold = 1};
  for (const char* spec : {"full", "last:1"}) {
    SCOPED_TRACE(spec);
    const Profile profile = Builtin(spec, layers);
    auto batched = RunReasoningBatch(*engine, pipeline, profile, requests);
    ASSERT_TRUE(batched.ok()) << batched.status();
    ASSERT_EQ(batched->size(), requests.size());
    for (size_t q = 0; q < requests.size(); ++q) {
      SCOPED_TRACE(q);
      auto alone = RunReasoning(*engine, pipeline, profile, requests[q]);
      ASSERT_TRUE(alone.ok()) << alone.status();
      const ReasoningResult& together = (*batched)[q];
      ExpectConsistentRecords(together, pipeline, layers, /*batched=*/true);
      EXPECT_EQ(together.answer_index, alone->answer_index);
      ASSERT_EQ(together.stages.size(), alone->stages.size());
      for (size_t s = 0; s < together.stages.size(); ++s) {
        const StageRecord& a = together.stages[s];
        const StageRecord& b = alone->stages[s];
        EXPECT_EQ(a.output, b.output);
        EXPECT_EQ(a.early_exits, b.early_exits);
        ASSERT_EQ(a.branches.size(), b.branches.size());
        for (size_t k = 0; k < a.branches.size(); ++k) {
          EXPECT_EQ(a.branches[k].generated_token_ids,
                    b.branches[k].generated_token_ids);
          EXPECT_EQ(a.branches[k].prompt_token_ids,
                    b.branches[k].prompt_token_ids);
          EXPECT_EQ(a.branches[k].finish_reason, b.branches[k].finish_reason);
          EXPECT_EQ(a.branches[k].token_max_prob, b.branches[k].token_max_prob);
        }
        // The common prefix came from the first question.
        if (q > 0) {
          EXPECT_GT(a.branches[0].cached_prompt_tokens, 0);
        }
        EXPECT_GE(a.cached_prompt_tokens, b.cached_prompt_tokens);
      }
    }
  }
  // A bad request fails the call before anything runs, naming its index.
  requests[3].choices = {"only one"};
  auto bad =
      RunReasoningBatch(*engine, pipeline, Builtin("full", layers), requests);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("request 3"));
  EXPECT_EQ(engine->kv_blocks().num_sequences(), 0);
}

TEST(SessionTest, JsonCarriesEveryStageRecord) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(6, 5, 7);
  auto result = RunReasoning(
      *engine, pipeline, Builtin("even:1", engine->config().num_hidden_layers),
      Question());
  ASSERT_TRUE(result.ok());
  const nlohmann::json json = ReasoningResultToJson(*result);
  ASSERT_EQ(json["stages"].size(), 3u);
  EXPECT_EQ(json["stages"][1]["name"], "analysis");
  EXPECT_EQ(json["stages"][1]["branches"].size(), 4u);
  EXPECT_EQ(json["stages"][1]["branches"][3]["option"], "D");
  for (const char* key :
       {"prompt_tokens", "generated_tokens", "prefill_seconds",
        "decode_seconds", "sublayers", "early_exit_fired", "mean_confidence",
        "finish_reason", "skipped_attention_layers", "skipped_mlp_layers"}) {
    EXPECT_TRUE(json["stages"][0].contains(key)) << key;
  }
  EXPECT_EQ(json["stages"][2]["sublayers"]["mlp_skipped"],
            result->stages[2].sublayers.mlp_skipped);
  EXPECT_TRUE(json.contains("answer"));
}

TEST(SessionTest, InvalidRequestsNameTheField) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(6, 5, 7);
  const Profile full = Builtin("full", engine->config().num_hidden_layers);
  ReasoningRequest request = Question();
  request.question = "  ";
  auto status = ReasoningSession::Create(*engine, pipeline, full, request);
  EXPECT_EQ(status.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.status().message(), HasSubstr("question"));

  request = Question();
  request.choices = {"a", "b", "c", "d", "e", "f"};
  status = ReasoningSession::Create(*engine, pipeline, full, request);
  EXPECT_EQ(status.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.status().message(), HasSubstr("choices"));

  request = Question();
  request.choices[1] = "";
  status = ReasoningSession::Create(*engine, pipeline, full, request);
  EXPECT_THAT(status.status().message(), HasSubstr("choices[1]"));

  request = Question();
  request.early_exit_override = EarlyExitConfig{.window = -4};
  status = ReasoningSession::Create(*engine, pipeline, full, request);
  EXPECT_THAT(status.status().message(), HasSubstr("early_exit.window"));

  request = Question();
  request.sampling.top_p = 0;
  status = ReasoningSession::Create(*engine, pipeline, full, request);
  EXPECT_THAT(status.status().message(), HasSubstr("top_p"));

  // A question longer than the context: OutOfRange at its stage.
  request = Question();
  request.question = std::string(2000, 'x');
  auto result = RunReasoning(*engine, pipeline, full, request);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(result.status().message(), HasSubstr("recall"));

  // A profile made for another model is refused, not applied.
  Profile other;
  other.name = "other";
  other.model.architecture = "LlamaForCausalLM";
  other.model.num_hidden_layers = 99;
  other.pipeline = "short";
  status = ReasoningSession::Create(*engine, pipeline, other, Question());
  EXPECT_EQ(status.status().code(), absl::StatusCode::kFailedPrecondition);
}

// The real stories260K model from ../shared with the built-in tinythinker
// pipeline: full, even:1 and an early-exit override all run end to end.
TEST(SessionTest, TinyThinkerOnStories260K) {
  const char* shared = std::getenv("LITESTAGE_SHARED");
  if (shared == nullptr) GTEST_SKIP() << "LITESTAGE_SHARED is not set";
  const std::string model_dir = std::string(shared) + "/models/stories260K";
  ASSERT_TRUE(std::filesystem::exists(model_dir + "/config.json"))
      << model_dir << " is missing but LITESTAGE_SHARED is set";
  EngineOptions options;
  options.model = model_dir;
  options.backend.num_threads = 2;
  auto engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto pipeline = BuiltinPipeline("tinythinker");
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  // stories260K reads 512 tokens with a 512-piece vocabulary (~2 bytes a
  // token): the 751-byte few-shot example alone would fill its context, so
  // the stages run zero-shot here.
  pipeline->few_shot.clear();
  const int64_t layers = (*engine)->config().num_hidden_layers;
  ASSERT_EQ(layers, 5);

  ReasoningRequest request;
  request.question = "Where did the little dog go?";
  request.choices = {"to the park", "to the moon", "under the bed",
                     "into the sea"};
  request.max_new_tokens_cap = 24;
  auto full =
      RunReasoning(**engine, *pipeline, Builtin("full", layers), request);
  ASSERT_TRUE(full.ok()) << full.status();
  ExpectConsistentRecords(*full, *pipeline, layers);
  EXPECT_EQ(full->stages[1].branches.size(), 4u);
  EXPECT_EQ(full->sublayers.skipped(), 0);

  auto even =
      RunReasoning(**engine, *pipeline, Builtin("even:1", layers), request);
  ASSERT_TRUE(even.ok()) << even.status();
  ExpectConsistentRecords(*even, *pipeline, layers);
  for (const StageRecord& stage : even->stages) {
    EXPECT_EQ(stage.skipped_attention_layers, 1);
    EXPECT_EQ(stage.skipped_mlp_layers, 1);
    EXPECT_EQ(stage.sublayers.skipped() * 5, stage.sublayers.total());
  }

  request.early_exit_override = EarlyExitConfig{.window = 4, .threshold = 0.9f};
  auto exited =
      RunReasoning(**engine, *pipeline, Builtin("even:1", layers), request);
  ASSERT_TRUE(exited.ok()) << exited.status();
  ExpectConsistentRecords(*exited, *pipeline, layers);
  int64_t exits = 0;
  for (const StageRecord& stage : exited->stages) {
    exits += stage.early_exits;
    for (const BranchRecord& branch : stage.branches) {
      if (branch.finish_reason == "early_exit") {
        // Never before the window is full.
        EXPECT_GE(branch.generated_tokens, 3);
        EXPECT_LT(branch.mean_confidence, 1.0);
      }
    }
  }
  // A 260K-parameter model is rarely 90% sure for 4 tokens in a row.
  EXPECT_GT(exits, 0);
  // The first stage has the same prompt and skips either way: early exit
  // can only cut it short.
  EXPECT_LE(exited->stages[0].generated_tokens,
            even->stages[0].generated_tokens);
}

}  // namespace
}  // namespace litestage
