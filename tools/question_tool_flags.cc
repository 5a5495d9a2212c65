// Flags and checks shared by litestage-eval and litestage-search
// (question_tool_flags.h).
#include "tools/question_tool_flags.h"

#include "absl/flags/flag.h"
#include "engine/backend/registry.h"
#include "engine/util/flags.h"
#include "engine/util/status_macros.h"

ABSL_FLAG(std::string, model, "",
          "Hugging Face model directory, a .gguf file, or synthetic:<preset>");
ABSL_FLAG(std::string, device, "cpu", litestage::kDeviceFlagHelp);
ABSL_FLAG(std::string, dtype, "auto", litestage::kDTypeFlagHelp);
ABSL_FLAG(int64_t, threads, 0, "Worker threads; 0 uses all hardware threads");
ABSL_FLAG(std::string, pipeline, "tinythinker",
          "A built-in pipeline name (tinythinker) or a pipeline JSON file");
ABSL_FLAG(bool, few_shot, true,
          "Keep the pipeline's few-shot prefix; false runs zero-shot (models "
          "whose context cannot hold it, such as stories260K)");
ABSL_FLAG(bool, prefix_cache, false,
          "Let questions reuse the KV blocks earlier questions and profiles "
          "computed (as a server does); off, every question's latency is "
          "measured from a cold cache, so profiles compare on equal terms");
ABSL_FLAG(int64_t, max_new_tokens, 0,
          "Caps every stage's max_new_tokens; 0 keeps the pipeline's");

namespace litestage {

absl::Status CheckQuestionToolFlags(const QuestionBatchFlags& batch) {
  return FirstError({
      CheckFlagRange("threads", absl::GetFlag(FLAGS_threads), 0,
                     kMaxThreadsFlag),
      CheckFlagRange("max-new-tokens", absl::GetFlag(FLAGS_max_new_tokens), 0,
                     kMaxNewTokensFlag),
      CheckFlagRange("batch", batch.batch, 0, kMaxEvalBatchFlag),
      CheckFlagRange("latency-questions", batch.latency_questions, 1,
                     kMaxCountFlag),
      CheckFlagRange("kv-cache-tokens", batch.kv_cache_tokens,
                     batch.min_kv_cache_tokens, kMaxKvCacheTokensFlag),
  });
}

absl::StatusOr<EngineOptions> EngineOptionsFromFlags(int64_t kv_cache_tokens) {
  EngineOptions options;
  options.model = absl::GetFlag(FLAGS_model);
  if (options.model.empty()) {
    return absl::InvalidArgumentError("--model is required");
  }
  options.device = absl::GetFlag(FLAGS_device);
  options.prefix_cache = absl::GetFlag(FLAGS_prefix_cache);
  options.backend.num_threads = static_cast<int>(absl::GetFlag(FLAGS_threads));
  if (kv_cache_tokens > 0) options.backend.kv_cache_tokens = kv_cache_tokens;
  LS_ASSIGN_OR_RETURN(options.matrix_dtype,
                      ParseMatrixDType(absl::GetFlag(FLAGS_dtype)));
  return options;
}

absl::StatusOr<Pipeline> PipelineFromFlags() {
  LS_ASSIGN_OR_RETURN(Pipeline pipeline,
                      ResolvePipeline(absl::GetFlag(FLAGS_pipeline)));
  if (!absl::GetFlag(FLAGS_few_shot)) pipeline.few_shot.clear();
  return pipeline;
}

}  // namespace litestage
