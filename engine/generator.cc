// Engine::GenerateBatch: a fixed set of requests run to completion on a
// Scheduler (continuous batching: each forward step carries prefill chunks
// and decode tokens together).
#include <algorithm>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
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
  const auto callbacks_for = [&](size_t i) {
    SequenceCallbacks callbacks;
    if (on_text) {
      callbacks.on_text = [&on_text, i](const std::string& piece) {
        on_text(i, piece);
      };
    }
    callbacks.on_finish = [&results, i](GenerationResult result) {
      results[i] = std::move(result);
    };
    return callbacks;
  };
  // Requests in a prefix group go in together (prefix caching); the others
  // one by one.
  std::map<int64_t, std::vector<size_t>> groups;
  for (size_t i = 0; i < requests.size(); ++i) {
    if (requests[i].prefix_group != 0) {
      groups[requests[i].prefix_group].push_back(i);
      continue;
    }
    absl::StatusOr<SequenceHandle> added =
        scheduler.Add(requests[i], callbacks_for(i));
    if (!added.ok()) {
      return absl::Status(
          added.status().code(),
          absl::StrCat("request ", i, ": ", added.status().message()));
    }
  }
  for (const auto& [group, members] : groups) {
    std::vector<GenerationRequest> group_requests;
    std::vector<SequenceCallbacks> group_callbacks;
    for (size_t i : members) {
      group_requests.push_back(requests[i]);
      group_callbacks.push_back(callbacks_for(i));
    }
    absl::StatusOr<std::vector<SequenceHandle>> added = scheduler.AddGroup(
        std::move(group_requests), std::move(group_callbacks));
    if (!added.ok()) {
      return absl::Status(
          added.status().code(),
          absl::StrCat("prefix group ", group, ": ", added.status().message()));
    }
  }
  while (!scheduler.idle()) LS_RETURN_IF_ERROR(scheduler.Step());
  std::vector<GenerationResult> out;
  out.reserve(results.size());
  for (std::optional<GenerationResult>& result : results) {
    out.push_back(std::move(*result));
  }
  return out;
}

}  // namespace litestage
