#include "engine/runtime/scheduler.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/util/check.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsBetween(Clock::time_point begin, Clock::time_point end) {
  return std::chrono::duration<double>(end - begin).count();
}

// Largest index <= `index` that does not split a UTF-8 character of `text`.
size_t Utf8Boundary(const std::string& text, size_t index) {
  while (index > 0 && index < text.size() &&
         (static_cast<unsigned char>(text[index]) & 0xC0) == 0x80) {
    --index;
  }
  return index;
}

}  // namespace

// Decoding state of one sequence.
struct Scheduler::Sequence {
  Sequence(GenerationRequest request_in, SequenceCallbacks callbacks_in,
           const Tokenizer& tokenizer)
      : request(std::move(request_in)),
        callbacks(std::move(callbacks_in)),
        sampler(request.sampling),
        detokenizer(&tokenizer, /*skip_special_tokens=*/true),
        early_exit(request.early_exit) {
    for (const std::string& stop : request.stop_strings) {
      stop_holdback =
          std::max(stop_holdback, stop.size() - (stop.empty() ? 0 : 1));
    }
    result.prompt_tokens = static_cast<int64_t>(request.prompt_tokens.size());
  }

  GenerationRequest request;
  SequenceCallbacks callbacks;
  Sampler sampler;
  IncrementalDetokenizer detokenizer;
  EarlyExitMonitor early_exit;  // Per sequence, so it resets per stage.
  GenerationResult result;
  SequenceId kv_sequence = 0;  // Valid once admitted.
  bool admitted = false;
  int64_t reserved_blocks = 0;  // Counted in Scheduler::reserved_blocks_.
  SkipSetId skip = kNoSkip;     // request.skip, interned.
  int64_t prefilled = 0;        // Prompt tokens already in the cache.
  // The tokens whose K/V this sequence has in the cache, in position order
  // (kept only with the prefix cache on, which publishes their blocks).
  std::vector<int32_t> cached_tokens;
  int32_t last_token = -1;  // Sampled, not yet fed back.
  bool finished = false;
  size_t emitted = 0;  // Bytes of result.text passed to on_text.
  // Text that could still become the start of a stop string is held back
  // from on_text.
  size_t stop_holdback = 0;
  // Prefix caching: the sequence that prefills the shared prefix, and how
  // many tokens (whole blocks) this one takes from it; unset once forked.
  std::optional<SequenceHandle> prefix_leader;
  int64_t shared_tokens = 0;
  bool has_first_token = false;
  Clock::time_point added_time;
  Clock::time_point admitted_time;
  Clock::time_point first_token_time;
};

Scheduler::Scheduler(Engine* engine, const SchedulerOptions& options)
    : engine_(engine), options_(options) {
  LS_CHECK(engine_ != nullptr);
  LS_CHECK(options_.max_batch > 0 && options_.max_prefill_tokens > 0);
  batching_ = options_.skip_set_batching.value_or(
      engine_->backend().capabilities().efficient_mixed_skip_batches
          ? SkipSetBatching::kMixed
          : SkipSetBatching::kGrouped);
}

Scheduler::~Scheduler() {
  KvBlockManager& blocks = engine_->kv_blocks();
  for (auto& [handle, sequence] : sequences_) {
    if (sequence->admitted) blocks.Release(sequence->kv_sequence);
  }
}

int64_t Scheduler::num_running() const {
  return static_cast<int64_t>(running_.size());
}
int64_t Scheduler::num_waiting() const {
  return static_cast<int64_t>(waiting_.size());
}
double Scheduler::kv_cache_usage() const {
  return engine_->kv_blocks().usage_ratio();
}

absl::StatusOr<Scheduler::Checked> Scheduler::Validate(
    const GenerationRequest& request) {
  const ModelConfig& config = engine_->config();
  const int64_t context = config.max_position_embeddings;
  const int64_t prompt = static_cast<int64_t>(request.prompt_tokens.size());
  LS_RETURN_IF_ERROR(ValidateSamplingParams(request.sampling));
  LS_RETURN_IF_ERROR(ValidateEarlyExitConfig(request.early_exit));
  if (prompt == 0) {
    return absl::InvalidArgumentError("prompt_tokens is empty");
  }
  if (request.max_new_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_new_tokens must be >= 0, got ", request.max_new_tokens));
  }
  if (context > 0 && prompt >= context) {
    return absl::OutOfRangeError(absl::StrCat(
        "prompt has ", prompt, " tokens, the model's context is ", context));
  }
  LS_RETURN_IF_ERROR(
      CheckTokenIds(request.prompt_tokens, config.vocab_size, "prompt"));
  // The cache must hold the whole sequence: the prompt and every generated
  // token but the last (never fed back), within the context.
  int64_t tokens = prompt + std::max<int64_t>(request.max_new_tokens - 1, 0);
  if (context > 0) tokens = std::min(tokens, context);
  const KvBlockManager& blocks = engine_->kv_blocks();
  const int64_t needed =
      (tokens + blocks.block_size() - 1) / blocks.block_size();
  if (needed > blocks.num_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache full: the request needs ", tokens,
                     " tokens of cache (prompt ", prompt, " + max_new_tokens ",
                     request.max_new_tokens, "), the whole cache holds ",
                     blocks.num_blocks() * blocks.block_size()));
  }
  Checked checked;
  checked.blocks = needed;
  LS_ASSIGN_OR_RETURN(checked.skip, engine_->InternSkipSet(request.skip));
  return checked;
}

