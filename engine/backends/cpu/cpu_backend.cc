// The CPU backend: the reference forward pass every other backend is tested
// against. One step runs the new tokens of several sequences (prefill chunks
// and decode tokens) as one [tokens, hidden] activation matrix, so every
// weight matrix is streamed from memory once per step, not once per sequence.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "engine/backend/backend.h"
#include "engine/backend/registry.h"
#include "engine/backends/cpu/activation.h"
#include "engine/backends/cpu/attention.h"
#include "engine/backends/cpu/cpu_features.h"
#include "engine/backends/cpu/matmul.h"
#include "engine/backends/cpu/rmsnorm.h"
#include "engine/backends/cpu/thread_pool.h"
#include "engine/util/check.h"
#include "engine/util/float16.h"
#include "engine/util/mapped_file.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

// Inverse RoPE frequencies, as transformers' ROPE_INIT_FUNCTIONS compute them
// in fp32: inv_freq[i] = 1 / theta^(2i / head_dim), then rope_scaling.
std::vector<float> RopeInverseFrequencies(const ModelConfig& config) {
  const int64_t half = config.head_dim / 2;
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    const float exponent =
        static_cast<float>(2 * i) / static_cast<float>(config.head_dim);
    inv_freq[i] =
        1.0f / std::pow(static_cast<float>(config.rope_theta), exponent);
  }
  const RopeScaling& scaling = config.rope_scaling;
  switch (scaling.type) {
    case RopeScaling::Type::kNone:
      break;
    case RopeScaling::Type::kLinear:
      for (float& f : inv_freq) f /= static_cast<float>(scaling.factor);
      break;
    case RopeScaling::Type::kLlama3: {
      // Llama 3.1: long wavelengths are divided by `factor`, short ones kept,
      // the band between interpolated smoothly.
      const double old_context =
          static_cast<double>(scaling.original_max_position_embeddings);
      const double low_freq_wavelen = old_context / scaling.low_freq_factor;
      const double high_freq_wavelen = old_context / scaling.high_freq_factor;
      for (float& f : inv_freq) {
        const double wavelen = 2.0 * M_PI / f;
        if (wavelen > low_freq_wavelen) {
          f = static_cast<float>(f / scaling.factor);
        } else if (wavelen >= high_freq_wavelen) {
          const double smooth =
              (old_context / wavelen - scaling.low_freq_factor) /
              (scaling.high_freq_factor - scaling.low_freq_factor);
          f = static_cast<float>((1.0 - smooth) * f / scaling.factor +
                                 smooth * f);
        }
      }
      break;
    }
  }
  return inv_freq;
}

// Rotates every head of one token in place (HF rotate_half layout: element i
// pairs with i + head_dim/2).
void ApplyRope(float* heads /*[num_heads, head_dim]*/, int64_t num_heads,
               int64_t head_dim, const float* cos /*[head_dim/2]*/,
               const float* sin /*[head_dim/2]*/) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < num_heads; ++h) {
    float* x = heads + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = x[i];
      const float x2 = x[i + half];
      x[i] = x1 * cos[i] - x2 * sin[i];
      x[i + half] = x2 * cos[i] + x1 * sin[i];
    }
  }
}

void AddBias(float* rows /*[n, dim]*/, int64_t n,
             const Tensor& bias /*[dim] f32*/) {
  if (bias.empty()) return;
  const int64_t dim = bias.numel();
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t i = 0; i < dim; ++i) rows[r * dim + i] += bias.f32()[i];
  }
}

