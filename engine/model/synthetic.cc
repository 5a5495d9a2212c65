// Seeded random weights with the shapes of real models, generated directly in
// the requested dtype. Each element is a pure function of (seed, tensor id,
// index), so generation parallelises freely and is reproducible regardless
// of the thread count.
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/convert.h"
#include "engine/model/weights.h"
#include "engine/util/float16.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

// Hugging Face's initializer_range: the std of freshly initialised linears.
constexpr float kMatrixStd = 0.02f;
// Norm weights start at 1 in HF; small noise keeps them from being a no-op
// that would hide indexing bugs.
constexpr float kNormNoiseStd = 0.02f;
constexpr float kBiasStd = 0.02f;

struct Preset {
  const char* name;
  ModelConfig (*make)();
};

ModelConfig Base(const char* architecture, ModelFamily family) {
  ModelConfig config;
  config.architecture = architecture;
  config.family = family;
  config.torch_dtype = "bfloat16";
  return config;
}

ModelConfig Tiny() {
  ModelConfig c = Base("LlamaForCausalLM", ModelFamily::kLlama);
  c.vocab_size = 512;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 1024;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = false;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

ModelConfig SmolLm2() {
  ModelConfig c = Base("LlamaForCausalLM", ModelFamily::kLlama);
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.intermediate_size = 1536;
  c.num_hidden_layers = 30;
  c.num_attention_heads = 9;
  c.num_key_value_heads = 3;
  c.head_dim = 64;
  c.max_position_embeddings = 8192;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 100000.0;
  c.tie_word_embeddings = true;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

ModelConfig Qwen25() {
  ModelConfig c = Base("Qwen2ForCausalLM", ModelFamily::kQwen2);
  c.vocab_size = 151936;
  c.hidden_size = 896;
  c.intermediate_size = 4864;
  c.num_hidden_layers = 24;
  c.num_attention_heads = 14;
  c.num_key_value_heads = 2;
  c.head_dim = 64;
  c.max_position_embeddings = 32768;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1000000.0;
  c.attention_bias = true;
  c.tie_word_embeddings = true;
  c.bos_token_id = 151643;  // <|endoftext|>, as in the model's config.json.
  c.eos_token_ids = {151645, 151643};  // <|im_end|>, <|endoftext|>.
  return c;
}

ModelConfig TinyLlama() {
  ModelConfig c = Base("LlamaForCausalLM", ModelFamily::kLlama);
  c.vocab_size = 32000;
  c.hidden_size = 2048;
  c.intermediate_size = 5632;
  c.num_hidden_layers = 22;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 4;
  c.head_dim = 64;
  c.max_position_embeddings = 2048;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = false;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

ModelConfig Qwen3() {
  ModelConfig c = Base("Qwen3ForCausalLM", ModelFamily::kQwen3);
  c.vocab_size = 151936;
  c.hidden_size = 1024;
  c.intermediate_size = 3072;
  c.num_hidden_layers = 28;
  c.num_attention_heads = 16;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  c.max_position_embeddings = 40960;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1000000.0;
  c.qk_norm = true;
  c.tie_word_embeddings = true;
  c.bos_token_id = 151643;
  c.eos_token_ids = {151645, 151643};
  return c;
}

constexpr Preset kPresets[] = {
    {"tiny", Tiny},           {"smollm2-135m", SmolLm2},
    {"qwen2.5-0.5b", Qwen25}, {"tinyllama-1.1b", TinyLlama},
    {"qwen3-0.6b", Qwen3},
};

inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Sum of four 16-bit uniforms (Irwin-Hall, n = 4): mean 2, variance 1/3, a
// bell shape within about 3.5 sigma; cheap and good enough for weights.
inline float NormalIsh(uint64_t bits) {
  constexpr float kInv65536 = 1.0f / 65536.0f;
  // Integer sum, one conversion: the hot loop of 1e9 elements.
  const uint32_t integer_sum =
      static_cast<uint32_t>((bits & 0xffff) + ((bits >> 16) & 0xffff) +
                            ((bits >> 32) & 0xffff) + (bits >> 48));
  const float sum = static_cast<float>(integer_sum);
  constexpr float kSqrt3 = 1.7320508f;
  return (sum * kInv65536 - 2.0f) * kSqrt3;
}

void FillF32(float* values, size_t begin, size_t end, uint64_t stream,
             float mean, float std) {
  for (size_t i = begin; i < end; ++i) {
    values[i] = mean + std * NormalIsh(SplitMix64(stream + i));
  }
}

void FillBf16(uint16_t* values, size_t begin, size_t end, uint64_t stream,
              float mean, float std) {
  for (size_t i = begin; i < end; ++i) {
    values[i] = F32ToBf16(mean + std * NormalIsh(SplitMix64(stream + i)));
  }
}

// Generates tensors into buffers owned by `weights`.
class Generator {
 public:
  Generator(uint64_t seed, ModelWeights& weights)
      : seed_(seed), weights_(weights) {}

  Tensor Matrix(int64_t rows, int64_t cols, DType dtype) {
    return Fill({rows, cols}, dtype, 0.0f, kMatrixStd);
  }
  Tensor Norm(int64_t size) {
    return Fill({size}, DType::kF32, 1.0f, kNormNoiseStd);
  }
  Tensor Bias(int64_t size) {
    return Fill({size}, DType::kF32, 0.0f, kBiasStd);
  }

 private:
  Tensor Fill(std::vector<int64_t> shape, DType dtype, float mean, float std) {
    Tensor tensor{dtype, std::move(shape), nullptr};
    const size_t count = static_cast<size_t>(tensor.numel());
    std::unique_ptr<uint8_t[]> buffer =
        AllocateWeightBuffer(count * DTypeSize(dtype));
    // Each tensor gets its own stream so shapes never shift other tensors.
    const uint64_t stream = SplitMix64(seed_ ^ SplitMix64(++tensor_id_));
    uint8_t* out = buffer.get();
    // Captured by value: stores through `values` could otherwise alias the
    // captured floats and force a reload per element.
    ParallelForChunks(
        count, size_t{1} << 18,
        [out, dtype, mean, std, stream](size_t begin, size_t end) {
          if (dtype == DType::kF32) {
            FillF32(reinterpret_cast<float*>(out), begin, end, stream, mean,
                    std);
          } else {
            FillBf16(reinterpret_cast<uint16_t*>(out), begin, end, stream, mean,
                     std);
          }
        });
    tensor.data = out;
    weights_.owned_buffers.push_back(std::move(buffer));
    return tensor;
  }

  uint64_t seed_;
  uint64_t tensor_id_ = 0;
  ModelWeights& weights_;
};

}  // namespace

std::vector<std::string> SyntheticPresetNames() {
  std::vector<std::string> names;
  for (const Preset& preset : kPresets) names.push_back(preset.name);
  return names;
}

absl::StatusOr<ModelConfig> SyntheticPresetConfig(const std::string& preset) {
  for (const Preset& candidate : kPresets) {
    if (preset == candidate.name) return candidate.make();
  }
  return absl::NotFoundError(absl::StrCat(
      "unknown synthetic preset '", preset,
      "' (available: ", absl::StrJoin(SyntheticPresetNames(), ", "), ")"));
}

absl::StatusOr<std::unique_ptr<ModelWeights>> MakeSyntheticWeights(
    const std::string& preset, DType matrix_dtype, uint64_t seed) {
  LS_ASSIGN_OR_RETURN(ModelConfig config, SyntheticPresetConfig(preset));
  return MakeSyntheticWeightsForConfig(config, preset, matrix_dtype, seed);
}

absl::StatusOr<std::unique_ptr<ModelWeights>> MakeSyntheticWeightsForConfig(
    const ModelConfig& config, const std::string& name, DType matrix_dtype,
    uint64_t seed) {
  if (matrix_dtype != DType::kF32 && matrix_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("synthetic:", name, ": ", DTypeName(matrix_dtype),
                     " matrices are not supported; use f32 or bf16"));
  }
  auto weights = std::make_unique<ModelWeights>();
  weights->config = config;
  weights->matrix_dtype = matrix_dtype;
  weights->synthetic = true;
  weights->source = absl::StrCat("synthetic:", name);
  weights->synthetic_seed = seed;

  const int64_t hidden = config.hidden_size;
  const int64_t inter = config.intermediate_size;
  Generator generate(seed, *weights);
  weights->embed_tokens =
      generate.Matrix(config.vocab_size, hidden, matrix_dtype);
  weights->layers.resize(static_cast<size_t>(config.num_hidden_layers));
  for (LayerWeights& layer : weights->layers) {
    layer.input_layernorm = generate.Norm(hidden);
    layer.q_proj = generate.Matrix(config.q_dim(), hidden, matrix_dtype);
    layer.k_proj = generate.Matrix(config.kv_dim(), hidden, matrix_dtype);
    layer.v_proj = generate.Matrix(config.kv_dim(), hidden, matrix_dtype);
    if (config.attention_bias) {
      layer.q_bias = generate.Bias(config.q_dim());
      layer.k_bias = generate.Bias(config.kv_dim());
      layer.v_bias = generate.Bias(config.kv_dim());
    }
    if (config.qk_norm) {
      layer.q_norm = generate.Norm(config.head_dim);
      layer.k_norm = generate.Norm(config.head_dim);
    }
    layer.o_proj = generate.Matrix(hidden, config.q_dim(), matrix_dtype);
    layer.post_attention_layernorm = generate.Norm(hidden);
    layer.gate_proj = generate.Matrix(inter, hidden, matrix_dtype);
    layer.up_proj = generate.Matrix(inter, hidden, matrix_dtype);
    layer.down_proj = generate.Matrix(hidden, inter, matrix_dtype);
  }
  weights->norm = generate.Norm(hidden);
  weights->lm_head =
      config.tie_word_embeddings
          ? weights->embed_tokens
          : generate.Matrix(config.vocab_size, hidden, matrix_dtype);
  return weights;
}

}  // namespace litestage
