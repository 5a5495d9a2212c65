#include "engine/model/safetensors.h"

#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/model/safetensors_writer.h"

namespace litestage {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::RawSafetensors;
using testing::SerializeSafetensors;
using testing::TensorBytes;

constexpr char kName[] = "/tmp/fake/model.safetensors";

absl::Status ParseError(const std::string& bytes) {
  auto parsed = ParseSafetensorsBytes(bytes, kName);
  EXPECT_FALSE(parsed.ok()) << "parsed unexpectedly";
  if (parsed.ok()) return absl::OkStatus();
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(parsed.status().message(), HasSubstr(kName));
  return parsed.status();
}

std::string Floats(std::vector<float> values) {
  return testing::EncodeValues(values, "F32");
}

TEST(SafetensorsTest, ParsesTensorsAndMetadata) {
  const std::string bytes = SerializeSafetensors(
      {{"b", "F32", {2, 2}, Floats({1, 2, 3, 4})},
       {"a", "BF16", {3}, testing::EncodeValues({1, 2, 3}, "BF16")},
       {"c", "F16", {1}, testing::EncodeValues({0.5f}, "F16")},
       {"ids", "I64", {2}, std::string(16, '\0')}});
  auto parsed = ParseSafetensorsBytes(bytes, kName);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->tensors.size(), 4u);
  EXPECT_EQ(parsed->tensors[0].name, "a");  // Sorted by name.
  EXPECT_EQ(parsed->metadata.at("format"), "pt");

  const SafetensorsTensor* b = parsed->Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, DType::kF32);
  EXPECT_THAT(b->shape, ElementsAre(2, 2));
  EXPECT_EQ(b->nbytes, 16u);
  float third;
  std::memcpy(&third, b->data + 8, 4);
  EXPECT_EQ(third, 3.0f);
  EXPECT_EQ(parsed->Find("a")->dtype, DType::kBF16);
  EXPECT_EQ(parsed->Find("c")->dtype, DType::kF16);
  // Valid but unusable dtypes are listed without a DType.
  EXPECT_EQ(parsed->Find("ids")->dtype, std::nullopt);
  EXPECT_EQ(parsed->Find("ids")->dtype_name, "I64");
  EXPECT_EQ(parsed->Find("missing"), nullptr);
}

TEST(SafetensorsTest, AcceptsEmptyHeaderScalarsAndZeroSizedTensors) {
  auto empty = ParseSafetensorsBytes(RawSafetensors("{}", ""), kName);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->tensors.empty());

  auto parsed = ParseSafetensorsBytes(
      SerializeSafetensors({{"scalar", "F32", {}, Floats({7})},
                            {"none", "F32", {0, 5}, ""},
                            {"after", "F32", {1}, Floats({8})}}),
      kName);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->Find("scalar")->nbytes, 4u);
  EXPECT_EQ(parsed->Find("none")->nbytes, 0u);
}

TEST(SafetensorsTest, RejectsTruncatedFile) {
  EXPECT_THAT(ParseError("").message(), HasSubstr("truncated"));
  EXPECT_THAT(ParseError(std::string(7, '\0')).message(),
              HasSubstr("truncated"));
}

TEST(SafetensorsTest, RejectsHeaderLengthBeyondFile) {
  std::string bytes = RawSafetensors(R"({"a":1})", "");
  bytes[0] = 100;  // Claims 100 header bytes, has 7.
  EXPECT_THAT(ParseError(bytes).message(), HasSubstr("header length 100"));

  std::string huge(8, '\xff');  // 2^64 - 1.
  EXPECT_THAT(ParseError(huge).message(), HasSubstr("exceeds"));
}

TEST(SafetensorsTest, RejectsHeaderOverLimit) {
  // A real 100 MB + 1 header would be slow to build; the limit check must
  // come after the size check, so give the file the bytes it claims.
  const uint64_t size = kMaxSafetensorsHeaderBytes + 1;
  std::string bytes(8 + size, ' ');
  for (int i = 0; i < 8; ++i)
    bytes[i] = static_cast<char>((size >> (8 * i)) & 0xff);
  EXPECT_THAT(ParseError(bytes).message(), HasSubstr("limit"));
}

TEST(SafetensorsTest, RejectsInvalidJsonAndNonObjectHeader) {
  EXPECT_THAT(ParseError(RawSafetensors("{\"a\": ", "")).message(),
              HasSubstr("not valid JSON"));
  EXPECT_THAT(ParseError(RawSafetensors("[1, 2]", "")).message(),
              HasSubstr("must be a JSON object"));
  EXPECT_THAT(
      ParseError(RawSafetensors(R"({"__metadata__": 3})", "")).message(),
      HasSubstr("__metadata__"));
}

