// GGUF parsing (metadata, tensor infos, validation of malformed files),
// dequantization against gguf-py goldens, and loading GGUF models (config
// from metadata, Q/K row order, tied embeddings), including the real
// SmolLM2-135M-Instruct Q4_1 file when LITESTAGE_DEFAULT_GGUF names it.
// (~890 lines: one file per format, as for safetensors; mostly table-driven
// malformed-file cases.)
#include "engine/model/gguf.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "engine/backend_registry.h"
#include "engine/model/dequantize.h"
#include "engine/model/gguf_weights.h"
#include "engine/model/weights.h"
#include "engine/util/check.h"
#include "engine/util/float16.h"
#include "engine/util/json_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/scoped_temp_dir.h"
#include "tests/model/gguf_writer.h"

namespace litestage {
namespace {

using ::litestage::testing::F32Bytes;
using ::litestage::testing::GgufStr;
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

// --- Loading models -------------------------------------------------------

// A tiny model: hidden 32 (so Q8_0 rows fit), 4 heads of 8, 2 KV heads.
constexpr int64_t kHidden = 32, kHeads = 4, kKvHeads = 2, kHeadDim = 8,
                  kInter = 64, kLayers = 2, kVocab = 40;

std::vector<float> Values(int64_t count, int seed) {
  std::vector<float> out(count);
  for (int64_t i = 0; i < count; ++i) {
    out[i] = 0.1f * std::sin(0.37f * static_cast<float>(i) + seed);
  }
  return out;
}

// llama.cpp's LlamaModel.permute: per head, HF rows (first half, second
// half) become interleaved pairs.
std::vector<float> PermuteLikeConverter(const std::vector<float>& hf,
                                        int64_t rows, int64_t cols,
                                        int64_t head_dim) {
  std::vector<float> out(hf.size());
  const int64_t half = head_dim / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t head = r / head_dim, within = r % head_dim;
    const int64_t c = within / half, k = within % half;
    const int64_t gguf_row = head * head_dim + 2 * k + c;
    std::copy_n(hf.begin() + r * cols, cols, out.begin() + gguf_row * cols);
  }
  return out;
}

struct TinyModel {
  std::string arch = "llama";
  bool tied = true;
  bool add_vocab_size = false;
  GgufType matrix_type = GgufType::kF32;
  std::vector<float> q0, k0, v0;  // HF-order layer-0 matrices written.
  std::string skip_tensor;        // Leave this tensor out.
  std::string bad_shape_tensor;   // Write this one transposed.
};

std::string WriteTinyModel(TinyModel& model, const std::string& file_name) {
  GgufWriter w;
  const std::string& a = model.arch;
  w.AddString("general.architecture", a);
  w.AddU32(a + ".block_count", kLayers);
  w.AddU32(a + ".context_length", 256);
  w.AddU32(a + ".embedding_length", kHidden);
  w.AddU32(a + ".feed_forward_length", kInter);
  w.AddU32(a + ".attention.head_count", kHeads);
  w.AddU32(a + ".attention.head_count_kv", kKvHeads);
  w.AddF32(a + ".rope.freq_base", 500000.0f);
  w.AddF32(a + ".attention.layer_norm_rms_epsilon", 1e-5f);
  w.AddU32(a + ".rope.dimension_count", kHeadDim);
  if (model.add_vocab_size) w.AddU32(a + ".vocab_size", kVocab);
  std::vector<std::string> tokens;
  for (int i = 0; i < kVocab; ++i) tokens.push_back("t" + std::to_string(i));
  w.AddStringArray("tokenizer.ggml.tokens", tokens);
  w.AddU32("tokenizer.ggml.bos_token_id", 1);
  w.AddU32("tokenizer.ggml.eos_token_id", 2);
  w.AddU32("tokenizer.ggml.eot_token_id", 3);
  int seed = 0;
  auto add = [&](const std::string& name, int64_t rows, int64_t cols,
                 std::vector<float>* keep = nullptr, int64_t permute = 0) {
    ++seed;
    if (name == model.skip_tensor) return;
    std::vector<float> values = Values(rows > 0 ? rows * cols : cols, seed);
    if (keep != nullptr) *keep = values;
    if (permute > 0) values = PermuteLikeConverter(values, rows, cols, permute);
    std::vector<uint64_t> dims = {static_cast<uint64_t>(cols)};
    if (rows > 0) dims.push_back(static_cast<uint64_t>(rows));
    if (name == model.bad_shape_tensor) std::swap(dims[0], dims[1]);
    if (rows > 0 && model.matrix_type == GgufType::kBF16) {
      std::string bytes;
      for (float v : values) {
        const uint16_t bits = F32ToBf16(v);
        bytes.append(reinterpret_cast<const char*>(&bits), 2);
      }
      w.AddTensor(name, dims, GgufType::kBF16, bytes);
    } else if (rows > 0 && model.matrix_type == GgufType::kQ8_0) {
      // Blocks of 32 with d = 1/64 and codes round(v * 64).
      std::string bytes;
      for (size_t b = 0; b < values.size(); b += 32) {
        const uint16_t d = 0x2400;  // f16 1/64
        bytes.append(reinterpret_cast<const char*>(&d), 2);
        for (size_t j = 0; j < 32; ++j) {
          bytes += static_cast<char>(std::lround(values[b + j] * 64));
        }
      }
      w.AddTensor(name, dims, GgufType::kQ8_0, bytes);
    } else {
      w.AddTensor(name, dims, GgufType::kF32, F32Bytes(values));
    }
  };
  const int64_t q_dim = kHeads * kHeadDim, kv_dim = kKvHeads * kHeadDim;
  const bool llama = a == "llama";
  add("token_embd.weight", kVocab, kHidden);
  for (int64_t i = 0; i < kLayers; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    add(b + "attn_norm.weight", 0, kHidden);
    add(b + "attn_q.weight", q_dim, kHidden, i == 0 ? &model.q0 : nullptr,
        llama ? kHeadDim : 0);
    add(b + "attn_k.weight", kv_dim, kHidden, i == 0 ? &model.k0 : nullptr,
        llama ? kHeadDim : 0);
    add(b + "attn_v.weight", kv_dim, kHidden, i == 0 ? &model.v0 : nullptr);
    if (a == "qwen2") {
      add(b + "attn_q.bias", 0, q_dim);
      add(b + "attn_k.bias", 0, kv_dim);
      add(b + "attn_v.bias", 0, kv_dim);
    }
    add(b + "attn_output.weight", kHidden, q_dim);
    add(b + "ffn_norm.weight", 0, kHidden);
    add(b + "ffn_gate.weight", kInter, kHidden);
    add(b + "ffn_up.weight", kInter, kHidden);
    add(b + "ffn_down.weight", kHidden, kInter);
  }
  add("output_norm.weight", 0, kHidden);
  if (!model.tied) add("output.weight", kVocab, kHidden);
  const std::string path =
      litestage::testing::ProcessTempDir().path() + "/" + file_name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  LS_CHECK(f != nullptr);
  const std::string bytes = w.Build();
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
  return path;
}

std::vector<float> AsFloats(const Tensor& t) {
  EXPECT_EQ(t.dtype, DType::kF32);
  return std::vector<float>(t.f32(), t.f32() + t.numel());
}

TEST(GgufWeightsTest, LoadsLlamaAndRestoresQkRowOrder) {
  TinyModel model;
  const std::string path = WriteTinyModel(model, "tiny_llama.gguf");
  EXPECT_TRUE(IsGgufModelPath(path));
  // LoadModelWeights dispatches on the .gguf file name.
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights =
      LoadModelWeights(path);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelConfig& config = (*weights)->config;
  EXPECT_EQ(config.architecture, "LlamaForCausalLM");
  EXPECT_EQ(config.family, ModelFamily::kLlama);
  EXPECT_EQ(config.vocab_size, kVocab);
  EXPECT_EQ(config.hidden_size, kHidden);
  EXPECT_EQ(config.intermediate_size, kInter);
  EXPECT_EQ(config.num_hidden_layers, kLayers);
  EXPECT_EQ(config.num_attention_heads, kHeads);
  EXPECT_EQ(config.num_key_value_heads, kKvHeads);
  EXPECT_EQ(config.head_dim, kHeadDim);
  EXPECT_EQ(config.max_position_embeddings, 256);
  EXPECT_EQ(config.rope_theta, 500000.0);
  EXPECT_FLOAT_EQ(static_cast<float>(config.rms_norm_eps), 1e-5f);
  EXPECT_TRUE(config.tie_word_embeddings);
  EXPECT_EQ(config.bos_token_id, 1);
  EXPECT_THAT(config.eos_token_ids, ::testing::ElementsAre(2, 3));
  EXPECT_EQ((*weights)->source, path);
  EXPECT_FALSE((*weights)->synthetic);
  EXPECT_EQ((*weights)->matrix_dtype, DType::kF32);
  const LayerWeights& layer = (*weights)->layers[0];
  EXPECT_THAT(layer.q_proj.shape,
              ::testing::ElementsAre(kHeads * kHeadDim, kHidden));
  EXPECT_EQ(AsFloats(layer.q_proj), model.q0);
  EXPECT_EQ(AsFloats(layer.k_proj), model.k0);
  EXPECT_EQ(AsFloats(layer.v_proj), model.v0);
  EXPECT_THAT(layer.input_layernorm.shape, ::testing::ElementsAre(kHidden));
  EXPECT_TRUE(layer.q_bias.empty());
  EXPECT_EQ((*weights)->lm_head.data, (*weights)->embed_tokens.data);
  EXPECT_THAT((*weights)->embed_tokens.shape,
              ::testing::ElementsAre(kVocab, kHidden));
}

TEST(GgufWeightsTest, Qwen2KeepsRowOrderAndLoadsBiases) {
  TinyModel model;
  model.arch = "qwen2";
  model.tied = false;
  model.add_vocab_size = true;
  const std::string path = WriteTinyModel(model, "tiny_qwen2.gguf");
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights = LoadGgufWeights(path);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->config.architecture, "Qwen2ForCausalLM");
  EXPECT_FALSE((*weights)->config.tie_word_embeddings);
  const LayerWeights& layer = (*weights)->layers[1];
  EXPECT_EQ(AsFloats((*weights)->layers[0].q_proj), model.q0);
  EXPECT_EQ(AsFloats((*weights)->layers[0].k_proj), model.k0);
  EXPECT_THAT(layer.q_bias.shape, ::testing::ElementsAre(kHeads * kHeadDim));
  EXPECT_THAT(layer.k_bias.shape, ::testing::ElementsAre(kKvHeads * kHeadDim));
  EXPECT_FALSE(layer.v_bias.empty());
  EXPECT_NE((*weights)->lm_head.data, (*weights)->embed_tokens.data);
}

