// ModelWeights: every tensor the forward pass reads, as views into mapped
// safetensors files or into buffers converted at load time.
#ifndef LITESTAGE_ENGINE_MODEL_WEIGHTS_H_
#define LITESTAGE_ENGINE_MODEL_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/tensor.h"
#include "engine/util/mapped_file.h"

namespace litestage {

// Shapes use H = hidden_size, I = intermediate_size, Q = heads * head_dim,
// KV = kv_heads * head_dim, D = head_dim, V = vocab_size.
// Matrices keep the model's dtype (or the one requested at load); every
// vector (norm weights, biases) is converted to fp32 at load.
struct LayerWeights {
  Tensor input_layernorm;           // [H] f32
  Tensor q_proj;                    // [Q, H]
  Tensor k_proj;                    // [KV, H]
  Tensor v_proj;                    // [KV, H]
  Tensor q_bias;                    // [Q] f32, Qwen2 only (else empty)
  Tensor k_bias;                    // [KV] f32, Qwen2 only
  Tensor v_bias;                    // [KV] f32, Qwen2 only
  Tensor q_norm;                    // [D] f32, Qwen3 only
  Tensor k_norm;                    // [D] f32, Qwen3 only
  Tensor o_proj;                    // [H, Q]
  Tensor post_attention_layernorm;  // [H] f32
  Tensor gate_proj;                 // [I, H]
  Tensor up_proj;                   // [I, H]
  Tensor down_proj;                 // [H, I]
};

// One tensor as the model's files describe it, before any conversion. The
// model fingerprint hashes these, so it does not depend on the load dtype.
struct SourceTensor {
  std::string name;
  std::string dtype;           // As the file names it: "BF16", "Q4_1", ...
  std::vector<int64_t> shape;  // As the file stores it.
};

struct ModelWeights {
  ModelConfig config;
  Tensor embed_tokens;  // [V, H]
  std::vector<LayerWeights> layers;
  Tensor norm;     // [H] f32
  Tensor lm_head;  // [V, H]; aliases embed_tokens when tied.
  // dtype of the layers' matrices. The embedding / LM head can differ when
  // a GGUF file's blocks are kept (SmolLM2's Q4_1 files store it as Q8_0).
  DType matrix_dtype = DType::kF32;
  bool synthetic = false;       // Seeded random weights, not a real model.
  std::string source;           // Directory or "synthetic:<preset>".
  uint64_t synthetic_seed = 0;  // Seed of synthetic weights.
  std::vector<SourceTensor> source_tensors;  // Every tensor in the files,
                                             // sorted by name; empty for
                                             // synthetic weights.

  // Storage behind the views. Kept last so views are destroyed first.
  std::vector<MappedFile> mapped_files;
  std::vector<std::unique_ptr<uint8_t[]>> owned_buffers;
};

struct LoadOptions {
  // Convert every matrix to this dtype at load; nullopt keeps the file's
  // dtype (F16 matrices are widened to F32, which the kernels read directly).
  std::optional<DType> matrix_dtype;
  // True: tensors used in their stored dtype are views into the mapped files
  // (fast start, page cache shared across processes), so the files must be
  // replaced atomically (rename), never truncated in place. False
  // (--no-mmap): every tensor is copied at load and no file stays mapped.
  bool use_mmap = true;
};

// Loads a Hugging Face model directory: config.json (+ generation_config.json),
// model.safetensors or model.safetensors.index.json with its shards. A
// regular file ending in ".gguf" is loaded with LoadGgufWeights instead.
// Every tensor is validated (present, dtype, shape against the config, bytes
// inside the file); errors name the file, the tensor and the reason.
absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModelWeights(
    const std::string& model_dir, const LoadOptions& options = {});

// Names accepted by "synthetic:<preset>".
std::vector<std::string> SyntheticPresetNames();

// The config of a synthetic preset (real shapes of a popular model).
absl::StatusOr<ModelConfig> SyntheticPresetConfig(const std::string& preset);

// Seeded random weights with the preset's shapes (like vLLM's dummy load
// format), for benchmarks and demos. Always marked synthetic.
absl::StatusOr<std::unique_ptr<ModelWeights>> MakeSyntheticWeights(
    const std::string& preset, DType matrix_dtype, uint64_t seed = 0);

// The same for any config (e.g. a preset shrunk for a fast test); `source`
// becomes "synthetic:<name>". The config is trusted (not re-validated).
absl::StatusOr<std::unique_ptr<ModelWeights>> MakeSyntheticWeightsForConfig(
    const ModelConfig& config, const std::string& name, DType matrix_dtype,
    uint64_t seed = 0);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_MODEL_WEIGHTS_H_
