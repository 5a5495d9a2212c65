// The evaluation library (engine/stages/evaluation.h): teacher-forced
// fidelity against an independent step-by-step computation on the synthetic
// tiny model (and exactly 1.0 for full), Wilson intervals against values
// worked from the formula, profile spec parsing, adaskip:K, agreement and
// the other aggregates, and the row JSON round trip. (~700 lines: one
// fixture and many small cases of one library.)
#include "engine/stages/evaluation.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/stages/tiny_pipeline.h"

namespace litestage {
namespace {

using ::testing::HasSubstr;

QuestionItem Item() {
  QuestionItem item;
  item.id = "q1";
  item.question = "Which one is a fruit?";
  item.choices = {"stone", "apple", "chair"};
  item.answer = 1;
  return item;
}

int32_t ArgmaxOfLastRow(const std::vector<float>& logits, int64_t vocab) {
  const float* row = logits.data() + logits.size() - vocab;
  return static_cast<int32_t>(std::max_element(row, row + vocab) - row);
}

// Fidelity of `skip` on each stage of full's run, recomputed without the
// library: the prompts rendered and encoded here from full's stage outputs,
// full's tokens regenerated with Engine::Generate, then one forward pass per
// generated position (prompt + the tokens before it) instead of one per
// branch.
std::vector<FidelityCount> IndependentFidelity(Engine& engine,
                                               const Pipeline& pipeline,
                                               const QuestionItem& item,
                                               const ReasoningResult& full,
                                               const SkipSet& skip) {
  const int64_t vocab = engine.config().vocab_size;
  PromptInputs inputs;
  inputs.question = item.question;
  inputs.choices = item.choices;
  std::vector<FidelityCount> counts(pipeline.stages.size());
  for (size_t s = 0; s < pipeline.stages.size(); ++s) {
    const PipelineStage& stage = pipeline.stages[s];
    const size_t branches = stage.fan_out ? item.choices.size() : 1;
    EXPECT_EQ(full.stages[s].branches.size(), branches);
    for (size_t b = 0; b < branches; ++b) {
      std::vector<TextRange> user_text;
      auto prompt = RenderStagePrompt(
          pipeline, s, inputs,
          stage.fan_out ? std::optional<size_t>(b) : std::nullopt, &user_text);
      EXPECT_TRUE(prompt.ok()) << prompt.status();
      auto tokens = engine.EncodePrompt(*prompt, user_text);
      EXPECT_TRUE(tokens.ok()) << tokens.status();
      // The session kept exactly what it fed.
      EXPECT_EQ(full.stages[s].branches[b].prompt_token_ids, *tokens);
      GenerationRequest request;
      request.prompt_tokens = *tokens;
      request.max_new_tokens = stage.max_new_tokens;
      auto generated = engine.Generate(request);
      EXPECT_TRUE(generated.ok()) << generated.status();
      EXPECT_EQ(full.stages[s].branches[b].generated_token_ids,
                generated->tokens);
      std::vector<int32_t> context = *tokens;
      for (int32_t token : generated->tokens) {
        auto logits = engine.PromptLogits(context, skip);
        EXPECT_TRUE(logits.ok()) << logits.status();
        counts[s].hits += ArgmaxOfLastRow(*logits, vocab) == token ? 1 : 0;
        ++counts[s].total;
        context.push_back(token);
      }
    }
    inputs.stage_outputs[stage.name] = full.stages[s].output;
  }
  return counts;
}

TEST(EvaluationTest, TeacherForcedFidelityMatchesIndependentComputation) {
  std::unique_ptr<Engine> engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(8, 6, 7);
  const int64_t layers = engine->config().num_hidden_layers;
  const QuestionItem item = Item();
  auto full_profile = BuiltinProfile("full", layers);
  ASSERT_TRUE(full_profile.ok());
  auto full =
      RunReasoning(*engine, pipeline, *full_profile, RequestForItem(item, {}));
  ASSERT_TRUE(full.ok()) << full.status();

  // Skip sets of growing damage, so that at least one lies strictly between
  // "agrees everywhere" and "agrees nowhere" on random weights.
  int64_t partial = 0;
  for (const std::string spec : {"full", "even:1", "last:1", "even:2"}) {
    SCOPED_TRACE(spec);
    auto profile = BuiltinProfile(spec, layers);
    ASSERT_TRUE(profile.ok()) << profile.status();
    auto fidelity = TeacherForcedFidelity(*engine, pipeline, *profile, *full);
    ASSERT_TRUE(fidelity.ok()) << fidelity.status();
    const std::vector<FidelityCount> expected = IndependentFidelity(
        *engine, pipeline, item, *full, profile->every_stage->skip);
    ASSERT_EQ(fidelity->size(), expected.size());
    for (size_t s = 0; s < expected.size(); ++s) {
      EXPECT_EQ((*fidelity)[s].hits, expected[s].hits) << "stage " << s;
      EXPECT_EQ((*fidelity)[s].total, expected[s].total) << "stage " << s;
      EXPECT_GT(expected[s].total, 0) << "stage " << s;
      if (spec == std::string("full")) {
        EXPECT_EQ((*fidelity)[s].fidelity(), 1.0) << "stage " << s;
      } else if (expected[s].hits > 0 && expected[s].hits < expected[s].total) {
        ++partial;
      }
    }
  }
  EXPECT_GT(partial, 0) << "no skip set changed some but not all tokens";
}

// Full's tokens cached as JSON give the same fidelity as the run itself,
// and AddFidelity fills a row that was evaluated without a reference.
TEST(EvaluationTest, CachedReferenceTokensGiveTheSameFidelity) {
  std::unique_ptr<Engine> engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(8, 6, 7);
  const int64_t layers = engine->config().num_hidden_layers;
  const QuestionItem item = Item();
  auto full_profile = BuiltinProfile("full", layers);
  auto even = BuiltinProfile("even:1", layers);
  ASSERT_TRUE(full_profile.ok() && even.ok());
  ReasoningResult full_run;
  auto full_row = EvaluateQuestion(*engine, pipeline, *full_profile, "full",
                                   item, {}, nullptr, &full_run);
  ASSERT_TRUE(full_row.ok()) << full_row.status();
  EXPECT_FALSE(full_row->fidelity_measured);

  auto tokens = ReferenceTokensFromRun(full_run);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->stages.size(), 3u);
  EXPECT_EQ(tokens->stages[1].size(), item.choices.size());
  const std::string cached = ReferenceTokensToJson(*tokens).dump();
  auto back = ReferenceTokensFromJson(nlohmann::json::parse(cached));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->stages[1][2].prompt,
            full_run.stages[1].branches[2].prompt_token_ids);
  EXPECT_EQ(back->stages[2][0].generated,
            full_run.stages[2].branches[0].generated_token_ids);