void CopyEmbedding(const Tensor& table /*[V, H]*/, int32_t token,
                   float* out /*[H]*/) {
  cpu::WeightRow(table, token, out);
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(const ModelWeights& weights, const BackendOptions& options)
      : weights_(weights),
        config_(weights.config),
        pool_(options.num_threads),
        inv_freq_(RopeInverseFrequencies(config_)),
        block_size_(options.kv_block_size) {
    // Written so it cannot overflow for any positive kv_cache_tokens.
    const int64_t num_blocks = options.kv_cache_tokens / block_size_ +
                               (options.kv_cache_tokens % block_size_ != 0);
    num_kv_blocks_ = num_blocks;
    kv_block_size_ = block_size_;
    // Left uninitialised on purpose: pages are touched only when a sequence
    // first writes them, so a large capacity costs nothing until used.
    block_floats_ =
        config_.num_hidden_layers * 2 * config_.kv_dim() * block_size_;
    kv_storage_.reset(new float[num_blocks * block_floats_]);
  }

  std::string name() const override { return "cpu"; }
  std::string description() const override {
    return absl::StrCat("cpu (", cpu::IsaName(cpu::ActiveIsa()), ", ",
                        pool_.num_threads(), " threads)");
  }

  absl::Status Forward(const ForwardBatch& batch,
                       ForwardResult* result) override;

  absl::Status RegisterSkipSet(SkipSetId id, const SkipSet& skip) override {
    LS_CHECK_EQ(id, static_cast<SkipSetId>(skip_sets_.size()));
    skip_sets_.push_back(skip);
    return absl::OkStatus();
  }

 private:
  // K (kv = 0) or V (kv = 1) of `kv_head` at `layer` in cache block `block`:
  // [block_size, head_dim] f32.
  float* KvBlock(int32_t block, int64_t layer, int kv, int64_t kv_head) {
    return kv_storage_.get() + block * block_floats_ +
           ((layer * 2 + kv) * config_.num_key_value_heads + kv_head) *
               block_size_ * config_.head_dim;
  }

  // The runtime validated the step; these are invariants.
  void CheckStep(const ForwardBatch& batch) const;
  void Attention(int64_t layer, const LayerWeights& w,
                 const std::vector<int64_t>& rows);
  void Mlp(const LayerWeights& w, const std::vector<int64_t>& rows);
  void Observe(SublayerObserver* observer, int64_t layer, SublayerKind kind,
               const std::vector<int64_t>& rows);
  void GatherRows(const std::vector<int64_t>& rows,
                  float* out /*[rows, H]*/) const;
  // The final norm and LM head over residual rows `rows`.
  void LmHead(const std::vector<int64_t>& rows, float* logits /*[rows, V]*/);

  const ModelWeights& weights_;
  const ModelConfig& config_;
  cpu::ThreadPool pool_;
  const std::vector<float> inv_freq_;  // [head_dim / 2]
  // By SkipSetId; [0] skips nothing.
  std::vector<SkipSet> skip_sets_ = {SkipSet::None()};
  const int64_t block_size_;
  int64_t block_floats_ =
      0;  // floats per cache block: [layers, 2, KV heads, block, D]
  std::unique_ptr<float[]> kv_storage_;  // [num_blocks, block_floats_] f32

  // Per-step token metadata and activations (T = tokens in the step, R = rows
  // taking part in a sub-layer). Reused across steps to avoid allocation.
  std::vector<int64_t> row_chunk_;     // [T] chunk of each row
  std::vector<int64_t> row_position_;  // [T] position of each row
  const ForwardBatch* batch_ = nullptr;
  std::vector<float> residual_;         // [T, H] the residual stream x
  std::vector<float> normed_;           // [R, H] norm(x) of participating rows
  std::vector<float> q_, k_, v_;        // [R, Q], [R, KV], [R, KV]
  std::vector<float> attn_out_;         // [R, Q]
  std::vector<float> proj_out_;         // [R, H]
  std::vector<float> gate_, up_;        // [R, I]
  std::vector<float> observed_input_;   // [R, H] residual before a sub-layer
  std::vector<int64_t> sample_rows_;    // [S] rows of the kSample chunks
  std::vector<int64_t> sample_chunks_;  // [S] their chunks
  std::vector<float> sample_logits_;    // [S, V] logits sampled from
};

