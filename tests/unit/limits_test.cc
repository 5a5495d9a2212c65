// The bounds on what crosses litestage's boundary (docs/server.md, "Limits"):
// JSON nesting and size, the file types and sizes read whole, and the KV
// cache against available memory.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "engine/backend/backend.h"
#include "engine/util/json_util.h"
#include "engine/util/mapped_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/scoped_temp_dir.h"

namespace litestage {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::MakeFifo;
using testing::MakeSparseFile;
using testing::NestedJsonArrays;
using testing::ScopedTempDir;

TEST(JsonLimitsTest, DepthAtTheBoundIsAcceptedOneDeeperIsNot) {
  EXPECT_TRUE(CheckJsonLimits(NestedJsonArrays(kMaxJsonDepth), "x").ok());
  EXPECT_TRUE(ParseJson(NestedJsonArrays(kMaxJsonDepth), "x").ok());
  const absl::Status over =
      CheckJsonLimits(NestedJsonArrays(kMaxJsonDepth + 1), "doc.json");
  EXPECT_EQ(over.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(over.message(),
              AllOf(HasSubstr("doc.json"), HasSubstr("nesting deeper than 64"),
                    HasSubstr("at byte 64")));
  // Objects count like arrays.
  std::string objects;
  for (int i = 0; i <= kMaxJsonDepth; ++i) objects += "{\"a\":";
  objects += "1" + std::string(kMaxJsonDepth + 1, '}');
  EXPECT_FALSE(CheckJsonLimits(objects, "x").ok());
}

TEST(JsonLimitsTest, BracketsInsideStringsDoNotCount) {
  const std::string deep_text =
      "{\"k\": \"" + NestedJsonArrays(1000) + "\\\"[[[\"}";
  EXPECT_TRUE(CheckJsonLimits(deep_text, "x").ok());
  EXPECT_TRUE(ParseJson(deep_text, "x").ok());
  // An escaped backslash ends before the quote, which closes the string.
  EXPECT_FALSE(
      CheckJsonLimits("[\"\\\\\"" + NestedJsonArrays(100) + "]", "x").ok());
}

// The reproduction: 100,000 levels used to crash (stack overflow) when the
// parsed value was dumped into a message.
TEST(JsonLimitsTest, HundredThousandLevelsFailCleanly) {
  const absl::StatusOr<nlohmann::json> parsed =
      ParseJson(NestedJsonArrays(100'000), "deep.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(parsed.status().message(), HasSubstr("deep.json"));
}

TEST(JsonLimitsTest, JsonForMessageIsBounded) {
  nlohmann::json big = nlohmann::json::array();
  for (int i = 0; i < 100'000; ++i) big.push_back(i);
  const std::string shown = JsonForMessage(big);
  EXPECT_LE(shown.size(), 83u);
  EXPECT_THAT(shown, ::testing::StartsWith("[0,1,2,3"));
  EXPECT_THAT(shown, ::testing::EndsWith("..."));
  EXPECT_EQ(JsonForMessage(nlohmann::json::parse("[1, \"a\", {\"b\": null}]")),
            "[1,\"a\",{\"b\":null}]");
  EXPECT_LE(JsonForMessage(std::string(10'000'000, 'x')).size(), 83u);
  nlohmann::json deep = nlohmann::json::array();
  for (int i = 0; i < 1000; ++i) deep = nlohmann::json::array({deep});
  EXPECT_LE(JsonForMessage(deep, 5000).size(), 5003u);
  EXPECT_EQ(TruncateForMessage("abc", 2), "ab...");
  EXPECT_EQ(TruncateForMessage("abc", 3), "abc");
}

class FileLimitsTest : public ::testing::Test {
 protected:
  ScopedTempDir dir_{"litestage_limits_test"};
};

TEST_F(FileLimitsTest, FifoIsRejectedWithoutBlocking) {
  const std::string fifo = dir_.Child("fifo.json");
  MakeFifo(fifo);
  const auto start = std::chrono::steady_clock::now();
  const absl::StatusOr<std::string> read = ReadFileToString(fifo);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(read.status().message(), fifo + ": not a regular file (fifo)");
  const absl::StatusOr<MappedFile> mapped = MappedFile::Open(fifo);
  ASSERT_FALSE(mapped.ok());
  EXPECT_EQ(mapped.status().message(), fifo + ": not a regular file (fifo)");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST_F(FileLimitsTest, DevicesAndDirectoriesAreRejected) {
  const absl::StatusOr<std::string> zero = ReadFileToString("/dev/zero");
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.status().message(),
            "/dev/zero: not a regular file (character device)");
  EXPECT_FALSE(MappedFile::Open("/dev/zero").ok());
  const absl::StatusOr<std::string> directory = ReadFileToString(dir_.path());
  ASSERT_FALSE(directory.ok());
  EXPECT_EQ(directory.status().message(),
            dir_.path() + ": not a regular file (directory)");
  const absl::StatusOr<MappedFile> mapped = MappedFile::Open(dir_.path());
  ASSERT_FALSE(mapped.ok());
  EXPECT_THAT(mapped.status().message(), HasSubstr("(directory)"));
}

TEST_F(FileLimitsTest, SymlinkToARegularFileIsRead) {
  const std::string target = dir_.Child("target.json");
  std::ofstream(target) << "{\"a\": 1}";
  const std::string link = dir_.Child("link.json");
  std::filesystem::create_symlink(target, link);
  const absl::StatusOr<std::string> read = ReadFileToString(link);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, "{\"a\": 1}");
  EXPECT_TRUE(MappedFile::Open(link).ok());
  EXPECT_TRUE(ReadJsonFile(link).ok());
}

TEST_F(FileLimitsTest, SizeLimitNamesPathSizeAndLimit) {
  const std::string at_limit = dir_.Child("at_limit");
  MakeSparseFile(at_limit, 4096);
  const absl::StatusOr<std::string> ok = ReadFileToString(at_limit, 4096);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->size(), 4096u);
  const std::string over = dir_.Child("over");
  MakeSparseFile(over, 4097);
  const absl::StatusOr<std::string> read = ReadFileToString(over, 4096);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(read.status().message(),
            over +
                ": file is 4097 bytes, over the limit of 4096 bytes for "
                "this kind of file");
  // The default is the small-file bound.
  const std::string big = dir_.Child("big.json");
  MakeSparseFile(big, kMaxSmallFileBytes + 1);
  EXPECT_THAT(ReadJsonFile(big).status().message(),
              AllOf(HasSubstr(big), HasSubstr("1048577 bytes"),
                    HasSubstr("limit of 1048576")));
}

TEST(KvCacheLimitsTest, BytesPerTokenAndMemoryCheck) {
  ModelConfig config;
  config.num_hidden_layers = 2;
  config.num_key_value_heads = 4;
  config.head_dim = 8;
  ASSERT_EQ(*KvCacheBytesPerToken(config), 2u * 4 * 8 * 2 * 4);  // 512
  BackendOptions options;
  options.kv_block_size = 16;
  options.kv_cache_tokens = 32;
  EXPECT_TRUE(CheckKvCacheFitsMemory(config, options, 32 * 512).ok());
  const absl::Status short_by_one =
      CheckKvCacheFitsMemory(config, options, 32 * 512 - 1);
  EXPECT_EQ(short_by_one.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(short_by_one.message(),
              AllOf(HasSubstr("--kv-cache-tokens 32"), HasSubstr("16384 bytes"),
                    HasSubstr("16383 bytes of memory")));
  // Rounded up to whole blocks: 17 tokens take two blocks.
  options.kv_cache_tokens = 17;
  EXPECT_FALSE(CheckKvCacheFitsMemory(config, options, 17 * 512).ok());
  // Overflow of tokens x bytes is an error, not a wrapped small number.
  options.kv_cache_tokens = int64_t{1} << 62;
  EXPECT_EQ(CheckKvCacheFitsMemory(config, options, ~uint64_t{0}).code(),
            absl::StatusCode::kInvalidArgument);
  config.num_hidden_layers = int64_t{1} << 40;
  config.num_key_value_heads = int64_t{1} << 40;
  EXPECT_FALSE(KvCacheBytesPerToken(config).ok());
}

TEST(KvCacheLimitsTest, MemAvailableIsReadOnLinux) {
  const std::optional<uint64_t> available = AvailableMemoryBytes();
  ASSERT_TRUE(available.has_value());
  EXPECT_GT(*available, uint64_t{1} << 20);
}

}  // namespace
}  // namespace litestage
