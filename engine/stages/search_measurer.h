// The engine side of litestage-search (docs/search.md, "litestage-search"):
// the QuestionMeasurer that runs one configuration on one question through
// the evaluation library, full's reference run of every question (run once,
// cached on disk), and the decoders that turn a cached per-question row into
// the search's metric. search.h stays pure; this file is where the model
// runs.
#ifndef LITESTAGE_ENGINE_STAGES_SEARCH_MEASURER_H_
#define LITESTAGE_ENGINE_STAGES_SEARCH_MEASURER_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/runtime/engine.h"
#include "engine/stages/dataset.h"
#include "engine/stages/evaluation.h"
#include "engine/stages/pipeline.h"
#include "engine/stages/profile.h"
#include "engine/stages/search.h"
#include "engine/stages/search_cache.h"
#include "nlohmann/json.hpp"

namespace litestage {

// FNV-1a 64 of `text` as 16 hex digits (stable across platforms, unlike
// std::hash): names cache keys derived from settings and question texts.
std::string StableHash(absl::string_view text);

// The id a question is cached under: "<id>#<hash of question and choices>",
// so two datasets that reuse an id ("line 3") never share an entry.
std::string QuestionCacheKey(const QuestionItem& item);

// What the cache key's "pipeline" holds: the name plus a hash of the whole
// pipeline document (prompts, few-shot) and the token cap, so a zero-shot or
// capped run never reuses entries of another setting of the same pipeline.
std::string PipelineCacheIdentity(const Pipeline& pipeline,
                                  int64_t max_new_tokens_cap);

// True for all k = 0 and no early exit (full's own run).
bool IsFullConfiguration(const Configuration& configuration);

// The file-style profile that runs `configuration` over `space` (name
// "search-candidate"; ValidateProfile passes for the space's model).
absl::StatusOr<Profile> ConfigurationProfile(
    const SearchSpace& space, const Configuration& configuration);

// full's run of one question: what teacher forcing and agreement need, plus
// the per-token confidences the early-exit thresholds are drawn from.
struct ReferenceRun {
  ReferenceTokens tokens;
  QuestionEval row;                   // full's evaluation row (no fidelity).
  std::vector<float> token_max_prob;  // Every generated token, all stages.
};
nlohmann::json ReferenceRunToJson(const ReferenceRun& reference);
absl::StatusOr<ReferenceRun> ReferenceRunFromJson(const nlohmann::json& json);

// Runs configurations on questions with the engine. Per question the result
// JSON is the evaluation row (QuestionEvalToJson) plus
//   "agrees_with_full": same extracted answer as full (1/0 as bool),
//   "token_fidelity":   teacher-forced fidelity pooled over stages (hits /
//                       total; 1 when full generated nothing),
//   "correct":          bool, "labelled": bool.
// full's own row is its reference run, with agreement and fidelity 1 by
// definition (no teacher-forced pass).
class EngineQuestionMeasurer : public QuestionMeasurer {
 public:
  // `questions` are addressed by QuestionCacheKey. `reference_cache` (may be
  // null: memory only) stores full's runs, keyed by the full configuration.
  // Pointers are not owned and must outlive the measurer.
  EngineQuestionMeasurer(Engine* engine, const Pipeline* pipeline,
                         SearchSpace space,
                         const std::vector<QuestionItem>& questions,
                         ReasoningRequest base, SearchCache* reference_cache);

  absl::StatusOr<nlohmann::json> MeasureQuestion(
      const Configuration& configuration,
      const std::string& question_key) override;
  // With batching (set_batching), the latency questions run alone and the
  // others `batch` at a time through RunReasoningBatch (rows with
  // latency_measured false: their times are the batch's until
  // PredictBatchedLatency replaces them); teacher-forced passes are
  // batched and shared by configurations with the same skip sets (early
  // exit does not change what a skip set predicts).
  absl::StatusOr<std::vector<nlohmann::json>> MeasureQuestions(
      const Configuration& configuration,
      absl::Span<const std::string> question_keys) override;

  // 0 (default): every question alone. > 0: see MeasureQuestions.
  void set_batching(int64_t batch, std::set<std::string> latency_keys) {
    batch_ = batch;
    latency_keys_ = std::move(latency_keys);
  }

  // full's run of the question: from memory, else the reference cache, else
  // run now (and stored).
  absl::StatusOr<const ReferenceRun*> Reference(
      const std::string& question_key);
  // Reference() for many questions, the missing ones run together as
  // MeasureQuestions runs candidates.
  absl::Status EnsureReferences(absl::Span<const std::string> question_keys);

  int64_t full_runs() const { return full_runs_; }            // Engine runs.
  int64_t candidate_runs() const { return candidate_runs_; }  // Engine runs.

 private:
  Engine* engine_;
  const Pipeline* pipeline_;
  SearchSpace space_;
  std::map<std::string, QuestionItem> questions_;
  ReasoningRequest base_;
  SearchCache* reference_cache_;
  // Rows of `profile` on `keys` (cache keys): alone, or batched per
  // set_batching; `runs` receives the runs.
  absl::StatusOr<std::vector<QuestionEval>> RunCandidates(
      const Profile& profile, const std::string& name,
      absl::Span<const std::string> keys, std::vector<ReasoningResult>* runs);

  std::map<std::string, ReferenceRun> references_;
  int64_t batch_ = 0;
  std::set<std::string> latency_keys_;
  // Teacher-forced counts per (skip sets, question key).
  std::map<std::pair<std::string, std::string>, std::vector<FidelityCount>>
      fidelity_;
  int64_t full_runs_ = 0;
  int64_t candidate_runs_ = 0;
};

enum class SearchMetric { kAccuracy, kFidelity };
// "accuracy" | "fidelity"; InvalidArgument otherwise.
absl::StatusOr<SearchMetric> ParseSearchMetric(absl::string_view name);
const char* SearchMetricName(SearchMetric metric);

// Decodes EngineQuestionMeasurer's result JSON: accuracy = correct (1/0;
// InvalidArgument for an unlabelled question); fidelity = (agrees_with_full
// + token_fidelity) / 2. Latencies: the row's end-to-end and per-stage
// seconds.
QuestionDecoder MakeSearchDecoder(SearchMetric metric, size_t num_stages);

// QuestionSetMeasurer's result hook for batched measurement: fits a
// LatencyModel on the results whose latency was measured alone and
// overwrites the others' seconds (end to end and per stage) with its
// prediction. InvalidArgument when some rows are predicted and none is
// measured.
absl::Status PredictBatchedLatency(std::vector<nlohmann::json>& results);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_STAGES_SEARCH_MEASURER_H_