void CpuBackend::LmHead(const std::vector<int64_t>& rows, float* logits) {
  if (rows.empty()) return;
  const int64_t hidden = config_.hidden_size;
  const int64_t num_rows = static_cast<int64_t>(rows.size());
  normed_.resize(num_rows * hidden);
  for (int64_t i = 0; i < num_rows; ++i) {
    cpu::RmsNorm(residual_.data() + rows[i] * hidden, weights_.norm.f32(), 1,
                 hidden, static_cast<float>(config_.rms_norm_eps),
                 normed_.data() + i * hidden);
  }
  cpu::MatMul(normed_.data(), num_rows, weights_.lm_head, logits, pool_);
}

void CpuBackend::CheckStep(const ForwardBatch& batch) const {
  for (size_t c = 0; c < batch.chunks.size(); ++c) {
    const SequenceChunk& chunk = batch.chunks[c];
    const int64_t end =
        chunk.start_position + static_cast<int64_t>(chunk.tokens.size());
    LS_CHECK(!chunk.tokens.empty()) << "chunk " << c;
    LS_CHECK(static_cast<int64_t>(chunk.block_table.size()) * block_size_ >=
             end)
        << "chunk " << c << ": block table does not cover position " << end;
    for (int32_t block : chunk.block_table) {
      LS_CHECK(block >= 0 && block < num_kv_blocks_) << "block " << block;
    }
    for (int32_t token : chunk.tokens) {
      LS_CHECK(token >= 0 && token < config_.vocab_size) << "token " << token;
    }
    LS_CHECK(chunk.skip >= 0 &&
             chunk.skip < static_cast<SkipSetId>(skip_sets_.size()))
        << "chunk " << c << ": skip set " << chunk.skip << " not registered";
  }
}

void CpuBackend::GatherRows(const std::vector<int64_t>& rows,
                            float* out) const {
  const int64_t hidden = config_.hidden_size;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::memcpy(out + i * hidden, residual_.data() + rows[i] * hidden,
                hidden * sizeof(float));
  }
}

void CpuBackend::Observe(SublayerObserver* observer, int64_t layer,
                         SublayerKind kind, const std::vector<int64_t>& rows) {
  // Rows of one chunk are contiguous in `rows`, so each chunk gets one call.
  const int64_t hidden = config_.hidden_size;
  std::vector<float> output(rows.size() * hidden);
  GatherRows(rows, output.data());
  size_t begin = 0;
  while (begin < rows.size()) {
    size_t end = begin;
    while (end < rows.size() &&
           row_chunk_[rows[end]] == row_chunk_[rows[begin]])
      ++end;
    observer->Observe(row_chunk_[rows[begin]], layer, kind,
                      observed_input_.data() + begin * hidden,
                      output.data() + begin * hidden,
                      static_cast<int64_t>(end - begin), hidden);
    begin = end;
  }
}

