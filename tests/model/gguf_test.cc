// GGUF parsing (metadata, tensor infos, validation of malformed files) and
// dequantization against gguf-py goldens. Loading GGUF models is in
// gguf_weights_test.cc. (Mostly table-driven malformed-file cases.)
#include "engine/model/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/types/span.h"
#include "engine/model/dequantize.h"
#include "engine/model/weights.h"
#include "engine/util/check.h"
#include "engine/util/json_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/scoped_temp_dir.h"
#include "tests/model/gguf_writer.h"

namespace litestage {
namespace {

using ::litestage::testing::F32Bytes;
using ::litestage::testing::GgufU32;
using ::litestage::testing::GgufU64;
using ::litestage::testing::GgufWriter;
using nlohmann::json;
using ::testing::HasSubstr;

constexpr char kName[] = "test.gguf";

// Parsing `bytes` fails with InvalidArgument naming the file and `reason`.
void ExpectRejected(const std::string& bytes, const std::string& reason) {
  absl::StatusOr<GgufFile> file = ParseGgufBytes(bytes, kName);
  ASSERT_FALSE(file.ok()) << "expected rejection: " << reason;
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument)
      << file.status();
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(kName));
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(reason));
}

// A valid file with metadata of every kind and two tensors; the second
// tensor's data ends exactly at the end of the file.
GgufWriter ValidWriter(uint32_t alignment = kDefaultGgufAlignment) {
  GgufWriter w;
  w.alignment = alignment;
  if (alignment != kDefaultGgufAlignment) {
    w.AddU32("general.alignment", alignment);
  }
  w.AddString("general.architecture", "llama");
  w.AddU32("llama.block_count", 30);
  w.AddI32("answer", -42);
  w.AddU64("big", 1234567890123ull);
  w.AddF32("eps", 1e-5f);
  w.AddBool("flag", true);
  w.AddRaw("u8", 0, std::string(1, '\xff'));
  w.AddRaw("i8", 1, std::string(1, '\xff'));
  w.AddRaw("u16", 2, std::string("\x34\x12", 2));
  w.AddRaw("i16", 3, std::string("\xfe\xff", 2));
  double f64 = 2.5;
  std::string f64_bytes(8, '\0');
  std::memcpy(f64_bytes.data(), &f64, 8);
  w.AddRaw("f64", 12, f64_bytes);
  w.AddRaw("i64", 11, GgufU64(static_cast<uint64_t>(-7)));
  w.AddStringArray("tokenizer.ggml.tokens", {"<s>", "a", "", "bc"});
  w.AddI32Array("tokenizer.ggml.token_type", {3, 1, 1, -1});
  w.AddF32Array("tokenizer.ggml.scores", {0.5f, -1.0f, 2.0f, 0.0f});
  // An array of two arrays of u8.
  w.AddRaw("nested", 9,
           GgufU32(9) + GgufU64(2) + GgufU32(0) + GgufU64(1) + "\x07" +
               GgufU32(0) + GgufU64(2) + "\x08\x09");
  w.AddTensor("a", {4, 2}, GgufType::kF32, F32Bytes({0, 1, 2, 3, 4, 5, 6, 7}));
  w.AddTensor("q", {32}, GgufType::kQ8_0, std::string(34, '\x01'));
  return w;
}

