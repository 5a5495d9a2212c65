#include "engine/model/config.h"

#include <cmath>
#include <filesystem>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/util/json_util.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

using nlohmann::json;

// Upper bounds that keep every product the loader and the kernels form
// (e.g. vocab * hidden, heads * head_dim) far from int64 overflow while
// admitting any real model.
constexpr int64_t kMaxDimension = int64_t{1} << 24;
constexpr int64_t kMaxLayers = 4096;

absl::Status Invalid(absl::string_view source, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", message));
}

// Reads a required (or defaulted) positive integer no larger than `max`.
absl::StatusOr<int64_t> PositiveInt(const json& document, const char* key,
                                    absl::string_view source,
                                    std::optional<int64_t> fallback,
                                    int64_t max = kMaxDimension) {
  LS_ASSIGN_OR_RETURN(const int64_t value,
                      JsonInt(document, key, source, fallback));
  if (value <= 0 || value > max) {
    return Invalid(source, absl::StrCat("'", key, "' must be in [1, ", max,
                                        "], got ", value));
  }
  return value;
}

absl::StatusOr<ModelFamily> FamilyOf(absl::string_view architecture,
                                     absl::string_view source) {
  if (architecture == "LlamaForCausalLM") return ModelFamily::kLlama;
  if (architecture == "MistralForCausalLM") return ModelFamily::kMistral;
  if (architecture == "Qwen2ForCausalLM") return ModelFamily::kQwen2;
  if (architecture == "Qwen3ForCausalLM") return ModelFamily::kQwen3;
  return absl::UnimplementedError(absl::StrCat(
      source, ": unsupported architecture '", architecture,
      "' (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
      "Qwen3ForCausalLM)"));
}

// "architectures": ["LlamaForCausalLM"]; older exports carry only model_type.
absl::StatusOr<std::string> ArchitectureOf(const json& document,
                                           absl::string_view source) {
  auto it = document.find("architectures");
  if (it != document.end() && !it->is_null()) {
    if (!it->is_array() || it->empty() || !(*it)[0].is_string()) {
      return Invalid(source,
                     "'architectures' must be a non-empty list of strings");
    }
    return (*it)[0].get<std::string>();
  }
  LS_ASSIGN_OR_RETURN(const std::string model_type,
                      JsonString(document, "model_type", source, ""));
  if (model_type == "llama") return std::string("LlamaForCausalLM");
  if (model_type == "mistral") return std::string("MistralForCausalLM");
  if (model_type == "qwen2") return std::string("Qwen2ForCausalLM");
  if (model_type == "qwen3") return std::string("Qwen3ForCausalLM");
  if (model_type.empty()) {
    return Invalid(source, "neither 'architectures' nor 'model_type' is set");
  }
  return absl::UnimplementedError(
      absl::StrCat(source, ": unsupported model_type '", model_type, "'"));
}