TEST(GgufWeightsTest, DequantizesQuantizedMatricesAndConvertsOnRequest) {
  TinyModel model;
  model.matrix_type = GgufType::kQ8_0;
  const std::string path = WriteTinyModel(model, "tiny_q8.gguf");
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights = LoadGgufWeights(path);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->matrix_dtype, DType::kF32);
  const std::vector<float> v = AsFloats((*weights)->layers[0].v_proj);
  ASSERT_EQ(v.size(), model.v0.size());
  for (size_t i = 0; i < v.size(); ++i) {
    ASSERT_EQ(v[i], std::lround(model.v0[i] * 64) / 64.0f) << i;
  }
  // Q rows de-interleaved after dequantization too.
  const std::vector<float> q = AsFloats((*weights)->layers[0].q_proj);
  for (size_t i = 0; i < q.size(); ++i) {
    ASSERT_EQ(q[i], std::lround(model.q0[i] * 64) / 64.0f) << i;
  }

  weights = LoadGgufWeights(path, LoadOptions{DType::kBF16});
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->matrix_dtype, DType::kBF16);
  const Tensor& k = (*weights)->layers[0].k_proj;
  ASSERT_EQ(k.dtype, DType::kBF16);
  const auto* bits = static_cast<const uint16_t*>(k.data);
  for (size_t i = 0; i < model.k0.size(); ++i) {
    ASSERT_EQ(Bf16ToF32(bits[i]),
              Bf16ToF32(F32ToBf16(std::lround(model.k0[i] * 64) / 64.0f)));
  }
  EXPECT_EQ((*weights)->layers[0].input_layernorm.dtype, DType::kF32);

  absl::StatusOr<std::unique_ptr<ModelWeights>> f16 =
      LoadGgufWeights(path, LoadOptions{DType::kF16});
  EXPECT_FALSE(f16.ok());
}