SequenceHandle Scheduler::Enqueue(GenerationRequest request,
                                  SequenceCallbacks callbacks,
                                  const Checked& checked) {
  const SequenceHandle handle = next_handle_++;
  auto sequence = std::make_unique<Sequence>(
      std::move(request), std::move(callbacks), engine_->tokenizer());
  // Reserved in full even when a prefix will be shared: conservative, and a
  // follower whose leader is gone can still prefill everything.
  sequence->reserved_blocks = checked.blocks;
  sequence->skip = checked.skip;
  sequence->added_time = Clock::now();
  sequences_.emplace(handle, std::move(sequence));
  waiting_.push_back(handle);
  return handle;
}

absl::StatusOr<SequenceHandle> Scheduler::Add(GenerationRequest request,
                                              SequenceCallbacks callbacks) {
  LS_ASSIGN_OR_RETURN(const Checked checked, Validate(request));
  return Enqueue(std::move(request), std::move(callbacks), checked);
}

std::vector<PrefixShare> PlanPrefixSharing(
    absl::Span<const absl::Span<const int32_t>> prompts,
    absl::Span<const int64_t> limit, int64_t block_size,
    const std::function<bool(size_t i, size_t j)>& can_share) {
  LS_CHECK_EQ(prompts.size(), limit.size());
  LS_CHECK_GE(block_size, 1);
  std::vector<PrefixShare> plan(prompts.size());
  for (size_t i = 1; i < prompts.size(); ++i) {
    const absl::Span<const int32_t> prompt = prompts[i];
    const int64_t cap =
        std::min<int64_t>(limit[i], static_cast<int64_t>(prompt.size()) - 1);
    if (cap < block_size) continue;
    for (size_t j = 0; j < i; ++j) {
      if (!can_share(i, j)) continue;
      const absl::Span<const int32_t> other = prompts[j];
      const int64_t bound =
          std::min<int64_t>(cap, static_cast<int64_t>(other.size()));
      int64_t match = 0;
      while (match < bound && prompt[match] == other[match]) ++match;
      const int64_t shared = match / block_size * block_size;
      if (shared > plan[i].tokens) plan[i] = PrefixShare{int64_t(j), shared};
    }
  }
  return plan;
}

absl::StatusOr<std::vector<SequenceHandle>> Scheduler::AddGroup(
    std::vector<GenerationRequest> requests,
    std::vector<SequenceCallbacks> callbacks) {
  for (GenerationRequest& request : requests) request.prefix_group = 1;
  return AddBatch(std::move(requests), std::move(callbacks));
}

std::vector<SequenceHandle> Scheduler::EnqueueGroup(
    std::vector<GenerationRequest> requests,
    std::vector<SequenceCallbacks> callbacks,
    const std::vector<Checked>& checked) {
  std::vector<absl::Span<const int32_t>> prompts;
  std::vector<int64_t> limits;
  for (const GenerationRequest& r : requests) {
    prompts.push_back(r.prompt_tokens);
    limits.push_back(static_cast<int64_t>(r.prompt_tokens.size()) - 1);
  }
  const std::vector<PrefixShare> plan = PlanPrefixSharing(
      prompts, limits, engine_->kv_blocks().block_size(),
      [&](size_t i, size_t j) { return checked[i].skip == checked[j].skip; });

  std::vector<SequenceHandle> handles;
  handles.reserve(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    handles.push_back(
        Enqueue(std::move(requests[i]), std::move(callbacks[i]), checked[i]));
    if (plan[i].leader >= 0) {
      Sequence& follower = *sequences_.at(handles.back());
      follower.prefix_leader = handles[plan[i].leader];
      follower.shared_tokens = plan[i].tokens;
    }
  }
  return handles;
}

