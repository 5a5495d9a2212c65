// Bounds on the model files: JSON nesting in the safetensors header and the
// model's JSON files, file types (FIFO, device, directory, symlink) and sizes.
// Each error names the path and the reason.
#include <unistd.h>

#include <filesystem>
#include <string>

#include "engine/model/config.h"
#include "engine/model/safetensors.h"
#include "engine/model/weights.h"
#include "engine/util/json_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/scoped_temp_dir.h"
#include "tests/model/safetensors_writer.h"

namespace litestage {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::MakeFifo;
using testing::MakeSparseFile;
using testing::NestedJsonArrays;
using testing::RawSafetensors;
using testing::ScopedTempDir;

// A header whose tensor shape is `depth` nested arrays.
std::string DeepShapeHeader(size_t depth) {
  return "{\"t\": {\"dtype\": \"F32\", \"shape\": " + NestedJsonArrays(depth) +
         ", \"data_offsets\": [0, 0]}}";
}

// The reproduction: 100,000 levels crashed (87k frames in dump()).
TEST(SafetensorsLimitsTest, DeeplyNestedShapeIsRejectedBeforeParsing) {
  const absl::StatusOr<SafetensorsHeader> parsed =
      ParseSafetensorsBytes(RawSafetensors(DeepShapeHeader(100'000), ""), "m");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(parsed.status().message(),
              AllOf(HasSubstr("m (safetensors header)"),
                    HasSubstr("nesting deeper than 64")));
}

TEST(SafetensorsLimitsTest, NestingUnderTheBoundReachesTheShapeCheck) {
  // The header object and the entry take two levels.
  const absl::StatusOr<SafetensorsHeader> parsed = ParseSafetensorsBytes(
      RawSafetensors(DeepShapeHeader(kMaxJsonDepth - 2), ""), "m");
  ASSERT_FALSE(parsed.ok());
  // The shape entry is echoed, but cut: never the whole value.
  EXPECT_THAT(parsed.status().message(),
              HasSubstr("shape entries must be non-negative integers, got [["));
  EXPECT_LT(parsed.status().message().size(), 250u);
  const absl::StatusOr<SafetensorsHeader> over = ParseSafetensorsBytes(
      RawSafetensors(DeepShapeHeader(kMaxJsonDepth - 1), ""), "m");
  ASSERT_FALSE(over.ok());
  EXPECT_THAT(over.status().message(), HasSubstr("nesting deeper"));
}

TEST(SafetensorsLimitsTest, LongValuesInMessagesAreCut) {
  const std::string long_dtype(100'000, 'X');
  const absl::StatusOr<SafetensorsHeader> parsed = ParseSafetensorsBytes(
      RawSafetensors("{\"t\": {\"dtype\": \"" + long_dtype +
                         "\", \"shape\": [], \"data_offsets\": [0, 0]}}",
                     ""),
      "m");
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(parsed.status().message(), HasSubstr("unknown dtype 'XXXX"));
  EXPECT_LT(parsed.status().message().size(), 200u);
}

class ModelFileLimitsTest : public ::testing::Test {
 protected:
  // A valid small model in the scratch directory; tests then break a file.
  void SetUp() override {
    model_ = testing::WriteSmallModel("limits", /*tied=*/true, "F32");
    ASSERT_TRUE(LoadModelWeights(model_).ok());
  }
  std::string File(const std::string& name) const {
    return (fs::path(model_) / name).string();
  }
  // Replaces file `name` with a FIFO / a directory / a symlink.
  void ReplaceWithFifo(const std::string& name) {
    fs::remove(File(name));
    MakeFifo(File(name));
  }
  absl::Status LoadError() {
    absl::StatusOr<std::unique_ptr<ModelWeights>> weights =
        LoadModelWeights(model_);
    EXPECT_FALSE(weights.ok());
    return weights.ok() ? absl::OkStatus() : weights.status();
  }

  std::string model_;
};

TEST_F(ModelFileLimitsTest, ConfigJsonFifoDeviceDirectoryAndSize) {
  ReplaceWithFifo("config.json");
  EXPECT_EQ(LoadError().message(),
            File("config.json") + ": not a regular file (fifo)");
  fs::remove(File("config.json"));
  fs::create_symlink("/dev/zero", File("config.json"));
  EXPECT_EQ(LoadError().message(),
            File("config.json") + ": not a regular file (character device)");
  fs::remove(File("config.json"));
  fs::create_directory(File("config.json"));
  EXPECT_EQ(LoadError().message(),
            File("config.json") + ": not a regular file (directory)");
  fs::remove(File("config.json"));
  MakeSparseFile(File("config.json"), kMaxSmallFileBytes + 1);
  EXPECT_THAT(LoadError().message(),
              AllOf(HasSubstr(File("config.json")), HasSubstr("1048577 bytes"),
                    HasSubstr("limit of 1048576")));
}

TEST_F(ModelFileLimitsTest, ConfigJsonSymlinkToARegularFileIsFine) {
  const std::string real = File("real_config.json");
  fs::rename(File("config.json"), real);
  fs::create_symlink(real, File("config.json"));
  EXPECT_TRUE(LoadModelWeights(model_).ok());
}

TEST_F(ModelFileLimitsTest, ConfigJsonNesting) {
  testing::WriteFile(File("config.json"),
                     "{\"x\": " + NestedJsonArrays(kMaxJsonDepth) + "}");
  EXPECT_THAT(LoadError().message(),
              AllOf(HasSubstr(File("config.json")), HasSubstr("nesting")));
}

TEST_F(ModelFileLimitsTest, GenerationConfigFifo) {
  ReplaceWithFifo("generation_config.json");
  EXPECT_EQ(LoadError().message(),
            File("generation_config.json") + ": not a regular file (fifo)");
}

TEST_F(ModelFileLimitsTest, SafetensorsFifoAndDevice) {
  ReplaceWithFifo("model.safetensors");
  EXPECT_EQ(LoadError().message(),
            File("model.safetensors") + ": not a regular file (fifo)");
  fs::remove(File("model.safetensors"));
  fs::create_symlink("/dev/zero", File("model.safetensors"));
  EXPECT_EQ(LoadError().message(), File("model.safetensors") +
                                       ": not a regular file (character "
                                       "device)");
}

TEST_F(ModelFileLimitsTest, ShardIndexFifoSizeAndNesting) {
  fs::remove(File("model.safetensors"));
  MakeFifo(File("model.safetensors.index.json"));
  EXPECT_EQ(LoadError().message(), File("model.safetensors.index.json") +
                                       ": not a regular file (fifo)");
  fs::remove(File("model.safetensors.index.json"));
  MakeSparseFile(File("model.safetensors.index.json"),
                 kMaxMetadataFileBytes + 1);
  EXPECT_THAT(LoadError().message(),
              AllOf(HasSubstr("model.safetensors.index.json"),
                    HasSubstr("over the limit of 16777216")));
  testing::WriteFile(File("model.safetensors.index.json"),
                     NestedJsonArrays(kMaxJsonDepth + 1));
  EXPECT_THAT(LoadError().message(), HasSubstr("nesting deeper"));
}

TEST(GgufFileLimitsTest, FifoAndDeviceNamedGgufAreRejected) {
  ScopedTempDir dir("litestage_gguf_limits");
  const std::string fifo = dir.Child("model.gguf");
  MakeFifo(fifo);
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights =
      LoadModelWeights(fifo);
  ASSERT_FALSE(weights.ok());
  EXPECT_EQ(weights.status().message(), fifo + ": not a regular file (fifo)");
  const std::string device = dir.Child("zero.gguf");
  fs::create_symlink("/dev/zero", device);
  weights = LoadModelWeights(device);
  ASSERT_FALSE(weights.ok());
  EXPECT_EQ(weights.status().message(),
            device + ": not a regular file (character device)");
}

}  // namespace
}  // namespace litestage