TEST(GgufWeightsTest, Bf16FilesStayBf16ByDefault) {
  TinyModel model;
  model.matrix_type = GgufType::kBF16;
  const std::string path = WriteTinyModel(model, "tiny_bf16.gguf");
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights = LoadGgufWeights(path);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->matrix_dtype, DType::kBF16);
  const auto* bits =
      static_cast<const uint16_t*>((*weights)->layers[0].q_proj.data);
  for (size_t i = 0; i < model.q0.size(); ++i) {
    ASSERT_EQ(bits[i], F32ToBf16(model.q0[i])) << i;
  }
}

TEST(GgufWeightsTest, ErrorsNameTheFileAndTensor) {
  {
    TinyModel model;
    model.skip_tensor = "blk.1.ffn_up.weight";
    const std::string path = WriteTinyModel(model, "missing_tensor.gguf");
    auto weights = LoadGgufWeights(path);
    ASSERT_FALSE(weights.ok());
    EXPECT_EQ(weights.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(std::string(weights.status().message()),
                HasSubstr(path + ": missing tensor 'blk.1.ffn_up.weight'"));
  }
  {
    TinyModel model;
    model.bad_shape_tensor = "blk.0.ffn_up.weight";
    const std::string path = WriteTinyModel(model, "bad_shape.gguf");
    auto weights = LoadGgufWeights(path);
    ASSERT_FALSE(weights.ok());
    EXPECT_THAT(
        std::string(weights.status().message()),
        HasSubstr("tensor 'blk.0.ffn_up.weight' has GGUF dims [64, 32] but "
                  "the metadata implies [32, 64]"));
  }
  {
    TinyModel model;
    model.arch = "gpt2";
    const std::string path = WriteTinyModel(model, "gpt2.gguf");
    auto weights = LoadGgufWeights(path);
    ASSERT_FALSE(weights.ok());
    EXPECT_EQ(weights.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_THAT(std::string(weights.status().message()),
                HasSubstr("general.architecture 'gpt2'"));
  }
  {
    GgufWriter w;
    w.AddString("general.architecture", "llama");
    const std::string path =
        litestage::testing::ProcessTempDir().path() + "/no_keys.gguf";
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    const std::string bytes = w.Build();
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
    auto weights = LoadModelWeights(path);
    ASSERT_FALSE(weights.ok());
    EXPECT_EQ(weights.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(std::string(weights.status().message()),
                HasSubstr("no_keys.gguf: key 'llama.embedding_length'"));
  }
  {
    auto weights = LoadModelWeights(
        litestage::testing::ProcessTempDir().path() + "/absent.gguf");
    EXPECT_FALSE(weights.ok());  // Not a file: treated as a directory.
  }
}

// --- The real default model ------------------------------------------------

// SmolLM2-135M-Instruct Q4_1 (token_embd Q8_0, norms F32): the loader alone
// (no tokenizer) against transformers' logits for the same token ids
// (tests/golden/gguf/smollm2_135m_instruct_q4_1.json, made by
// tests/reference/make_gguf_golden.py). Tolerance as in
// tests/golden/gguf_test.cc: fp32 on both sides over 30 layers.
TEST(GgufWeightsTest, RealSmolLm2MatchesTransformers) {
  const char* path = std::getenv("LITESTAGE_DEFAULT_GGUF");
  if (path == nullptr || *path == '\0') {
    GTEST_SKIP() << "LITESTAGE_DEFAULT_GGUF is unset";
  }
  ASSERT_TRUE(std::filesystem::is_regular_file(path))
      << "LITESTAGE_DEFAULT_GGUF=" << path << " is set but missing";
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights =
      LoadModelWeights(path);
  const double load_ms = std::chrono::duration<double, std::milli>(
                             std::chrono::steady_clock::now() - start)
                             .count();
  ASSERT_TRUE(weights.ok()) << weights.status();
  std::cout << "[ load ] " << path << " in " << load_ms << " ms\n";
  const ModelConfig& config = (*weights)->config;
  EXPECT_EQ(config.architecture, "LlamaForCausalLM");
  EXPECT_EQ(config.num_hidden_layers, 30);
  EXPECT_EQ(config.hidden_size, 576);
  EXPECT_EQ(config.intermediate_size, 1536);
  EXPECT_EQ(config.num_attention_heads, 9);
  EXPECT_EQ(config.num_key_value_heads, 3);
  EXPECT_EQ(config.head_dim, 64);
  EXPECT_EQ(config.vocab_size, 49152);
  EXPECT_EQ(config.max_position_embeddings, 8192);
  EXPECT_EQ(config.rope_theta, 100000.0);
  EXPECT_TRUE(config.tie_word_embeddings);
  EXPECT_EQ(config.bos_token_id, 1);
  EXPECT_THAT(config.eos_token_ids, ::testing::ElementsAre(2));

  const std::string golden_path =
      std::string(LITESTAGE_TEST_DATA_DIR) +
      "/golden/gguf/smollm2_135m_instruct_q4_1.json";
  absl::StatusOr<json> golden = ReadJsonFile(golden_path);
  ASSERT_TRUE(golden.ok()) << golden.status();
  ASSERT_TRUE((*golden)["prompts"].is_array());
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      CreateBackend("cpu", **weights, BackendOptions{});
  ASSERT_TRUE(backend.ok()) << backend.status();
  const int64_t vocab = config.vocab_size;
  for (const json& prompt : (*golden)["prompts"]) {
    const std::vector<int32_t> ids = prompt["ids"].get<std::vector<int32_t>>();
    const json& expected = prompt["last_logits"];
    // The backend alone, below the runtime: the test lays out the block
    // table the runtime's KvBlockManager would.
    KvBlockManager blocks((*backend)->num_kv_blocks(),
                          (*backend)->kv_block_size());
    const SequenceId sequence = blocks.AddSequence();
    ASSERT_TRUE(
        blocks.Reserve(sequence, static_cast<int64_t>(ids.size())).ok());
    ForwardBatch batch;
    batch.chunks.push_back(SequenceChunk{absl::MakeConstSpan(ids), 0, kNoSkip,
                                         LogitsMode::kLast,
                                         blocks.block_table(sequence)});
    ForwardResult result;
    ASSERT_TRUE((*backend)->Forward(batch, &result).ok());
    ASSERT_EQ(static_cast<int64_t>(result.logits.size()), vocab);
    const int64_t stride = expected["stride"].get<int64_t>();
    const std::vector<float> strided =
        expected["strided"].get<std::vector<float>>();
    double worst = 0;
    for (size_t i = 0; i < strided.size(); ++i) {
      worst = std::max(
          worst, std::fabs(double{result.logits[i * stride]} - strided[i]));
    }
    EXPECT_LE(worst, 2e-3) << prompt["text"];
    const std::vector<int64_t> top =
        expected["top_ids"].get<std::vector<int64_t>>();
    int64_t argmax = 0;
    for (int64_t v = 1; v < vocab; ++v) {
      if (result.logits[v] > result.logits[argmax]) argmax = v;
    }
    EXPECT_EQ(argmax, top[0]) << prompt["text"];
    std::cout << "[ logits ] max |diff| " << worst << " over " << strided.size()
              << " strided logits\n";
  }
}

}  // namespace
}  // namespace litestage