TEST(GgufParseTest, ReadsMetadataOfEveryType) {
  const std::string bytes = ValidWriter().Build();
  absl::StatusOr<GgufFile> file = ParseGgufBytes(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->version(), 3u);
  EXPECT_EQ(file->path(), kName);
  EXPECT_EQ(file->metadata().size(), 16u);
  EXPECT_EQ(file->metadata()[0].key, "general.architecture");
  EXPECT_EQ(*file->GetString("general.architecture"), "llama");
  EXPECT_EQ(*file->GetInt("llama.block_count"), 30);
  EXPECT_EQ(*file->GetInt("answer"), -42);
  EXPECT_EQ(*file->GetInt("big"), 1234567890123);
  EXPECT_EQ(*file->GetInt("u8"), 255);
  EXPECT_EQ(*file->GetInt("i8"), -1);
  EXPECT_EQ(*file->GetInt("u16"), 0x1234);
  EXPECT_EQ(*file->GetInt("i16"), -2);
  EXPECT_EQ(*file->GetInt("i64"), -7);
  EXPECT_FLOAT_EQ(static_cast<float>(*file->GetFloat("eps")), 1e-5f);
  EXPECT_EQ(*file->GetFloat("f64"), 2.5);
  EXPECT_EQ(*file->GetFloat("answer"), -42.0);  // Integers widen.
  EXPECT_TRUE(*file->GetBool("flag"));
  EXPECT_EQ(file->Find("eps")->type, GgufValueType::kFloat32);
  EXPECT_EQ(*file->GetArrayLength("tokenizer.ggml.tokens"), 4);
  EXPECT_THAT(*file->GetStringArray("tokenizer.ggml.tokens"),
              ::testing::ElementsAre("<s>", "a", "", "bc"));
  EXPECT_THAT(*file->GetIntArray("tokenizer.ggml.token_type"),
              ::testing::ElementsAre(3, 1, 1, -1));
  EXPECT_THAT(*file->GetFloatArray("tokenizer.ggml.scores"),
              ::testing::ElementsAre(0.5f, -1.0f, 2.0f, 0.0f));
  const GgufValue* nested = file->Find("nested");
  ASSERT_NE(nested, nullptr);
  const auto& outer = std::get<GgufArray>(nested->value);
  ASSERT_EQ(outer.element_type, GgufValueType::kArray);
  ASSERT_EQ(outer.elements.size(), 2u);
  const auto& second = std::get<GgufArray>(outer.elements[1].value);
  ASSERT_EQ(second.elements.size(), 2u);
  EXPECT_EQ(std::get<uint64_t>(second.elements[1].value), 9u);
}

TEST(GgufParseTest, GettersReportAbsentAndWrongTypedKeys) {
  const std::string bytes = ValidWriter().Build();
  absl::StatusOr<GgufFile> file = ParseGgufBytes(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->Find("missing"), nullptr);
  absl::StatusOr<std::string> missing = file->GetString("missing");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("test.gguf: key 'missing'"));
  struct Case {
    absl::Status status;
    std::string text;
  };
  const Case cases[] = {
      {file->GetString("answer").status(), "expected string, got int32"},
      {file->GetInt("eps").status(), "expected an integer, got float32"},
      {file->GetFloat("general.architecture").status(), "expected a number"},
      {file->GetBool("answer").status(), "expected bool"},
      {file->GetArrayLength("answer").status(), "expected an array"},
      {file->GetStringArray("tokenizer.ggml.scores").status(),
       "expected array of string, got array of float32"},
      {file->GetIntArray("tokenizer.ggml.tokens").status(),
       "expected array of integers, got array of string"},
      {file->GetFloatArray("tokenizer.ggml.tokens").status(),
       "expected array of numbers"},
      {file->GetStringArray("nested").status(), "got array of array"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(c.status.code(), absl::StatusCode::kInvalidArgument) << c.status;
    EXPECT_THAT(std::string(c.status.message()), HasSubstr("test.gguf: key '"));
    EXPECT_THAT(std::string(c.status.message()), HasSubstr(c.text));
  }
}

