// The command line that litestage-eval and litestage-search share: both run
// a question set through a pipeline on one engine. The flags whose meaning
// and default are the same in both are defined here (--model, --device,
// --dtype, --threads, --pipeline, --few-shot, --prefix-cache,
// --max-new-tokens); the ones
// whose defaults differ (--batch, --latency-questions, --kv-cache-tokens)
// stay in each tool and are passed in.
#ifndef LITESTAGE_TOOLS_QUESTION_TOOL_FLAGS_H_
#define LITESTAGE_TOOLS_QUESTION_TOOL_FLAGS_H_

#include <cstdint>
#include <string>

#include "absl/flags/declare.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/runtime/engine.h"
#include "engine/stages/pipeline.h"

ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(std::string, device);
ABSL_DECLARE_FLAG(std::string, dtype);
ABSL_DECLARE_FLAG(int64_t, threads);
ABSL_DECLARE_FLAG(std::string, pipeline);
ABSL_DECLARE_FLAG(bool, few_shot);
ABSL_DECLARE_FLAG(bool, prefix_cache);
ABSL_DECLARE_FLAG(int64_t, max_new_tokens);

namespace litestage {

// How a tool runs its questions in batches (its own flags).
struct QuestionBatchFlags {
  int64_t batch = 0;              // --batch: 0 runs every question alone.
  int64_t latency_questions = 0;  // --latency-questions, at least 1.
  int64_t kv_cache_tokens = 0;    // --kv-cache-tokens.
  // Below this --kv-cache-tokens is refused; 0 means "the engine's default".
  int64_t min_kv_cache_tokens = 0;
};

// The shared flags and `batch` against their ranges; InvalidArgument naming
// the first flag out of range.
absl::Status CheckQuestionToolFlags(const QuestionBatchFlags& batch);

// Engine options from the shared flags: --model (required), --device,
// --dtype, --threads, and kv_cache_tokens when it is positive.
absl::StatusOr<EngineOptions> EngineOptionsFromFlags(int64_t kv_cache_tokens);

// --pipeline resolved (a built-in name or a JSON file), its few-shot prefix
// dropped with --few-shot=false.
absl::StatusOr<Pipeline> PipelineFromFlags();

}  // namespace litestage

#endif  // LITESTAGE_TOOLS_QUESTION_TOOL_FLAGS_H_
