// Proto conversion and status mapping of the gRPC service (convert.h).
#include "server/convert.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/util/status_macros.h"
#include "server/wire.h"

namespace litestage {

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl and gRPC share the canonical code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

std::string StatusCodeLabel(grpc::StatusCode code) {
  std::string name =
      absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  return name.empty() ? "UNKNOWN" : name;
}

absl::StatusOr<SamplingParams> SamplingFromProto(const v1::SamplingParams& p) {
  SamplingParams sampling;
  sampling.temperature = p.temperature();
  sampling.top_k = p.top_k();
  // Unset (0) means no nucleus cut; other values are checked as given.
  sampling.top_p = p.top_p() == 0.0f ? 1.0f : p.top_p();
  sampling.seed = p.seed();
  if (absl::Status status = ValidateSamplingParams(sampling); !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.", status.message()));
  }
  return sampling;
}

// `max_new_tokens`: the most tokens a stage (Reason) or the request
// (Generate) may generate; a window longer than that could never fill.
absl::StatusOr<EarlyExitConfig> EarlyExitFromProto(const v1::EarlyExit& p,
                                                   int64_t max_new_tokens) {
  EarlyExitConfig config;
  config.window = p.window();
  config.threshold = p.threshold();
  config.min_tokens = p.min_tokens();
  if (!p.confidence().empty()) {
    LS_RETURN_IF_ERROR(
        CheckFieldSize("early_exit.confidence", p.confidence(), kMaxNameBytes));
    absl::StatusOr<ConfidenceKind> kind = ParseConfidenceKind(p.confidence());
    if (!kind.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("early_exit.confidence: ", kind.status().message()));
    }
    config.kind = *kind;
  }
  // Its messages already name "early_exit.<field>".
  LS_RETURN_IF_ERROR(ValidateEarlyExitConfig(config));
  if (config.window > max_new_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "early_exit.window: ", config.window, " is over max_new_tokens (",
        max_new_tokens, "): the window could never fill"));
  }
  if (config.min_tokens > max_new_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("early_exit.min_tokens: ", config.min_tokens,
                     " is over max_new_tokens (", max_new_tokens, ")"));
  }
  return config;
}

void EarlyExitToProto(const EarlyExitConfig& config, v1::EarlyExit* out) {
  out->set_window(config.window);
  out->set_threshold(config.threshold);
  out->set_confidence(ConfidenceKindName(config.kind));
  out->set_min_tokens(config.min_tokens);
}

void SublayersToProto(const SublayerCounts& counts, v1::SublayerCounts* out) {
  out->set_attention_executed(counts.attention_executed);
  out->set_attention_skipped(counts.attention_skipped);
  out->set_mlp_executed(counts.mlp_executed);
  out->set_mlp_skipped(counts.mlp_skipped);
}

void StageRecordToProto(int32_t index, const StageRecord& record,
                        v1::StageRecord* out) {
  out->set_index(index);
  out->set_name(record.name);
  out->set_output(record.output);
  out->set_prompt_tokens(record.prompt_tokens);
  out->set_cached_prompt_tokens(record.cached_prompt_tokens);
  out->set_generated_tokens(record.generated_tokens);
  out->set_forwarded_tokens(record.forwarded_tokens);
  SublayersToProto(record.sublayers, out->mutable_sublayers());
  out->set_skipped_attention_layers(record.skipped_attention_layers);
  out->set_skipped_mlp_layers(record.skipped_mlp_layers);
  EarlyExitToProto(record.early_exit, out->mutable_early_exit());
  out->set_seconds(record.seconds);
  out->set_prefill_seconds(record.prefill_seconds);
  out->set_decode_seconds(record.decode_seconds);
  out->set_early_exit_fired(record.early_exit_fired);
  out->set_early_exit_reason(record.early_exit_reason);
  out->set_early_exits(record.early_exits);
  out->set_mean_confidence(record.mean_confidence);
  out->set_finish_reason(record.finish_reason);
  for (const BranchRecord& branch : record.branches) {
    v1::BranchRecord* b = out->add_branches();
    b->set_option(branch.option);
    b->set_text(branch.text);
    b->set_prompt_tokens(branch.prompt_tokens);
    b->set_cached_prompt_tokens(branch.cached_prompt_tokens);
    b->set_generated_tokens(branch.generated_tokens);
    b->set_finish_reason(branch.finish_reason);
    b->set_early_exit_reason(branch.early_exit_reason);
    b->set_mean_confidence(branch.mean_confidence);
  }
}

std::string ProvenanceText(const ProfileProvenance& p) {
  std::vector<std::string> parts;
  if (!p.method.empty()) parts.push_back(absl::StrCat("method=", p.method));
  if (!p.created.empty()) parts.push_back(absl::StrCat("created=", p.created));
  if (!p.dataset.empty()) parts.push_back(absl::StrCat("dataset=", p.dataset));
  if (p.accuracy) parts.push_back(absl::StrCat("accuracy=", *p.accuracy));
  if (p.full_accuracy) {
    parts.push_back(absl::StrCat("full_accuracy=", *p.full_accuracy));
  }
  if (p.latency_seconds) {
    parts.push_back(absl::StrCat("latency_seconds=", *p.latency_seconds));
  }
  if (p.full_latency_seconds) {
    parts.push_back(
        absl::StrCat("full_latency_seconds=", *p.full_latency_seconds));
  }
  if (!p.notes.empty()) parts.push_back(absl::StrCat("notes=", p.notes));
  return absl::StrJoin(parts, "; ");
}

void StageProfileToProto(const std::string& stage, const StageProfile& sp,
                         int64_t num_layers, v1::StageProfileInfo* out) {
  out->set_stage(stage);
  const int64_t attention =
      std::count(sp.skip.attention.begin(), sp.skip.attention.end(), true);
  const int64_t mlp = std::count(sp.skip.mlp.begin(), sp.skip.mlp.end(), true);
  out->set_skipped_attention_layers(attention);
  out->set_skipped_mlp_layers(mlp);
  out->set_skip_ratio(num_layers > 0 ? static_cast<double>(attention + mlp) /
                                           static_cast<double>(2 * num_layers)
                                     : 0.0);
  EarlyExitToProto(sp.early_exit, out->mutable_early_exit());
}

void ReasoningResultToProto(const ReasoningResult& result,
                            v1::ReasonResponse* out) {
  for (size_t i = 0; i < result.stages.size(); ++i) {
    StageRecordToProto(static_cast<int32_t>(i), result.stages[i],
                       out->add_stages());
  }
  for (const std::string& choice : result.choices) out->add_choices(choice);
  out->set_answer(result.answer);
  out->set_answer_index(result.answer_index.has_value()
                            ? static_cast<int32_t>(*result.answer_index)
                            : -1);
  out->set_answer_text(result.answer_text);
  out->set_prompt_tokens(result.prompt_tokens);
  out->set_generated_tokens(result.generated_tokens);
  SublayersToProto(result.sublayers, out->mutable_sublayers());
}

void GenerationResultToProto(const GenerationResult& result,
                             v1::GenerateResponse* out) {
  out->set_text(result.text);
  out->set_finish_reason(FinishReasonName(result.finish_reason));
  out->set_early_exit_reason(result.early_exit_reason);
  out->set_prompt_tokens(result.prompt_tokens);
  out->set_generated_tokens(static_cast<int64_t>(result.tokens.size()));
  SublayersToProto(result.sublayers, out->mutable_sublayers());
  out->set_mean_confidence(MeanMaxProb(result.confidences));
}

}  // namespace litestage
