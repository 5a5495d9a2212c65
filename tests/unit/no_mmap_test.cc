// --no-mmap: a model loaded without keeping its files mapped survives the
// file being truncated in place (what `cp new old` does first), which kills
// a mapped f32 model with SIGBUS on the next request.
#include <unistd.h>

#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "engine/runtime/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/scoped_temp_dir.h"

namespace litestage {
namespace {

// An f32 model whose matrices are used in their stored dtype, so a mapped
// load serves them straight from the file.
const std::string kModel =
    std::string(LITESTAGE_TEST_DATA_DIR) + "/golden/models/llama_f32_tied_gqa";

std::string CopyModel(const testing::ScopedTempDir& dir) {
  const std::string copy = dir.Child("model");
  std::filesystem::copy(kModel, copy);
  return copy;
}

std::unique_ptr<Engine> Load(const std::string& model, bool use_mmap) {
  EngineOptions options;
  options.model = model;
  options.use_mmap = use_mmap;
  options.backend.num_threads = 2;
  options.backend.kv_cache_tokens = 256;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

std::vector<int32_t> Greedy(Engine& engine) {
  GenerationRequest request;
  request.prompt_tokens = {1, 5, 9, 3};
  request.max_new_tokens = 8;
  request.ignore_eos = true;
  absl::StatusOr<GenerationResult> result = engine.Generate(request, nullptr);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? result->tokens : std::vector<int32_t>{};
}

// Whether `address` lies inside one of the engine's file mappings.
bool PointsIntoAMapping(const Engine& engine, const void* address) {
  for (const MappedFile& file : engine.weights().mapped_files) {
    const auto* p = static_cast<const uint8_t*>(address);
    if (p >= file.data() && p < file.data() + file.size()) return true;
  }
  return false;
}

TEST(NoMmapTest, TruncatedModelFileKeepsServingTheSameTokens) {
  testing::ScopedTempDir dir("litestage_no_mmap_test");
  const std::string mapped_dir = CopyModel(dir);
  std::unique_ptr<Engine> mapped = Load(mapped_dir, /*use_mmap=*/true);
  ASSERT_NE(mapped, nullptr);
  // The mapped load really serves f32 matrices from the file.
  ASSERT_EQ(mapped->weights().matrix_dtype, DType::kF32);
  EXPECT_FALSE(mapped->weights().mapped_files.empty());
  EXPECT_TRUE(
      PointsIntoAMapping(*mapped, mapped->weights().layers[0].q_proj.data));
  const std::vector<int32_t> expected = Greedy(*mapped);
  ASSERT_EQ(expected.size(), 8u);

  const std::string copied_dir = dir.Child("copied");
  std::filesystem::copy(kModel, copied_dir);
  std::unique_ptr<Engine> copied = Load(copied_dir, /*use_mmap=*/false);
  ASSERT_NE(copied, nullptr);
  EXPECT_TRUE(copied->weights().mapped_files.empty());
  EXPECT_FALSE(
      PointsIntoAMapping(*copied, copied->weights().layers[0].q_proj.data));
  // What `cp new.safetensors model.safetensors` does first.
  ASSERT_EQ(::truncate((copied_dir + "/model.safetensors").c_str(), 0), 0);
  EXPECT_EQ(Greedy(*copied), expected);
}

TEST(NoMmapTest, HugeKvCacheFailsCleanly) {
  EngineOptions options;
  options.model = "synthetic:tiny";
  options.backend.kv_cache_tokens = 1'000'000'000'000;  // Used to bad_alloc.
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  ASSERT_FALSE(engine.ok());
  EXPECT_THAT(engine.status().message(), ::testing::HasSubstr("kv-cache"));
  options.backend.kv_cache_tokens = std::numeric_limits<int64_t>::max();
  EXPECT_FALSE(Engine::Create(options).ok());  // Used to CHECK-fail.
}

}  // namespace
}  // namespace litestage
