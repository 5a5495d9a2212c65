// The one place that fills ModelWeights from a file format's tensors. Each
// format (safetensors directories, GGUF) supplies its tensor names and a
// builder that finds, checks and converts one tensor; the layout of a
// decoder (which tensors, which shapes, which are optional) lives only here.
#ifndef LITESTAGE_ENGINE_MODEL_WEIGHT_LAYOUT_H_
#define LITESTAGE_ENGINE_MODEL_WEIGHT_LAYOUT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/model/weights.h"
#include "engine/util/status_macros.h"

namespace litestage {

// Tensor names of one file format. Per-layer names are
// `layer_prefix + <index> + "." + name`.
struct TensorNames {
  const char* embed_tokens;
  const char* final_norm;
  const char* lm_head;
  const char* layer_prefix;
  const char* input_layernorm;
  const char* q_proj;
  const char* k_proj;
  const char* v_proj;
  const char* q_bias;
  const char* k_bias;
  const char* v_bias;
  const char* q_norm;
  const char* k_norm;
  const char* o_proj;
  const char* post_attention_layernorm;
  const char* gate_proj;
  const char* up_proj;
  const char* down_proj;
};

inline constexpr TensorNames kHuggingFaceTensorNames = {
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    "model.layers.",
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.bias",
    "self_attn.q_norm.weight",
    "self_attn.k_norm.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
};

// llama.cpp's names (gguf-py tensor_mapping).
inline constexpr TensorNames kGgufTensorNames = {
    "token_embd.weight",  "output_norm.weight",
    "output.weight",      "blk.",
    "attn_norm.weight",   "attn_q.weight",
    "attn_k.weight",      "attn_v.weight",
    "attn_q.bias",        "attn_k.bias",
    "attn_v.bias",        "attn_q_norm.weight",
    "attn_k_norm.weight", "attn_output.weight",
    "ffn_norm.weight",    "ffn_gate.weight",
    "ffn_up.weight",      "ffn_down.weight",
};

// Fills every tensor of `weights` (whose config is set) with matrices in
// `dtype`. Builder provides:
//   absl::StatusOr<Tensor> Vector(const std::string& name, int64_t size);
//   absl::StatusOr<Tensor> Matrix(const std::string& name, int64_t rows,
//                                 int64_t cols, DType dtype);
//   bool Has(const std::string& name) const;
template <typename Builder>
absl::Status BuildDecoderWeights(const TensorNames& names, DType dtype,
                                 Builder& builder, ModelWeights& weights) {
  const ModelConfig& config = weights.config;
  const int64_t hidden = config.hidden_size;
  const int64_t inter = config.intermediate_size;
  const int64_t q_dim = config.q_dim();
  const int64_t kv_dim = config.kv_dim();
  const int64_t vocab = config.vocab_size;
  weights.matrix_dtype = dtype;

  LS_ASSIGN_OR_RETURN(weights.embed_tokens,
                      builder.Matrix(names.embed_tokens, vocab, hidden, dtype));
  weights.layers.resize(static_cast<size_t>(config.num_hidden_layers));
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    LayerWeights& layer = weights.layers[static_cast<size_t>(i)];
    const std::string prefix = absl::StrCat(names.layer_prefix, i, ".");
    const auto name = [&prefix](const char* suffix) { return prefix + suffix; };
    LS_ASSIGN_OR_RETURN(layer.input_layernorm,
                        builder.Vector(name(names.input_layernorm), hidden));
    LS_ASSIGN_OR_RETURN(
        layer.q_proj, builder.Matrix(name(names.q_proj), q_dim, hidden, dtype));
    LS_ASSIGN_OR_RETURN(layer.k_proj, builder.Matrix(name(names.k_proj), kv_dim,
                                                     hidden, dtype));
    LS_ASSIGN_OR_RETURN(layer.v_proj, builder.Matrix(name(names.v_proj), kv_dim,
                                                     hidden, dtype));
    if (config.attention_bias) {
      LS_ASSIGN_OR_RETURN(layer.q_bias,
                          builder.Vector(name(names.q_bias), q_dim));
      LS_ASSIGN_OR_RETURN(layer.k_bias,
                          builder.Vector(name(names.k_bias), kv_dim));
      LS_ASSIGN_OR_RETURN(layer.v_bias,
                          builder.Vector(name(names.v_bias), kv_dim));
    }
    if (config.qk_norm) {
      LS_ASSIGN_OR_RETURN(layer.q_norm,
                          builder.Vector(name(names.q_norm), config.head_dim));
      LS_ASSIGN_OR_RETURN(layer.k_norm,
                          builder.Vector(name(names.k_norm), config.head_dim));
    }
    LS_ASSIGN_OR_RETURN(
        layer.o_proj, builder.Matrix(name(names.o_proj), hidden, q_dim, dtype));
    LS_ASSIGN_OR_RETURN(
        layer.post_attention_layernorm,
        builder.Vector(name(names.post_attention_layernorm), hidden));
    LS_ASSIGN_OR_RETURN(layer.gate_proj, builder.Matrix(name(names.gate_proj),
                                                        inter, hidden, dtype));
    LS_ASSIGN_OR_RETURN(layer.up_proj, builder.Matrix(name(names.up_proj),
                                                      inter, hidden, dtype));
    LS_ASSIGN_OR_RETURN(layer.down_proj, builder.Matrix(name(names.down_proj),
                                                        hidden, inter, dtype));
  }
  LS_ASSIGN_OR_RETURN(weights.norm, builder.Vector(names.final_norm, hidden));
  // A tied checkpoint normally omits the head; when one is stored anyway it
  // is what the exporter meant, so it wins.
  if (builder.Has(names.lm_head) || !config.tie_word_embeddings) {
    LS_ASSIGN_OR_RETURN(weights.lm_head,
                        builder.Matrix(names.lm_head, vocab, hidden, dtype));
  } else {
    weights.lm_head = weights.embed_tokens;
  }
  return absl::OkStatus();
}

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_MODEL_WEIGHT_LAYOUT_H_