TEST(GgufParseTest, GetIntRejectsValuesBeyondInt64) {
  GgufWriter w;
  w.AddU64("huge", ~uint64_t{0});
  const std::string bytes = w.Build();
  absl::StatusOr<GgufFile> file = ParseGgufBytes(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_THAT(std::string(file->GetInt("huge").status().message()),
              HasSubstr("exceeds int64"));
}

TEST(GgufParseTest, ReadsTensorInfosAndData) {
  const std::string bytes = ValidWriter().Build();
  absl::StatusOr<GgufFile> file = ParseGgufBytes(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->tensors().size(), 2u);
  EXPECT_EQ(file->data_offset() % 32, 0u);
  const GgufTensor* a = file->FindTensor("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a, &file->tensors()[0]);
  EXPECT_THAT(a->dims, ::testing::ElementsAre(4, 2));
  EXPECT_EQ(a->type, GgufType::kF32);
  EXPECT_EQ(a->numel, 8);
  EXPECT_EQ(a->nbytes, 32u);
  EXPECT_EQ(a->offset, 0u);
  EXPECT_EQ(reinterpret_cast<const char*>(a->data),
            bytes.data() + file->data_offset());
  float value;
  std::memcpy(&value, a->data + 4 * 5, 4);
  EXPECT_EQ(value, 5.0f);
  const GgufTensor* q = file->FindTensor("q");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->type, GgufType::kQ8_0);
  EXPECT_EQ(q->offset, 32u);
  EXPECT_EQ(q->nbytes, 34u);
  EXPECT_EQ(reinterpret_cast<const char*>(q->data) + q->nbytes,
            bytes.data() + bytes.size());
  EXPECT_EQ(file->FindTensor("absent"), nullptr);
}

TEST(GgufParseTest, AcceptsVersion2AndCustomAlignment) {
  GgufWriter w = ValidWriter(64);
  w.version = 2;
  const std::string bytes = w.Build();
  absl::StatusOr<GgufFile> file = ParseGgufBytes(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->version(), 2u);
  EXPECT_EQ(file->alignment(), 64u);
  EXPECT_EQ(file->data_offset() % 64, 0u);
  EXPECT_EQ(file->FindTensor("q")->offset, 64u);
}

TEST(GgufParseTest, AcceptsAFileWithoutTensors) {
  GgufWriter w;
  w.AddString("general.architecture", "llama");
  const std::string bytes = w.Build();
  absl::StatusOr<GgufFile> file = ParseGgufBytes(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE(file->tensors().empty());
}

TEST(GgufParseTest, RejectsEveryTruncation) {
  const std::string bytes = ValidWriter().Build();
  for (size_t size = 0; size < bytes.size(); ++size) {
    absl::StatusOr<GgufFile> file =
        ParseGgufBytes(absl::string_view(bytes.data(), size), kName);
    ASSERT_FALSE(file.ok()) << "prefix of " << size << " bytes accepted";
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(kName));
  }
}

TEST(GgufParseTest, RejectsBadHeaders) {
  GgufWriter w = ValidWriter();
  w.magic = 0x47475546;  // "FUGG"
  ExpectRejected(w.Build(), "bad magic");
  for (uint32_t version : {0u, 1u, 4u}) {
    GgufWriter v = ValidWriter();
    v.version = version;
    ExpectRejected(v.Build(), "unsupported GGUF version");
  }
  GgufWriter big_endian = ValidWriter();
  big_endian.version = 0x03000000;
  ExpectRejected(big_endian.Build(), "big-endian");
  GgufWriter kv = ValidWriter();
  kv.kv_count = uint64_t{1} << 60;
  ExpectRejected(kv.Build(), "metadata count");
  GgufWriter tensors = ValidWriter();
  tensors.tensor_count = ~uint64_t{0};
  ExpectRejected(tensors.Build(), "tensor count");
}

TEST(GgufParseTest, RejectsBadMetadata) {
  {
    // A key length beyond the file.
    std::string bytes = GgufU32(0x46554747) + GgufU32(3) + GgufU64(0) +
                        GgufU64(1) + GgufU64(1000) + std::string(20, 'x');
    ExpectRejected(bytes, "exceeds the");
  }
  {
    GgufWriter w;
    w.AddRaw("s", 8, GgufU64(~uint64_t{0} - 3) + "xy");
    ExpectRejected(w.Build(), "key 's': string length");
  }
  {
    GgufWriter w;
    w.AddRaw("odd", 13, GgufU32(0));
    ExpectRejected(w.Build(), "key 'odd': unknown value type 13");
  }
  {
    GgufWriter w;
    w.AddRaw("arr", 9, GgufU32(77) + GgufU64(0));
    ExpectRejected(w.Build(), "unknown array element type 77");
  }
  {
    GgufWriter w;
    w.AddRaw("arr", 9, GgufU32(6) + GgufU64(uint64_t{1} << 61));
    ExpectRejected(w.Build(), "cannot fit");
  }
  {
    GgufWriter w;  // array of array of array of u8: too deep.
    w.AddRaw("deep", 9,
             GgufU32(9) + GgufU64(1) + GgufU32(9) + GgufU64(1) + GgufU32(0) +
                 GgufU64(1) + "\x01");
    ExpectRejected(w.Build(), "nested deeper");
  }
  {
    GgufWriter w;
    w.AddRaw("b", 7, "\x02");
    ExpectRejected(w.Build(), "neither 0 nor 1");
  }
  {
    GgufWriter w;
    w.AddU32("k", 1);
    w.AddU32("k", 2);
    ExpectRejected(w.Build(), "key 'k': duplicate key");
  }
  for (uint32_t alignment : {0u, 3u, 48u}) {
    GgufWriter w;
    w.AddU32("general.alignment", alignment);
    ExpectRejected(w.Build(), "not a power of two");
  }
  {
    GgufWriter w;
    w.AddString("general.alignment", "32");
    ExpectRejected(w.Build(), "must be an integer");
  }
}

TEST(GgufParseTest, RejectsBadTensorInfos) {
  const std::string f32x8 = F32Bytes({0, 1, 2, 3, 4, 5, 6, 7});
  struct Case {
    std::vector<uint64_t> dims;
    uint32_t type;
    uint64_t offset;
    std::string reason;
  };
  const Case cases[] = {
      {{}, 0, 0, "tensor 't': n_dims 0"},
      {{1, 1, 1, 1, 8}, 0, 0, "n_dims 5"},
      {{8, 0}, 0, 0, "dimension 1 is 0"},
      {{uint64_t{1} << 63}, 0, 0, "must be positive"},
      {{uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0, "overflows"},
      {{8}, 4, 0, "unknown tensor type 4"},
      {{8}, 1000, 0, "unknown tensor type 1000"},
      {{8}, 2, 0, "not a multiple of the Q4_0 block size 32"},
      {{8}, 0, 16, "not a multiple of the alignment 32"},
      {{16}, 0, 0, "extend beyond the data section"},
      {{8}, 0, 64, "extend beyond the data section"},
      {{8}, 0, ~uint64_t{0} - 31, "extend beyond the data section"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.reason);
    GgufWriter w;
    w.AddTensorInfo("t", c.dims, c.type, c.offset);
    w.extra_data = f32x8;
    ExpectRejected(w.Build(), c.reason);
  }
  {
    GgufWriter w;
    w.AddTensorInfo("t", {8}, 0, 0);
    w.AddTensorInfo("t", {8}, 0, 32);
    w.extra_data = f32x8 + f32x8;
    ExpectRejected(w.Build(), "tensor 't': duplicate tensor name");
  }
  {
    GgufWriter w;
    w.AddTensorInfo("first", {16}, 0, 0);   // [0, 64)
    w.AddTensorInfo("second", {8}, 0, 32);  // [32, 64)
    w.extra_data = f32x8 + f32x8;
    ExpectRejected(w.Build(),
                   "tensor 'second': bytes at offset 32 overlap "
                   "tensor 'first'");
  }
  {
    // Tensor infos present but the data section starts past the end.
    GgufWriter w;
    w.AddTensorInfo("t", {8}, 0, 0);
    std::string bytes = w.Build();
    bytes.resize(bytes.size() - 1);
    ExpectRejected(bytes, "");
  }
}

TEST(GgufParseTest, OpenNamesThePathAndMapsTheFile) {
  const std::string path =
      litestage::testing::ProcessTempDir().path() + "/open_test.gguf";
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    const std::string bytes = ValidWriter().Build();
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  }
  absl::StatusOr<GgufFile> file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  GgufFile moved = *std::move(file);
  float value;
  std::memcpy(&value, moved.FindTensor("a")->data + 4 * 7, 4);
  EXPECT_EQ(value, 7.0f);
  absl::StatusOr<GgufFile> missing = GgufFile::Open(path + ".missing");
  EXPECT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("open_test.gguf.missing"));
}

