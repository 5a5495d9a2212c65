// ModelConfig: the architecture hyper-parameters of a decoder-only model,
// named as in Hugging Face config.json so the two can be read side by side.
#ifndef LITESTAGE_ENGINE_MODEL_CONFIG_H_
#define LITESTAGE_ENGINE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace litestage {

enum class ModelFamily : uint8_t {
  kLlama,    // LlamaForCausalLM (also TinyLlama, SmolLM2, Llama 3.x).
  kMistral,  // MistralForCausalLM: Llama plus optional sliding-window
             // attention.
  kQwen2,    // Qwen2ForCausalLM: bias on q/k/v projections.
  kQwen3,  // Qwen3ForCausalLM: RMSNorm on q and k per head, explicit head_dim.
};

const char* ModelFamilyName(ModelFamily family);

// rope_scaling from config.json. Only "llama3" changes the frequencies;
// "default"/absent leaves them as rope_theta gives.
struct RopeScaling {
  enum class Type : uint8_t { kNone, kLlama3, kLinear };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // As written in config.json "architectures"[0].
  ModelFamily family = ModelFamily::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // Equal to num_attention_heads without GQA.
  int64_t head_dim = 0;             // hidden_size / heads unless given.
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2).
  bool qk_norm = false;         // Per-head RMSNorm on q and k (Qwen3).
  bool tie_word_embeddings = false;
  int64_t sliding_window = 0;  // 0: full attention (Mistral may set it).
  int64_t bos_token_id = -1;   // -1 when the model has none.
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype;  // Informational: the dtype the files claim.

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
};

// Parses and validates a config.json document. `source` (the path) prefixes
// every error. Rejects unsupported architectures, non-positive sizes, heads
// that do not divide, and unknown rope_scaling types.
absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& document,
                                             absl::string_view source);

// Reads `<dir>/config.json`, and `<dir>/generation_config.json` when present
// (its bos/eos ids take precedence, as in transformers' generate()).
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_MODEL_CONFIG_H_
