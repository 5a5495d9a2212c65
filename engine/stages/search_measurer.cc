// The engine-backed QuestionMeasurer of litestage-search and its decoders.
#include "engine/stages/search_measurer.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/stages/session.h"
#include "engine/util/fnv1a.h"
#include "engine/util/status_macros.h"

namespace litestage {

std::string StableHash(absl::string_view text) {
  return absl::StrFormat("%016x", Fnv1a64(text));
}

std::string QuestionCacheKey(const QuestionItem& item) {
  // \x1f separates fields so ("ab", "c") and ("a", "bc") differ.
  return absl::StrCat(
      item.id, "#",
      StableHash(absl::StrCat(item.question, "\x1f",
                              absl::StrJoin(item.choices, "\x1f"))));
}

std::string PipelineCacheIdentity(const Pipeline& pipeline,
                                  int64_t max_new_tokens_cap) {
  return absl::StrCat(pipeline.name, "@", StableHash(PipelineToJson(pipeline)),
                      "/cap", max_new_tokens_cap);
}

bool IsFullConfiguration(const Configuration& configuration) {
  for (const StageSetting& stage : configuration.stages) {
    if (stage.skip != 0 || stage.early_exit.enabled()) return false;
  }
  return true;
}

absl::StatusOr<Profile> ConfigurationProfile(
    const SearchSpace& space, const Configuration& configuration) {
  LS_ASSIGN_OR_RETURN(std::vector<StageProfile> stages,
                      ResolveConfiguration(space, configuration));
  Profile profile;
  profile.name = "search-candidate";
  profile.model = space.model;
  profile.pipeline = space.pipeline;
  profile.ranking = space.ranking;
  for (size_t s = 0; s < stages.size(); ++s) {
    profile.stages[space.stage_names[s]] = std::move(stages[s]);
  }
  return profile;
}

nlohmann::json ReferenceRunToJson(const ReferenceRun& reference) {
  return {{"tokens", ReferenceTokensToJson(reference.tokens)},
          {"row", QuestionEvalToJson(reference.row)},
          {"token_max_prob", reference.token_max_prob}};
}

absl::StatusOr<ReferenceRun> ReferenceRunFromJson(const nlohmann::json& json) {
  if (!json.is_object() || !json.contains("tokens") || !json.contains("row") ||
      !json.contains("token_max_prob") || !json["token_max_prob"].is_array()) {
    return absl::InvalidArgumentError(
        "reference run: needs tokens, row and token_max_prob");
  }
  ReferenceRun reference;
  LS_ASSIGN_OR_RETURN(reference.tokens,
                      ReferenceTokensFromJson(json["tokens"]));
  LS_ASSIGN_OR_RETURN(reference.row, QuestionEvalFromJson(json["row"]));
  for (const nlohmann::json& value : json["token_max_prob"]) {
    if (!value.is_number()) {
      return absl::InvalidArgumentError(
          "reference run: token_max_prob must hold numbers");
    }
    reference.token_max_prob.push_back(value.get<float>());
  }
  return reference;
}

EngineQuestionMeasurer::EngineQuestionMeasurer(
    Engine* engine, const Pipeline* pipeline, SearchSpace space,
    const std::vector<QuestionItem>& questions, ReasoningRequest base,
    SearchCache* reference_cache)
    : engine_(engine),
      pipeline_(pipeline),
      space_(std::move(space)),
      base_(std::move(base)),
      reference_cache_(reference_cache) {
  for (const QuestionItem& item : questions) {
    questions_.emplace(QuestionCacheKey(item), item);
  }
}

absl::StatusOr<const ReferenceRun*> EngineQuestionMeasurer::Reference(
    const std::string& question_key) {
  LS_RETURN_IF_ERROR(EnsureReferences({&question_key, 1}));
  return &references_.at(question_key);
}

namespace {

ReferenceRun MakeReferenceRun(ReferenceTokens tokens, QuestionEval row,
                              const ReasoningResult& run) {
  ReferenceRun reference;
  reference.tokens = std::move(tokens);
  reference.row = std::move(row);
  for (const StageRecord& stage : run.stages) {
    for (const BranchRecord& branch : stage.branches) {
      reference.token_max_prob.insert(reference.token_max_prob.end(),
                                      branch.token_max_prob.begin(),
                                      branch.token_max_prob.end());
    }
  }
  return reference;
}

// The configuration with its early exits removed: what the teacher-forced
// pass depends on.
std::string SkipSetsName(const Configuration& configuration) {
  Configuration skips = configuration;
  for (StageSetting& stage : skips.stages) stage.early_exit = EarlyExitConfig();
  return ConfigurationName(skips);
}

}  // namespace

absl::Status EngineQuestionMeasurer::EnsureReferences(
    absl::Span<const std::string> question_keys) {
  const Configuration full{
      std::vector<StageSetting>(space_.stage_names.size())};
  std::vector<std::string> missing;
  for (const std::string& key : question_keys) {
    if (references_.count(key) != 0) continue;
    if (questions_.count(key) == 0) {
      return absl::NotFoundError(
          absl::StrCat("search: unknown question ", key));
    }
    if (reference_cache_ != nullptr) {
      LS_ASSIGN_OR_RETURN(nlohmann::json cache_key,
                          reference_cache_->Key(full, key));
      if (std::optional<nlohmann::json> stored =
              reference_cache_->Lookup(cache_key)) {
        absl::StatusOr<ReferenceRun> reference = ReferenceRunFromJson(*stored);
        // A question that must run alone needs a measured entry (an earlier
        // search may have batched it).
        const bool alone = batch_ == 0 || latency_keys_.count(key) != 0;
        if (reference.ok() && (!alone || reference->row.latency_measured)) {
          references_.emplace(key, *std::move(reference));
          continue;
        }
        // A malformed entry is recomputed and overwritten, like a corrupt one.
      }
    }
    if (std::find(missing.begin(), missing.end(), key) == missing.end()) {
      missing.push_back(key);
    }
  }
  if (missing.empty()) return absl::OkStatus();
  LS_ASSIGN_OR_RETURN(Profile profile, ConfigurationProfile(space_, full));
  std::vector<ReasoningResult> runs;
  LS_ASSIGN_OR_RETURN(std::vector<QuestionEval> rows,
                      RunCandidates(profile, "full", missing, &runs));
  for (size_t i = 0; i < missing.size(); ++i) {
    const ReasoningResult& run = runs[i];
    LS_ASSIGN_OR_RETURN(ReferenceTokens tokens, ReferenceTokensFromRun(run));
    ReferenceRun reference =
        MakeReferenceRun(std::move(tokens), std::move(rows[i]), run);
    ++full_runs_;
    if (reference_cache_ != nullptr) {
      LS_ASSIGN_OR_RETURN(nlohmann::json cache_key,
                          reference_cache_->Key(full, missing[i]));
      LS_RETURN_IF_ERROR(
          reference_cache_->Store(cache_key, ReferenceRunToJson(reference)));
    }
    references_.emplace(missing[i], std::move(reference));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<QuestionEval>> EngineQuestionMeasurer::RunCandidates(
    const Profile& profile, const std::string& name,
    absl::Span<const std::string> keys, std::vector<ReasoningResult>* runs) {
  std::vector<QuestionEval> rows(keys.size());
  runs->assign(keys.size(), ReasoningResult());
  std::vector<size_t> batched;
  for (size_t i = 0; i < keys.size(); ++i) {
    const QuestionItem& item = questions_.at(keys[i]);
    if (batch_ > 0 && latency_keys_.count(keys[i]) == 0) {
      batched.push_back(i);
      continue;
    }
    LS_ASSIGN_OR_RETURN(
        rows[i], EvaluateQuestion(*engine_, *pipeline_, profile, name, item,
                                  base_, nullptr, &(*runs)[i]));
  }
  if (batched.empty()) return rows;
  std::vector<const QuestionItem*> items;
  for (size_t i : batched) items.push_back(&questions_.at(keys[i]));
  std::vector<ReasoningResult> batched_runs;
  LS_ASSIGN_OR_RETURN(
      std::vector<QuestionEval> batched_rows,
      EvaluateQuestionsBatched(*engine_, *pipeline_, profile, name, items,
                               base_, batch_, &batched_runs));
  for (size_t b = 0; b < batched.size(); ++b) {
    rows[batched[b]] = std::move(batched_rows[b]);
    (*runs)[batched[b]] = std::move(batched_runs[b]);
  }
  return rows;
}

absl::StatusOr<nlohmann::json> EngineQuestionMeasurer::MeasureQuestion(
    const Configuration& configuration, const std::string& question_key) {
  LS_ASSIGN_OR_RETURN(std::vector<nlohmann::json> results,
                      MeasureQuestions(configuration, {&question_key, 1}));
  return std::move(results[0]);
}

absl::StatusOr<std::vector<nlohmann::json>>
EngineQuestionMeasurer::MeasureQuestions(
    const Configuration& configuration,
    absl::Span<const std::string> question_keys) {
  LS_RETURN_IF_ERROR(EnsureReferences(question_keys));
  const auto result_json = [&](QuestionEval row, bool agrees,
                               double token_fidelity) {
    row.profile = ConfigurationName(configuration);
    nlohmann::json result = QuestionEvalToJson(row);
    result["agrees_with_full"] = agrees;
    result["token_fidelity"] = token_fidelity;
    result["correct"] = row.correct();
    result["labelled"] = row.label.has_value();
    return result;
  };
  std::vector<nlohmann::json> out;
  if (IsFullConfiguration(configuration)) {
    // full's own rows are its reference runs, with agreement and fidelity 1
    // by definition (no teacher-forced pass).
    for (const std::string& key : question_keys) {
      out.push_back(result_json(references_.at(key).row, true, 1.0));
    }
    return out;
  }
  LS_ASSIGN_OR_RETURN(Profile profile,
                      ConfigurationProfile(space_, configuration));
  std::vector<ReasoningResult> runs;
  LS_ASSIGN_OR_RETURN(std::vector<QuestionEval> rows,
                      RunCandidates(profile, ConfigurationName(configuration),
                                    question_keys, &runs));
  runs.clear();
  candidate_runs_ += static_cast<int64_t>(question_keys.size());

  // Teacher-forced passes of the questions this skip-set combination has
  // not been scored on yet.
  const std::string skips = SkipSetsName(configuration);
  std::vector<size_t> unscored;
  for (size_t i = 0; i < question_keys.size(); ++i) {
    if (fidelity_.count({skips, question_keys[i]}) == 0) unscored.push_back(i);
  }
  const size_t group = batch_ > 0 ? static_cast<size_t>(batch_) : 1;
  for (size_t begin = 0; begin < unscored.size(); begin += group) {
    const size_t end = std::min(unscored.size(), begin + group);
    std::vector<const ReferenceTokens*> references;
    for (size_t u = begin; u < end; ++u) {
      references.push_back(&references_.at(question_keys[unscored[u]]).tokens);
    }
    const auto start = std::chrono::steady_clock::now();
    LS_ASSIGN_OR_RETURN(
        std::vector<std::vector<FidelityCount>> counts,
        BatchTeacherForcedFidelity(*engine_, *pipeline_, profile, references));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    for (size_t u = begin; u < end; ++u) {
      const size_t i = unscored[u];
      rows[i].fidelity_seconds = seconds / static_cast<double>(end - begin);
      fidelity_[{skips, question_keys[i]}] = std::move(counts[u - begin]);
    }
  }
  for (size_t i = 0; i < question_keys.size(); ++i) {
    const std::vector<FidelityCount>& counts =
        fidelity_.at({skips, question_keys[i]});
    QuestionEval& row = rows[i];
    if (counts.size() != row.stages.size()) {
      return absl::InternalError("fidelity: stage count mismatch");
    }
    // Pooled, not averaged per stage: a stage of 3 tokens must not weigh as
    // much as one of 200.
    int64_t hits = 0, total = 0;
    for (size_t s = 0; s < counts.size(); ++s) {
      row.stages[s].fidelity = counts[s];
      hits += counts[s].hits;
      total += counts[s].total;
    }
    row.fidelity_measured = true;
    const bool agrees = AnswersAgree(row, references_.at(question_keys[i]).row);
    out.push_back(
        result_json(std::move(row), agrees,
                    total > 0 ? static_cast<double>(hits) / total : 1.0));
  }
  return out;
}

absl::Status PredictBatchedLatency(std::vector<nlohmann::json>& results) {
  std::vector<QuestionEval> rows;
  bool any_predicted = false;
  for (const nlohmann::json& result : results) {
    LS_ASSIGN_OR_RETURN(QuestionEval row, QuestionEvalFromJson(result));
    any_predicted = any_predicted || !row.latency_measured;
    rows.push_back(std::move(row));
  }
  if (!any_predicted) return absl::OkStatus();
  std::vector<const QuestionEval*> measured;
  for (const QuestionEval& row : rows) {
    if (row.latency_measured) measured.push_back(&row);
  }
  LS_ASSIGN_OR_RETURN(LatencyModel model, FitLatencyModel(measured));
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].latency_measured) continue;
    LS_RETURN_IF_ERROR(ApplyLatencyModel(model, &rows[i]));
    nlohmann::json& result = results[i];
    result["seconds"] = rows[i].seconds;
    result["latency_measured"] = false;
    for (size_t s = 0; s < rows[i].stages.size(); ++s) {
      nlohmann::json& stage = result["stages"][s];
      stage["seconds"] = rows[i].stages[s].seconds;
      stage["prefill_seconds"] = rows[i].stages[s].prefill_seconds;
      stage["decode_seconds"] = rows[i].stages[s].decode_seconds;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SearchMetric> ParseSearchMetric(absl::string_view name) {
  if (name == "accuracy") return SearchMetric::kAccuracy;
  if (name == "fidelity") return SearchMetric::kFidelity;
  return absl::InvalidArgumentError(
      absl::StrCat("--metric: must be accuracy or fidelity, got '",
                   name.substr(0, 80), "'"));
}

const char* SearchMetricName(SearchMetric metric) {
  return metric == SearchMetric::kAccuracy ? "accuracy" : "fidelity";
}

QuestionDecoder MakeSearchDecoder(SearchMetric metric, size_t num_stages) {
  return [metric, num_stages](
             const nlohmann::json& result) -> absl::StatusOr<QuestionValues> {
    LS_ASSIGN_OR_RETURN(QuestionEval row, QuestionEvalFromJson(result));
    if (row.stages.size() != num_stages) {
      return absl::InvalidArgumentError(absl::StrCat(
          "search result of question ", row.question_id, ": ",
          row.stages.size(), " stages, the pipeline has ", num_stages));
    }
    const auto flag = [&](const char* name) -> absl::StatusOr<bool> {
      if (!result.contains(name) || !result[name].is_boolean()) {
        return absl::InvalidArgumentError(
            absl::StrCat("search result: '", name, "' must be a bool"));
      }
      return result[name].get<bool>();
    };
    QuestionValues values;
    if (metric == SearchMetric::kAccuracy) {
      LS_ASSIGN_OR_RETURN(bool labelled, flag("labelled"));
      if (!labelled) {
        return absl::InvalidArgumentError(
            absl::StrCat("--metric accuracy: question ", row.question_id,
                         " has no label (use --metric fidelity)"));
      }
      LS_ASSIGN_OR_RETURN(bool correct, flag("correct"));
      values.metric = correct ? 1 : 0;
    } else {
      LS_ASSIGN_OR_RETURN(bool agrees, flag("agrees_with_full"));
      if (!result.contains("token_fidelity") ||
          !result["token_fidelity"].is_number()) {
        return absl::InvalidArgumentError(
            "search result: 'token_fidelity' must be a number");
      }
      values.metric =
          ((agrees ? 1.0 : 0.0) + result["token_fidelity"].get<double>()) / 2;
    }
    values.latency_seconds = row.seconds;
    for (const StageEval& stage : row.stages) {
      values.stage_latency_seconds.push_back(stage.seconds);
    }
    return values;
  };
}

}  // namespace litestage
