#include "engine/stages/session.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "engine/stages/stage_runner.h"
#include "engine/util/check.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

std::string Trimmed(absl::string_view text) {
  return std::string(absl::StripAsciiWhitespace(text));
}

int64_t CountTrue(const std::vector<bool>& flags) {
  int64_t count = 0;
  for (bool flag : flags) count += flag ? 1 : 0;
  return count;
}

}  // namespace

absl::StatusOr<ReasoningSession> ReasoningSession::Create(
    const Engine& engine, const Pipeline& pipeline, const Profile& profile,
    const ReasoningRequest& request) {
  ReasoningSession session;
  session.engine_ = &engine;
  session.pipeline_ = &pipeline;
  session.profile_ = &profile;
  session.request_ = request;
  session.inputs_.question = request.question;
  session.inputs_.choices = EffectiveChoices(pipeline, request.choices);
  LS_RETURN_IF_ERROR(ValidatePromptInputs(pipeline, session.inputs_));
  absl::Status sampling = ValidateSamplingParams(request.sampling);
  if (!sampling.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling: ", sampling.message()));
  }
  if (request.early_exit_override.has_value()) {
    LS_RETURN_IF_ERROR(ValidateEarlyExitConfig(*request.early_exit_override));
  }
  if (request.max_new_tokens_cap < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens must be >= 0 (0: the pipeline's), got ",
                     request.max_new_tokens_cap));
  }
  std::vector<std::string> stage_names;
  for (const PipelineStage& stage : pipeline.stages) {
    stage_names.push_back(stage.name);
  }
  LS_RETURN_IF_ERROR(ValidateProfile(profile, engine.fingerprint(),
                                     engine.config().num_hidden_layers,
                                     pipeline.name, stage_names));
  session.result_.choices = session.inputs_.choices;
  return session;
}

absl::StatusOr<std::vector<GenerationRequest>> ReasoningSession::StageRequests()
    const {
  LS_CHECK(!done());
  const PipelineStage& stage = pipeline_->stages[next_stage_];
  const StageProfile& settings = profile_->ForStage(stage.name);
  GenerationRequest base;
  base.sampling = request_.sampling;
  base.max_new_tokens = stage.max_new_tokens;
  if (request_.max_new_tokens_cap > 0) {
    base.max_new_tokens =
        std::min(base.max_new_tokens, request_.max_new_tokens_cap);
  }
  base.stop_strings = stage.stop_strings;
  base.skip = settings.skip;
  base.early_exit = request_.early_exit_override.value_or(settings.early_exit);
  if (stage.fan_out && request_.share_fan_out_prefix) base.prefix_group = 1;

  const size_t branches = stage.fan_out ? inputs_.choices.size() : 1;
  const int64_t context = engine_->config().max_position_embeddings;
  std::vector<GenerationRequest> requests;
  requests.reserve(branches);
  for (size_t b = 0; b < branches; ++b) {
    std::vector<TextRange> user_text;
    LS_ASSIGN_OR_RETURN(
        std::string prompt,
        RenderStagePrompt(
            *pipeline_, next_stage_, inputs_,
            stage.fan_out ? std::optional<size_t>(b) : std::nullopt,
            &user_text));
    GenerationRequest request = base;
    // Distinct streams per stage and branch when sampling (greedy ignores it).
    request.sampling.seed += 1000003 * next_stage_ + b;
    LS_ASSIGN_OR_RETURN(request.prompt_tokens,
                        engine_->EncodePrompt(prompt, user_text));
    const int64_t length = static_cast<int64_t>(request.prompt_tokens.size());
    if (context > 0 && length >= context) {
      return absl::OutOfRangeError(
          absl::StrCat("stage '", stage.name, "': prompt has ", length,
                       " tokens, the model's context is ", context,
                       " (shorten the question or choices)"));
    }
    requests.push_back(std::move(request));
  }
  return requests;
}