absl::StatusOr<std::vector<SequenceHandle>> Scheduler::AddBatch(
    std::vector<GenerationRequest> requests,
    std::vector<SequenceCallbacks> callbacks) {
  LS_CHECK_EQ(requests.size(), callbacks.size());
  const size_t n = requests.size();
  std::vector<Checked> checked(n);
  for (size_t i = 0; i < n; ++i) {
    absl::StatusOr<Checked> needed = Validate(requests[i]);
    if (!needed.ok()) {
      if (n == 1) return needed.status();
      return absl::Status(
          needed.status().code(),
          absl::StrCat("request ", i, ": ", needed.status().message()));
    }
    checked[i] = *needed;
  }
  std::vector<SequenceHandle> handles(n);
  std::map<int64_t, std::vector<size_t>> groups;
  for (size_t i = 0; i < n; ++i) {
    if (requests[i].prefix_group != 0) {
      groups[requests[i].prefix_group].push_back(i);
      continue;
    }
    handles[i] =
        Enqueue(std::move(requests[i]), std::move(callbacks[i]), checked[i]);
  }
  for (const auto& [group, members] : groups) {
    std::vector<GenerationRequest> group_requests;
    std::vector<SequenceCallbacks> group_callbacks;
    std::vector<Checked> group_checked;
    for (size_t i : members) {
      group_requests.push_back(std::move(requests[i]));
      group_callbacks.push_back(std::move(callbacks[i]));
      group_checked.push_back(checked[i]);
    }
    const std::vector<SequenceHandle> added = EnqueueGroup(
        std::move(group_requests), std::move(group_callbacks), group_checked);
    for (size_t k = 0; k < members.size(); ++k) handles[members[k]] = added[k];
  }
  return handles;
}

void Scheduler::TryFork(Sequence& s) {
  if (!s.prefix_leader.has_value()) return;
  auto leader = sequences_.find(*s.prefix_leader);
  if (leader == sequences_.end() || !leader->second->admitted) {
    // Gone: what it published may still be cached; prefill the rest.
    s.prefix_leader.reset();
    AdoptCachedPrefix(s);
    return;
  }
  if (leader->second->prefilled < s.shared_tokens) return;  // Not yet.
  KvBlockManager& blocks = engine_->kv_blocks();
  blocks.Release(s.kv_sequence);
  s.kv_sequence = blocks.Fork(leader->second->kv_sequence, s.shared_tokens);
  s.prefilled = s.shared_tokens;
  s.result.cached_prompt_tokens = s.shared_tokens;
  if (blocks.prefix_cache()) {
    s.cached_tokens.assign(s.request.prompt_tokens.begin(),
                           s.request.prompt_tokens.begin() + s.shared_tokens);
  }
  s.prefix_leader.reset();
}

void Scheduler::AdoptCachedPrefix(Sequence& s) {
  KvBlockManager& blocks = engine_->kv_blocks();
  if (!blocks.prefix_cache() || s.prefilled > 0) return;
  // At least the last prompt token is computed: its logits give the first
  // generated token.
  const int64_t prompt_length = s.result.prompt_tokens;
  const int64_t adopted =
      blocks.AdoptCached(s.kv_sequence, s.skip, s.request.prompt_tokens,
                         (prompt_length - 1) / blocks.block_size());
  s.prefilled = adopted * blocks.block_size();
  s.result.cached_prompt_tokens = s.prefilled;
  s.cached_tokens.assign(s.request.prompt_tokens.begin(),
                         s.request.prompt_tokens.begin() + s.prefilled);
}

void Scheduler::Admit() {
  KvBlockManager& blocks = engine_->kv_blocks();
  while (!waiting_.empty() &&
         static_cast<int64_t>(running_.size()) < options_.max_batch) {
    Sequence& s = *sequences_.at(waiting_.front());
    // First come, first served: a large request at the head waits for room
    // rather than being overtaken forever by small ones.
    if (reserved_blocks_ + s.reserved_blocks > blocks.num_blocks()) break;
    reserved_blocks_ += s.reserved_blocks;
    s.kv_sequence = blocks.AddSequence();
    s.admitted = true;
    s.admitted_time = Clock::now();
    running_.push_back(waiting_.front());
    waiting_.pop_front();
    if (s.request.max_new_tokens == 0) s.finished = true;
    if (s.prefix_leader.has_value()) {
      TryFork(s);
    } else {
      AdoptCachedPrefix(s);
    }
  }
}