  auto direct = TeacherForcedFidelity(*engine, pipeline, *even, full_run);
  ASSERT_TRUE(direct.ok()) << direct.status();
  auto row =
      EvaluateQuestion(*engine, pipeline, *even, "even:1", item, {}, nullptr);
  ASSERT_TRUE(row.ok()) << row.status();
  ASSERT_TRUE(AddFidelity(*engine, pipeline, *even, *back, &*row).ok());
  EXPECT_TRUE(row->fidelity_measured);
  for (size_t s = 0; s < direct->size(); ++s) {
    EXPECT_EQ(row->stages[s].fidelity.hits, (*direct)[s].hits);
    EXPECT_EQ(row->stages[s].fidelity.total, (*direct)[s].total);
  }

  // A run without prompt ids, and ids outside the vocabulary, are errors.
  ReasoningResult stripped = full_run;
  stripped.stages[0].branches[0].prompt_token_ids.clear();
  EXPECT_EQ(ReferenceTokensFromRun(stripped).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ReferenceTokens bad = *back;
  bad.stages[0][0].prompt[0] =
      static_cast<int32_t>(engine->config().vocab_size);
  EXPECT_EQ(
      TeacherForcedFidelity(*engine, pipeline, *even, bad).status().code(),
      absl::StatusCode::kInvalidArgument);
  ReferenceTokens empty_prompt = *back;
  empty_prompt.stages[0][0].prompt.clear();
  EXPECT_EQ(TeacherForcedFidelity(*engine, pipeline, *even, empty_prompt)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ReferenceTokensFromJson(nlohmann::json::parse("{}")).ok());
}

TEST(EvaluationTest, EvaluateProfilesFullIsExactlyFaithfulToItself) {
  std::unique_ptr<Engine> engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(8, 6, 7);
  const int64_t layers = engine->config().num_hidden_layers;
  std::vector<Profile> profiles;
  for (const std::string spec : {"full", "even:1"}) {
    auto profile = BuiltinProfile(spec, layers);
    ASSERT_TRUE(profile.ok());
    profiles.push_back(*profile);
  }
  QuestionItem second = Item();
  second.id = "q2";
  second.question = "Which one can fly?";
  second.choices = {"bird", "rock", "fish", "table"};
  second.answer = 0;
  int64_t last_done = 0;
  auto evaluation =
      EvaluateProfiles(*engine, pipeline, profiles, {"full", "even:1"},
                       {Item(), second}, {}, [&](int64_t done, int64_t total) {
                         EXPECT_EQ(done, last_done + 1);
                         EXPECT_EQ(total, 4);
                         last_done = done;
                       });
  ASSERT_TRUE(evaluation.ok()) << evaluation.status();
  EXPECT_EQ(last_done, 4);
  ASSERT_EQ(evaluation->summaries.size(), 2u);
  const ProfileSummary& full = evaluation->summaries[0];
  EXPECT_EQ(full.n, 2);
  EXPECT_EQ(full.agree, 2);
  EXPECT_EQ(full.speedup, 1.0);
  for (const StageSummary& stage : full.stages) {
    EXPECT_EQ(stage.fidelity.value_or(-1), 1.0) << stage.name;
    EXPECT_EQ(stage.fidelity_hits, stage.fidelity_total) << stage.name;
    EXPECT_GT(stage.fidelity_total, 0) << stage.name;
  }
  // The rows are in question order, one per (profile, question).
  ASSERT_EQ(evaluation->rows[1].size(), 2u);
  EXPECT_EQ(evaluation->rows[1][1].question_id, "q2");
  EXPECT_EQ(evaluation->rows[1][1].profile, "even:1");

  // Without the teacher-forced passes fidelity is unset, not 1.0.
  EvaluationOptions no_fidelity;
  no_fidelity.fidelity = false;
  auto unmeasured = EvaluateProfiles(*engine, pipeline, profiles,
                                     {"full", "even:1"}, {Item()}, no_fidelity);
  ASSERT_TRUE(unmeasured.ok()) << unmeasured.status();
  for (const ProfileSummary& summary : unmeasured->summaries) {
    EXPECT_FALSE(unmeasured->rows[0][0].fidelity_measured);
    for (const StageSummary& stage : summary.stages) {
      EXPECT_FALSE(stage.fidelity.has_value()) << stage.name;
      EXPECT_EQ(stage.fidelity_total, 0) << stage.name;
    }
  }
  EXPECT_EQ(unmeasured->summaries[0].agree, 1);

  // The first profile must be full.
  std::swap(profiles[0], profiles[1]);
  auto bad = EvaluateProfiles(*engine, pipeline, profiles, {"even:1", "full"},
                              {Item()}, {});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

std::vector<QuestionItem> SharedPrefixItems() {
  // A long common prefix, as a few-shot prompt gives every question.
  const std::string context =
      "Everything here starts the same way, with a sentence long enough to "
      "fill several cache blocks before the question itself begins. ";
  std::vector<QuestionItem> items;
  const std::vector<std::vector<std::string>> choices = {
      {"stone", "apple", "chair"},
      {"bird", "rock"},
      {"one", "two", "three", "four", "five"},
      {"red", "green", "blue", "black"},
      {"up", "down"}};
  for (size_t q = 0; q < choices.size(); ++q) {
    QuestionItem item;
    item.id = absl::StrCat("q", q);
    item.question = absl::StrCat(context, "Question ", q, "?");
    item.choices = choices[q];
    item.answer = q % choices[q].size();
    items.push_back(item);
  }
  return items;
}

// Batched teacher forcing counts exactly what the per-question pass counts,
// for a skip profile and for full (1.0).
TEST(EvaluationTest, BatchedFidelityEqualsPerQuestionFidelity) {
  std::unique_ptr<Engine> engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(8, 6, 7);
  const int64_t layers = engine->config().num_hidden_layers;
  auto full = BuiltinProfile("full", layers);
  auto skip = BuiltinProfile("even:1", layers);
  ASSERT_TRUE(full.ok() && skip.ok());
  std::vector<ReferenceTokens> references;
  for (const QuestionItem& item : SharedPrefixItems()) {
    auto run = RunReasoning(*engine, pipeline, *full, RequestForItem(item, {}));
    ASSERT_TRUE(run.ok()) << run.status();
    auto tokens = ReferenceTokensFromRun(*run);
    ASSERT_TRUE(tokens.ok());
    references.push_back(*tokens);
  }
  std::vector<const ReferenceTokens*> pointers;
  for (const ReferenceTokens& r : references) pointers.push_back(&r);
  for (const Profile* profile : {&*full, &*skip}) {
    auto batched =
        BatchTeacherForcedFidelity(*engine, pipeline, *profile, pointers);
    ASSERT_TRUE(batched.ok()) << batched.status();
    ASSERT_EQ(batched->size(), references.size());
    int64_t hits = 0, total = 0;
    for (size_t q = 0; q < references.size(); ++q) {
      auto alone =
          TeacherForcedFidelity(*engine, pipeline, *profile, references[q]);
      ASSERT_TRUE(alone.ok());
      ASSERT_EQ((*batched)[q].size(), alone->size());
      for (size_t s = 0; s < alone->size(); ++s) {
        EXPECT_EQ((*batched)[q][s].hits, (*alone)[s].hits) << q << "/" << s;
        EXPECT_EQ((*batched)[q][s].total, (*alone)[s].total) << q << "/" << s;
        hits += (*alone)[s].hits;
        total += (*alone)[s].total;
      }
    }
    EXPECT_GT(total, 0);
    if (profile == &*full) {
      EXPECT_EQ(hits, total);
    }
  }
  EXPECT_EQ(engine->kv_blocks().num_sequences(), 0);
}

// The prompt tokens a lone run computes, replayed from a batched run's
// prompt ids, equal what RunReasoning reports (prompt - cached).
TEST(EvaluationTest, AloneFillTokensReplaysALoneRun) {
  std::unique_ptr<Engine> engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(4, 3, 3);
  auto profile = BuiltinProfile("full", engine->config().num_hidden_layers);
  ASSERT_TRUE(profile.ok());
  const std::vector<QuestionItem> items = SharedPrefixItems();
  std::vector<ReasoningRequest> requests;
  for (const QuestionItem& item : items) {
    requests.push_back(RequestForItem(item, {}));
  }
  auto batched = RunReasoningBatch(*engine, pipeline, *profile, requests);
  ASSERT_TRUE(batched.ok()) << batched.status();
  const int64_t block_size = engine->kv_blocks().block_size();
  int64_t cross_question_cached = 0;
  for (size_t q = 0; q < items.size(); ++q) {
    auto alone = RunReasoning(*engine, pipeline, *profile, requests[q]);
    ASSERT_TRUE(alone.ok());
    for (size_t s = 0; s < pipeline.stages.size(); ++s) {
      const StageRecord& a = alone->stages[s];
      const bool fan_out = pipeline.stages[s].fan_out;
      EXPECT_EQ(AloneFillTokens(a, fan_out, block_size),
                a.prompt_tokens - a.cached_prompt_tokens);
      EXPECT_EQ(AloneFillTokens((*batched)[q].stages[s], fan_out, block_size),
                a.prompt_tokens - a.cached_prompt_tokens)
          << q << "/" << s;
      cross_question_cached +=
          (*batched)[q].stages[s].cached_prompt_tokens - a.cached_prompt_tokens;
    }
  }
  EXPECT_GT(cross_question_cached, 0);  // the batch did share across questions
}

QuestionEval TimedRow(const std::string& id, double prefill_seconds,
                      int64_t prefill_tokens, double decode_seconds,
                      int64_t decode_tokens) {
  QuestionEval row;
  row.profile = "p";
  row.question_id = id;
  StageEval stage;
  stage.name = "only";
  stage.prefill_seconds = prefill_seconds;
  stage.decode_seconds = decode_seconds;
  stage.seconds = prefill_seconds + decode_seconds;
  stage.prefill_tokens = prefill_tokens;
  stage.decode_tokens = decode_tokens;
  row.seconds = stage.seconds;
  row.stages.push_back(stage);
  return row;
}

// Costs are summed seconds over summed tokens; predictions multiply them
// back; the two-fold check predicts each half from the other.
TEST(EvaluationTest, LatencyModelFitsPredictsAndChecks) {
  const QuestionEval a = TimedRow("a", 1.0, 100, 0.5, 10);
  const QuestionEval b = TimedRow("b", 3.0, 200, 1.5, 20);
  auto model = FitLatencyModel({&a, &b});
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ(model->stages.size(), 1u);
  EXPECT_DOUBLE_EQ(model->stages[0].prefill_seconds_per_token, 4.0 / 300);
  EXPECT_DOUBLE_EQ(model->stages[0].decode_seconds_per_token, 2.0 / 30);
  QuestionEval c = TimedRow("c", 0, 30, 0, 3);
  ASSERT_TRUE(ApplyLatencyModel(*model, &c).ok());
  EXPECT_FALSE(c.latency_measured);
  EXPECT_DOUBLE_EQ(c.stages[0].prefill_seconds, 0.4);
  EXPECT_DOUBLE_EQ(c.stages[0].decode_seconds, 0.2);
  EXPECT_DOUBLE_EQ(c.seconds, 0.6);
  // Fold 1 predicts a from b: 100 * 3/200 + 10 * 1.5/20 = 2.25 (a: 1.5);
  // fold 2 predicts b from a: 200 * 1/100 + 20 * 0.5/10 = 3.0 (b: 4.5).
  auto check = CrossValidateLatencyModel({&a, &b});
  ASSERT_TRUE(check.ok());
  EXPECT_EQ(check->n, 2);
  EXPECT_DOUBLE_EQ(check->mean_abs_relative_error,
                   (0.75 / 1.5 + 1.5 / 4.5) / 2);
  EXPECT_DOUBLE_EQ(check->mean_relative_error, (5.25 - 6.0) / 6.0);
  // Fewer than two rows: nothing to check; none, or a predicted one: no fit.
  auto one = CrossValidateLatencyModel({&a});
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->n, 0);
  EXPECT_FALSE(FitLatencyModel({}).ok());
  EXPECT_FALSE(FitLatencyModel({&c}).ok());
  QuestionEval two_stages = a;
  two_stages.stages.push_back(a.stages[0]);
  EXPECT_FALSE(ApplyLatencyModel(*model, &two_stages).ok());
}

// Batched evaluation: the same answers, token counts and fidelity as one
// request at a time; latency measured on the first questions and predicted
// (from per-token costs) for the rest, with the check reported.
TEST(EvaluationTest, BatchedEvaluationKeepsEveryOutput) {
  std::unique_ptr<Engine> engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(8, 6, 7);
  const int64_t layers = engine->config().num_hidden_layers;
  std::vector<Profile> profiles;
  const std::vector<std::string> names = {"full", "even:1", "full@ee"};
  for (const std::string spec : {"full", "even:1"}) {
    auto profile = BuiltinProfile(spec, layers);
    ASSERT_TRUE(profile.ok());
    profiles.push_back(*profile);
  }
  profiles.push_back(profiles[0]);
  for (const PipelineStage& stage : pipeline.stages) {
    profiles[2].stages[stage.name].early_exit =
        EarlyExitConfig{.window = 3, .threshold = 0.5};
  }
  const std::vector<QuestionItem> items = SharedPrefixItems();
  auto alone = EvaluateProfiles(*engine, pipeline, profiles, names, items, {});
  ASSERT_TRUE(alone.ok()) << alone.status();
  EvaluationOptions options;
  options.batch = 2;
  options.latency_questions = 2;
  int64_t last_done = 0;
  auto batched = EvaluateProfiles(*engine, pipeline, profiles, names, items,
                                  options, [&](int64_t done, int64_t total) {
                                    EXPECT_GT(done, last_done);
                                    EXPECT_EQ(total, 15);
                                    last_done = done;
                                  });
  ASSERT_TRUE(batched.ok()) << batched.status();
  EXPECT_EQ(last_done, 15);
  for (size_t p = 0; p < profiles.size(); ++p) {
    SCOPED_TRACE(names[p]);
    for (size_t q = 0; q < items.size(); ++q) {
      const QuestionEval& a = alone->rows[p][q];
      const QuestionEval& b = batched->rows[p][q];
      EXPECT_EQ(a.question_id, b.question_id);
      EXPECT_EQ(a.answer_index, b.answer_index) << q;
      EXPECT_TRUE(b.fidelity_measured);
      EXPECT_EQ(b.latency_measured, q < 2) << q;
      ASSERT_EQ(a.stages.size(), b.stages.size());
      for (size_t s = 0; s < a.stages.size(); ++s) {
        EXPECT_EQ(a.stages[s].generated_tokens, b.stages[s].generated_tokens);
        EXPECT_EQ(a.stages[s].prompt_tokens, b.stages[s].prompt_tokens);
        EXPECT_EQ(a.stages[s].prefill_tokens, b.stages[s].prefill_tokens);
        EXPECT_EQ(a.stages[s].decode_tokens, b.stages[s].decode_tokens);
        EXPECT_EQ(a.stages[s].fidelity.hits, b.stages[s].fidelity.hits);
        EXPECT_EQ(a.stages[s].fidelity.total, b.stages[s].fidelity.total);
        EXPECT_EQ(a.stages[s].early_exit_fired, b.stages[s].early_exit_fired);
      }
      EXPECT_GT(b.seconds, 0) << q;
      // full@ee skips what full skips: its counts are full's, not re-run.
      if (p == 2) {
        EXPECT_EQ(b.fidelity_seconds, 0) << q;
      }
    }
    const ProfileSummary& summary = batched->summaries[p];
    EXPECT_EQ(summary.latency_measured, 2);
    EXPECT_EQ(summary.latency_check.n, 2);
    EXPECT_EQ(summary.agree, alone->summaries[p].agree);
    EXPECT_EQ(alone->summaries[p].latency_measured, 5);
    EXPECT_EQ(alone->summaries[p].latency_check.n, 0);
  }
  options.latency_questions = 0;
  EXPECT_EQ(EvaluateProfiles(*engine, pipeline, profiles, names, items, options)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// Reference values from the Wilson formula with z = 1.959964:
//   center = (p + z^2/2n) / (1 + z^2/n),
//   half   = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2).
// 16/60: p = 0.26667, z^2/n = 0.064025, center = 0.28071,
//        half = 1.84205 * sqrt(0.0032593 + 0.0002668) = 0.10938
//        -> [0.17133, 0.39009].
// 0/10:  center = half = 0.19209/1.38415 = 0.13877 -> [0, 0.27753].
// 10/10: mirror image -> [0.72247, 1].
// 3/3:   -> [0.43850, 1].
TEST(EvaluationTest, WilsonIntervalKnownValues) {
  const auto expect = [](int64_t k, int64_t n, double low, double high) {
    const Interval interval = WilsonInterval(k, n);
    EXPECT_NEAR(interval.low, low, 5e-5) << k << "/" << n;
    EXPECT_NEAR(interval.high, high, 5e-5) << k << "/" << n;
  };
  expect(16, 60, 0.17133, 0.39009);
  expect(0, 10, 0.0, 0.27753);
  expect(10, 10, 0.72247, 1.0);
  expect(3, 3, 0.43850, 1.0);
  const Interval none = WilsonInterval(0, 0);
  EXPECT_EQ(none.low, 0);
  EXPECT_EQ(none.high, 1);
}

TEST(EvaluationTest, MeanAndQuantile) {
  EXPECT_EQ(Mean({}), 0);
  EXPECT_DOUBLE_EQ(Mean({1, 2, 6}), 3);
  // Linear interpolation: position 0.9 * 4 = 3.6 between 4 and 5.
  EXPECT_DOUBLE_EQ(Quantile({5, 1, 3, 2, 4}, 0.9), 4.6);
  EXPECT_DOUBLE_EQ(Quantile({7}, 0.9), 7);
  EXPECT_DOUBLE_EQ(Quantile({1, 2}, 0), 1);
  EXPECT_DOUBLE_EQ(Quantile({1, 2}, 1), 2);
}

TEST(EvaluationTest, ParsesGoodSpecs) {
  auto specs = ParseProfileList(
      "full,even:4,last:4,adaskip:8,my.json,full@ee=4,0.3,"
      "even:2@ee=8,2.5,max_logit,./1.json");
  ASSERT_TRUE(specs.ok()) << specs.status();
  ASSERT_EQ(specs->size(), 8u);
  EXPECT_EQ((*specs)[0].base, "full");
  EXPECT_FALSE((*specs)[0].early_exit.has_value());
  EXPECT_EQ((*specs)[3].adaskip, 8);
  EXPECT_EQ((*specs)[4].base, "my.json");
  const ProfileSpec& ee = (*specs)[5];
  EXPECT_EQ(ee.text, "full@ee=4,0.3");
  EXPECT_EQ(ee.base, "full");
  ASSERT_TRUE(ee.early_exit.has_value());
  EXPECT_EQ(ee.early_exit->window, 4);
  EXPECT_FLOAT_EQ(ee.early_exit->threshold, 0.3f);
  EXPECT_EQ(ee.early_exit->kind, ConfidenceKind::kMaxProb);
  const ProfileSpec& logit = (*specs)[6];
  EXPECT_EQ(logit.text, "even:2@ee=8,2.5,max_logit");
  EXPECT_EQ(logit.early_exit->kind, ConfidenceKind::kMaxLogit);
  EXPECT_EQ((*specs)[7].base, "./1.json");
}

TEST(EvaluationTest, RejectsBadSpecsNamingThem) {
  for (const std::string bad :
       {"adaskip:", "adaskip:-1", "adaskip:x", "even:x", "last:-2", "full@ee=4",
        "full@ee=0,0.3", "full@ee=4,1.5", "full@ee=4,abc", "full@ee=x,0.3",
        "full@ee=4,0.3,max_what", "@ee=4,0.3", "full@ee=4,0.3,max_prob,9",
        "full@ee=5000,0.3"}) {
    auto spec = ParseProfileSpec(bad);
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(spec.status().message(), HasSubstr("'" + bad + "'"));
  }
  EXPECT_FALSE(ParseProfileList("").ok());
  EXPECT_FALSE(ParseProfileList("full,,even:1").ok());
  auto twice = ParseProfileList("full,even:1,full");
  EXPECT_THAT(twice.status().message(), HasSubstr("listed twice"));
}

TEST(EvaluationTest, AdaskipSkipsTheFirstKOfTheRankingInEveryStage) {
  std::unique_ptr<Engine> engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const Pipeline pipeline = ShortPipeline(8, 6, 7);
  const int64_t layers = engine->config().num_hidden_layers;
  // A ranking that is neither layer order nor kind order.
  std::vector<SublayerRef> ranking;
  for (int64_t l = layers - 1; l >= 0; --l) {
    ranking.push_back({SublayerKind::kMlp, l});
  }
  for (int64_t l = 0; l < layers; ++l) {
    ranking.push_back({SublayerKind::kAttention, l});
  }
  std::rotate(ranking.begin(), ranking.begin() + 1, ranking.end());
  const int64_t k = 3;
  auto spec = ParseProfileSpec("adaskip:3@ee=4,0.2");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto profile = ResolveProfileSpec(*spec, *engine, pipeline, ranking);
  ASSERT_TRUE(profile.ok()) << profile.status();
  EXPECT_EQ(profile->name, "adaskip:3@ee=4,0.2");
  for (const PipelineStage& stage : pipeline.stages) {
    const StageProfile& settings = profile->ForStage(stage.name);
    int64_t skipped = 0;
    for (int64_t l = 0; l < layers; ++l) {
      skipped += settings.skip.attention.at(l) ? 1 : 0;
      skipped += settings.skip.mlp.at(l) ? 1 : 0;
    }
    EXPECT_EQ(skipped, k) << stage.name;
    for (int64_t i = 0; i < k; ++i) {
      const SublayerRef& ref = ranking[i];
      const std::vector<bool>& kind = ref.kind == SublayerKind::kAttention
                                          ? settings.skip.attention
                                          : settings.skip.mlp;
      EXPECT_TRUE(kind.at(ref.layer)) << stage.name << " " << i;
    }
    EXPECT_EQ(settings.early_exit.window, 4);
    EXPECT_FLOAT_EQ(settings.early_exit.threshold, 0.2f);
  }
  // K past 2 * layers, and no ranking at all, are errors naming the spec.
  auto big = ParseProfileSpec("adaskip:" + std::to_string(2 * layers + 1));
  ASSERT_TRUE(big.ok());
  auto too_many = ResolveProfileSpec(*big, *engine, pipeline, ranking);
  EXPECT_THAT(too_many.status().message(), HasSubstr("adaskip:"));
  auto no_ranking = ResolveProfileSpec(*spec, *engine, pipeline, {});
  EXPECT_EQ(no_ranking.status().code(), absl::StatusCode::kFailedPrecondition);
  // A missing file names the spec.
  auto file = ParseProfileSpec("/nonexistent/p.json@ee=4,0.3");
  ASSERT_TRUE(file.ok());
  auto missing = ResolveProfileSpec(*file, *engine, pipeline, ranking);
  EXPECT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("/nonexistent/p.json@ee"));
}

QuestionEval Row(const std::string& profile, const std::string& id,
                 std::optional<size_t> answer, std::optional<size_t> label,
                 double seconds, int64_t hits, int64_t total) {
  QuestionEval row;
  row.profile = profile;
  row.question_id = id;
  row.answer_index = answer;
  row.label = label;
  row.seconds = seconds;
  StageEval stage;
  stage.name = "only";
  stage.seconds = seconds;
  stage.generated_tokens = total;
  stage.prompt_tokens = 10;
  stage.early_exit_fired = hits == 0;
  stage.fidelity = {hits, total};
  row.fidelity_measured = true;
  row.stages.push_back(stage);
  return row;
}

TEST(EvaluationTest, AgreementAccuracyAndLatencyAggregates) {
  const std::vector<QuestionEval> full = {
      Row("full", "a", 0, 0, 2.0, 4, 4), Row("full", "b", 1, 2, 2.0, 4, 4),
      Row("full", "c", std::nullopt, 1, 2.0, 4, 4),
      Row("full", "d", 2, 2, 2.0, 4, 4)};
  // Agrees on a (same index) and c (both none); differs on b (other
  // index) and d (none vs an answer).
  const std::vector<QuestionEval> rows = {
      Row("p", "a", 0, 0, 1.0, 3, 4), Row("p", "b", 2, 2, 1.0, 1, 2),
      Row("p", "c", std::nullopt, 1, 1.0, 0, 4),
      Row("p", "d", std::nullopt, 2, 5.0, 4, 4)};
  EXPECT_TRUE(AnswersAgree(rows[0], full[0]));
  EXPECT_FALSE(AnswersAgree(rows[1], full[1]));
  EXPECT_TRUE(AnswersAgree(rows[2], full[2]));
  EXPECT_FALSE(AnswersAgree(rows[3], full[3]));
  auto summary = SummarizeProfile(rows, full);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->n, 4);
  EXPECT_EQ(summary->agree, 2);
  EXPECT_DOUBLE_EQ(summary->agreement, 0.5);
  EXPECT_EQ(summary->correct, 2);  // a and b.
  EXPECT_DOUBLE_EQ(summary->accuracy, 0.5);
  EXPECT_EQ(summary->answered, 2);
  EXPECT_DOUBLE_EQ(summary->answered_rate, 0.5);
  const Interval ci = WilsonInterval(2, 4);
  EXPECT_DOUBLE_EQ(summary->accuracy_ci.low, ci.low);
  EXPECT_DOUBLE_EQ(summary->agreement_ci.high, ci.high);
  EXPECT_DOUBLE_EQ(summary->mean_seconds, 2.0);
  EXPECT_DOUBLE_EQ(summary->speedup, 1.0);
  // p90 of {1, 1, 1, 5}: position 2.7 -> 1 + 0.7 * 4.
  EXPECT_DOUBLE_EQ(summary->p90_seconds, 3.8);
  ASSERT_EQ(summary->stages.size(), 1u);
  // Mean of per-question fidelities (0.75, 0.5, 0, 1), and pooled counts.
  EXPECT_DOUBLE_EQ(summary->stages[0].fidelity.value_or(-1), 0.5625);
  EXPECT_EQ(summary->stages[0].fidelity_hits, 8);
  EXPECT_EQ(summary->stages[0].fidelity_total, 14);
  EXPECT_DOUBLE_EQ(summary->stages[0].early_exit_rate, 0.25);
  EXPECT_DOUBLE_EQ(summary->stages[0].mean_generated_tokens, 3.5);

  // A question without a full row, and mixed profiles, are errors.
  EXPECT_FALSE(SummarizeProfile(rows, {full[0], full[1]}).ok());
  std::vector<QuestionEval> mixed = rows;
  mixed[1] = Row("other", "b", 2, 2, 1.0, 1, 2);
  EXPECT_FALSE(SummarizeProfile(mixed, full).ok());
}

TEST(EvaluationTest, RowJsonRoundTrip) {
  const QuestionEval row = Row("even:1", "id 7", 3, std::nullopt, 1.5, 2, 9);
  auto back = QuestionEvalFromJson(QuestionEvalToJson(row));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(QuestionEvalToJson(*back), QuestionEvalToJson(row));
  EXPECT_EQ(back->answer_index, 3u);
  EXPECT_FALSE(back->label.has_value());
  EXPECT_EQ(back->stages[0].fidelity.total, 9);
  EXPECT_TRUE(back->fidelity_measured);
  EXPECT_FALSE(QuestionEvalFromJson(nlohmann::json::parse("{}")).ok());
  QuestionEval predicted = row;
  predicted.latency_measured = false;
  predicted.stages[0].prefill_tokens = 12;
  predicted.stages[0].decode_tokens = 3;
  auto predicted_back = QuestionEvalFromJson(QuestionEvalToJson(predicted));
  ASSERT_TRUE(predicted_back.ok());
  EXPECT_FALSE(predicted_back->latency_measured);
  EXPECT_EQ(predicted_back->stages[0].prefill_tokens, 12);
  EXPECT_EQ(predicted_back->stages[0].decode_tokens, 3);
  nlohmann::json broken = QuestionEvalToJson(row);
  broken["stages"][0].erase("fidelity_hits");
  EXPECT_FALSE(QuestionEvalFromJson(broken).ok());
}

}  // namespace
}  // namespace litestage
