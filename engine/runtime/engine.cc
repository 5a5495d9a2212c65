#include "engine/runtime/engine.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/backend/registry.h"
#include "engine/model/fingerprint.h"
#include "engine/runtime/scheduler.h"
#include "engine/util/check.h"
#include "engine/util/status_macros.h"

namespace litestage {

namespace {
constexpr absl::string_view kSyntheticPrefix = "synthetic:";
}  // namespace

absl::StatusOr<std::optional<DType>> ParseMatrixDType(const std::string& name) {
  if (name == "auto") return std::optional<DType>();
  if (name == "f32") return std::optional<DType>(DType::kF32);
  if (name == "bf16") return std::optional<DType>(DType::kBF16);
  return absl::InvalidArgumentError(
      absl::StrCat("--dtype must be auto, f32 or bf16, got '", name, "'"));
}

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kStopString:
      return "stop";
    case FinishReason::kContext:
      return "context";
    case FinishReason::kEarlyExit:
      return "early_exit";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(
    const EngineOptions& options) {
  std::unique_ptr<Engine> engine(new Engine());
  if (absl::StartsWith(options.model, kSyntheticPrefix)) {
    const std::string preset(options.model.substr(kSyntheticPrefix.size()));
    LS_ASSIGN_OR_RETURN(engine->weights_,
                        MakeSyntheticWeights(
                            preset, options.matrix_dtype.value_or(DType::kBF16),
                            options.synthetic_seed));
    // Random weights have no vocabulary: bytes stand in for tokens so text
    // still round-trips (the output is gibberish by construction).
    engine->tokenizer_ =
        MakeByteTokenizer(static_cast<int32_t>(engine->config().vocab_size));
    LS_LOG(WARNING)
        << "model " << options.model
        << " has SYNTHETIC random weights: output text is meaningless";
  } else {
    LS_ASSIGN_OR_RETURN(
        engine->weights_,
        LoadModelWeights(options.model,
                         LoadOptions{.matrix_dtype = options.matrix_dtype,
                                     .use_mmap = options.use_mmap}));
    LS_ASSIGN_OR_RETURN(engine->tokenizer_, LoadTokenizer(options.model));
    absl::StatusOr<ChatTemplate> chat =
        ChatTemplate::FromModelDir(options.model);
    if (chat.ok()) {
      engine->chat_template_ = *std::move(chat);
    } else if (!absl::IsNotFound(chat.status())) {
      // A template we cannot render only disables --chat; raw prompts work.
      LS_LOG(WARNING) << "chat formatting unavailable: " << chat.status();
    }
  }
  Tokenizer& tokenizer = *engine->tokenizer_;
  if (tokenizer.bos_id() < 0 && engine->config().bos_token_id >= 0) {
    tokenizer.set_bos_id(static_cast<int32_t>(engine->config().bos_token_id));
  }
  if (tokenizer.eos_ids().empty()) {
    std::vector<int32_t> eos(engine->config().eos_token_ids.begin(),
                             engine->config().eos_token_ids.end());
    tokenizer.set_eos_ids(std::move(eos));
  }
  if (tokenizer.vocab_size() > engine->config().vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        options.model, ": tokenizer has ", tokenizer.vocab_size(),
        " tokens but the model's vocab_size is ", engine->config().vocab_size));
  }
  LS_ASSIGN_OR_RETURN(
      engine->backend_,
      CreateBackend(options.device, *engine->weights_, options.backend));
  engine->kv_blocks_ = std::make_unique<KvBlockManager>(
      engine->backend_->num_kv_blocks(), engine->backend_->kv_block_size(),
      options.prefix_cache);
  engine->fingerprint_ = ComputeModelFingerprint(*engine->weights_);
  LS_LOG(INFO) << "loaded " << engine->Describe() << " on "
               << engine->backend_->description();
  return engine;
}

std::string Engine::Describe() const {
  const ModelConfig& c = config();
  return absl::StrCat(
      weights_->source, weights_->synthetic ? " [SYNTHETIC weights]" : "", " (",
      c.architecture, ", ", c.num_hidden_layers, " layers, hidden ",
      c.hidden_size, ", ", DTypeName(weights_->matrix_dtype), ")");
}