void Scheduler::Finish(Sequence& s) {
  if (s.admitted) {
    engine_->kv_blocks().Release(s.kv_sequence);
    reserved_blocks_ -= s.reserved_blocks;
    s.admitted = false;
  }
  s.finished = true;
  GenerationResult& r = s.result;
  const Clock::time_point now = Clock::now();
  if (s.has_first_token) {
    r.prefill_seconds = SecondsBetween(s.admitted_time, s.first_token_time);
    r.decode_seconds = SecondsBetween(s.first_token_time, now);
  }
}

void Scheduler::Cancel(SequenceHandle handle) {
  auto it = sequences_.find(handle);
  if (it == sequences_.end()) return;
  std::unique_ptr<Sequence> sequence = std::move(it->second);
  sequences_.erase(it);
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), handle),
                 waiting_.end());
  running_.erase(std::remove(running_.begin(), running_.end(), handle),
                 running_.end());
  sequence->result.finish_reason = FinishReason::kCancelled;
  Finish(*sequence);
  if (sequence->callbacks.on_finish) {
    sequence->callbacks.on_finish(std::move(sequence->result));
  }
}

absl::StatusOr<std::optional<SkipSetBatching>> ParseSkipSetBatching(
    absl::string_view name) {
  if (name == "auto") return std::optional<SkipSetBatching>();
  if (name == "mixed") return SkipSetBatching::kMixed;
  if (name == "grouped") return SkipSetBatching::kGrouped;
  return absl::InvalidArgumentError(
      absl::StrCat("skip-set batching must be 'auto', 'mixed' or 'grouped', "
                   "got '",
                   name, "'"));
}

const char* SkipSetBatchingName(SkipSetBatching batching) {
  return batching == SkipSetBatching::kGrouped ? "grouped" : "mixed";
}