// Files written by gguf-py's GGUFWriter (the seeds of fuzz_gguf, made by
// tests/reference/make_gguf_fuzz_seeds.py): an independent writer.
TEST(GgufParseTest, ReadsFilesWrittenByGgufPy) {
  const std::string dir =
      std::string(LITESTAGE_TEST_DATA_DIR) + "/fuzz/corpus/fuzz_gguf/";
  for (const char* name : {"seed_types.gguf", "seed_align64.gguf"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<GgufFile> file = GgufFile::Open(dir + name);
    ASSERT_TRUE(file.ok()) << file.status();
    EXPECT_EQ(*file->GetString("general.architecture"), "llama");
    EXPECT_EQ(*file->GetInt("llama.block_count"), 1);
    EXPECT_EQ(*file->GetInt("u8"), 200);
    EXPECT_EQ(*file->GetInt("i8"), -3);
    EXPECT_EQ(*file->GetInt("u16"), 999);
    EXPECT_EQ(*file->GetInt("i16"), -999);
    EXPECT_EQ(*file->GetInt("i32"), -70000);
    EXPECT_EQ(*file->GetInt("u64"), int64_t{1} << 40);
    EXPECT_EQ(*file->GetInt("i64"), -(int64_t{1} << 40));
    EXPECT_EQ(*file->GetFloat("f32"), 0.25);
    EXPECT_EQ(*file->GetFloat("f64"), -0.5);
    EXPECT_TRUE(*file->GetBool("flag"));
    EXPECT_THAT(*file->GetStringArray("tokenizer.ggml.tokens"),
                ::testing::ElementsAre("<s>", "</s>", "a", "b"));
    EXPECT_THAT(*file->GetFloatArray("tokenizer.ggml.scores"),
                ::testing::ElementsAre(0.0f, -1.0f, -2.0f, -3.0f));
    EXPECT_THAT(*file->GetIntArray("tokenizer.ggml.token_type"),
                ::testing::ElementsAre(3, 3, 1, 1));
    ASSERT_EQ(file->tensors().size(), 4u);
    const GgufTensor* f32 = file->FindTensor("f32");
    const GgufTensor* q8 = file->FindTensor("q8_0");
    ASSERT_NE(f32, nullptr);
    ASSERT_NE(q8, nullptr);
    EXPECT_THAT(f32->dims, ::testing::ElementsAre(32, 2));
    EXPECT_EQ(q8->type, GgufType::kQ8_0);
    EXPECT_EQ(file->FindTensor("q6_k")->type, GgufType::kQ6_K);
    EXPECT_EQ(file->data_offset() % file->alignment(), 0u);
    // The Q8_0 copy dequantizes to within a quantization step of the f32.
    std::vector<float> original(64), decoded(64);
    std::memcpy(original.data(), f32->data, 64 * 4);
    ASSERT_TRUE(
        DequantizeRow(GgufType::kQ8_0, q8->data, 64, decoded.data()).ok());
    for (int i = 0; i < 64; ++i) EXPECT_NEAR(decoded[i], original[i], 0.03);
  }
  absl::StatusOr<GgufFile> align64 = GgufFile::Open(dir + "seed_align64.gguf");
  ASSERT_TRUE(align64.ok());
  EXPECT_EQ(align64->alignment(), 64u);
}

// --- Dequantization -------------------------------------------------------

std::vector<float> FloatsFromHex(const std::string& hex) {
  const std::string bytes = absl::HexStringToBytes(hex);
  std::vector<float> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), out.size() * 4);
  return out;
}

