// EchoBackend: a backend with no model computation, for tests of the
// runtime above the backend (registry, scheduler, stage runner): every logit
// row puts 10 on the token after the row's own (token + 1, modulo the
// vocabulary) and 0 elsewhere, so greedy generation counts upwards. Knobs
// change its reported capabilities and inject step failures. Header-only
// and built from the interface headers alone, so the test plugin
// (echo_backend_plugin.cc) wraps the same class.
#ifndef LITESTAGE_TESTS_COMMON_ECHO_BACKEND_H_
#define LITESTAGE_TESTS_COMMON_ECHO_BACKEND_H_

#include <string>
#include <utility>

#include "engine/backend.h"

namespace litestage {

class EchoBackend final : public Backend {
 public:
  // Test knobs, read at every call.
  struct Knobs {
    bool efficient_mixed_skip_batches = true;
    int fail_forward_calls = 0;  // The next N Forward calls fail (Internal).
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
    result->chunk_sublayers.assign(batch.chunks.size(), {});
    int64_t rows = 0;
    for (size_t c = 0; c < batch.chunks.size(); ++c) {
      const SequenceChunk& chunk = batch.chunks[c];
      const int64_t n = static_cast<int64_t>(chunk.tokens.size());
      result->first_logit_row.push_back(rows);
      result->chunk_sublayers[c].attention_executed = n * layers_;
      result->chunk_sublayers[c].mlp_executed = n * layers_;
      const int64_t first = chunk.logits == LogitsMode::kAll    ? 0
                            : chunk.logits == LogitsMode::kLast ? n - 1
                                                                : n;
      for (int64_t t = first; t < n; ++t) {
        result->logits.resize((rows + 1) * vocab_, 0.0f);
        result->logits[rows * vocab_ + (chunk.tokens[t] + 1) % vocab_] = 10.0f;
        ++rows;
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