absl::Status Scheduler::Step() {
  Admit();
  const ModelConfig& config = engine_->config();
  const int64_t context = config.max_position_embeddings;
  const std::vector<int32_t>& eos_ids = engine_->tokenizer().eos_ids();

  // Appends the sampled token to `s`, streams its text and decides whether
  // the sequence is done.
  const auto accept_token = [&](Sequence& s, int32_t token,
                                const TokenConfidence& confidence) {
    GenerationResult& r = s.result;
    if (!s.has_first_token) {
      s.has_first_token = true;
      s.first_token_time = Clock::now();
    }
    const bool is_eos =
        std::find(eos_ids.begin(), eos_ids.end(), token) != eos_ids.end();
    if (is_eos && !s.request.ignore_eos) {
      r.finish_reason = FinishReason::kEos;
      s.finished = true;
    } else if (s.early_exit.Push(confidence,
                                 static_cast<int64_t>(r.tokens.size()))) {
      // LiteStage: EOS takes the place of the current token.
      r.finish_reason = FinishReason::kEarlyExit;
      r.early_exit_reason = s.early_exit.reason();
      s.finished = true;
    } else {
      r.tokens.push_back(token);
      r.confidences.push_back(confidence);
      r.text += s.detokenizer.Push(token);
      s.last_token = token;
      // A stop string may straddle tokens: search the recent tail only.
      for (const std::string& stop : s.request.stop_strings) {
        if (stop.empty()) continue;
        const size_t search_from = r.text.size() > stop.size() + 64
                                       ? r.text.size() - stop.size() - 64
                                       : 0;
        const size_t found = r.text.find(stop, search_from);
        if (found != std::string::npos) {
          r.text.resize(found);
          r.finish_reason = FinishReason::kStopString;
          s.finished = true;
          break;
        }
      }
      if (!s.finished) {
        const int64_t length =
            r.prompt_tokens + static_cast<int64_t>(r.tokens.size());
        if (static_cast<int64_t>(r.tokens.size()) >= s.request.max_new_tokens) {
          r.finish_reason = FinishReason::kLength;
          s.finished = true;
        } else if (context > 0 && length >= context) {
          r.finish_reason = FinishReason::kContext;
          s.finished = true;
        }
      }
    }
    if (s.finished && r.finish_reason != FinishReason::kStopString) {
      r.text += s.detokenizer.Flush();
    }
    if (s.callbacks.on_text) {
      size_t ready = r.text.size();
      if (!s.finished) {
        ready = Utf8Boundary(
            r.text, ready > s.stop_holdback ? ready - s.stop_holdback : 0);
      }
      if (ready > s.emitted) {
        s.callbacks.on_text(r.text.substr(s.emitted, ready - s.emitted));
        s.emitted = ready;
      }
    }
  };

  // kGrouped: only the sequences of this step's skip set run; the skip sets
  // present take turns, in order of their oldest running sequence.
  std::optional<SkipSetId> step_skip;
  if (batching_ == SkipSetBatching::kGrouped) {
    std::vector<SkipSetId> skip_sets;
    for (SequenceHandle handle : running_) {
      const Sequence& s = *sequences_.at(handle);
      if (s.finished || s.prefix_leader.has_value()) continue;
      if (std::find(skip_sets.begin(), skip_sets.end(), s.skip) ==
          skip_sets.end()) {
        skip_sets.push_back(s.skip);
      }
    }
    if (!skip_sets.empty()) {
      step_skip = skip_sets[group_turn_++ % skip_sets.size()];
    }
  }

  // One forward step over the running sequences: a sequence still reading
  // its prompt contributes a prefill chunk (at most max_prefill_tokens prompt
  // tokens per step in all), the others one decode token. A sequence samples
  // whenever its chunk ends at its newest token.
  ForwardBatch batch;
  std::vector<Sequence*> owners;
  std::vector<SequenceId> kv_sequences;  // [chunks]
  int64_t prefill_budget = options_.max_prefill_tokens;
  for (SequenceHandle handle : running_) {
    Sequence& s = *sequences_.at(handle);
    if (s.finished || s.prefix_leader.has_value()) continue;
    if (step_skip.has_value() && *step_skip != s.skip) continue;
    const int64_t prompt_length = s.result.prompt_tokens;
    if (s.prefilled < prompt_length) {
      if (prefill_budget == 0) continue;
      const int64_t count =
          std::min(prompt_length - s.prefilled, prefill_budget);
      const bool last = s.prefilled + count == prompt_length;
      batch.chunks.push_back(SequenceChunk{
          absl::MakeConstSpan(s.request.prompt_tokens)
              .subspan(s.prefilled, count),
          s.prefilled, s.skip, last ? LogitsMode::kSample : LogitsMode::kNone});
      s.prefilled += count;
      prefill_budget -= count;
    } else {
      const int64_t position =
          prompt_length + static_cast<int64_t>(s.result.tokens.size()) - 1;
      batch.chunks.push_back(
          SequenceChunk{absl::MakeConstSpan(&s.last_token, 1), position, s.skip,
                        LogitsMode::kSample});
    }
    if (batch.chunks.back().logits == LogitsMode::kSample) {
      batch.chunks.back().draw = s.sampler.Next();
    }
    owners.push_back(&s);
    kv_sequences.push_back(s.kv_sequence);
  }
  last_batch_size_ = static_cast<int64_t>(owners.size());

  absl::Status status;
  if (!batch.chunks.empty()) {
    ForwardResult forward;
    status = engine_->Forward(kv_sequences, &batch, &forward);
    if (status.ok()) {
      for (size_t c = 0; c < batch.chunks.size(); ++c) {
        GenerationResult& r = owners[c]->result;
        r.sublayers += forward.chunk_sublayers[c];
        r.forwarded_tokens +=
            static_cast<int64_t>(batch.chunks[c].tokens.size());
        if (engine_->kv_blocks().prefix_cache()) {
          Sequence& s = *owners[c];
          s.cached_tokens.insert(s.cached_tokens.end(),
                                 batch.chunks[c].tokens.begin(),
                                 batch.chunks[c].tokens.end());
          engine_->kv_blocks().Publish(s.kv_sequence, s.skip, s.cached_tokens);
        }
        if (batch.chunks[c].logits != LogitsMode::kSample) continue;
        const SampledToken& sampled = forward.sampled[c];
        accept_token(*owners[c], sampled.token, sampled.confidence);
      }
    } else {
      // The step's sequences cannot continue: their cache is in an unknown
      // state. They end as cancelled; the caller gets the error.
      for (Sequence* s : owners) {
        s->result.finish_reason = FinishReason::kCancelled;
        s->finished = true;
      }
    }
  }

  // Followers whose leader prefilled the shared prefix in this step take its
  // blocks now, before a finished leader releases them below.
  for (SequenceHandle handle : running_) {
    TryFork(*sequences_.at(handle));
  }

  // Finished sequences leave, then their callbacks run (they may Add the
  // next stage's sequences or Cancel others).
  std::vector<std::unique_ptr<Sequence>> done;
  for (auto it = running_.begin(); it != running_.end();) {
    auto found = sequences_.find(*it);
    if (found->second->finished) {
      Finish(*found->second);
      done.push_back(std::move(found->second));
      sequences_.erase(found);
      it = running_.erase(it);
    } else {
      ++it;
    }
  }
  for (std::unique_ptr<Sequence>& s : done) {
    if (s->callbacks.on_finish) s->callbacks.on_finish(std::move(s->result));
  }
  return status;
}

}  // namespace litestage
