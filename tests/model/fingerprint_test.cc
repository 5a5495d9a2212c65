#include "engine/model/fingerprint.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "engine/model/weights.h"
#include "engine/util/mapped_file.h"
#include "gtest/gtest.h"

namespace litestage {
namespace {

namespace fs = std::filesystem;

std::string GoldenModel(const std::string& name) {
  return std::string(LITESTAGE_TEST_DATA_DIR) + "/golden/models/" + name;
}

ModelFingerprint FingerprintOf(const std::string& path,
                               LoadOptions options = {}) {
  auto weights = LoadModelWeights(path, options);
  EXPECT_TRUE(weights.ok()) << weights.status();
  return weights.ok() ? ComputeModelFingerprint(**weights) : ModelFingerprint{};
}

TEST(FingerprintTest, DistinctModelsDifferAndLoadDtypeDoesNot) {
  std::set<std::string> seen;
  for (const char* name :
       {"llama_f32_tied_gqa", "llama_bf16_untied", "llama3_rope_scaling",
        "qwen2_f32", "qwen3_f32", "mistral_f32", "mistral_sliding_window",
        "llama_sharded"}) {
    const ModelFingerprint as_stored = FingerprintOf(GoldenModel(name));
    EXPECT_TRUE(seen.insert(as_stored.ToString()).second) << name;
    EXPECT_EQ(as_stored, FingerprintOf(GoldenModel(name), {DType::kBF16}))
        << name;
    EXPECT_EQ(as_stored, FingerprintOf(GoldenModel(name), {DType::kF32}))
        << name;
  }
}

TEST(FingerprintTest, ConfigChangeMovesOnlyTheConfigHash) {
  const fs::path copy =
      fs::temp_directory_path() / "litestage_fingerprint_test";
  fs::remove_all(copy);
  fs::copy(GoldenModel("qwen2_f32"), copy);
  const ModelFingerprint original = FingerprintOf(copy.string());
  auto config = ReadFileToString((copy / "config.json").string());
  ASSERT_TRUE(config.ok());
  const size_t key = config->find("\"rope_theta\"");
  ASSERT_NE(key, std::string::npos);
  const size_t value = config->find(':', key) + 1;
  const size_t end = config->find_first_of(",}\n", value);
  config->replace(value, end - value, " 12345.0");
  std::ofstream((copy / "config.json").string()) << *config;
  const ModelFingerprint changed = FingerprintOf(copy.string());
  fs::remove_all(copy);
  EXPECT_NE(original.config_hash, changed.config_hash);
  EXPECT_EQ(original.tensor_hash, changed.tensor_hash);
  EXPECT_EQ(original.architecture, "Qwen2ForCausalLM");
}

TEST(FingerprintTest, SyntheticWeightsAreIdentifiedByPresetAndSeed) {
  auto a = MakeSyntheticWeights("tiny", DType::kF32, 1);
  auto b = MakeSyntheticWeights("tiny", DType::kBF16, 1);
  auto c = MakeSyntheticWeights("tiny", DType::kF32, 2);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(ComputeModelFingerprint(**a), ComputeModelFingerprint(**b));
  EXPECT_NE(ComputeModelFingerprint(**a).tensor_hash,
            ComputeModelFingerprint(**c).tensor_hash);
}

// Saved profiles carry fingerprints: the algorithm must never drift. These
// values were computed once and are pinned on purpose.
TEST(FingerprintTest, PinnedValueForStories260K) {
  const char* shared = std::getenv("LITESTAGE_SHARED");
  if (shared == nullptr) GTEST_SKIP() << "LITESTAGE_SHARED is not set";
  const std::string dir = std::string(shared) + "/models/stories260K";
  ASSERT_TRUE(fs::exists(dir + "/model.safetensors"))
      << "LITESTAGE_SHARED is set but " << dir << " is missing";
  EXPECT_EQ(
      FingerprintOf(dir).ToString(),
      "LlamaForCausalLM/5x64/config=3584d76594c89677/tensors=442c9650b3a706fa");
}

TEST(FingerprintTest, PinnedValueForTheDefaultGguf) {
  const char* path = std::getenv("LITESTAGE_DEFAULT_GGUF");
  if (path == nullptr) GTEST_SKIP() << "LITESTAGE_DEFAULT_GGUF is not set";
  ASSERT_TRUE(fs::exists(path))
      << "LITESTAGE_DEFAULT_GGUF is set but " << path << " is missing";
  const ModelFingerprint fingerprint = FingerprintOf(path);
  EXPECT_EQ(fingerprint.ToString(),
            "LlamaForCausalLM/30x576/config=2c986ecd87fa1542/"
            "tensors=a3112467b8a99834");
  EXPECT_EQ(fingerprint, FingerprintOf(path, {DType::kBF16}));
}

TEST(FingerprintTest, ParseInvertsToString) {
  auto weights = MakeSyntheticWeights("tiny", DType::kF32, 1);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelFingerprint fingerprint = ComputeModelFingerprint(**weights);
  auto parsed = ParseModelFingerprint(fingerprint.ToString());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, fingerprint);

  const std::string pinned =
      "LlamaForCausalLM/30x576/config=2c986ecd87fa1542/"
      "tensors=a3112467b8a99834";
  auto smollm = ParseModelFingerprint(pinned);
  ASSERT_TRUE(smollm.ok()) << smollm.status();
  EXPECT_EQ(smollm->architecture, "LlamaForCausalLM");
  EXPECT_EQ(smollm->num_hidden_layers, 30);
  EXPECT_EQ(smollm->hidden_size, 576);
  EXPECT_EQ(smollm->config_hash, 0x2c986ecd87fa1542ull);
  EXPECT_EQ(smollm->tensor_hash, 0xa3112467b8a99834ull);
  EXPECT_EQ(smollm->ToString(), pinned);
}

TEST(FingerprintTest, ParseRejectsNonCanonicalText) {
  for (const char* bad : {
           "",
           "LlamaForCausalLM",
           "/30x576/config=2c986ecd87fa1542/tensors=a3112467b8a99834",
           "Llama/30x576/config=2c986ecd87fa1542/tensors=A3112467B8A99834",
           "Llama/30x576/config=2c986ecd87fa154/tensors=a3112467b8a99834",
           "Llama/30x576/config=2c986ecd87fa1542/tensors=a3112467b8a998345",
           "Llama/30x576/config=2c986ecd87fa1542/tensor=a3112467b8a99834",
           "Llama/030x576/config=2c986ecd87fa1542/tensors=a3112467b8a99834",
           "Llama/+30x576/config=2c986ecd87fa1542/tensors=a3112467b8a99834",
           "Llama/-30x576/config=2c986ecd87fa1542/tensors=a3112467b8a99834",
           "Llama/0x576/config=2c986ecd87fa1542/tensors=a3112467b8a99834",
           "Llama/30*576/config=2c986ecd87fa1542/tensors=a3112467b8a99834",
           "Llama/30x576/config=2c986ecd87fa1542/tensors=a3112467b8a99834/",
       }) {
    auto parsed = ParseModelFingerprint(bad);
    EXPECT_FALSE(parsed.ok()) << bad;
    if (!parsed.ok()) {
      EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(parsed.status().message().find("malformed model fingerprint"),
                std::string::npos);
    }
  }
}

}  // namespace
}  // namespace litestage