TEST(DequantizeTest, MatchesGgufPyGoldens) {
  const std::string path =
      std::string(LITESTAGE_TEST_DATA_DIR) + "/model/gguf_dequant_golden.json";
  absl::StatusOr<json> golden = ReadJsonFile(path);
  ASSERT_TRUE(golden.ok()) << golden.status();
  ASSERT_TRUE((*golden)["cases"].is_array());
  std::set<std::string> types;
  for (const json& c : (*golden)["cases"]) {
    const std::string name = c["type"].get<std::string>();
    SCOPED_TRACE(name + " " + c["kind"].get<std::string>());
    types.insert(name);
    const auto type = static_cast<GgufType>(c["type_id"].get<uint32_t>());
    ASSERT_EQ(GgufTypeName(type), name);
    ASSERT_TRUE(IsDequantizeSupported(type));
    const int64_t n = c["n"].get<int64_t>();
    const std::string bytes =
        absl::HexStringToBytes(c["bytes_hex"].get<std::string>());
    const GgufTypeInfo* info = FindGgufTypeInfo(static_cast<uint32_t>(type));
    ASSERT_EQ(static_cast<int64_t>(bytes.size()),
              n / info->block_elements * info->block_bytes);
    const std::vector<float> expected =
        FloatsFromHex(c["expected_f32_hex"].get<std::string>());
    ASSERT_EQ(static_cast<int64_t>(expected.size()), n);
    std::vector<float> actual(n, -999.0f);
    ASSERT_TRUE(DequantizeRow(type,
                              reinterpret_cast<const uint8_t*>(bytes.data()), n,
                              actual.data())
                    .ok());
    for (int64_t i = 0; i < n; ++i) {
      // gguf-py computes in the same fp32 order; a fused multiply-add in
      // the compiled code may differ in the last bit.
      ASSERT_NEAR(actual[i], expected[i], 1e-6f * (1 + std::fabs(expected[i])))
          << "element " << i;
    }
  }
  EXPECT_EQ(types,
            (std::set<std::string>{"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0",
                                   "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"}));
}

