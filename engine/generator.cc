// Engine::GenerateBatch: continuous batching over a fixed set of requests:
// each forward step carries prefill chunks and decode tokens together.
#include <algorithm>
#include <chrono>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/engine.h"
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

// Decoding state of one sequence.
struct LiveSequence {
  LiveSequence(const GenerationRequest& request, const Tokenizer& tokenizer)
      : request(&request),
        sampler(request.sampling),
        detokenizer(&tokenizer, /*skip_special_tokens=*/true),
        early_exit(request.early_exit) {
    for (const std::string& stop : request.stop_strings) {
      stop_holdback =
          std::max(stop_holdback, stop.size() - (stop.empty() ? 0 : 1));
    }
  }

  const GenerationRequest* request;
  SequenceId sequence = 0;
  Sampler sampler;
  IncrementalDetokenizer detokenizer;
  GenerationResult result;
  int64_t prefilled = 0;    // Prompt tokens already in the cache.
  int32_t last_token = -1;  // Sampled, not yet fed back.
  bool finished = false;
  size_t emitted = 0;  // Bytes of result.text passed to the callback.
  // Text that could still become the start of a stop string is held back
  // from the callback.
  size_t stop_holdback = 0;
  EarlyExitMonitor early_exit;  // Per sequence, so it resets per stage.
  bool has_first_token = false;
  Clock::time_point first_token_time;
  Clock::time_point finish_time;
};

}  // namespace

absl::StatusOr<std::vector<GenerationResult>> Engine::GenerateBatch(
    absl::Span<const GenerationRequest> requests, const TextCallback& on_text) {
  const int64_t context = config().max_position_embeddings;
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationRequest& request = requests[i];
    absl::Status sampling = ValidateSamplingParams(request.sampling);
    if (!sampling.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", i, ": ", sampling.message()));
    }
    if (request.prompt_tokens.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", i, ": prompt_tokens is empty"));
    }
    absl::Status early_exit = ValidateEarlyExitConfig(request.early_exit);
    if (!early_exit.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", i, ": ", early_exit.message()));
    }
    if (request.max_new_tokens < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", i, ": max_new_tokens must be >= 0"));
    }
    if (context > 0 &&
        static_cast<int64_t>(request.prompt_tokens.size()) >= context) {
      return absl::OutOfRangeError(absl::StrCat(
          "request ", i, ": prompt has ", request.prompt_tokens.size(),
          " tokens, the model's context is ", context));
    }
    for (int32_t token : request.prompt_tokens) {
      if (token < 0 || token >= config().vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("request ", i, ": prompt token id ", token,
                         " outside [0, ", config().vocab_size, ")"));
      }
    }
  }

  const Clock::time_point start = Clock::now();
  std::vector<LiveSequence> live;
  live.reserve(requests.size());
  KvBlockManager& blocks = backend_->kv_blocks();
  for (const GenerationRequest& request : requests) {
    live.emplace_back(request, *tokenizer_);
    live.back().sequence = blocks.AddSequence();
    live.back().result.prompt_tokens =
        static_cast<int64_t>(request.prompt_tokens.size());
    if (request.max_new_tokens == 0) live.back().finished = true;
  }
  // Whatever happens below, every sequence's cache blocks go back.
  struct ReleaseAll {
    KvBlockManager& blocks;
    std::vector<LiveSequence>& live;
    ~ReleaseAll() {
      for (LiveSequence& s : live) blocks.Release(s.sequence);
    }
  } release_all{blocks, live};

  const std::vector<int32_t>& eos_ids = tokenizer_->eos_ids();
  // Appends the sampled token to sequence `s`, streams its text and decides
  // whether the sequence is done.
  const auto accept_token = [&](size_t index, int32_t token,
                                const TokenConfidence& confidence) {
    LiveSequence& s = live[index];
    GenerationResult& r = s.result;
    if (!s.has_first_token) {
      s.has_first_token = true;
      s.first_token_time = Clock::now();
    }
    const bool is_eos =
        std::find(eos_ids.begin(), eos_ids.end(), token) != eos_ids.end();
    if (is_eos && !s.request->ignore_eos) {
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
      for (const std::string& stop : s.request->stop_strings) {
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
        if (static_cast<int64_t>(r.tokens.size()) >=
            s.request->max_new_tokens) {
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
    if (on_text) {
      size_t ready = r.text.size();
      if (!s.finished)
        ready = Utf8Boundary(
            r.text, ready > s.stop_holdback ? ready - s.stop_holdback : 0);
      if (ready > s.emitted) {
        on_text(index, r.text.substr(s.emitted, ready - s.emitted));
        s.emitted = ready;
      }
    }
    if (s.finished) {
      s.finish_time = Clock::now();
      blocks.Release(s.sequence);
    }
  };

  // One forward step per iteration over every unfinished sequence: a
  // sequence still reading its prompt contributes a prefill chunk (at most
  // kMaxPrefillChunk prompt tokens per step in all), the others one decode
  // token. A sequence samples whenever its chunk ends at its newest token.
  for (;;) {
    ForwardBatch batch;
    std::vector<size_t> owners;
    int64_t prefill_budget = kMaxPrefillChunk;
    for (size_t i = 0; i < live.size(); ++i) {
      LiveSequence& s = live[i];
      if (s.finished) continue;
      const int64_t prompt_length = s.result.prompt_tokens;
      if (s.prefilled < prompt_length) {
        if (prefill_budget == 0) continue;
        const int64_t count =
            std::min(prompt_length - s.prefilled, prefill_budget);
        const bool last = s.prefilled + count == prompt_length;
        batch.chunks.push_back(
            SequenceChunk{s.sequence,
                          absl::MakeConstSpan(s.request->prompt_tokens)
                              .subspan(s.prefilled, count),
                          s.prefilled, &s.request->skip,
                          last ? LogitsMode::kLast : LogitsMode::kNone});
        s.prefilled += count;
        prefill_budget -= count;
      } else {
        const int64_t position =
            prompt_length + static_cast<int64_t>(s.result.tokens.size()) - 1;
        batch.chunks.push_back(
            SequenceChunk{s.sequence, absl::MakeConstSpan(&s.last_token, 1),
                          position, &s.request->skip, LogitsMode::kLast});
      }
      owners.push_back(i);
    }
    if (batch.chunks.empty()) break;
    ForwardResult forward;
    LS_RETURN_IF_ERROR(backend_->Forward(batch, &forward));
    for (size_t c = 0; c < batch.chunks.size(); ++c) {
      GenerationResult& r = live[owners[c]].result;
      r.sublayers += forward.chunk_sublayers[c];
      r.forwarded_tokens += static_cast<int64_t>(batch.chunks[c].tokens.size());
    }
    for (size_t c = 0; c < batch.chunks.size(); ++c) {
      if (batch.chunks[c].logits != LogitsMode::kLast) continue;
      float* logits = forward.logits.data() +
                      forward.first_logit_row[c] * config().vocab_size;
      TokenConfidence confidence;
      const int32_t token = live[owners[c]].sampler.Sample(
          logits, config().vocab_size, &confidence);
      accept_token(owners[c], token, confidence);
    }
  }

  std::vector<GenerationResult> results;
  results.reserve(live.size());
  for (LiveSequence& s : live) {
    GenerationResult& r = s.result;
    if (s.has_first_token) {
      r.prefill_seconds = SecondsBetween(start, s.first_token_time);
      r.decode_seconds = SecondsBetween(s.first_token_time, s.finish_time);
    }
    results.push_back(std::move(r));
  }
  return results;
}

}  // namespace litestage
