// Engine: a loaded model (weights, tokenizer, chat template) on a backend,
// and generation over one or many sequences.
#ifndef LITESTAGE_ENGINE_RUNTIME_ENGINE_H_
#define LITESTAGE_ENGINE_RUNTIME_ENGINE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/backend/backend.h"
#include "engine/model/fingerprint.h"
#include "engine/model/weights.h"
#include "engine/runtime/early_exit.h"
#include "engine/runtime/kv_cache.h"
#include "engine/runtime/sampler.h"
#include "engine/tokenizer/tokenizer.h"

namespace litestage {

// The --prefix-cache flag's help, for every binary that has one.
inline constexpr char kPrefixCacheFlagHelp[] =
    "Reuse the KV blocks of prompt prefixes already computed (every "
    "request's few-shot prefix, each stage's prompt, which starts with the "
    "previous stage's) when the tokens and the skip set are the same; the "
    "output is the same as recomputing them";

struct EngineOptions {
  // A Hugging Face model directory or "synthetic:<preset>".
  std::string model;
  std::string device = "cpu";
  // Matrix dtype at load; nullopt keeps the file's (GGUF blocks included;
  // synthetic: bf16).
  std::optional<DType> matrix_dtype;
  BackendOptions backend;
  uint64_t synthetic_seed = 0;
  // See LoadOptions::use_mmap (--no-mmap sets false).
  bool use_mmap = true;
  // Keep written KV blocks findable by content, so that sequences starting
  // with the same tokens and skip set (every request's few-shot prefix,
  // each stage's prompt) reuse them instead of recomputing
  // (KvBlockManager's prefix cache). Off by default in the library, on in
  // the server and litestage-run (--prefix-cache).
  bool prefix_cache = false;
};

// InvalidArgument "<what> token id N outside [0, vocab_size)" for the first
// id out of range: the one token check of the runtime (requests are checked
// once, at the boundary; backends only CHECK).
absl::Status CheckTokenIds(absl::Span<const int32_t> tokens, int64_t vocab_size,
                           absl::string_view what);

// The --dtype flag of the binaries: "auto" (nullopt: as stored: a GGUF
// file's Q4_0/Q4_1/Q8_0 blocks are computed on directly, bit-identical to
// f32; other GGUF types become f32; bf16 stays bf16; synthetic: bf16),
// "f32" or "bf16"; InvalidArgument naming --dtype otherwise.
absl::StatusOr<std::optional<DType>> ParseMatrixDType(const std::string& name);
inline constexpr char kDTypeFlagHelp[] =
    "Weight representation of the matrices: auto (as stored: GGUF "
    "Q4_0/Q4_1/Q8_0 blocks are computed on directly, to the same bits as "
    "f32, at the file's size; other GGUF types f32; bf16 stays bf16; "
    "synthetic bf16), f32 (dequantized or widened: 4 bytes per weight) or "
    "bf16 (rounded: 2 bytes per weight, not bit-identical)";

enum class FinishReason : uint8_t {
  kLength,      // max_new_tokens reached.
  kEos,         // An EOS id was produced (not included in `tokens`).
  kStopString,  // A stop string appeared (text cut before it).
  kContext,     // The model's context length was reached.
  kEarlyExit,   // Confidence early exit fired (LiteStage).
  kCancelled,   // The caller stopped the sequence.
};
const char* FinishReasonName(FinishReason reason);

struct GenerationRequest {
  std::vector<int32_t> prompt_tokens;
  SamplingParams sampling;
  int64_t max_new_tokens = 128;
  std::vector<std::string> stop_strings;
  bool ignore_eos = false;  // Keep generating past EOS (benchmarks, tests).
  SkipSet skip;             // Sub-layers this sequence skips.
  EarlyExitConfig early_exit;
  // Requests added together (GenerateBatch, Scheduler::AddBatch) with the
  // same non-zero group share the KV of their common prompt prefix when
  // their skip sets are equal; the prefix is prefilled once.
  int64_t prefix_group = 0;
};

struct GenerationResult {
  std::vector<int32_t> tokens;               // Generated ids, EOS excluded.
  std::vector<TokenConfidence> confidences;  // [tokens.size()]
  std::string text;                          // Decoded, stop string cut.
  FinishReason finish_reason = FinishReason::kLength;
  int64_t prompt_tokens = 0;
  // Prompt tokens whose KV came from another sequence (prefix caching) and
  // were not recomputed.
  int64_t cached_prompt_tokens = 0;
  double prefill_seconds = 0;  // Prompt forward through the first token.
  double decode_seconds = 0;   // Every later token.
  // kEarlyExit only: "mean max_prob 0.21 <= 0.30 over the last 8 tokens".
  std::string early_exit_reason;
  // Tokens this sequence fed through the model: the prompt (less the cached
  // prefix) and every sampled token but the last (the final sample, kept,
  // EOS or dropped by early exit, is never fed back).
  int64_t forwarded_tokens = 0;
  // Sub-layer executions over those tokens, counted by the backend:
  // sublayers.total() == 2 * num_layers * forwarded_tokens.
  SublayerCounts sublayers;
};

// Called with each new piece of text of sequence `index` as it completes.
using TextCallback =
    std::function<void(size_t index, const std::string& piece)>;

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(
      const EngineOptions& options);

