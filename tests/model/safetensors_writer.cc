#include "tests/model/safetensors_writer.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "engine/util/check.h"
#include "engine/util/float16.h"
#include "engine/util/json_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace litestage::testing {

namespace fs = std::filesystem;

std::string RawSafetensors(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t size = header.size();
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>((size >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string SerializeSafetensors(const std::vector<TensorBytes>& tensors,
                                 size_t misalignment) {
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const TensorBytes& tensor : tensors) {
    const size_t begin = data.size();
    data += tensor.bytes;
    header[tensor.name] = {{"dtype", tensor.dtype},
                           {"shape", tensor.shape},
                           {"data_offsets", {begin, data.size()}}};
  }
  std::string header_text = header.dump();
  while ((8 + header_text.size()) % 8 != misalignment % 8) header_text += ' ';
  return RawSafetensors(header_text, data);
}

std::string MakeTempDir(const std::string& name) {
  // Inside the process's scratch directory, removed when the test binary
  // exits, so runs leave no litestage_model_* directories behind.
  const fs::path dir = fs::path(ProcessTempDir().path()) /
                       absl::StrCat("litestage_model_", name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  LS_CHECK(out.good()) << "cannot write " << path;
}

std::string EncodeValues(const std::vector<float>& values,
                         const std::string& dtype) {
  std::string out;
  for (float value : values) {
    if (dtype == "F32") {
      char bytes[4];
      std::memcpy(bytes, &value, 4);
      out.append(bytes, 4);
    } else {
      uint16_t bits = 0;
      if (dtype == "BF16") {
        bits = F32ToBf16(value);
      } else {
        LS_CHECK(dtype == "F16") << dtype;
        // Exact for the small dyadic values PatternValues makes.
        uint32_t f;
        std::memcpy(&f, &value, 4);
        const uint32_t sign = (f >> 16) & 0x8000u;
        const int exponent = static_cast<int>((f >> 23) & 0xff) - 127 + 15;
        if ((f & 0x7fffffffu) == 0) {
          bits = static_cast<uint16_t>(sign);
        } else {
          LS_CHECK(exponent > 0 && exponent < 31) << value;
          bits = static_cast<uint16_t>(sign | (exponent << 10) |
                                       ((f >> 13) & 0x3ffu));
        }
        LS_CHECK(F16ToF32(bits) == value) << value;
      }
      out.push_back(static_cast<char>(bits & 0xff));
      out.push_back(static_cast<char>(bits >> 8));
    }
  }
  return out;
}

std::vector<float> PatternValues(size_t count, int tensor_id) {
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) {
    // Multiples of 1/64 in [-1, 1): exact in bf16 and f16.
    const int k =
        static_cast<int>((i * 7 + static_cast<size_t>(tensor_id) * 13) % 128) -
        64;
    values[i] = static_cast<float>(k) / 64.0f;
  }
  return values;
}

std::vector<TensorBytes> ModelTensors(const ModelConfig& config,
                                      const std::string& dtype) {
  std::vector<TensorBytes> tensors;
  int id = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape,
                 const std::string& tensor_dtype) {
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    tensors.push_back(
        {name, tensor_dtype, shape,
         EncodeValues(PatternValues(static_cast<size_t>(count), id++),
                      tensor_dtype)});
  };
  const int64_t h = config.hidden_size;
  add("model.embed_tokens.weight", {config.vocab_size, h}, dtype);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    add(p + "input_layernorm.weight", {h}, "F32");
    add(p + "self_attn.q_proj.weight", {config.q_dim(), h}, dtype);
    add(p + "self_attn.k_proj.weight", {config.kv_dim(), h}, dtype);
    add(p + "self_attn.v_proj.weight", {config.kv_dim(), h}, dtype);
    if (config.attention_bias) {
      add(p + "self_attn.q_proj.bias", {config.q_dim()}, dtype);
      add(p + "self_attn.k_proj.bias", {config.kv_dim()}, dtype);
      add(p + "self_attn.v_proj.bias", {config.kv_dim()}, dtype);
    }
    if (config.qk_norm) {
      add(p + "self_attn.q_norm.weight", {config.head_dim}, dtype);
      add(p + "self_attn.k_norm.weight", {config.head_dim}, dtype);
    }
    add(p + "self_attn.o_proj.weight", {h, config.q_dim()}, dtype);
    add(p + "post_attention_layernorm.weight", {h}, "F32");
    add(p + "mlp.gate_proj.weight", {config.intermediate_size, h}, dtype);
    add(p + "mlp.up_proj.weight", {config.intermediate_size, h}, dtype);
    add(p + "mlp.down_proj.weight", {h, config.intermediate_size}, dtype);
  }
  add("model.norm.weight", {h}, dtype);
  if (!config.tie_word_embeddings)
    add("lm_head.weight", {config.vocab_size, h}, dtype);
  return tensors;
}

std::string SmallLlamaConfigJson(bool tied) {
  nlohmann::json config = {
      {"architectures", {"LlamaForCausalLM"}},
      {"vocab_size", 32},
      {"hidden_size", 16},
      {"intermediate_size", 24},
      {"num_hidden_layers", 2},
      {"num_attention_heads", 4},
      {"num_key_value_heads", 2},
      {"max_position_embeddings", 64},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", 10000.0},
      {"tie_word_embeddings", tied},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
  };
  return config.dump();
}

std::string WriteSmallModel(const std::string& name, bool tied,
                            const std::string& dtype) {
  const std::string dir = MakeTempDir(name);
  const std::string config_text = SmallLlamaConfigJson(tied);
  WriteFile(dir + "/config.json", config_text);
  auto config = ParseModelConfig(nlohmann::json::parse(config_text), "test");
  LS_CHECK(config.ok()) << config.status().ToString();
  WriteFile(dir + "/model.safetensors",
            SerializeSafetensors(ModelTensors(*config, dtype)));
  return dir;
}

}  // namespace litestage::testing