TEST(DequantizeTest, Q4_1BlockLayout) {
  // d = 0.5, m = -1: element j is q_j * 0.5 - 1, low nibbles first.
  std::string block(20, '\0');
  const uint16_t d = 0x3800, m = 0xbc00;  // f16 0.5 and -1.0.
  std::memcpy(block.data(), &d, 2);
  std::memcpy(block.data() + 2, &m, 2);
  for (int j = 0; j < 16; ++j)
    block[4 + j] = static_cast<char>(j | (15 - j) << 4);
  float out[32];
  ASSERT_TRUE(DequantizeRow(GgufType::kQ4_1,
                            reinterpret_cast<const uint8_t*>(block.data()), 32,
                            out)
                  .ok());
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], j * 0.5f - 1.0f);
    EXPECT_EQ(out[j + 16], (15 - j) * 0.5f - 1.0f);
  }
}

TEST(DequantizeTest, RejectsBadCountsAndUnsupportedTypes) {
  uint8_t zeros[256] = {};
  float out[64];
  absl::Status partial = DequantizeRow(GgufType::kQ8_0, zeros, 16, out);
  EXPECT_EQ(partial.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(partial.message()), HasSubstr("block size 32"));
  absl::Status unsupported = DequantizeRow(GgufType::kIQ2_XXS, zeros, 256, out);
  EXPECT_EQ(unsupported.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(unsupported.message()), HasSubstr("IQ2_XXS"));
  EXPECT_FALSE(IsDequantizeSupported(GgufType::kQ2_K));
}

}  // namespace
}  // namespace litestage