void ReasoningSession::FinishStage(
    std::vector<GenerationResult> results, double seconds,
    std::vector<std::vector<int32_t>> prompt_token_ids) {
  LS_CHECK(!done());
  const PipelineStage& stage = pipeline_->stages[next_stage_];
  const StageProfile& settings = profile_->ForStage(stage.name);
  LS_CHECK_EQ(results.size(), stage.fan_out ? inputs_.choices.size() : 1u);
  LS_CHECK(prompt_token_ids.empty() ||
           prompt_token_ids.size() == results.size());

  StageRecord record;
  record.name = stage.name;
  record.skipped_attention_layers = CountTrue(settings.skip.attention);
  record.skipped_mlp_layers = CountTrue(settings.skip.mlp);
  record.early_exit =
      request_.early_exit_override.value_or(settings.early_exit);
  record.seconds = seconds;
  std::vector<std::string> branch_outputs;
  std::vector<std::string> finish_reasons;
  double confidence_sum = 0;
  for (size_t b = 0; b < results.size(); ++b) {
    GenerationResult& r = results[b];
    BranchRecord branch;
    if (stage.fan_out) branch.option = ChoiceLetter(b);
    branch.prompt_tokens = r.prompt_tokens;
    branch.cached_prompt_tokens = r.cached_prompt_tokens;
    branch.generated_tokens = static_cast<int64_t>(r.tokens.size());
    branch.finish_reason = FinishReasonName(r.finish_reason);
    branch.early_exit_reason = r.early_exit_reason;
    branch.mean_confidence = MeanMaxProb(r.confidences);
    for (const TokenConfidence& c : r.confidences) {
      confidence_sum += c.max_prob;
      branch.token_max_prob.push_back(c.max_prob);
    }
    branch.text = std::move(r.text);
    branch.generated_token_ids = std::move(r.tokens);
    if (!prompt_token_ids.empty()) {
      branch.prompt_token_ids = std::move(prompt_token_ids[b]);
    }

    record.prompt_tokens += branch.prompt_tokens;
    record.cached_prompt_tokens += branch.cached_prompt_tokens;
    record.generated_tokens += branch.generated_tokens;
    record.forwarded_tokens += r.forwarded_tokens;
    record.sublayers += r.sublayers;
    record.prefill_seconds =
        std::max(record.prefill_seconds, r.prefill_seconds);
    if (r.finish_reason == FinishReason::kEarlyExit) {
      if (!record.early_exit_fired) {
        record.early_exit_reason =
            stage.fan_out ? absl::StrCat("option ", branch.option, ": ",
                                         branch.early_exit_reason)
                          : branch.early_exit_reason;
      }
      record.early_exit_fired = true;
      ++record.early_exits;
    }
    finish_reasons.push_back(branch.finish_reason);
    branch_outputs.push_back(Trimmed(branch.text));
    record.branches.push_back(std::move(branch));
  }
  record.prefill_seconds = std::min(record.prefill_seconds, seconds);
  record.decode_seconds = seconds - record.prefill_seconds;
  if (record.generated_tokens > 0) {
    record.mean_confidence =
        confidence_sum / static_cast<double>(record.generated_tokens);
  }
  record.finish_reason = absl::StrJoin(finish_reasons, ",");
  record.output =
      stage.fan_out ? JoinFanOutOutputs(stage, inputs_.choices, branch_outputs)
                    : branch_outputs[0];
  inputs_.stage_outputs[stage.name] = record.output;

  result_.seconds += seconds;
  result_.prompt_tokens += record.prompt_tokens;
  result_.generated_tokens += record.generated_tokens;
  result_.sublayers += record.sublayers;
  result_.stages.push_back(std::move(record));
  ++next_stage_;
  if (done()) {
    result_.answer_index = ExtractAnswer(
        *pipeline_, result_.stages.back().output, inputs_.choices);
    if (result_.answer_index.has_value()) {
      result_.answer = ChoiceLetter(*result_.answer_index);
      result_.answer_text = inputs_.choices[*result_.answer_index];
    }
  }
}

namespace {

// Keeps the outcome of a cohort run to completion, forwarding its text.
class BlockingListener : public StageRunner::Listener {
 public:
  explicit BlockingListener(const StageTextCallback& on_text)
      : on_text_(on_text) {}

  void OnText(size_t session, size_t stage, size_t branch,
              const std::string& piece) override {
    if (on_text_) on_text_(stage, branch, piece);
  }
  void OnDone(absl::Status status, StageRunner::JobResult result) override {
    status_ = std::move(status);
    result_ = std::move(result);
  }

  absl::StatusOr<std::vector<ReasoningResult>> TakeResults() {
    if (!status_.ok()) return status_;
    return std::move(result_.sessions);
  }

 private:
  const StageTextCallback& on_text_;
  absl::Status status_ = absl::InternalError("the job did not finish");
  StageRunner::JobResult result_;
};

// Runs `sessions` as one cohort on a scheduler of their own (blocking).
absl::StatusOr<std::vector<ReasoningResult>> RunCohort(
    Engine& engine, const Pipeline& pipeline,
    std::vector<ReasoningSession> sessions, const StageTextCallback& on_text) {
  SchedulerOptions options;
  // Room for every branch of every session at once (as GenerateBatch).
  options.max_batch = static_cast<int64_t>(sessions.size()) *
                      std::max<int64_t>(1, pipeline.max_choices);
  options.max_prefill_tokens = Engine::kMaxPrefillChunk;
  Scheduler scheduler(&engine, options);
  StageRunner runner(&scheduler);
  BlockingListener listener(on_text);
  LS_RETURN_IF_ERROR(
      runner.AddSessions(std::move(sessions), &listener).status());
  while (!runner.idle()) LS_RETURN_IF_ERROR(runner.Step());
  return listener.TakeResults();
}

}  // namespace

