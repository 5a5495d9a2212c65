// Continuous batching over sequences that arrive and leave at any time: the
// engine side of the server's scheduler thread, and what
// Engine::GenerateBatch runs on.
//
// Each Step() is one forward pass over the running sequences: a decode token
// for each sequence past its prompt and prefill chunks (at most
// max_prefill_tokens per step in all) for those still reading theirs.
// Waiting sequences are admitted, first come first served, when a batch slot
// is free and the KV cache can hold their whole prompt + max_new_tokens:
// admission reserves that much, so a running sequence never runs out of
// cache (no preemption needed). Skip sets are per sequence; the backend skips
// each sub-layer for exactly the rows whose sequence skips it.
//
// Not thread-safe: one thread (the scheduler thread) owns it and the engine.
#ifndef LITESTAGE_ENGINE_RUNTIME_SCHEDULER_H_
#define LITESTAGE_ENGINE_RUNTIME_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/runtime/engine.h"

namespace litestage {

// How sequences with different skip sets share forward steps.
enum class SkipSetBatching {
  // One step runs every running sequence; each sub-layer runs over the rows
  // whose sequence executes it, so a sub-layer is really skipped for the
  // batch only when every row skips it, and a weight read serves every row
  // that executes it.
  kMixed,
  // One step runs the sequences of one skip set; the skip sets present take
  // turns (in order of their oldest sequence), so a step skips whole
  // sub-layers but weights shared by two skip sets are read once per set.
  kGrouped,
};

// "mixed" | "grouped" | "auto" (nullopt: what the backend's capabilities
// say); InvalidArgument names the accepted values.
absl::StatusOr<std::optional<SkipSetBatching>> ParseSkipSetBatching(
    absl::string_view name);
const char* SkipSetBatchingName(SkipSetBatching batching);

struct SchedulerOptions {
  int64_t max_batch = 64;  // Most sequences in one forward step.
  int64_t max_prefill_tokens = Engine::kMaxPrefillChunk;  // Per step.
  // nullopt: follow the backend (BackendCapabilities::
  // efficient_mixed_skip_batches): mixed on the CPU backend, measured the
  // faster there in bench/results/*-server-* (docs/server.md).
  std::optional<SkipSetBatching> skip_set_batching;
};

using SequenceHandle = uint64_t;

// Prefix caching within a group of prompts: which earlier prompt each one
// starts from, and how many of its leading tokens it takes from there.
struct PrefixShare {
  int64_t leader = -1;  // Index of an earlier prompt; -1: prefill in full.
  int64_t tokens = 0;   // Shared prefix, a multiple of block_size.
};
// For each prompt, the earlier one (`can_share(i, j)` true, j < i) with the
// longest common prefix, rounded down to whole blocks and capped at
// `limit[i]` tokens (at most prompt length - 1: every sequence computes at
// least its last prompt token, whose logits it samples from). Ties: the
// earliest. Prompts in a tree (few-shot -> question -> branch) thus share at
// every level, not only the prefix common to all. [prompts.size()]
std::vector<PrefixShare> PlanPrefixSharing(
    absl::Span<const absl::Span<const int32_t>> prompts,
    absl::Span<const int64_t> limit, int64_t block_size,
    const std::function<bool(size_t i, size_t j)>& can_share);

// Told about a sequence as it progresses; called on the stepping thread.
struct SequenceCallbacks {
  // Each new piece of generated text (stop strings held back until safe).
  std::function<void(const std::string& piece)> on_text;
  // Once, when the sequence finishes for any reason (including Cancel).
  std::function<void(GenerationResult result)> on_finish;
};

class Scheduler {
 public:
  Scheduler(Engine* engine, const SchedulerOptions& options);
  ~Scheduler();

  // Validates `request` (InvalidArgument / OutOfRange naming the field, as
  // GenerateBatch does; ResourceExhausted when prompt + max_new_tokens can
  // never fit the KV cache) and queues it.
  absl::StatusOr<SequenceHandle> Add(GenerationRequest request,
                                     SequenceCallbacks callbacks);
  // Adds requests whose prompts share prefixes (a fan-out stage's branches,
  // or many questions behind one few-shot prompt) with prefix caching: each
  // starts from the KV blocks (whole blocks, shared read-only) of the
  // earlier request with an equal skip set that shares the longest prefix
  // with it (PlanPrefixSharing) instead of recomputing them. If that request
  // is gone before it starts, it prefills in full. Validates all requests
  // before adding any. Handles are in request order.
  absl::StatusOr<std::vector<SequenceHandle>> AddGroup(
      std::vector<GenerationRequest> requests,
      std::vector<SequenceCallbacks> callbacks);
  // Adds many requests at once: those with the same non-zero prefix_group
  // go in through AddGroup (prefix caching), the others one by one, in
  // request order. Validates every request before adding any (errors name
  // "request i" when there are several). Handles are in request order.
  absl::StatusOr<std::vector<SequenceHandle>> AddBatch(
      std::vector<GenerationRequest> requests,
      std::vector<SequenceCallbacks> callbacks);
  // Ends the sequence now with FinishReason::kCancelled (its on_finish runs
  // before Cancel returns) and frees its cache. Unknown or finished: no-op.
  void Cancel(SequenceHandle handle);

  // One forward step. Fails only on a backend error; the sequences of that
  // step are then finished with kCancelled.
  absl::Status Step();

  bool idle() const { return running_.empty() && waiting_.empty(); }
  int64_t num_running() const;
  int64_t num_waiting() const;
  // Sequences in the last step's batch.
  int64_t last_batch_size() const { return last_batch_size_; }
  // The policy in force (the option, or the backend's choice).
  SkipSetBatching skip_set_batching() const { return batching_; }
  // Fraction of KV cache blocks in use, in [0, 1].
  double kv_cache_usage() const;

 private:
  struct Sequence;
  // What Validate found out about a request.
  struct Checked {
    int64_t blocks = 0;        // KV blocks the whole sequence needs.
    SkipSetId skip = kNoSkip;  // Its skip set, interned.
  };
  // Checks `request` and interns its skip set.
  absl::StatusOr<Checked> Validate(const GenerationRequest& request);
  SequenceHandle Enqueue(GenerationRequest request, SequenceCallbacks callbacks,
                         const Checked& checked);
  // Enqueues validated requests as a prefix group.
  std::vector<SequenceHandle> EnqueueGroup(
      std::vector<GenerationRequest> requests,
      std::vector<SequenceCallbacks> callbacks,
      const std::vector<Checked>& checked);
  void Admit();
  // Starts `sequence` from its prefix leader's blocks once the leader has
  // prefilled them; gives up on the leader if it is gone.
  void TryFork(Sequence& sequence);
  // With the engine's prefix cache on: starts a just-admitted `sequence`
  // from the cached blocks of its prompt's leading whole blocks.
  void AdoptCachedPrefix(Sequence& sequence);
  void Finish(Sequence& sequence);

  Engine* engine_;
  SchedulerOptions options_;
  SkipSetBatching batching_;
  SequenceHandle next_handle_ = 1;
  std::unordered_map<SequenceHandle, std::unique_ptr<Sequence>> sequences_;
  std::deque<SequenceHandle> waiting_;
  std::vector<SequenceHandle> running_;
  int64_t reserved_blocks_ = 0;
  int64_t last_batch_size_ = 0;
  uint64_t group_turn_ = 0;  // kGrouped: which skip set runs next.
};

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_RUNTIME_SCHEDULER_H_
