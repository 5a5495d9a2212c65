// The compute backend interface. The engine core (generation, KV bookkeeping,
// sampling) talks to a Backend; the CPU backend is the reference, a CUDA
// backend implements the same interface in a separately loaded library.
// No device type appears in this header.
#ifndef LITESTAGE_ENGINE_BACKEND_BACKEND_H_
#define LITESTAGE_ENGINE_BACKEND_BACKEND_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model/weights.h"
#include "engine/runtime/sampler.h"

namespace litestage {

// Which sub-layers one sequence skips. Skipping attention j leaves the
// residual stream unchanged and writes no K/V at layer j; skipping MLP j
// leaves it unchanged (LiteStage's granularity). A sequence must keep the
// same attention skips for its whole life: positions it never computed at
// layer j have no K/V there. An empty SkipSet skips nothing.
struct SkipSet {
  std::vector<bool> attention;  // [num_layers] true = skip; empty = none
  std::vector<bool> mlp;        // [num_layers] true = skip; empty = none

  static SkipSet None() { return {}; }
  bool skips_attention(int64_t layer) const {
    return layer < static_cast<int64_t>(attention.size()) && attention[layer];
  }
  bool skips_mlp(int64_t layer) const {
    return layer < static_cast<int64_t>(mlp.size()) && mlp[layer];
  }
  int64_t num_skipped() const;
  // Skips the same sub-layers of a num_layers model (an empty vector and an
  // all-false one both skip nothing, unlike operator==).
  bool SkipsSameAs(const SkipSet& other, int64_t num_layers) const;
  bool operator==(const SkipSet& other) const = default;
};

// Interned skip sets: the runtime (Engine::InternSkipSet) gives every
// distinct skip set of the model an id and registers it with the backend
// before any chunk carries it, so a backend can key per-set work (a
// captured graph, a kernel plan) by a small integer. Id 0 skips nothing and
// is always registered.
using SkipSetId = int32_t;
inline constexpr SkipSetId kNoSkip = 0;

enum class SublayerKind : uint8_t { kAttention, kMlp };

// Sub-layer executions counted per token: a chunk of n tokens through a
// model of L layers adds n * L to attention (executed + skipped) and to mlp.
struct SublayerCounts {
  int64_t attention_executed = 0;
  int64_t attention_skipped = 0;
  int64_t mlp_executed = 0;
  int64_t mlp_skipped = 0;