absl::StatusOr<ReasoningResult> RunReasoning(Engine& engine,
                                             const Pipeline& pipeline,
                                             const Profile& profile,
                                             const ReasoningRequest& request,
                                             const StageTextCallback& on_text) {
  LS_ASSIGN_OR_RETURN(
      ReasoningSession session,
      ReasoningSession::Create(engine, pipeline, profile, request));
  std::vector<ReasoningSession> sessions;
  sessions.push_back(std::move(session));
  LS_ASSIGN_OR_RETURN(
      std::vector<ReasoningResult> results,
      RunCohort(engine, pipeline, std::move(sessions), on_text));
  return std::move(results[0]);
}

absl::StatusOr<std::vector<ReasoningResult>> RunReasoningBatch(
    Engine& engine, const Pipeline& pipeline, const Profile& profile,
    absl::Span<const ReasoningRequest> requests) {
  if (requests.empty()) return std::vector<ReasoningResult>();
  std::vector<ReasoningSession> sessions;
  sessions.reserve(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    absl::StatusOr<ReasoningSession> session =
        ReasoningSession::Create(engine, pipeline, profile, requests[i]);
    if (!session.ok()) {
      return absl::Status(
          session.status().code(),
          absl::StrCat("request ", i, ": ", session.status().message()));
    }
    sessions.push_back(*std::move(session));
  }
  return RunCohort(engine, pipeline, std::move(sessions), {});
}

namespace {

nlohmann::json SublayersToJson(const SublayerCounts& counts) {
  return {{"attention_executed", counts.attention_executed},
          {"attention_skipped", counts.attention_skipped},
          {"mlp_executed", counts.mlp_executed},
          {"mlp_skipped", counts.mlp_skipped}};
}

}  // namespace

nlohmann::json ReasoningResultToJson(const ReasoningResult& result) {
  nlohmann::json stages = nlohmann::json::array();
  for (const StageRecord& s : result.stages) {
    nlohmann::json branches = nlohmann::json::array();
    for (const BranchRecord& b : s.branches) {
      nlohmann::json branch = {{"text", b.text},
                               {"prompt_tokens", b.prompt_tokens},
                               {"cached_prompt_tokens", b.cached_prompt_tokens},
                               {"generated_tokens", b.generated_tokens},
                               {"finish_reason", b.finish_reason},
                               {"mean_confidence", b.mean_confidence}};
      if (!b.option.empty()) branch["option"] = b.option;
      if (!b.early_exit_reason.empty()) {
        branch["early_exit_reason"] = b.early_exit_reason;
      }
      branches.push_back(std::move(branch));
    }
    nlohmann::json early_exit = {{"enabled", s.early_exit.enabled()}};
    if (s.early_exit.enabled()) {
      early_exit["window"] = s.early_exit.window;
      early_exit["threshold"] = s.early_exit.threshold;
      early_exit["confidence"] = ConfidenceKindName(s.early_exit.kind);
      early_exit["min_tokens"] = s.early_exit.min_tokens;
    }
    stages.push_back({{"name", s.name},
                      {"output", s.output},
                      {"prompt_tokens", s.prompt_tokens},
                      {"cached_prompt_tokens", s.cached_prompt_tokens},
                      {"generated_tokens", s.generated_tokens},
                      {"forwarded_tokens", s.forwarded_tokens},
                      {"sublayers", SublayersToJson(s.sublayers)},
                      {"skipped_attention_layers", s.skipped_attention_layers},
                      {"skipped_mlp_layers", s.skipped_mlp_layers},
                      {"seconds", s.seconds},
                      {"prefill_seconds", s.prefill_seconds},
                      {"decode_seconds", s.decode_seconds},
                      {"early_exit", early_exit},
                      {"early_exit_fired", s.early_exit_fired},
                      {"early_exit_reason", s.early_exit_reason},
                      {"early_exits", s.early_exits},
                      {"mean_confidence", s.mean_confidence},
                      {"finish_reason", s.finish_reason},
                      {"branches", std::move(branches)}});
  }
  nlohmann::json out = {{"stages", std::move(stages)},
                        {"choices", result.choices},
                        {"answer", result.answer},
                        {"answer_text", result.answer_text},
                        {"seconds", result.seconds},
                        {"prompt_tokens", result.prompt_tokens},
                        {"generated_tokens", result.generated_tokens},
                        {"sublayers", SublayersToJson(result.sublayers)}};
  out["answer_index"] = result.answer_index.has_value()
                            ? nlohmann::json(*result.answer_index)
                            : nlohmann::json(nullptr);
  return out;
}

}  // namespace litestage