// h = x + o_proj(attention(rope(q_proj(norm(x))), cache)) for `rows`.
void CpuBackend::Attention(int64_t layer, const LayerWeights& w,
                           const std::vector<int64_t>& rows) {
  const int64_t num_rows = static_cast<int64_t>(rows.size());
  const int64_t hidden = config_.hidden_size;
  const int64_t head_dim = config_.head_dim;
  const int64_t num_heads = config_.num_attention_heads;
  const int64_t num_kv_heads = config_.num_key_value_heads;
  const int64_t q_dim = config_.q_dim();
  const int64_t kv_dim = config_.kv_dim();
  const float eps = static_cast<float>(config_.rms_norm_eps);

  normed_.resize(num_rows * hidden);
  for (int64_t i = 0; i < num_rows; ++i) {
    cpu::RmsNorm(residual_.data() + rows[i] * hidden, w.input_layernorm.f32(),
                 1, hidden, eps, normed_.data() + i * hidden);
  }
  q_.resize(num_rows * q_dim);
  k_.resize(num_rows * kv_dim);
  v_.resize(num_rows * kv_dim);
  const cpu::MatMulOutput qkv[] = {
      {&w.q_proj, q_.data()}, {&w.k_proj, k_.data()}, {&w.v_proj, v_.data()}};
  cpu::MatMulGroup(normed_.data(), num_rows, qkv, pool_);
  AddBias(q_.data(), num_rows, w.q_bias);
  AddBias(k_.data(), num_rows, w.k_bias);
  AddBias(v_.data(), num_rows, w.v_bias);
  if (config_.qk_norm) {  // Qwen3: RMSNorm over each head before RoPE.
    cpu::RmsNorm(q_.data(), w.q_norm.f32(), num_rows * num_heads, head_dim, eps,
                 q_.data());
    cpu::RmsNorm(k_.data(), w.k_norm.f32(), num_rows * num_kv_heads, head_dim,
                 eps, k_.data());
  }

  // RoPE, then append this step's K/V to the cache so each token can attend
  // to itself and to earlier tokens of its own chunk.
  const int64_t half = head_dim / 2;
  std::vector<float> cos(half), sin(half);
  for (int64_t i = 0; i < num_rows; ++i) {
    const int64_t position = row_position_[rows[i]];
    for (int64_t j = 0; j < half; ++j) {
      const float angle = static_cast<float>(position) * inv_freq_[j];
      cos[j] = std::cos(angle);
      sin[j] = std::sin(angle);
    }
    ApplyRope(q_.data() + i * q_dim, num_heads, head_dim, cos.data(),
              sin.data());
    ApplyRope(k_.data() + i * kv_dim, num_kv_heads, head_dim, cos.data(),
              sin.data());
    const SequenceChunk& chunk = batch_->chunks[row_chunk_[rows[i]]];
    const int32_t block = chunk.block_table[position / block_size_];
    const int64_t slot = position % block_size_;
    for (int64_t h = 0; h < num_kv_heads; ++h) {
      std::memcpy(KvBlock(block, layer, 0, h) + slot * head_dim,
                  k_.data() + i * kv_dim + h * head_dim,
                  head_dim * sizeof(float));
      std::memcpy(KvBlock(block, layer, 1, h) + slot * head_dim,
                  v_.data() + i * kv_dim + h * head_dim,
                  head_dim * sizeof(float));
    }
  }

  // Causal attention of every (row, head) over its own sequence's cache.
  attn_out_.resize(num_rows * q_dim);
  const int64_t heads_per_kv = num_heads / num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const auto attend = [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<const float*> key_blocks, value_blocks;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / num_heads;
      const int64_t head = item % num_heads;
      const int64_t kv_head = head / heads_per_kv;
      const int64_t position = row_position_[rows[i]];
      const SequenceChunk& chunk = batch_->chunks[row_chunk_[rows[i]]];
      const absl::Span<const int32_t> table = chunk.block_table;
      const int64_t num_blocks = position / block_size_ + 1;
      key_blocks.resize(num_blocks);
      value_blocks.resize(num_blocks);
      for (int64_t b = 0; b < num_blocks; ++b) {
        key_blocks[b] = KvBlock(table[b], layer, 0, kv_head);
        value_blocks[b] = KvBlock(table[b], layer, 1, kv_head);
      }
      const int64_t window_begin =
          config_.sliding_window > 0
              ? std::max<int64_t>(0, position - config_.sliding_window + 1)
              : 0;
      scores.resize(position + 1);
      cpu::AttentionHead(q_.data() + i * q_dim + head * head_dim,
                         key_blocks.data(), value_blocks.data(), block_size_,
                         window_begin, position + 1, head_dim, scale,
                         scores.data(),
                         attn_out_.data() + i * q_dim + head * head_dim);
    }
  };
  // Waking the pool costs microseconds; below ~64K multiply-adds (short
  // contexts of small models) the calling thread alone is faster.
  int64_t attended_positions = 0;
  for (int64_t i = 0; i < num_rows; ++i)
    attended_positions += row_position_[rows[i]] + 1;
  if (attended_positions * num_heads * head_dim < (int64_t{1} << 16)) {
    attend(0, num_rows * num_heads);
  } else {
    pool_.ParallelFor(num_rows * num_heads, attend);
  }

  proj_out_.resize(num_rows * hidden);
  cpu::MatMul(attn_out_.data(), num_rows, w.o_proj, proj_out_.data(), pool_);
  for (int64_t i = 0; i < num_rows; ++i) {
    float* x = residual_.data() + rows[i] * hidden;
    const float* o = proj_out_.data() + i * hidden;
    for (int64_t j = 0; j < hidden; ++j) x[j] += o[j];
  }
}