  const ModelConfig& config() const { return weights_->config; }
  const ModelWeights& weights() const { return *weights_; }
  // Identity of the loaded model (what skip profiles are made for).
  const ModelFingerprint& fingerprint() const { return fingerprint_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  // Null when the model has no chat template.
  const ChatTemplate* chat_template() const {
    return chat_template_ ? &*chat_template_ : nullptr;
  }
  Backend& backend() { return *backend_; }
  // Which cache blocks each sequence owns: the runtime's bookkeeping over
  // the backend's KV storage. The scheduler (and the engine's own prompt
  // passes) reserve, fork, truncate and release through it; the backend
  // only reads the block tables it is given.
  KvBlockManager& kv_blocks() { return *kv_blocks_; }
  const KvBlockManager& kv_blocks() const { return *kv_blocks_; }

  // The id of `skip` for chunks (SkipSetId), registered with the backend on
  // first use; skip sets that skip the same sub-layers (SkipsSameAs) share
  // one. InvalidArgument when `skip` is longer than the model's layers;
  // ResourceExhausted past kMaxSkipSets distinct sets (profiles use a few
  // each, so only a bug or an attack gets there).
  absl::StatusOr<SkipSetId> InternSkipSet(const SkipSet& skip);
  static constexpr int64_t kMaxSkipSets = 4096;

  // One forward step: chunk i writes the cache of `sequences[i]`. Checks
  // and reserves the step's writes (KvBlockManager::ReserveWrites: all or
  // nothing), fills each chunk's block_table and runs the backend.
  absl::Status Forward(absl::Span<const SequenceId> sequences,
                       ForwardBatch* batch, ForwardResult* result);
  // "model_dir (llama, 5 layers, f32)"; says "SYNTHETIC" for random weights.
  std::string Describe() const;

  // Prompt text -> ids, with the tokenizer's BOS/prefix. Special-token text
  // is parsed as control tokens except where it overlaps `plain_text`
  // (Tokenizer::Encode).
  absl::StatusOr<std::vector<int32_t>> EncodePrompt(
      absl::string_view text,
      absl::Span<const TextRange> plain_text = {}) const;
  // Chat-formatted single user turn -> ids. The message is plain text: its
  // special-token text never becomes control tokens. FailedPrecondition
  // without a chat template.
  absl::StatusOr<std::vector<int32_t>> EncodeChat(
      absl::string_view user_message) const;

  // Runs `tokens` through the model in a fresh sequence and returns the
  // logits of every position: [tokens.size(), vocab_size] f32.
  absl::StatusOr<std::vector<float>> PromptLogits(
      absl::Span<const int32_t> tokens, const SkipSet& skip = {});
  // Runs `tokens` through the model in a fresh sequence (computing no
  // logits), showing `observer` the residual stream around every executed
  // sub-layer; chunk_index is always 0.
  absl::Status ObservePrompt(absl::Span<const int32_t> tokens,
                             SublayerObserver* observer,
                             const SkipSet& skip = {});

  // Teacher forcing for many sequences at once (litestage-eval's fidelity
  // pass): each request's `tokens` run through the model with its skip set,
  // and `on_logits(i, rows)` receives the logits of positions
  // [first_scored - 1, tokens.size() - 1) of request i: in all
  // [tokens.size() - first_scored, vocab_size] f32, row r predicting
  // tokens[first_scored + r]. Requests share the KV of prompt prefixes
  // (PlanPrefixSharing over equal skip sets), so many prompts behind one
  // few-shot prefix prefill it once; logits are computed only for the
  // scored positions, and handed over step by step: `on_logits(i, first,
  // rows)` gets rows [first, first + rows.size() / vocab_size) of request
  // i's, in order, so memory stays one step's logits however many requests
  // there are. Equal to PromptLogits row for row (the same kernels over the
  // same positions). InvalidArgument for an empty sequence,
  // first_scored outside [1, tokens.size()], ids outside the vocabulary or
  // more tokens than the context; ResourceExhausted when the KV cache
  // cannot hold them.
  struct ScoringRequest {
    std::vector<int32_t> tokens;
    int64_t first_scored = 1;
    SkipSet skip;
  };
  using ScoredLogits = std::function<void(size_t index, int64_t first_row,
                                          absl::Span<const float> rows)>;
  absl::Status ScoreContinuations(absl::Span<const ScoringRequest> requests,
                                  const ScoredLogits& on_logits);

  // Generates for every request together: each forward step carries the
  // decode tokens of sequences past their prompt and prefill chunks (at most
  // kMaxPrefillChunk tokens per step) of those still reading theirs.
  absl::StatusOr<std::vector<GenerationResult>> GenerateBatch(
      absl::Span<const GenerationRequest> requests,
      const TextCallback& on_text = {});
  absl::StatusOr<GenerationResult> Generate(const GenerationRequest& request,
                                            const TextCallback& on_text = {});

  // Most tokens a single forward step feeds per prefill chunk; bounds
  // activation memory on long prompts.
  static constexpr int64_t kMaxPrefillChunk = 512;

 private:
  Engine() = default;
  absl::Status ForwardPrompt(absl::Span<const int32_t> tokens,
                             const SkipSet& skip, LogitsMode logits_mode,
                             SublayerObserver* observer,
                             std::vector<float>* logits);

  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<ChatTemplate> chat_template_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<KvBlockManager> kv_blocks_;
  // Interned skip sets by their [2 * num_layers] flags (attention, then
  // MLP); the empty set is id kNoSkip and not stored here.
  std::map<std::vector<bool>, SkipSetId> skip_set_ids_;
  ModelFingerprint fingerprint_;
};

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_RUNTIME_ENGINE_H_
