// The engine-backed QuestionMeasurer of litestage-search and its decoders.
#include "engine/stages/search_measurer.h"

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
  if (auto it = references_.find(question_key); it != references_.end()) {
    return &it->second;
  }
  auto item = questions_.find(question_key);
  if (item == questions_.end()) {
    return absl::NotFoundError(
        absl::StrCat("search: unknown question ", question_key));
  }
  const Configuration full{
      std::vector<StageSetting>(space_.stage_names.size())};
  std::optional<nlohmann::json> key;
  if (reference_cache_ != nullptr) {
    LS_ASSIGN_OR_RETURN(key, reference_cache_->Key(full, question_key));
    if (std::optional<nlohmann::json> stored = reference_cache_->Lookup(*key)) {
      absl::StatusOr<ReferenceRun> reference = ReferenceRunFromJson(*stored);
      if (reference.ok()) {
        return &references_.emplace(question_key, *std::move(reference))
                    .first->second;
      }
      // A malformed entry is recomputed and overwritten, like a corrupt one.
    }
  }
  LS_ASSIGN_OR_RETURN(Profile profile, ConfigurationProfile(space_, full));
  ReasoningResult run;
  LS_ASSIGN_OR_RETURN(QuestionEval row,
                      EvaluateQuestion(*engine_, *pipeline_, profile, "full",
                                       item->second, base_, nullptr, &run));
  ++full_runs_;
  ReferenceRun reference;
  LS_ASSIGN_OR_RETURN(reference.tokens, ReferenceTokensFromRun(run));
  reference.row = std::move(row);
  for (const StageRecord& stage : run.stages) {
    for (const BranchRecord& branch : stage.branches) {
      reference.token_max_prob.insert(reference.token_max_prob.end(),
                                      branch.token_max_prob.begin(),
                                      branch.token_max_prob.end());
    }
  }
  if (reference_cache_ != nullptr) {
    LS_RETURN_IF_ERROR(
        reference_cache_->Store(*key, ReferenceRunToJson(reference)));
  }
  return &references_.emplace(question_key, std::move(reference)).first->second;
}

absl::StatusOr<nlohmann::json> EngineQuestionMeasurer::MeasureQuestion(
    const Configuration& configuration, const std::string& question_key) {
  LS_ASSIGN_OR_RETURN(const ReferenceRun* reference, Reference(question_key));
  QuestionEval row;
  bool agrees = true;
  double token_fidelity = 1;
  if (IsFullConfiguration(configuration)) {
    row = reference->row;
  } else {
    LS_ASSIGN_OR_RETURN(Profile profile,
                        ConfigurationProfile(space_, configuration));
    const QuestionItem& item = questions_.at(question_key);
    LS_ASSIGN_OR_RETURN(row, EvaluateQuestion(*engine_, *pipeline_, profile,
                                              ConfigurationName(configuration),
                                              item, base_, nullptr));
    LS_RETURN_IF_ERROR(
        AddFidelity(*engine_, *pipeline_, profile, reference->tokens, &row));
    ++candidate_runs_;
    agrees = AnswersAgree(row, reference->row);
    // Pooled, not averaged per stage: a stage of 3 tokens must not weigh as
    // much as one of 200.
    int64_t hits = 0, total = 0;
    for (const StageEval& stage : row.stages) {
      hits += stage.fidelity.hits;
      total += stage.fidelity.total;
    }
    token_fidelity = total > 0 ? static_cast<double>(hits) / total : 1.0;
  }
  row.profile = ConfigurationName(configuration);
  nlohmann::json result = QuestionEvalToJson(row);
  result["agrees_with_full"] = agrees;
  result["token_fidelity"] = token_fidelity;
  result["correct"] = row.correct();
  result["labelled"] = row.label.has_value();
  return result;
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