// y = h + down_proj(silu(gate_proj(norm(h))) * up_proj(norm(h))) for `rows`.
void CpuBackend::Mlp(const LayerWeights& w, const std::vector<int64_t>& rows) {
  const int64_t num_rows = static_cast<int64_t>(rows.size());
  const int64_t hidden = config_.hidden_size;
  const int64_t intermediate = config_.intermediate_size;
  normed_.resize(num_rows * hidden);
  for (int64_t i = 0; i < num_rows; ++i) {
    cpu::RmsNorm(residual_.data() + rows[i] * hidden,
                 w.post_attention_layernorm.f32(), 1, hidden,
                 static_cast<float>(config_.rms_norm_eps),
                 normed_.data() + i * hidden);
  }
  gate_.resize(num_rows * intermediate);
  up_.resize(num_rows * intermediate);
  const cpu::MatMulOutput gate_up[] = {{&w.gate_proj, gate_.data()},
                                       {&w.up_proj, up_.data()}};
  cpu::MatMulGroup(normed_.data(), num_rows, gate_up, pool_);
  cpu::SiluMul(gate_.data(), up_.data(), num_rows * intermediate, gate_.data());
  proj_out_.resize(num_rows * hidden);
  cpu::MatMul(gate_.data(), num_rows, w.down_proj, proj_out_.data(), pool_);
  for (int64_t i = 0; i < num_rows; ++i) {
    float* x = residual_.data() + rows[i] * hidden;
    const float* d = proj_out_.data() + i * hidden;
    for (int64_t j = 0; j < hidden; ++j) x[j] += d[j];
  }
}

