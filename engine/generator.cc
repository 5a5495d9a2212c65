// Engine::GenerateBatch: a fixed set of requests run to completion on a
// Scheduler (continuous batching: each forward step carries prefill chunks
// and decode tokens together).
#include <algorithm>
#include <optional>
#include <utility>

#include "engine/engine.h"
#include "engine/scheduler.h"
#include "engine/util/status_macros.h"

namespace litestage {

absl::StatusOr<std::vector<GenerationResult>> Engine::GenerateBatch(
    absl::Span<const GenerationRequest> requests, const TextCallback& on_text) {
  SchedulerOptions options;
  options.max_batch = std::max<int64_t>(1, requests.size());
  options.max_prefill_tokens = kMaxPrefillChunk;
  Scheduler scheduler(this, options);
  std::vector<std::optional<GenerationResult>> results(requests.size());
  std::vector<SequenceCallbacks> callbacks(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    if (on_text) {
      callbacks[i].on_text = [&on_text, i](const std::string& piece) {
        on_text(i, piece);
      };
    }
    callbacks[i].on_finish = [&results, i](GenerationResult result) {
      results[i] = std::move(result);
    };
  }
  // Requests in a prefix group go in together (prefix caching).
  LS_RETURN_IF_ERROR(scheduler
                         .AddBatch(std::vector<GenerationRequest>(
                                       requests.begin(), requests.end()),
                                   std::move(callbacks))
                         .status());
  while (!scheduler.idle()) LS_RETURN_IF_ERROR(scheduler.Step());
  std::vector<GenerationResult> out;
  out.reserve(results.size());
  for (std::optional<GenerationResult>& result : results) {
    out.push_back(std::move(*result));
  }
  return out;
}

}  // namespace litestage
