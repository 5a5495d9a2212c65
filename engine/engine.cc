#include "engine/engine.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/model/fingerprint.h"
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

absl::Status Engine::ForwardPrompt(absl::Span<const int32_t> tokens,
                                   const SkipSet& skip, LogitsMode logits_mode,
                                   SublayerObserver* observer,
                                   std::vector<float>* logits) {
  if (tokens.empty()) return absl::InvalidArgumentError("prompt has no tokens");
  for (int32_t token : tokens) {
    if (token < 0 || token >= config().vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token id ", token,
                                                     " outside [0, ",
                                                     config().vocab_size, ")"));
    }
  }
  KvBlockManager& blocks = backend_->kv_blocks();
  const SequenceId sequence = blocks.AddSequence();
  absl::Status status;
  for (size_t begin = 0; begin < tokens.size() && status.ok();
       begin += kMaxPrefillChunk) {
    const size_t count =
        std::min<size_t>(kMaxPrefillChunk, tokens.size() - begin);
    ForwardBatch batch;
    batch.chunks.push_back(SequenceChunk{sequence, tokens.subspan(begin, count),
                                         static_cast<int64_t>(begin), &skip,
                                         logits_mode});
    batch.observer = observer;
    ForwardResult result;
    status = backend_->Forward(batch, &result);
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

}  // namespace litestage