absl::Status CpuBackend::Forward(const ForwardBatch& batch,
                                 ForwardResult* result) {
  CheckStep(batch);
  batch_ = &batch;
  const int64_t hidden = config_.hidden_size;

  // Lay the chunks out as rows of one activation matrix.
  row_chunk_.clear();
  row_position_.clear();
  for (size_t c = 0; c < batch.chunks.size(); ++c) {
    const SequenceChunk& chunk = batch.chunks[c];
    for (size_t t = 0; t < chunk.tokens.size(); ++t) {
      row_chunk_.push_back(static_cast<int64_t>(c));
      row_position_.push_back(chunk.start_position + static_cast<int64_t>(t));
    }
  }
  const int64_t num_tokens = static_cast<int64_t>(row_chunk_.size());
  residual_.resize(num_tokens * hidden);
  for (int64_t r = 0, c = 0; c < static_cast<int64_t>(batch.chunks.size());
       ++c) {
    for (int32_t token : batch.chunks[c].tokens) {
      CopyEmbedding(weights_.embed_tokens, token,
                    residual_.data() + (r++) * hidden);
    }
  }

  std::vector<int64_t> rows;
  rows.reserve(num_tokens);
  result->chunk_sublayers.assign(batch.chunks.size(), SublayerCounts{});
  // Rows whose sequence executes the sub-layer (skip sets are per sequence);
  // counts what each chunk executed and skipped as it goes.
  const auto executing_rows = [&](int64_t layer, SublayerKind kind) {
    rows.clear();
    const bool attention = kind == SublayerKind::kAttention;
    for (int64_t r = 0; r < num_tokens; ++r) {
      const int64_t chunk = row_chunk_[r];
      const SkipSet& skip = skip_sets_[batch.chunks[chunk].skip];
      const bool skipped =
          attention ? skip.skips_attention(layer) : skip.skips_mlp(layer);
      SublayerCounts& counts = result->chunk_sublayers[chunk];
      if (skipped) {
        ++(attention ? counts.attention_skipped : counts.mlp_skipped);
      } else {
        rows.push_back(r);
        ++(attention ? counts.attention_executed : counts.mlp_executed);
      }
    }
    return !rows.empty();
  };

  for (int64_t layer = 0; layer < config_.num_hidden_layers; ++layer) {
    const LayerWeights& w = weights_.layers[layer];
    for (SublayerKind kind : {SublayerKind::kAttention, SublayerKind::kMlp}) {
      if (!executing_rows(layer, kind)) continue;
      if (batch.observer != nullptr) {
        observed_input_.resize(rows.size() * hidden);
        GatherRows(rows, observed_input_.data());
      }
      if (kind == SublayerKind::kAttention) {
        Attention(layer, w, rows);
      } else {
        Mlp(w, rows);
      }
      if (batch.observer != nullptr) Observe(batch.observer, layer, kind, rows);
    }
  }

  // Final norm and LM head, only for the rows someone reads: logit rows
  // (kLast, kAll) into the result, the rows sampled from (kSample) into
  // scratch, from where only the picked tokens leave.
  rows.clear();
  sample_rows_.clear();
  sample_chunks_.clear();
  result->first_logit_row.assign(batch.chunks.size(), 0);
  result->sampled.assign(batch.chunks.size(), SampledToken{});
  for (int64_t r = 0, c = 0; c < static_cast<int64_t>(batch.chunks.size());
       ++c) {
    const SequenceChunk& chunk = batch.chunks[c];
    const int64_t n = static_cast<int64_t>(chunk.tokens.size());
    result->first_logit_row[c] = static_cast<int64_t>(rows.size());
    if (chunk.logits == LogitsMode::kAll) {
      for (int64_t t = 0; t < n; ++t) rows.push_back(r + t);
    } else if (chunk.logits == LogitsMode::kLast) {
      rows.push_back(r + n - 1);
    } else if (chunk.logits == LogitsMode::kSample) {
      sample_rows_.push_back(r + n - 1);
      sample_chunks_.push_back(c);
    }
    r += n;
  }
  const int64_t vocab = config_.vocab_size;
  result->logits.resize(rows.size() * vocab);
  LmHead(rows, result->logits.data());
  sample_logits_.resize(sample_rows_.size() * vocab);
  LmHead(sample_rows_, sample_logits_.data());
  // One row per task: a row's selection is a pass over the vocabulary (a
  // sort of it for top-p), independent of the others.
  pool_.ParallelFor(static_cast<int64_t>(sample_rows_.size()),
                    [&](int64_t begin, int64_t end) {
                      SamplingScratch scratch;
                      for (int64_t i = begin; i < end; ++i) {
                        const int64_t c = sample_chunks_[i];
                        SampledToken& sampled = result->sampled[c];
                        sampled.token =
                            SampleToken(sample_logits_.data() + i * vocab,
                                        vocab, batch.chunks[c].draw,
                                        &sampled.confidence, &scratch);
                      }
                    });
  batch_ = nullptr;
  return absl::OkStatus();
}

}  // namespace

namespace {

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(
    const ModelWeights& weights, const BackendOptions& options) {
  if (const std::optional<uint64_t> available = AvailableMemoryBytes()) {
    LS_RETURN_IF_ERROR(
        CheckKvCacheFitsMemory(weights.config, options, *available));
  }
  return std::make_unique<CpuBackend>(weights, options);
}

// Linked into every binary whole (CMake: litestage_engine), so this runs
// before main().
const bool kCpuBackendRegistered = RegisterBackend("cpu", &CreateCpuBackend);

}  // namespace

}  // namespace litestage
