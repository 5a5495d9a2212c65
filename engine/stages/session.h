// A reasoning request run through a pipeline's stages on an Engine, with a
// skip profile and confidence early exit (LiteStage).
//
// ReasoningSession is the state machine of one request: it renders the next
// stage's prompts, hands out the GenerationRequests (one, or one per choice
// for a fan-out stage, run as one batch), takes their results back and keeps
// the per-stage records. StageRunner (stage_runner.h) drives sessions on a
// Scheduler: the server's many at once, RunReasoning and RunReasoningBatch
// below to completion.
//
// Execution is faithful to the method: every stage re-prefills
// [few-shot, question, earlier stages] with its own skip set (no KV reuse
// across stages, whose skip sets differ). Within a fan-out stage the
// branches share their common prefix's KV (same tokens, same skip set).
#ifndef LITESTAGE_ENGINE_STAGES_SESSION_H_
#define LITESTAGE_ENGINE_STAGES_SESSION_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/runtime/engine.h"
#include "engine/stages/pipeline.h"
#include "engine/stages/profile.h"
#include "nlohmann/json.hpp"

namespace litestage {

struct ReasoningRequest {
  std::string question;
  std::vector<std::string> choices;  // Empty: the pipeline's defaults.
  SamplingParams sampling;           // Greedy by default, as in the paper.
  // Replaces the profile's early-exit settings in every stage.
  std::optional<EarlyExitConfig> early_exit_override;
  // Caps every stage's max_new_tokens (0: the pipeline's own).
  int64_t max_new_tokens_cap = 0;
  // Fan-out branches share the KV of their common prompt prefix (same
  // tokens, same skip set: exact up to floating-point summation order, as
  // batching is); false recomputes it per branch.
  bool share_fan_out_prefix = true;
};

// One generation of a stage (the only one, or a fan-out branch).
struct BranchRecord {
  std::string option;  // Fan-out letter ("A"); empty otherwise.
  std::string text;    // Generated text, stop string cut, untrimmed.
  int64_t prompt_tokens = 0;
  int64_t cached_prompt_tokens = 0;  // Prefix KV shared, not recomputed.
  int64_t generated_tokens = 0;
  std::string finish_reason;      // FinishReasonName
  std::string early_exit_reason;  // When finish_reason is "early_exit".
  double mean_confidence = 0;     // Mean max_prob over generated tokens.
  // max_prob per generated token ([generated_tokens]): litestage-search
  // draws early-exit thresholds from their quantiles on full's runs. Not
  // part of ReasoningResultToJson.
  std::vector<float> token_max_prob;
  // The ids fed and produced, for teacher-forced evaluation
  // (engine/stages/evaluation.h). generated_token_ids: [generated_tokens],
  // EOS excluded, stop-string tokens included. prompt_token_ids:
  // [prompt_tokens], only when the caller handed them to FinishStage
  // (RunReasoning does), else empty. Not part of ReasoningResultToJson.
  std::vector<int32_t> prompt_token_ids;
  std::vector<int32_t> generated_token_ids;
};

struct StageRecord {
  std::string name;
  std::string output;  // What later stages see ({stage.NAME}), trimmed.
  // Sums over branches.
  int64_t prompt_tokens = 0;
  int64_t cached_prompt_tokens = 0;
  int64_t generated_tokens = 0;
  int64_t forwarded_tokens = 0;  // Tokens fed through the model.
  SublayerCounts sublayers;      // total() == 2 * layers * forwarded_tokens
  // The profile's skip set for this stage (sub-layers per token).
  int64_t skipped_attention_layers = 0;
  int64_t skipped_mlp_layers = 0;
  EarlyExitConfig early_exit;  // The settings the stage ran with.
  // Wall time of the stage; prefill: until every branch had its first
  // token; decode: the rest.
  double seconds = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  bool early_exit_fired = false;  // Any branch exited early.
  std::string early_exit_reason;  // Of the first branch that did.
  int64_t early_exits = 0;        // Branches that exited early.
  double mean_confidence = 0;     // Over all generated tokens (max_prob).
  std::string finish_reason;      // Single branch: its reason; else joined.
  std::vector<BranchRecord> branches;  // [1] or [num_choices]
};

struct ReasoningResult {
  std::vector<StageRecord> stages;   // In pipeline order.
  std::vector<std::string> choices;  // As used (defaults filled in).
  std::optional<size_t> answer_index;
  std::string answer;       // Letter ("B"), empty when none was found.
  std::string answer_text;  // The chosen choice's text.
  double seconds = 0;
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  SublayerCounts sublayers;
};

// Called with stage index, branch index and each new piece of text.
using StageTextCallback =
    std::function<void(size_t stage, size_t branch, const std::string& piece)>;

class ReasoningSession {
 public:
  // Validates the request (InvalidArgument naming the field: "question",
  // "choices[1]", "early_exit.window", ...) and the profile against the
  // engine's model and the pipeline. `pipeline` and `profile` must outlive
  // the session.
  static absl::StatusOr<ReasoningSession> Create(
      const Engine& engine, const Pipeline& pipeline, const Profile& profile,
      const ReasoningRequest& request);

  bool done() const { return next_stage_ >= pipeline_->stages.size(); }
  size_t next_stage() const { return next_stage_; }
  const Pipeline& pipeline() const { return *pipeline_; }

  // The generations of the next stage (requires !done()). OutOfRange when a
  // prompt does not fit the model's context.
  absl::StatusOr<std::vector<GenerationRequest>> StageRequests() const;
  // Records the next stage's results (same order as StageRequests) and
  // moves on; `seconds`: the stage's wall time. `prompt_token_ids`, when
  // given ([branches], the requests' prompt_tokens), is kept in the
  // branch records.
  void FinishStage(std::vector<GenerationResult> results, double seconds,
                   std::vector<std::vector<int32_t>> prompt_token_ids = {});

  // The records so far; after the last stage, with the extracted answer.
  const ReasoningResult& result() const { return result_; }
  ReasoningResult TakeResult() { return std::move(result_); }

 private:
  ReasoningSession() = default;

  const Engine* engine_ = nullptr;
  const Pipeline* pipeline_ = nullptr;
  const Profile* profile_ = nullptr;
  ReasoningRequest request_;
  PromptInputs inputs_;
  size_t next_stage_ = 0;
  ReasoningResult result_;
};

// Runs every stage on `engine` (blocking); fan-out branches as one batch.
absl::StatusOr<ReasoningResult> RunReasoning(
    Engine& engine, const Pipeline& pipeline, const Profile& profile,
    const ReasoningRequest& request, const StageTextCallback& on_text = {});

// Runs many requests stage by stage (offline evaluation): each stage of
// every request goes into one GenerateBatch, all sharing prompt-prefix KV
// (the few-shot prefix once for all questions, each question's prefix once
// for its branches). Token for token the results of RunReasoning on each
// request alone (the kernels compute every row independently of the batch;
// tested), but timings are the batch's: every stage record's seconds is the
// whole batch's wall time for the stage, not what one request would see.
// Sessions are created first, so a bad request fails the call before
// anything runs, naming its index.
absl::StatusOr<std::vector<ReasoningResult>> RunReasoningBatch(
    Engine& engine, const Pipeline& pipeline, const Profile& profile,
    absl::Span<const ReasoningRequest> requests);

// The result as JSON: {"stages": [record...], "answer", "answer_index",
// "answer_text", "choices", "seconds", "prompt_tokens", "generated_tokens",
// "sublayers"}; stage records hold every field above.
nlohmann::json ReasoningResultToJson(const ReasoningResult& result);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_STAGES_SESSION_H_
