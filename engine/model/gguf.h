// Parser for GGUF (v2 and v3), the single-file format of llama.cpp: a header
// (magic "GGUF", version, tensor and key/value counts), typed metadata
// key/values, tensor infos, then the aligned tensor data section. Everything
// in the file is untrusted: counts, string lengths, nesting, dims, types and
// offsets are validated with overflow-safe arithmetic, and errors name the
// file, the key or tensor and the reason.
//
// API STABILITY: this interface is used by the GGUF tokenizer and loaders;
// keep names and signatures stable (add, do not rename).
#ifndef LITESTAGE_ENGINE_MODEL_GGUF_H_
#define LITESTAGE_ENGINE_MODEL_GGUF_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/util/mapped_file.h"

namespace litestage {

// Tensor element types, numbered as ggml's enum ggml_type.
enum class GgufType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

// Storage layout of a tensor type: `block_elements` consecutive elements of
// a row are stored in `block_bytes` bytes (1 element for plain types).
struct GgufTypeInfo {
  GgufType type;
  const char* name;        // "F32", "Q4_1", ... as ggml names them.
  int64_t block_elements;  // Elements per block (32 or 256 for quants).
  int64_t block_bytes;     // Bytes per block.
};

// The layout of a raw ggml type number; nullptr when the number is not a
// type stored in files (unknown, removed, or Q8_1, which is in-memory only).
const GgufTypeInfo* FindGgufTypeInfo(uint32_t raw_type);
// "Q4_1" etc.; "type<N>" for an unknown number.
std::string GgufTypeName(GgufType type);

// Metadata value types, numbered as in the GGUF specification.
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

const char* GgufValueTypeName(GgufValueType type);

struct GgufValue;

// A metadata array; every element has type `element_type` (itself possibly
// kArray, nested at most kMaxGgufArrayNesting deep).
struct GgufArray {
  GgufValueType element_type = GgufValueType::kUint8;
  std::vector<GgufValue> elements;
};

// One metadata value. `type` is the type as written; the payload widens it:
// unsigned integers -> uint64_t, signed integers -> int64_t, float32/64 ->
// double, bool -> bool, string -> std::string, array -> GgufArray.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  std::variant<uint64_t, int64_t, double, bool, std::string, GgufArray> value;
};

// Arrays of arrays of scalars are accepted; anything deeper is rejected.
inline constexpr int kMaxGgufArrayNesting = 2;
inline constexpr int kMaxGgufDims = 4;
inline constexpr uint32_t kDefaultGgufAlignment = 32;

struct GgufKeyValue {
  std::string key;
  GgufValue value;
};

struct GgufTensor {
  std::string name;
  // GGUF order: dims[0] is the innermost (contiguous) dimension, i.e. the
  // columns of a matrix; a [rows, cols] matrix is written {cols, rows}.
  std::vector<int64_t> dims;  // 1..kMaxGgufDims entries, each > 0.
  GgufType type = GgufType::kF32;
  int64_t numel = 0;              // Product of dims, checked.
  uint64_t offset = 0;            // From the start of the data section.
  const uint8_t* data = nullptr;  // [nbytes] u8 inside the file.
  size_t nbytes = 0;  // numel / block_elements * block_bytes, checked.
};

// A parsed GGUF file. Opened from a path it owns its mapping; parsed from
// bytes (ParseGgufBytes) its tensor data points into those bytes, which the
// caller keeps alive. Move-only.
class GgufFile {
 public:
  // Maps `path` and parses it.
  static absl::StatusOr<GgufFile> Open(const std::string& path);

  GgufFile() = default;
  GgufFile(GgufFile&&) = default;
  GgufFile& operator=(GgufFile&&) = default;
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  // The path (or the name given to ParseGgufBytes); prefixes errors.
  const std::string& path() const { return name_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // Of data section.

  // Metadata in file order.
  const std::vector<GgufKeyValue>& metadata() const { return metadata_; }
  // nullptr when absent.
  const GgufValue* Find(absl::string_view key) const;

  // Typed getters. NotFound when the key is absent; InvalidArgument (naming
  // the file, the key, the expected and actual types) otherwise.
  absl::StatusOr<std::string> GetString(absl::string_view key) const;
  // Any integer type; values beyond int64 are an error.
  absl::StatusOr<int64_t> GetInt(absl::string_view key) const;
  // float32 or float64 (integers are accepted and converted).
  absl::StatusOr<double> GetFloat(absl::string_view key) const;
  absl::StatusOr<bool> GetBool(absl::string_view key) const;
  // The element count of an array value (any element type).
  absl::StatusOr<int64_t> GetArrayLength(absl::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(
      absl::string_view key) const;
  // Arrays of float32/float64 (or integers, converted).
  absl::StatusOr<std::vector<float>> GetFloatArray(absl::string_view key) const;
  // Arrays of any integer type; values beyond int64 are an error.
  absl::StatusOr<std::vector<int64_t>> GetIntArray(absl::string_view key) const;

  // Tensors in file order; FindTensor returns nullptr when absent.
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* FindTensor(absl::string_view name) const;

  // Moves the mapping out (tensor pointers stay valid while it lives).
  MappedFile TakeMapping() { return std::move(file_); }

 private:
  friend absl::StatusOr<GgufFile> ParseGgufBytes(absl::string_view bytes,
                                                 std::string name);

  std::string name_;
  uint32_t version_ = 0;
  uint32_t alignment_ = kDefaultGgufAlignment;
  uint64_t data_offset_ = 0;
  std::vector<GgufKeyValue> metadata_;
  absl::flat_hash_map<std::string, size_t> metadata_index_;  // -> metadata_
  std::vector<GgufTensor> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;  // -> tensors_
  MappedFile file_;  // Empty when parsed from caller-owned bytes.
};

// Parses `bytes` as a whole GGUF file; `name` (usually the path) prefixes
// every error. Tensor data points into `bytes`.
absl::StatusOr<GgufFile> ParseGgufBytes(absl::string_view bytes,
                                        std::string name);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_MODEL_GGUF_H_
