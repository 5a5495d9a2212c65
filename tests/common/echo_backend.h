// EchoBackend: a backend with no model computation, for tests of the
// runtime above the backend (registry, scheduler, stage runner): every logit
// row puts 10 on the token after the row's own (token + 1, modulo the
// vocabulary) and 0 elsewhere, so greedy generation counts upwards. Knobs
// change its reported capabilities and inject step failures. Header-only
// over the interface headers and the reference sampler (litestage_sampling),
// so the test plugin (echo_backend_plugin.cc) wraps the same class.
#ifndef LITESTAGE_TESTS_COMMON_ECHO_BACKEND_H_
#define LITESTAGE_TESTS_COMMON_ECHO_BACKEND_H_

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "engine/backend/backend.h"

namespace litestage {

class EchoBackend final : public Backend {
 public:
  // One chunk as the runtime sent it, copied out of its spans.
  struct RecordedChunk {
    std::vector<int32_t> tokens;
    int64_t start_position = 0;
    SkipSetId skip = kNoSkip;
    LogitsMode logits = LogitsMode::kSample;
    std::vector<int32_t> block_table;
    TokenDraw draw;
    int32_t sampled = -1;  // What this backend returned for a kSample chunk.
  };
  using RecordedStep = std::vector<RecordedChunk>;

  // Test knobs, read at every call.
  struct Knobs {
    bool efficient_mixed_skip_batches = true;
    int fail_forward_calls = 0;  // The next N Forward calls fail (Internal).
    // When set, every successful step is appended here.
    std::vector<RecordedStep>* steps = nullptr;
  };

  EchoBackend(std::string name, const ModelWeights& weights,
              const BackendOptions& options, Knobs* knobs = nullptr)
      : name_(std::move(name)),
        knobs_(knobs),
        vocab_(weights.config.vocab_size),
        layers_(weights.config.num_hidden_layers) {
    num_kv_blocks_ = options.kv_cache_tokens / options.kv_block_size;
    kv_block_size_ = options.kv_block_size;
  }
  std::string name() const override { return name_; }
  std::string description() const override { return "echo (test plugin)"; }
  absl::Status RegisterSkipSet(SkipSetId, const SkipSet&) override {
    return absl::OkStatus();
  }
  BackendCapabilities capabilities() const override {
    BackendCapabilities capabilities;
    if (knobs_ != nullptr) {
      capabilities.efficient_mixed_skip_batches =
          knobs_->efficient_mixed_skip_batches;
    }
    return capabilities;
  }
  absl::Status Forward(const ForwardBatch& batch,
                       ForwardResult* result) override {
    if (knobs_ != nullptr && knobs_->fail_forward_calls > 0) {
      --knobs_->fail_forward_calls;
      return absl::InternalError("echo: injected step failure");
    }
    result->logits.clear();
    result->first_logit_row.clear();
    result->sampled.assign(batch.chunks.size(), SampledToken{});
    result->chunk_sublayers.assign(batch.chunks.size(), {});
    // The logits of a position: 10 at (token + 1) % vocab, 0 elsewhere.
    std::vector<float> row(vocab_);
    const auto echo_row = [&](int32_t token) {
      std::fill(row.begin(), row.end(), 0.0f);
      row[(token + 1) % vocab_] = 10.0f;
    };
    int64_t rows = 0;
    for (size_t c = 0; c < batch.chunks.size(); ++c) {
      const SequenceChunk& chunk = batch.chunks[c];
      const int64_t n = static_cast<int64_t>(chunk.tokens.size());
      result->first_logit_row.push_back(rows);
      result->chunk_sublayers[c].attention_executed = n * layers_;
      result->chunk_sublayers[c].mlp_executed = n * layers_;
      if (chunk.logits == LogitsMode::kSample) {
        echo_row(chunk.tokens[n - 1]);
        SamplingScratch scratch;
        result->sampled[c].token =
            SampleToken(row.data(), vocab_, chunk.draw,
                        &result->sampled[c].confidence, &scratch);
        continue;
      }
      const int64_t first = chunk.logits == LogitsMode::kAll    ? 0
                            : chunk.logits == LogitsMode::kLast ? n - 1
                                                                : n;
      for (int64_t t = first; t < n; ++t) {
        echo_row(chunk.tokens[t]);
        result->logits.insert(result->logits.end(), row.begin(), row.end());
        ++rows;
      }
    }
    if (knobs_ != nullptr && knobs_->steps != nullptr) {
      RecordedStep& step = knobs_->steps->emplace_back();
      for (size_t c = 0; c < batch.chunks.size(); ++c) {
        const SequenceChunk& chunk = batch.chunks[c];
        step.push_back({{chunk.tokens.begin(), chunk.tokens.end()},
                        chunk.start_position,
                        chunk.skip,
                        chunk.logits,
                        {chunk.block_table.begin(), chunk.block_table.end()},
                        chunk.draw,
                        result->sampled[c].token});
      }
    }
    return absl::OkStatus();
  }

 private:
  std::string name_;
  Knobs* knobs_;
  int64_t vocab_;
  int64_t layers_;
};

}  // namespace litestage

#endif  // LITESTAGE_TESTS_COMMON_ECHO_BACKEND_H_
