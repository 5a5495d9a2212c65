// Evaluation of skip profiles on a question set (litestage-eval; the skip
// search calls the per-question pieces): per (profile, question) the answer,
// its correctness, per-stage tokens and latency, and teacher-forced fidelity
// against the full model's run of the same question; per profile the
// aggregates with 95% Wilson intervals. docs/evaluation.md explains every
// number.
//
// The unit of work is one (profile, question): EvaluateQuestion runs the
// pipeline once (greedy, RunReasoning, one request on an otherwise idle
// engine) and teacher-forces full's tokens through the profile's skip sets.
// Its QuestionEval is self-contained and round-trips through JSON, so a
// search can cache it on disk per (model, pipeline, profile, question) and
// aggregate cached and fresh rows alike with SummarizeProfile.
#ifndef LITESTAGE_ENGINE_STAGES_EVALUATION_H_
#define LITESTAGE_ENGINE_STAGES_EVALUATION_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/runtime/engine.h"
#include "engine/stages/dataset.h"
#include "engine/stages/pipeline.h"
#include "engine/stages/profile.h"
#include "engine/stages/session.h"
#include "nlohmann/json.hpp"

namespace litestage {

// ---- Statistics ----------------------------------------------------------

struct Interval {
  double low = 0;
  double high = 0;
};
// The 95% Wilson score interval of `successes` out of `n` (z = 1.959964);
// [0, 1] when n == 0. Unlike the normal approximation it stays inside
// [0, 1] and is sane at 0/n and n/n, which small evaluations hit.
Interval WilsonInterval(int64_t successes, int64_t n);
// Mean of `values` (0 when empty).
double Mean(const std::vector<double>& values);
// The q-quantile (q in [0, 1]) with linear interpolation between order
// statistics (numpy's default); 0 when empty.
double Quantile(std::vector<double> values, double q);

// ---- Profile specs -------------------------------------------------------

// One entry of --profiles: a base profile and an optional early-exit
// override for every stage.
//   full | even:K | last:K | adaskip:K | PATH   then optionally
//   @ee=WINDOW,THRESHOLD[,max_prob|max_logit]
// adaskip:K skips the first K sub-layers of the importance ranking in every
// stage (AdaSkip's one static budget), K in [0, 2 * layers].
struct ProfileSpec {
  std::string text;  // As written, the profile's name in every output.
  std::string base;  // "full", "even:4", "adaskip:8" or a file path.
  std::optional<int64_t> adaskip;  // K of adaskip:K.
  std::optional<EarlyExitConfig> early_exit;
};

// Parses one spec (no model needed); InvalidArgument naming the spec.
absl::StatusOr<ProfileSpec> ParseProfileSpec(absl::string_view text);
// Splits a --profiles list at commas, keeping "@ee=4,0.3[,max_logit]"
// together: a piece that is a number or a confidence kind continues the
// previous piece when that one holds "@ee=". (A file named like a number
// must be written ./PATH.) Parses every spec; errors name it.
absl::StatusOr<std::vector<ProfileSpec>> ParseProfileList(
    absl::string_view list);
// The profile for `spec` on the engine's model and `pipeline`: builtins and
// files through ResolveProfile; adaskip:K from `ranking` (required then:
// FailedPrecondition otherwise); the early-exit override written into every
// stage. The profile's name is spec.text.
absl::StatusOr<Profile> ResolveProfileSpec(
    const ProfileSpec& spec, const Engine& engine, const Pipeline& pipeline,
    const std::vector<SublayerRef>& ranking);

// ---- Per (profile, question) ---------------------------------------------

// Teacher-forced fidelity of one stage: over its branches, the generated
// positions of full's output where the profile's argmax equals full's token.
struct FidelityCount {
  int64_t hits = 0;
  int64_t total = 0;
  double fidelity() const {
    return total > 0 ? static_cast<double>(hits) / total : 1.0;
  }
};

struct StageEval {
  std::string name;
  int64_t prompt_tokens = 0;     // Summed over branches.
  int64_t generated_tokens = 0;  // Summed over branches.
  // What the latency model multiplies (see LatencyModel): the prompt tokens
  // a request run alone computes (its fan-out branches share their prefix,
  // nothing else is cached), and the tokens decoded after each branch's
  // first (which comes out of the prefill): sum of max(0, generated - 1).
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;
  double seconds = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  bool early_exit_fired = false;  // Any branch exited early.
  int64_t branches = 0;
  FidelityCount fidelity;
};

struct QuestionEval {
  std::string profile;                 // ProfileSpec::text.
  std::string question_id;             // QuestionItem::id.
  std::optional<size_t> answer_index;  // Extracted answer, if any.
  std::optional<size_t> label;         // The dataset's answer, if labelled.
  bool answered() const { return answer_index.has_value(); }
  bool correct() const {
    return answer_index.has_value() && label.has_value() &&
           *answer_index == *label;
  }
  double seconds = 0;  // End to end: RunReasoning's wall time.
  // True: `seconds` (and the stages' times) measured with the request run
  // alone on an idle engine. False: predicted by a LatencyModel fitted on
  // measured rows of the same profile (the outputs came from a batched run,
  // whose wall time says nothing about one request's latency).
  bool latency_measured = true;
  // False when the teacher-forced pass was not run (StageEval::fidelity is
  // then zero counts, not a measurement).
  bool fidelity_measured = false;
  // Wall time of the teacher-forced passes (not part of `seconds`): what
  // fidelity costs on top of the run.
  double fidelity_seconds = 0;
  std::vector<StageEval> stages;  // In pipeline order.
};

// What teacher forcing needs of full's run of one question: per stage and
// branch the prompt ids it was fed and the ids it generated. Small enough to
// cache on disk next to the rows (JSON below), so that a search evaluating
// a new profile on a cached question need not rerun full.
struct ReferenceTokens {
  struct Branch {
    std::vector<int32_t> prompt;     // [prompt_tokens]
    std::vector<int32_t> generated;  // [generated_tokens], EOS excluded.
  };
  std::vector<std::vector<Branch>> stages;  // [stages][branches]
};
// From a RunReasoning result (FailedPrecondition when a stage that
// generated tokens kept no prompt ids, e.g. a run driven by another loop).
absl::StatusOr<ReferenceTokens> ReferenceTokensFromRun(
    const ReasoningResult& full);
nlohmann::json ReferenceTokensToJson(const ReferenceTokens& tokens);
absl::StatusOr<ReferenceTokens> ReferenceTokensFromJson(
    const nlohmann::json& json);

// For every stage of full's run, each branch's prompt + generated ids
// through the engine in one forward pass with `profile`'s skip set for that
// stage; counts the generated positions where the argmax of the previous
// position's logits is full's token. [stages]. 1.0 for `full` itself up to
// floating-point ties.
absl::StatusOr<std::vector<FidelityCount>> TeacherForcedFidelity(
    Engine& engine, const Pipeline& pipeline, const Profile& profile,
    const ReferenceTokens& full);
absl::StatusOr<std::vector<FidelityCount>> TeacherForcedFidelity(
    Engine& engine, const Pipeline& pipeline, const Profile& profile,
    const ReasoningResult& full);
// TeacherForcedFidelity for many questions at once: every branch of every
// stage of `full` [questions] in one Engine::ScoreContinuations call, so the
// prompts share prefix KV (the few-shot prefix is computed once per stage)
// and logits are computed for the scored positions only. Equal to
// TeacherForcedFidelity question by question (tested). [questions][stages]
absl::StatusOr<std::vector<std::vector<FidelityCount>>>
BatchTeacherForcedFidelity(Engine& engine, const Pipeline& pipeline,
                           const Profile& profile,
                           absl::Span<const ReferenceTokens* const> full);

// Runs TeacherForcedFidelity for `row` (a row of `profile` without
// fidelity, e.g. from EvaluateQuestion with no reference) and fills its
// fidelity counts, fidelity_measured and fidelity_seconds.
absl::Status AddFidelity(Engine& engine, const Pipeline& pipeline,
                         const Profile& profile, const ReferenceTokens& full,
                         QuestionEval* row);

// The row of one run; `fidelity` [stages], or empty when not measured.
QuestionEval MakeQuestionEval(const std::string& profile,
                              const QuestionItem& item,
                              const ReasoningResult& result,
                              const std::vector<FidelityCount>& fidelity);

// StageEval::prefill_tokens of a stage of a run: the prompt tokens a run of
// that request alone computes. For a RunReasoning result this is
// prompt_tokens - cached_prompt_tokens; for a RunReasoningBatch result
// (where prompts of other questions were shared too) it replays the
// fan-out prefix sharing of a lone run from the branches' prompt ids
// (PlanPrefixSharing with `block_size`). Needs prompt_token_ids.
int64_t AloneFillTokens(const StageRecord& record, bool fan_out,
                        int64_t block_size);

// ---- Latency model (latency_model.cc) -------------------------------------
//
// Outputs of a batched run are exact, its timings are not a user's. The
// model turns token counts into latency with per-token costs measured for
// the same profile on requests run alone: per stage, seconds =
// prefill_cost * prefill_tokens + decode_cost * decode_tokens, each cost the
// ratio of summed measured seconds to summed tokens over the measured rows
// (prefill_seconds includes the first token; decode_seconds the rest).
struct StageLatencyCost {
  double prefill_seconds_per_token = 0;
  double decode_seconds_per_token = 0;
};
struct LatencyModel {
  std::vector<StageLatencyCost> stages;  // Pipeline order.
};
// From rows with latency_measured (InvalidArgument when there are none,
// a row is not measured or the stage counts differ).
absl::StatusOr<LatencyModel> FitLatencyModel(
    absl::Span<const QuestionEval* const> measured);
// Overwrites `row`'s stage and end-to-end times with the model's and sets
// latency_measured = false. InvalidArgument on a stage-count mismatch.
absl::Status ApplyLatencyModel(const LatencyModel& model, QuestionEval* row);

// How well the model predicts measured latency: two-fold cross-validation
// over the measured rows (fit on the even-indexed, predict the odd, and the
// other way round), end to end per question.
struct LatencyModelCheck {
  int64_t n = 0;  // Measured rows checked (0: fewer than 2).
  // Mean over questions of |predicted - measured| / measured.
  double mean_abs_relative_error = 0;
  // (mean predicted - mean measured) / mean measured: the bias of a mean.
  double mean_relative_error = 0;
};
absl::StatusOr<LatencyModelCheck> CrossValidateLatencyModel(
    absl::Span<const QuestionEval* const> measured);

// The ReasoningRequest of `item`: `base`'s settings, its question and
// choices.
ReasoningRequest RequestForItem(const QuestionItem& item,
                                const ReasoningRequest& base);

// Runs `item` with `profile` (RunReasoning; `base` greedy unless it says
// otherwise) and scores it against `full_run`, full's run of the same item
// (with token ids); nullptr skips the teacher-forced pass (it costs about
// one prefill of every stage). When `run` is given it receives the
// profile's result. Evaluating full itself: pass the same object as
// `full_run` and `run`; the fidelity is then against this very run (the
// fresh result is used before it is stored into `run`).
absl::StatusOr<QuestionEval> EvaluateQuestion(
    Engine& engine, const Pipeline& pipeline, const Profile& profile,
    const std::string& profile_name, const QuestionItem& item,
    const ReasoningRequest& base, const ReasoningResult* full_run,
    ReasoningResult* run = nullptr);

// Runs `items` with `profile`, `batch` (>= 1) questions per
// RunReasoningBatch call: the rows of EvaluateQuestion without fidelity,
// token for token, with latency_measured false (their times are the
// batch's; see LatencyModel) and prefill_tokens replayed as a lone run
// (AloneFillTokens). `runs` (optional) receives the results, in order.
absl::StatusOr<std::vector<QuestionEval>> EvaluateQuestionsBatched(
    Engine& engine, const Pipeline& pipeline, const Profile& profile,
    const std::string& profile_name,
    absl::Span<const QuestionItem* const> items, const ReasoningRequest& base,
    int64_t batch, std::vector<ReasoningResult>* runs = nullptr);

// ---- Aggregation ---------------------------------------------------------

struct StageSummary {
  std::string name;
  // Mean over the measured questions of the per-question fidelity; unset
  // when no row measured it.
  std::optional<double> fidelity;
  int64_t fidelity_hits = 0;   // Pooled over measured questions.
  int64_t fidelity_total = 0;  // Pooled over measured questions.
  double mean_seconds = 0;
  double p90_seconds = 0;
  double mean_prefill_seconds = 0;
  double mean_decode_seconds = 0;
  double mean_prompt_tokens = 0;
  double mean_generated_tokens = 0;
  double early_exit_rate = 0;  // Questions where any branch exited early.
};

struct ProfileSummary {
  std::string profile;
  int64_t n = 0;
  int64_t labelled = 0;
  int64_t correct = 0;
  double accuracy = 0;  // correct / labelled.
  Interval accuracy_ci;
  int64_t answered = 0;
  double answered_rate = 0;
  // Same extracted index as full on the same question; both "no answer"
  // counts as agreement (the profile kept full's behaviour).
  int64_t agree = 0;
  double agreement = 0;
  Interval agreement_ci;
  double mean_seconds = 0;  // End to end.
  double p90_seconds = 0;
  // full's mean end-to-end latency / this profile's, same questions, same
  // run (interleaved); > 1 is faster.
  double speedup = 0;
  double mean_fidelity_seconds = 0;  // Teacher-forced passes, per question.
  // Rows whose latency was measured alone; the others' is predicted by the
  // LatencyModel fitted on these, with `latency_check` its error.
  int64_t latency_measured = 0;
  LatencyModelCheck latency_check;
  std::vector<StageSummary> stages;
};

// Aggregates `rows` (one profile) against `full_rows` (the same questions,
// matched by question_id). InvalidArgument when a question has no full row
// or the rows mix profiles.
absl::StatusOr<ProfileSummary> SummarizeProfile(
    const std::vector<QuestionEval>& rows,
    const std::vector<QuestionEval>& full_rows);

// True when the two rows agree as SummarizeProfile counts it.
bool AnswersAgree(const QuestionEval& a, const QuestionEval& b);

// ---- Whole evaluation ----------------------------------------------------

struct EvaluationOptions {
  ReasoningRequest base;  // Sampling (greedy), max_new_tokens_cap, ...
  // Run the teacher-forced fidelity passes (about doubles the cost of a
  // question on the default model: one extra prefill of every stage).
  bool fidelity = true;
  // 0: every question of every profile runs alone (RunReasoning) and its
  // latency is measured. > 0: the first `latency_questions` questions run
  // alone as before (measured latency, interleaved across profiles); the
  // rest run `batch` questions at a time through RunReasoningBatch (token
  // for token the same outputs) with batched teacher forcing, and their
  // latency is predicted by each profile's LatencyModel fitted on its
  // measured questions. Several times faster on the CPU, where batch-1
  // decode is bound by weight reads and every question repeats the
  // few-shot prefix.
  int64_t batch = 0;
  int64_t latency_questions = 16;  // With batch > 0; at least 1.
};

struct Evaluation {
  std::vector<std::string> profiles;  // Names; "full" first.
  std::vector<std::string> question_ids;
  // [profiles][questions].
  std::vector<std::vector<QuestionEval>> rows;
  std::vector<ProfileSummary> summaries;  // [profiles].
};

// Called after every (profile, question) with the count done and the total.
using EvaluationProgress = std::function<void(int64_t done, int64_t total)>;

// Evaluates `profiles` (profiles[0] must be full: no skip, no early exit) on
// `questions`: requests run alone are interleaved per question (q1: full,
// A, B; q2: full, A, B; ...) so drift in machine speed hits every profile
// alike; with options.batch the rest run batched (see EvaluationOptions).
// `names` [profiles] label the rows.
absl::StatusOr<Evaluation> EvaluateProfiles(
    Engine& engine, const Pipeline& pipeline,
    const std::vector<Profile>& profiles, const std::vector<std::string>& names,
    const std::vector<QuestionItem>& questions,
    const EvaluationOptions& options, const EvaluationProgress& progress = {});

nlohmann::json QuestionEvalToJson(const QuestionEval& row);
absl::StatusOr<QuestionEval> QuestionEvalFromJson(const nlohmann::json& json);
nlohmann::json ProfileSummaryToJson(const ProfileSummary& summary);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_STAGES_EVALUATION_H_