  int64_t executed() const { return attention_executed + mlp_executed; }
  int64_t skipped() const { return attention_skipped + mlp_skipped; }
  int64_t total() const { return executed() + skipped(); }
  SublayerCounts& operator+=(const SublayerCounts& other);
  bool operator==(const SublayerCounts& other) const = default;
};

// Receives the residual stream around each executed sub-layer, for the
// offline importance search (cosine similarity of input and output).
class SublayerObserver {
 public:
  virtual ~SublayerObserver() = default;
  // `input` and `output`: [num_tokens, hidden_size] f32, rows of chunk
  // `chunk_index` of the batch, before and after the residual add.
  virtual void Observe(int64_t chunk_index, int64_t layer, SublayerKind kind,
                       const float* input, const float* output,
                       int64_t num_tokens, int64_t hidden_size) = 0;
};

// What a step returns for a chunk. Generation asks for kSample, so only a
// token id and three floats per sequence cross from the backend (a GPU keeps
// the [vocab] row on the device); logits are for the callers that read
// them: golden tests, PromptLogits, teacher-forced scoring.
enum class LogitsMode : uint8_t {
  kNone,    // Prefill chunk whose logits nobody needs yet.
  kSample,  // The token sampled at the chunk's last position (chunk.draw)
            // and its confidence: ForwardResult::sampled. No logits.
  kLast,    // Logits of the chunk's last token.
  kAll,     // Logits of every token.
};

// The new tokens of one sequence in a forward step: a prefill chunk or one
// decode token. Positions are [start_position, start_position + tokens.size()).
struct SequenceChunk {
  absl::Span<const int32_t> tokens;  // [n] ids inside the vocabulary
  int64_t start_position = 0;  // Tokens of this sequence already in the cache.
  SkipSetId skip = kNoSkip;    // Registered with RegisterSkipSet.
  LogitsMode logits = LogitsMode::kSample;
  // The sequence's cache blocks in position order (block i holds positions
  // [i * kv_block_size, (i + 1) * kv_block_size)), covering at least
  // start_position + tokens.size(): the runtime's KvBlockManager reserved
  // them (Engine::Forward fills this in). The backend owns the storage only.
  absl::Span<const int32_t> block_table;
  TokenDraw draw;  // kSample: how the token is picked (greedy by default).
};

struct ForwardBatch {
  std::vector<SequenceChunk> chunks;
  SublayerObserver* observer = nullptr;  // Optional; slows the step down.
};

// A kSample chunk's token, picked as SampleToken picks it from the logits
// of the chunk's last position, and that row's confidence.
struct SampledToken {
  int32_t token = -1;
  TokenConfidence confidence;
};

struct ForwardResult {
  std::vector<float> logits;  // [num_logit_rows, vocab_size] f32
  // Chunk i's logit rows start at first_logit_row[i]: one row for kLast,
  // tokens.size() rows for kAll, none for kNone and kSample.
  std::vector<int64_t> first_logit_row;
  std::vector<SampledToken> sampled;  // [chunks]; token -1 unless kSample.
  std::vector<SublayerCounts> chunk_sublayers;  // [chunks]
};

// Most worker threads a backend starts (the pool creates them all up front;
// past the core count they only contend). Same bound as --threads.
inline constexpr int kMaxBackendThreads = 1024;

// What a backend does well, which the runtime's policies follow.
struct BackendCapabilities {
  // A step mixing sequences of different skip sets costs about what their
  // rows cost alone, because each sub-layer runs over the rows that execute
  // it (the CPU backend). A backend that runs a skip set as one fused graph
  // says false, and the scheduler then gives each skip set its own steps
  // (SkipSetBatching::kGrouped).
  bool efficient_mixed_skip_batches = true;
};

struct BackendOptions {
  int num_threads = 0;              // 0: one per hardware thread.
  int64_t kv_cache_tokens = 16384;  // Total token capacity of the KV cache.
  int64_t kv_block_size = 16;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;         // "cpu", "cuda".
  virtual std::string description() const = 0;  // ISA, threads, device.

  // Runs one step over every chunk of `batch`: writes their K/V into the
  // blocks their block tables name and returns what each chunk asks for
  // (LogitsMode): sampled tokens with their confidences, or logits. The
  // runtime validated the step (KvBlockManager::ReserveWrites, token ids
  // checked at request level); a backend only CHECKs its invariants.
  virtual absl::Status Forward(const ForwardBatch& batch,
                               ForwardResult* result) = 0;

  // Makes `id` stand for `skip` in later chunks ([num_layers] vectors, or
  // empty for none). Called once per id, ids in increasing order from 1.
  virtual absl::Status RegisterSkipSet(SkipSetId id, const SkipSet& skip) = 0;
  virtual BackendCapabilities capabilities() const { return {}; }

  // The KV storage the backend laid out: num_kv_blocks() blocks of
  // kv_block_size() tokens, which the runtime's KvBlockManager hands out.
  int64_t num_kv_blocks() const { return num_kv_blocks_; }
  int64_t kv_block_size() const { return kv_block_size_; }

 protected:
  int64_t num_kv_blocks_ = 0;
  int64_t kv_block_size_ = 0;
};

// Bytes of K and V one cached token takes in the CPU backend's f32 cache:
// layers x kv heads x head_dim x 2 (K and V) x 4, each product checked for
// overflow (the config is untrusted input); InvalidArgument on overflow.
absl::StatusOr<uint64_t> KvCacheBytesPerToken(const ModelConfig& config);

// Checks, before anything is allocated, that a cache of
// options.kv_cache_tokens (rounded up to whole blocks) fits in
// `available_bytes`: ResourceExhausted naming --kv-cache-tokens, the bytes
// needed and the bytes available otherwise (InvalidArgument on overflow).
// The cache is touched lazily, so an oversized one would not fail at start
// but kill the process (OOM) once enough sequences ran.
absl::Status CheckKvCacheFitsMemory(const ModelConfig& config,
                                    const BackendOptions& options,
                                    uint64_t available_bytes);

// MemAvailable from /proc/meminfo in bytes; nullopt when unreadable (not
// Linux, /proc not mounted), in which case the caller skips the check.
std::optional<uint64_t> AvailableMemoryBytes();

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_BACKEND_BACKEND_H_