absl::StatusOr<std::vector<int32_t>> Engine::EncodePrompt(
    absl::string_view text, absl::Span<const TextRange> plain_text) const {
  return tokenizer_->Encode(text, /*add_special_tokens=*/true, plain_text);
}

absl::StatusOr<std::vector<int32_t>> Engine::EncodeChat(
    absl::string_view user_message) const {
  if (!chat_template_) {
    return absl::FailedPreconditionError(absl::StrCat(
        weights_->source, " has no chat template; use a raw prompt"));
  }
  const ChatMessage message{"user", std::string(user_message)};
  std::vector<TextRange> content;
  const std::string prompt = chat_template_->Render(
      {&message, 1}, /*add_generation_prompt=*/true, &content);
  // The template writes every special token (BOS included) itself.
  return tokenizer_->Encode(prompt, /*add_special_tokens=*/false, content);
}

absl::Status CheckTokenIds(absl::Span<const int32_t> tokens, int64_t vocab_size,
                           absl::string_view what) {
  for (int32_t token : tokens) {
    if (token < 0 || token >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " token id ", token, " outside [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SkipSetId> Engine::InternSkipSet(const SkipSet& skip) {
  const int64_t layers = config().num_hidden_layers;
  if (static_cast<int64_t>(skip.attention.size()) > layers ||
      static_cast<int64_t>(skip.mlp.size()) > layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "skip set covers ", std::max(skip.attention.size(), skip.mlp.size()),
        " layers, the model has ", layers));
  }
  if (skip.num_skipped() == 0) return kNoSkip;
  std::vector<bool> key(2 * layers);
  for (int64_t layer = 0; layer < layers; ++layer) {
    key[layer] = skip.skips_attention(layer);
    key[layers + layer] = skip.skips_mlp(layer);
  }
  auto it = skip_set_ids_.find(key);
  if (it != skip_set_ids_.end()) return it->second;
  if (static_cast<int64_t>(skip_set_ids_.size()) + 1 >= kMaxSkipSets) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "more than ", kMaxSkipSets, " distinct skip sets on one engine"));
  }
  const SkipSetId id = static_cast<SkipSetId>(skip_set_ids_.size()) + 1;
  SkipSet normalized;
  normalized.attention.assign(key.begin(), key.begin() + layers);
  normalized.mlp.assign(key.begin() + layers, key.end());
  LS_RETURN_IF_ERROR(backend_->RegisterSkipSet(id, normalized));
  skip_set_ids_.emplace(std::move(key), id);
  return id;
}

absl::Status Engine::Forward(absl::Span<const SequenceId> sequences,
                             ForwardBatch* batch, ForwardResult* result) {
  LS_CHECK_EQ(sequences.size(), batch->chunks.size());
  std::vector<KvBlockManager::Write> writes(sequences.size());
  for (size_t c = 0; c < sequences.size(); ++c) {
    const SequenceChunk& chunk = batch->chunks[c];
    writes[c] = {sequences[c], chunk.start_position,
                 static_cast<int64_t>(chunk.tokens.size())};
  }
  LS_RETURN_IF_ERROR(kv_blocks_->ReserveWrites(writes));
  for (size_t c = 0; c < sequences.size(); ++c) {
    batch->chunks[c].block_table = kv_blocks_->block_table(sequences[c]);
  }
  return backend_->Forward(*batch, result);
}

absl::Status Engine::ForwardPrompt(absl::Span<const int32_t> tokens,
                                   const SkipSet& skip, LogitsMode logits_mode,
                                   SublayerObserver* observer,
                                   std::vector<float>* logits) {
  if (tokens.empty()) return absl::InvalidArgumentError("prompt has no tokens");
  LS_RETURN_IF_ERROR(CheckTokenIds(tokens, config().vocab_size, "prompt"));
  LS_ASSIGN_OR_RETURN(const SkipSetId skip_id, InternSkipSet(skip));
  KvBlockManager& blocks = *kv_blocks_;
  const SequenceId sequence = blocks.AddSequence();
  absl::Status status;
  for (size_t begin = 0; begin < tokens.size() && status.ok();
       begin += kMaxPrefillChunk) {
    const size_t count =
        std::min<size_t>(kMaxPrefillChunk, tokens.size() - begin);
    ForwardBatch batch;
    batch.chunks.push_back(SequenceChunk{tokens.subspan(begin, count),
                                         static_cast<int64_t>(begin), skip_id,
                                         logits_mode});
    batch.observer = observer;
    ForwardResult result;
    status = Forward({&sequence, 1}, &batch, &result);
    if (logits != nullptr) {
      logits->insert(logits->end(), result.logits.begin(), result.logits.end());
    }
  }
  blocks.Release(sequence);
  return status;
}

