// A backend plugin for the registry tests (backend_registry_test.cc), built
// as liblitestage_backend_echo.so: every logit row puts 10 on the token
// after the row's own (token + 1, modulo the vocabulary) and 0 elsewhere,
// so greedy generation counts upwards. It needs no kernel and no engine
// symbol, only the interface headers, as a real plugin does. Built a second
// time with LITESTAGE_ECHO_STALE_ABI as liblitestage_backend_echo_stale.so,
// a plugin from another release.
#include <cstdio>
#include <string>

#include "engine/backend.h"
#include "engine/backend_plugin.h"

namespace {

using litestage::Backend;
using litestage::BackendOptions;
using litestage::ForwardBatch;
using litestage::ForwardResult;
using litestage::LogitsMode;
using litestage::ModelWeights;
using litestage::SkipSet;
using litestage::SkipSetId;

#ifdef LITESTAGE_ECHO_STALE_ABI
constexpr char kName[] = "echo_stale";
constexpr uint32_t kAbi = litestage::kBackendAbiVersion + 1000;
#else
constexpr char kName[] = "echo";
constexpr uint32_t kAbi = litestage::kBackendAbiVersion;
#endif

class EchoBackend final : public Backend {
 public:
  EchoBackend(const ModelWeights& weights, const BackendOptions& options)
      : vocab_(weights.config.vocab_size),
        layers_(weights.config.num_hidden_layers) {
    num_kv_blocks_ = options.kv_cache_tokens / options.kv_block_size;
    kv_block_size_ = options.kv_block_size;
  }
  std::string name() const override { return kName; }
  std::string description() const override { return "echo (test plugin)"; }
  absl::Status RegisterSkipSet(SkipSetId, const SkipSet&) override {
    return absl::OkStatus();
  }
  absl::Status Forward(const ForwardBatch& batch,
                       ForwardResult* result) override {
    result->logits.clear();
    result->first_logit_row.clear();
    result->chunk_sublayers.assign(batch.chunks.size(), {});
    int64_t rows = 0;
    for (size_t c = 0; c < batch.chunks.size(); ++c) {
      const auto& chunk = batch.chunks[c];
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
  int64_t vocab_;
  int64_t layers_;
};

Backend* Create(const ModelWeights* weights, const BackendOptions* options,
                char* error, size_t error_size) {
  if (weights->config.vocab_size <= 0) {
    std::snprintf(error, error_size, "echo: the model has no vocabulary");
    return nullptr;
  }
  return new EchoBackend(*weights, *options);
}

const LitestageBackendPlugin kPlugin = {kAbi, litestage::BackendLayoutHash(),
                                        kName, &Create};

}  // namespace

extern "C" __attribute__((visibility("default"))) const LitestageBackendPlugin*
litestage_backend_plugin(void) {
  return &kPlugin;
}