struct BadEntry {
  const char* description;
  const char* header;
  size_t data_size;
  const char* expected;  // Substring of the message besides file and tensor.
};

class SafetensorsBadEntryTest : public ::testing::TestWithParam<BadEntry> {};

TEST_P(SafetensorsBadEntryTest, RejectsNamingFileAndTensor) {
  const BadEntry& entry = GetParam();
  absl::Status status = ParseError(
      RawSafetensors(entry.header, std::string(entry.data_size, '\0')));
  EXPECT_THAT(status.message(), HasSubstr("'w'")) << entry.description;
  EXPECT_THAT(status.message(), HasSubstr(entry.expected)) << entry.description;
}

INSTANTIATE_TEST_SUITE_P(
    Entries, SafetensorsBadEntryTest,
    ::testing::Values(
        BadEntry{"entry not object", R"({"w": [1]})", 0, "must be an object"},
        BadEntry{"dtype missing",
                 R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", 4,
                 "'dtype'"},
        BadEntry{"dtype not string",
                 R"({"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})",
                 4, "'dtype'"},
        BadEntry{
            "unknown dtype",
            R"({"w": {"dtype": "F31", "shape": [1], "data_offsets": [0, 4]}})",
            4, "unknown dtype 'F31'"},
        BadEntry{
            "shape not list",
            R"({"w": {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}})", 4,
            "'shape'"},
        BadEntry{
            "negative dim",
            R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})",
            4, "non-negative"},
        BadEntry{
            "fractional dim",
            R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})",
            4, "non-negative"},
        BadEntry{"overflowing dims",
                 R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296],
                     "data_offsets": [0, 0]}})",
                 0, "overflow"},
        BadEntry{"dim beyond int64",
                 R"({"w": {"dtype": "F32", "shape": [18446744073709551615],
                     "data_offsets": [0, 0]}})",
                 0, "non-negative"},
        BadEntry{"rank too high",
                 R"({"w": {"dtype": "F32", "shape": [1,1,1,1,1,1,1,1,1],
                     "data_offsets": [0, 4]}})",
                 4, "rank"},
        BadEntry{"offsets missing", R"({"w": {"dtype": "F32", "shape": [1]}})",
                 4, "data_offsets"},
        BadEntry{
            "offsets wrong length",
            R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 4,
            "data_offsets"},
        BadEntry{
            "negative offset",
            R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})",
            4, "data_offsets"},
        BadEntry{
            "end before begin",
            R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})",
            4, "before begin"},
        BadEntry{
            "end beyond data",
            R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
            4, "exceed the data section"},
        BadEntry{"offsets beyond file",
                 R"({"w": {"dtype": "F32", "shape": [1],
                     "data_offsets": [1000000, 1000004]}})",
                 4, "exceed the data section"},
        BadEntry{
            "size mismatch",
            R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})",
            8, "needs 8"},
        BadEntry{
            "bf16 size mismatch",
            R"({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 8]}})",
            8, "needs 6"},
        BadEntry{
            "overlap",
            R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
            12, "overlap"}),
    [](const ::testing::TestParamInfo<BadEntry>& info) {
      std::string name = info.param.description;
      for (char& c : name) {
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      }
      return name;
    });

TEST(SafetensorsTest, OverlapNamesBothTensors) {
  absl::Status status = ParseError(RawSafetensors(
      R"({"first": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "second": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
      std::string(8, '\0')));
  EXPECT_THAT(status.message(), HasSubstr("overlap"));
  EXPECT_THAT(status.message(), HasSubstr("first"));
  EXPECT_THAT(status.message(), HasSubstr("second"));
}

TEST(SafetensorsTest, OpenNamesPathOfMissingFile) {
  auto missing = OpenSafetensors("/nonexistent/dir/model.safetensors");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(),
              HasSubstr("/nonexistent/dir/model.safetensors"));
}

TEST(SafetensorsTest, ParsesMappedFileAndKeepsDataAfterTakingMapping) {
  const std::string dir = testing::MakeTempDir("mapped");
  const std::string path = dir + "/x.safetensors";
  testing::WriteFile(path,
                     SerializeSafetensors({{"x", "F32", {2}, Floats({5, 6})}}));
  auto file = OpenSafetensors(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->path(), path);
  const SafetensorsTensor* x = file->Find("x");
  ASSERT_NE(x, nullptr);
  MappedFile mapping = file->TakeMapping();
  float second;
  std::memcpy(&second, x->data + 4, 4);
  EXPECT_EQ(second, 6.0f);
  EXPECT_EQ(mapping.path(), path);

  // A bad file read from disk names its path.
  testing::WriteFile(path, "short");
  auto bad = OpenSafetensors(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr(path));
}

}  // namespace
}  // namespace litestage