absl::StatusOr<std::vector<float>> Engine::PromptLogits(
    absl::Span<const int32_t> tokens, const SkipSet& skip) {
  std::vector<float> logits;
  logits.reserve(tokens.size() * config().vocab_size);
  LS_RETURN_IF_ERROR(
      ForwardPrompt(tokens, skip, LogitsMode::kAll, nullptr, &logits));
  return logits;
}

absl::Status Engine::ScoreContinuations(
    absl::Span<const ScoringRequest> requests, const ScoredLogits& on_logits) {
  const int64_t vocab = config().vocab_size;
  const int64_t context = config().max_position_embeddings;
  // What each sequence feeds: every token but the last, whose logits would
  // predict past the request.
  std::vector<absl::Span<const int32_t>> fed;
  std::vector<int64_t> limits;
  std::vector<SkipSetId> skip_ids(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const ScoringRequest& r = requests[i];
    const int64_t n = static_cast<int64_t>(r.tokens.size());
    if (n == 0 || r.first_scored < 1 || r.first_scored > n) {
      return absl::InvalidArgumentError(
          absl::StrCat("scoring request ", i, ": first_scored ", r.first_scored,
                       " outside [1, ", n, "]"));
    }
    if (context > 0 && n - 1 > context) {
      return absl::InvalidArgumentError(
          absl::StrCat("scoring request ", i, ": ", n - 1,
                       " tokens to feed, the model's context is ", context));
    }
    LS_RETURN_IF_ERROR(CheckTokenIds(r.tokens, vocab,
                                     absl::StrCat("scoring request ", i, ":")));
    LS_ASSIGN_OR_RETURN(skip_ids[i], InternSkipSet(r.skip));
    fed.push_back(absl::MakeConstSpan(r.tokens).first(n - 1));
    // Positions from first_scored - 1 on need logits, so this sequence
    // computes them itself.
    limits.push_back(r.first_scored - 1);
  }
  KvBlockManager& blocks = *kv_blocks_;
  const std::vector<PrefixShare> plan = PlanPrefixSharing(
      fed, limits, blocks.block_size(),
      [&](size_t i, size_t j) { return skip_ids[i] == skip_ids[j]; });
  // Requests run in waves: a wave holds every request whose prefix leader
  // has finished, so a step carries many sequences (on the CPU a step with
  // few rows costs a whole read of the weights). A sequence is released
  // once no later request forks from it.
  std::vector<size_t> last_use(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    last_use[i] = i;
    if (plan[i].leader >= 0) {
      last_use[plan[i].leader] = std::max(last_use[plan[i].leader], i);
    }
  }
  std::vector<SequenceId> sequences(requests.size(), -1);
  std::vector<bool> done(requests.size(), false);
  std::vector<int64_t> rows_delivered(requests.size(), 0);
  absl::Status status;
  size_t finished = 0;
  while (finished < requests.size() && status.ok()) {
    // Positions still to feed per wave member: [next, fed) with logits from
    // first_scored - 1 on.
    struct Member {
      size_t request;
      int64_t next;
    };
    std::vector<Member> wave;
    for (size_t i = 0; i < requests.size(); ++i) {
      if (done[i] || (plan[i].leader >= 0 && !done[plan[i].leader])) continue;
      if (plan[i].leader >= 0) {
        sequences[i] = blocks.Fork(sequences[plan[i].leader], plan[i].tokens);
      } else {
        sequences[i] = blocks.AddSequence();
      }
      wave.push_back(Member{i, plan[i].leader >= 0 ? plan[i].tokens : 0});
    }
    LS_CHECK(!wave.empty()) << "prefix plan has a cycle";
    bool pending = true;
    while (pending && status.ok()) {
      // One step: at most one chunk per sequence (a chunk attends to the
      // KV its earlier chunks wrote), up to kMaxStepTokens tokens and
      // kMaxStepLogitRows rows of logits; a chunk never straddles the start
      // of the scored positions, so its logits mode is all or nothing.
      constexpr int64_t kMaxStepTokens = 4 * kMaxPrefillChunk;
      constexpr int64_t kMaxStepLogitRows = kMaxPrefillChunk;
      ForwardBatch batch;
      std::vector<size_t> members;
      std::vector<SequenceId> batch_sequences;
      int64_t step_tokens = 0, step_rows = 0;
      pending = false;
      for (size_t m = 0; m < wave.size(); ++m) {
        Member& member = wave[m];
        const int64_t n = static_cast<int64_t>(fed[member.request].size());
        if (member.next >= n) continue;
        pending = true;
        const int64_t scored_begin = requests[member.request].first_scored - 1;
        const bool scored = member.next >= scored_begin;
        int64_t count = std::min(scored ? n : scored_begin,
                                 member.next + kMaxPrefillChunk) -
                        member.next;
        if (!batch.chunks.empty()) {
          if (step_tokens + count > kMaxStepTokens) continue;
          if (scored && step_rows + count > kMaxStepLogitRows) continue;
        }
        batch.chunks.push_back(
            SequenceChunk{fed[member.request].subspan(member.next, count),
                          member.next, skip_ids[member.request],
                          scored ? LogitsMode::kAll : LogitsMode::kNone});
        batch_sequences.push_back(sequences[member.request]);
        members.push_back(m);
        step_tokens += count;
        if (scored) step_rows += count;
      }
      if (batch.chunks.empty()) break;
      ForwardResult result;
      status = Forward(batch_sequences, &batch, &result);
      if (!status.ok()) break;
      for (size_t c = 0; c < batch.chunks.size(); ++c) {
        Member& member = wave[members[c]];
        const SequenceChunk& chunk = batch.chunks[c];
        if (chunk.logits == LogitsMode::kAll) {
          const int64_t count = static_cast<int64_t>(chunk.tokens.size());
          on_logits(
              member.request, rows_delivered[member.request],
              absl::MakeConstSpan(result.logits)
                  .subspan(result.first_logit_row[c] * vocab, count * vocab));
          rows_delivered[member.request] += count;
        }
        member.next += static_cast<int64_t>(chunk.tokens.size());
      }
    }
    if (!status.ok()) break;
    for (const Member& member : wave) {
      const size_t i = member.request;
      LS_CHECK_EQ(rows_delivered[i],
                  static_cast<int64_t>(requests[i].tokens.size()) -
                      requests[i].first_scored);
      done[i] = true;
      ++finished;
    }
    for (size_t j = 0; j < requests.size(); ++j) {
      if (sequences[j] < 0 || !done[j]) continue;
      bool needed = false;
      for (size_t i = j + 1; i <= last_use[j] && !needed; ++i) {
        needed = plan[i].leader == static_cast<int64_t>(j) && !done[i];
      }
      if (!needed) {
        blocks.Release(sequences[j]);
        sequences[j] = -1;
      }
    }
  }
  for (SequenceId& sequence : sequences) {
    if (sequence >= 0) blocks.Release(sequence);
  }
  return status;
}

absl::Status Engine::ObservePrompt(absl::Span<const int32_t> tokens,
                                   SublayerObserver* observer,
                                   const SkipSet& skip) {
  return ForwardPrompt(tokens, skip, LogitsMode::kNone, observer, nullptr);
}

absl::StatusOr<GenerationResult> Engine::Generate(
    const GenerationRequest& request, const TextCallback& on_text) {
  LS_ASSIGN_OR_RETURN(std::vector<GenerationResult> results,
                      GenerateBatch({&request, 1}, on_text));
  return std::move(results[0]);
}

// GenerateBatch: a fixed set of requests run to completion on a Scheduler
// (continuous batching: each forward step carries prefill chunks and decode
// tokens together).

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
