// Test helpers that write safetensors files and model directories byte by
// byte, so the loader's validation can be exercised with crafted input.
#ifndef LITESTAGE_TESTS_MODEL_SAFETENSORS_WRITER_H_
#define LITESTAGE_TESTS_MODEL_SAFETENSORS_WRITER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "engine/model/config.h"
#include "tests/common/scoped_temp_dir.h"

namespace litestage::testing {

// One tensor to serialise. `bytes` is written as is; the header entry uses
// `dtype` and `shape` and offsets computed from the byte sizes.
struct TensorBytes {
  std::string name;
  std::string dtype;  // "F32", "BF16", "F16", ...
  std::vector<int64_t> shape;
  std::string bytes;
};

// The whole file: 8-byte little-endian length, header JSON padded with spaces
// so the data section starts at a file offset == `misalignment` (mod 8);
// 0 gives aligned tensors, 1 makes every f32/16-bit tensor unaligned.
std::string SerializeSafetensors(const std::vector<TensorBytes>& tensors,
                                 size_t misalignment = 0);

// A file from an explicit header text and data section (for malformed ones).
std::string RawSafetensors(const std::string& header, const std::string& data);

// A fresh empty directory inside ProcessTempDir() (removed at exit).
std::string MakeTempDir(const std::string& name);

void WriteFile(const std::string& path, const std::string& contents);

// Values encoded in a dtype: "F32" little-endian floats, "BF16" (rounded),
// "F16" (exactly representable values only).
std::string EncodeValues(const std::vector<float>& values,
                         const std::string& dtype);

// Deterministic values with a distinct pattern per tensor (all exactly
// representable in bf16 and f16).
std::vector<float> PatternValues(size_t count, int tensor_id);

// Every tensor a model with `config` needs, filled with PatternValues, in
// `dtype` for matrices and F32 for vectors. Includes lm_head unless tied.
std::vector<TensorBytes> ModelTensors(const ModelConfig& config,
                                      const std::string& dtype);

// A small Llama config.json (hidden 16, 2 layers, 4 heads, 2 kv heads,
// intermediate 24, vocab 32) as a JSON string with `tied` embeddings.
std::string SmallLlamaConfigJson(bool tied);

// Writes config.json + model.safetensors for SmallLlamaConfigJson.
std::string WriteSmallModel(const std::string& name, bool tied,
                            const std::string& dtype);

}  // namespace litestage::testing

#endif  // LITESTAGE_TESTS_MODEL_SAFETENSORS_WRITER_H_