absl::StatusOr<RopeScaling> ParseRopeScaling(const json& document,
                                             absl::string_view source) {
  RopeScaling scaling;
  // transformers >= 5 writes one "rope_parameters" object (rope_type,
  // rope_theta and the scaling fields) instead of "rope_scaling".
  const char* key = "rope_scaling";
  auto it = document.find(key);
  if (it == document.end() || it->is_null()) {
    key = "rope_parameters";
    it = document.find(key);
  }
  if (it == document.end() || it->is_null()) return scaling;
  const json& object = *it;
  if (!object.is_object()) {
    return Invalid(source,
                   absl::StrCat("'", key, "' must be an object or null, got ",
                                object.type_name()));
  }
  const std::string scaling_source = absl::StrCat(source, " ", key);
  // transformers renamed "type" to "rope_type"; either may appear.
  LS_ASSIGN_OR_RETURN(std::string type,
                      JsonString(object, "rope_type", scaling_source, ""));
  if (type.empty()) {
    LS_ASSIGN_OR_RETURN(type, JsonString(object, "type", scaling_source, ""));
  }
  if (type.empty() || type == "default") return scaling;
  if (type == "linear") {
    scaling.type = RopeScaling::Type::kLinear;
    LS_ASSIGN_OR_RETURN(scaling.factor,
                        JsonDouble(object, "factor", scaling_source));
    if (!(scaling.factor > 0) || !std::isfinite(scaling.factor)) {
      return Invalid(source, absl::StrCat(key, " 'factor' must be > 0, got ",
                                          scaling.factor));
    }
    return scaling;
  }
  if (type == "llama3") {
    scaling.type = RopeScaling::Type::kLlama3;
    LS_ASSIGN_OR_RETURN(scaling.factor,
                        JsonDouble(object, "factor", scaling_source));
    LS_ASSIGN_OR_RETURN(scaling.low_freq_factor,
                        JsonDouble(object, "low_freq_factor", scaling_source));
    LS_ASSIGN_OR_RETURN(scaling.high_freq_factor,
                        JsonDouble(object, "high_freq_factor", scaling_source));
    LS_ASSIGN_OR_RETURN(
        scaling.original_max_position_embeddings,
        JsonInt(object, "original_max_position_embeddings", scaling_source));
    // The llama3 rule divides by factor, low_freq_factor and
    // (high_freq_factor - low_freq_factor).
    if (!(scaling.factor > 0) || !std::isfinite(scaling.factor) ||
        !(scaling.low_freq_factor > 0) ||
        !(scaling.high_freq_factor > scaling.low_freq_factor) ||
        !std::isfinite(scaling.high_freq_factor) ||
        scaling.original_max_position_embeddings <= 0) {
      return Invalid(
          source,
          absl::StrCat("llama3 ", key,
                       " needs factor > 0, 0 < "
                       "low_freq_factor < high_freq_factor and "
                       "original_max_position_embeddings > 0; got factor ",
                       scaling.factor, ", low ", scaling.low_freq_factor,
                       ", high ", scaling.high_freq_factor, ", original ",
                       scaling.original_max_position_embeddings));
    }
    return scaling;
  }
  return Invalid(source,
                 absl::StrCat("unsupported ", key, " type '", type,
                              "' (supported: default, linear, llama3)"));
}

// bos_token_id: int or null. eos_token_id: int, list of ints or null.
absl::Status ParseSpecialIds(const json& document, absl::string_view source,
                             ModelConfig& config) {
  if (auto it = document.find("bos_token_id");
      it != document.end() && !it->is_null()) {
    LS_ASSIGN_OR_RETURN(config.bos_token_id,
                        JsonInt(document, "bos_token_id", source));
    if (config.bos_token_id < 0) {
      return Invalid(source, absl::StrCat("'bos_token_id' must be >= 0, got ",
                                          config.bos_token_id));
    }
  }
  auto it = document.find("eos_token_id");
  if (it == document.end() || it->is_null()) return absl::OkStatus();
  std::vector<int64_t> eos;
  if (it->is_array()) {
    for (const json& element : *it) {
      if (!element.is_number_integer()) {
        return Invalid(source, absl::StrCat("'eos_token_id' entries must be "
                                            "integers, got ",
                                            element.type_name()));
      }
      eos.push_back(element.get<int64_t>());
    }
  } else {
    LS_ASSIGN_OR_RETURN(const int64_t id,
                        JsonInt(document, "eos_token_id", source));
    eos.push_back(id);
  }
  for (int64_t id : eos) {
    if (id < 0) {
      return Invalid(source,
                     absl::StrCat("'eos_token_id' must be >= 0, got ", id));
    }
  }
  config.eos_token_ids = std::move(eos);
  return absl::OkStatus();
}

// Mistral applies its window to every layer. Qwen2/3 apply it only when
// use_sliding_window is true, and then only to layers >= max_window_layers.
absl::StatusOr<int64_t> ParseSlidingWindow(const json& document,
                                           ModelFamily family,
                                           int64_t num_layers,
                                           absl::string_view source) {
  if (family == ModelFamily::kLlama) return 0;
  if (family == ModelFamily::kQwen2 || family == ModelFamily::kQwen3) {
    LS_ASSIGN_OR_RETURN(
        const bool use_sliding_window,
        JsonBool(document, "use_sliding_window", source, false));
    if (!use_sliding_window) return 0;
    LS_ASSIGN_OR_RETURN(const int64_t max_window_layers,
                        JsonInt(document, "max_window_layers", source, 28));
    if (max_window_layers >= num_layers) return 0;  // No layer slides.
    if (max_window_layers > 0) {
      return absl::UnimplementedError(absl::StrCat(
          source, ": sliding window on only some layers (max_window_layers=",
          max_window_layers, " of ", num_layers, ") is not supported"));
    }
  }
  LS_ASSIGN_OR_RETURN(const int64_t window,
                      JsonInt(document, "sliding_window", source, 0));
  if (window < 0) {
    return Invalid(source,
                   absl::StrCat("'sliding_window' must be >= 0, got ", window));
  }
  return window;
}

}  // namespace

