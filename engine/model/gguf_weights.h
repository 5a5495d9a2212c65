// Loading a model from one GGUF file (llama.cpp's format): the config comes
// from the "<arch>.*" and "tokenizer.ggml.*" metadata, the weights are
// dequantized at load into plain matrices the kernels read.
#ifndef LITESTAGE_ENGINE_MODEL_GGUF_WEIGHTS_H_
#define LITESTAGE_ENGINE_MODEL_GGUF_WEIGHTS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/gguf.h"
#include "engine/model/weights.h"

namespace litestage {

// Whether `path` names a GGUF model: a regular file ending in ".gguf".
bool IsGgufModelPath(const std::string& path);

// The ModelConfig a GGUF file describes (general.architecture "llama",
// "qwen2" or "qwen3"), validated as a config.json would be. The vocabulary
// size is <arch>.vocab_size, else the tokenizer.ggml.tokens length, else the
// rows of token_embd.weight; the model is tied when output.weight is absent.
// Errors name the file and the key.
absl::StatusOr<ModelConfig> GgufModelConfig(const GgufFile& file);

// Loads the weights of a GGUF file. Every tensor is checked (present, shape
// against the config, a type DequantizeRow supports). Matrices become
// options.matrix_dtype, or by default (nullopt): Q4_0, Q4_1 and Q8_0
// matrices stay in their blocks (DType kQ4_0/kQ4_1/kQ8_0; the matmul's
// results are bit-identical to their exact f32 dequantization, which is
// what transformers' GGUF loading computes with), bf16 stays bf16, and every
// other type is dequantized exactly to f32. Vectors are f32. For "llama" files
// the rows of Q and K, which llama.cpp's converter interleaves per head, are
// put back in Hugging Face (rotate_half) order.
absl::StatusOr<std::unique_ptr<ModelWeights>> LoadGgufWeights(
    const std::string& path, const LoadOptions& options = {});

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_MODEL_GGUF_WEIGHTS_H_