const char* ModelFamilyName(ModelFamily family) {
  switch (family) {
    case ModelFamily::kLlama:
      return "llama";
    case ModelFamily::kMistral:
      return "mistral";
    case ModelFamily::kQwen2:
      return "qwen2";
    case ModelFamily::kQwen3:
      return "qwen3";
  }
  return "?";
}

absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& document,
                                             absl::string_view source) {
  if (!document.is_object()) {
    return Invalid(source, absl::StrCat("config must be a JSON object, got ",
                                        document.type_name()));
  }
  ModelConfig config;
  LS_ASSIGN_OR_RETURN(config.architecture, ArchitectureOf(document, source));
  LS_ASSIGN_OR_RETURN(config.family, FamilyOf(config.architecture, source));

  LS_ASSIGN_OR_RETURN(config.vocab_size, PositiveInt(document, "vocab_size",
                                                     source, std::nullopt));
  LS_ASSIGN_OR_RETURN(config.hidden_size, PositiveInt(document, "hidden_size",
                                                      source, std::nullopt));
  LS_ASSIGN_OR_RETURN(
      config.intermediate_size,
      PositiveInt(document, "intermediate_size", source, std::nullopt));
  LS_ASSIGN_OR_RETURN(config.num_hidden_layers,
                      PositiveInt(document, "num_hidden_layers", source,
                                  std::nullopt, kMaxLayers));
  LS_ASSIGN_OR_RETURN(
      config.num_attention_heads,
      PositiveInt(document, "num_attention_heads", source, std::nullopt));
  LS_ASSIGN_OR_RETURN(config.num_key_value_heads,
                      PositiveInt(document, "num_key_value_heads", source,
                                  config.num_attention_heads));
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    return Invalid(source, absl::StrCat("num_attention_heads (",
                                        config.num_attention_heads,
                                        ") is not a multiple of "
                                        "num_key_value_heads (",
                                        config.num_key_value_heads, ")"));
  }

  // Qwen3's config class defaults head_dim to 128; the others derive it.
  std::optional<int64_t> head_dim_default;
  if (config.family == ModelFamily::kQwen3) head_dim_default = 128;
  const bool has_head_dim =
      document.contains("head_dim") && !document["head_dim"].is_null();
  if (!has_head_dim && !head_dim_default) {
    if (config.hidden_size % config.num_attention_heads != 0) {
      return Invalid(source,
                     absl::StrCat("hidden_size (", config.hidden_size,
                                  ") is not divisible by num_attention_heads (",
                                  config.num_attention_heads,
                                  ") and no head_dim is given"));
    }
    head_dim_default = config.hidden_size / config.num_attention_heads;
  }
  LS_ASSIGN_OR_RETURN(config.head_dim, PositiveInt(document, "head_dim", source,
                                                   head_dim_default));
  if (config.head_dim % 2 != 0) {
    return Invalid(source, absl::StrCat("'head_dim' must be even for rotary "
                                        "embeddings, got ",
                                        config.head_dim));
  }
  if (config.q_dim() > kMaxDimension) {
    return Invalid(source, absl::StrCat("num_attention_heads * head_dim (",
                                        config.q_dim(), ") is too large"));
  }

  int64_t default_max_positions = 2048;
  if (config.family == ModelFamily::kMistral) default_max_positions = 131072;
  if (config.family == ModelFamily::kQwen2 ||
      config.family == ModelFamily::kQwen3) {
    default_max_positions = 32768;
  }
  LS_ASSIGN_OR_RETURN(config.max_position_embeddings,
                      PositiveInt(document, "max_position_embeddings", source,
                                  default_max_positions, int64_t{1} << 30));

  LS_ASSIGN_OR_RETURN(config.rms_norm_eps,
                      JsonDouble(document, "rms_norm_eps", source, 1e-6));
  if (!(config.rms_norm_eps > 0) || !std::isfinite(config.rms_norm_eps)) {
    return Invalid(source, absl::StrCat("'rms_norm_eps' must be > 0, got ",
                                        config.rms_norm_eps));
  }
  double default_rope_theta = 10000.0;
  if (auto params = document.find("rope_parameters");
      params != document.end() && params->is_object()) {
    LS_ASSIGN_OR_RETURN(default_rope_theta,
                        JsonDouble(*params, "rope_theta",
                                   absl::StrCat(source, " rope_parameters"),
                                   default_rope_theta));
  }
  LS_ASSIGN_OR_RETURN(
      config.rope_theta,
      JsonDouble(document, "rope_theta", source, default_rope_theta));
  if (!(config.rope_theta > 0) || !std::isfinite(config.rope_theta)) {
    return Invalid(source, absl::StrCat("'rope_theta' must be > 0, got ",
                                        config.rope_theta));
  }
  LS_ASSIGN_OR_RETURN(config.rope_scaling, ParseRopeScaling(document, source));

  LS_ASSIGN_OR_RETURN(const std::string hidden_act,
                      JsonString(document, "hidden_act", source, "silu"));
  if (hidden_act != "silu") {
    return absl::UnimplementedError(absl::StrCat(
        source, ": unsupported hidden_act '", hidden_act, "' (only silu)"));
  }
  LS_ASSIGN_OR_RETURN(const bool mlp_bias,
                      JsonBool(document, "mlp_bias", source, false));
  if (mlp_bias) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": 'mlp_bias' true is not supported"));
  }

  if (config.family == ModelFamily::kQwen2) {
    // Qwen2 always has q/k/v biases; its config has no attention_bias key.
    config.attention_bias = true;
  } else {
    // attention_bias in Llama/Qwen3 also adds an o_proj bias, which the
    // forward pass does not have.
    LS_ASSIGN_OR_RETURN(const bool attention_bias,
                        JsonBool(document, "attention_bias", source, false));
    if (attention_bias) {
      return absl::UnimplementedError(
          absl::StrCat(source, ": 'attention_bias' true is not supported for ",
                       config.architecture, " (it implies an o_proj bias)"));
    }
  }
  config.qk_norm = config.family == ModelFamily::kQwen3;

  LS_ASSIGN_OR_RETURN(config.tie_word_embeddings,
                      JsonBool(document, "tie_word_embeddings", source, false));
  LS_ASSIGN_OR_RETURN(config.sliding_window,
                      ParseSlidingWindow(document, config.family,
                                         config.num_hidden_layers, source));
  LS_RETURN_IF_ERROR(ParseSpecialIds(document, source, config));
  // Newer transformers write "dtype" instead of "torch_dtype".
  LS_ASSIGN_OR_RETURN(config.torch_dtype,
                      JsonString(document, "torch_dtype", source, ""));
  if (config.torch_dtype.empty()) {
    LS_ASSIGN_OR_RETURN(config.torch_dtype,
                        JsonString(document, "dtype", source, ""));
  }
  return config;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string config_path =
      (std::filesystem::path(model_dir) / "config.json").string();
  LS_ASSIGN_OR_RETURN(const json document, ReadJsonFile(config_path));
  LS_ASSIGN_OR_RETURN(ModelConfig config,
                      ParseModelConfig(document, config_path));

  const std::string generation_path =
      (std::filesystem::path(model_dir) / "generation_config.json").string();
  std::error_code error;
  if (!std::filesystem::exists(generation_path, error)) return config;
  LS_ASSIGN_OR_RETURN(const json generation, ReadJsonFile(generation_path));
  if (!generation.is_object()) {
    return Invalid(generation_path, "must be a JSON object");
  }
  // Only the ids it states override config.json.
  ModelConfig overrides;
  overrides.bos_token_id = config.bos_token_id;
  overrides.eos_token_ids = config.eos_token_ids;
  LS_RETURN_IF_ERROR(ParseSpecialIds(generation, generation_path, overrides));
  config.bos_token_id = overrides.bos_token_id;
  config.eos_token_ids = std::move(overrides.eos_token_ids);
  return config;
}

}  // namespace litestage
