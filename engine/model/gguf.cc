// The GGUF parser (gguf.h). ~690 lines because every count, length, type,
// dimension and offset of the untrusted file is checked, overflow-safe, at
// the place it is read, each with its own message naming the file, the key
// or tensor and the reason; splitting the reader from its checks would
// separate each check from the bytes it guards.
#include "engine/model/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read little-endian.
// Keys and tensor names longer than this are not real (the specification
// caps keys at 65535 bytes; ggml caps tensor names at 64).
constexpr uint64_t kMaxNameBytes = 65535;
// Bound on metadata array elements in a file, so a small file cannot make
// the parser allocate far more than its size (a real vocabulary has < 1M
// tokens plus merges).
constexpr uint64_t kMaxMetadataElements = uint64_t{1} << 24;

// Every type ggml stores in files (removed numbers 4, 5 and 31..33, and
// Q8_1, an in-memory type whose size changed across ggml versions, are
// absent, so they are rejected as unknown).
constexpr GgufTypeInfo kTypes[] = {
    {GgufType::kF32, "F32", 1, 4},
    {GgufType::kF16, "F16", 1, 2},
    {GgufType::kQ4_0, "Q4_0", 32, 18},
    {GgufType::kQ4_1, "Q4_1", 32, 20},
    {GgufType::kQ5_0, "Q5_0", 32, 22},
    {GgufType::kQ5_1, "Q5_1", 32, 24},
    {GgufType::kQ8_0, "Q8_0", 32, 34},
    {GgufType::kQ2_K, "Q2_K", 256, 84},
    {GgufType::kQ3_K, "Q3_K", 256, 110},
    {GgufType::kQ4_K, "Q4_K", 256, 144},
    {GgufType::kQ5_K, "Q5_K", 256, 176},
    {GgufType::kQ6_K, "Q6_K", 256, 210},
    {GgufType::kQ8_K, "Q8_K", 256, 292},
    {GgufType::kIQ2_XXS, "IQ2_XXS", 256, 66},
    {GgufType::kIQ2_XS, "IQ2_XS", 256, 74},
    {GgufType::kIQ3_XXS, "IQ3_XXS", 256, 98},
    {GgufType::kIQ1_S, "IQ1_S", 256, 50},
    {GgufType::kIQ4_NL, "IQ4_NL", 32, 18},
    {GgufType::kIQ3_S, "IQ3_S", 256, 110},
    {GgufType::kIQ2_S, "IQ2_S", 256, 82},
    {GgufType::kIQ4_XS, "IQ4_XS", 256, 136},
    {GgufType::kI8, "I8", 1, 1},
    {GgufType::kI16, "I16", 1, 2},
    {GgufType::kI32, "I32", 1, 4},
    {GgufType::kI64, "I64", 1, 8},
    {GgufType::kF64, "F64", 1, 8},
    {GgufType::kIQ1_M, "IQ1_M", 256, 56},
    {GgufType::kBF16, "BF16", 1, 2},
    {GgufType::kTQ1_0, "TQ1_0", 256, 54},
    {GgufType::kTQ2_0, "TQ2_0", 256, 66},
    {GgufType::kMXFP4, "MXFP4", 32, 17},
};

bool IsUnsigned(GgufValueType t) {
  return t == GgufValueType::kUint8 || t == GgufValueType::kUint16 ||
         t == GgufValueType::kUint32 || t == GgufValueType::kUint64;
}
bool IsSigned(GgufValueType t) {
  return t == GgufValueType::kInt8 || t == GgufValueType::kInt16 ||
         t == GgufValueType::kInt32 || t == GgufValueType::kInt64;
}
bool IsFloat(GgufValueType t) {
  return t == GgufValueType::kFloat32 || t == GgufValueType::kFloat64;
}

// Bytes a scalar of type `t` occupies; 0 for string/array/unknown.
uint64_t ScalarBytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    default:
      return 0;
  }
}

bool IsKnownValueType(uint32_t raw) { return raw <= 12; }

// Little-endian cursor over untrusted bytes; every read is bounds-checked
// and failures say what was being read and at which offset.
class Reader {
 public:
  Reader(absl::string_view bytes, const std::string& name)
      : data_(reinterpret_cast<const uint8_t*>(bytes.data())),
        size_(bytes.size()),
        name_(name) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  absl::Status Error(absl::string_view what, absl::string_view reason) const {
    return absl::InvalidArgumentError(
        absl::StrCat(name_, ": ", what, ": ", reason));
  }

  absl::Status Need(uint64_t n, absl::string_view what) const {
    if (n > remaining()) {
      return Error(what,
                   absl::StrCat("truncated file: need ", n, " bytes at offset ",
                                pos_, ", only ", remaining(), " left"));
    }
    return absl::OkStatus();
  }

  template <typename T>
  absl::StatusOr<T> Read(absl::string_view what) {
    LS_RETURN_IF_ERROR(Need(sizeof(T), what));
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));  // Hosts are little-endian.
    pos_ += sizeof(T);
    return value;
  }

  absl::StatusOr<std::string> ReadString(absl::string_view what,
                                         uint64_t max_len) {
    LS_ASSIGN_OR_RETURN(const uint64_t len, Read<uint64_t>(what));
    if (len > remaining()) {
      return Error(what, absl::StrCat("string length ", len, " at offset ",
                                      pos_ - 8, " exceeds the ", remaining(),
                                      " bytes left in the file"));
    }
    if (len > max_len) {
      return Error(what, absl::StrCat("string length ", len,
                                      " exceeds the limit of ", max_len));
    }
    std::string value(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return value;
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& name_;
};

class Parser {
 public:
  Parser(absl::string_view bytes, const std::string& name)
      : reader_(bytes, name) {}

  absl::StatusOr<GgufValue> ReadValue(uint32_t raw_type, int depth,
                                      const std::string& what) {
    if (!IsKnownValueType(raw_type)) {
      return reader_.Error(what, absl::StrCat("unknown value type ", raw_type));
    }
    GgufValue out;
    out.type = static_cast<GgufValueType>(raw_type);
    switch (out.type) {
      case GgufValueType::kUint8: {
        LS_ASSIGN_OR_RETURN(uint8_t v, reader_.Read<uint8_t>(what));
        out.value = uint64_t{v};
        break;
      }
      case GgufValueType::kInt8: {
        LS_ASSIGN_OR_RETURN(int8_t v, reader_.Read<int8_t>(what));
        out.value = int64_t{v};
        break;
      }
      case GgufValueType::kUint16: {
        LS_ASSIGN_OR_RETURN(uint16_t v, reader_.Read<uint16_t>(what));
        out.value = uint64_t{v};
        break;
      }
      case GgufValueType::kInt16: {
        LS_ASSIGN_OR_RETURN(int16_t v, reader_.Read<int16_t>(what));
        out.value = int64_t{v};
        break;
      }
      case GgufValueType::kUint32: {
        LS_ASSIGN_OR_RETURN(uint32_t v, reader_.Read<uint32_t>(what));
        out.value = uint64_t{v};
        break;
      }
      case GgufValueType::kInt32: {
        LS_ASSIGN_OR_RETURN(int32_t v, reader_.Read<int32_t>(what));
        out.value = int64_t{v};
        break;
      }
      case GgufValueType::kUint64: {
        LS_ASSIGN_OR_RETURN(uint64_t v, reader_.Read<uint64_t>(what));
        out.value = v;
        break;
      }
      case GgufValueType::kInt64: {
        LS_ASSIGN_OR_RETURN(int64_t v, reader_.Read<int64_t>(what));
        out.value = v;
        break;
      }
      case GgufValueType::kFloat32: {
        LS_ASSIGN_OR_RETURN(float v, reader_.Read<float>(what));
        out.value = double{v};
        break;
      }
      case GgufValueType::kFloat64: {
        LS_ASSIGN_OR_RETURN(double v, reader_.Read<double>(what));
        out.value = v;
        break;
      }
      case GgufValueType::kBool: {
        LS_ASSIGN_OR_RETURN(uint8_t v, reader_.Read<uint8_t>(what));
        if (v > 1) {
          return reader_.Error(
              what, absl::StrCat("bool value ", int{v}, " is neither 0 nor 1"));
        }
        out.value = v == 1;
        break;
      }
      case GgufValueType::kString: {
        LS_ASSIGN_OR_RETURN(std::string v,
                            reader_.ReadString(what, reader_.remaining()));
        out.value = std::move(v);
        break;
      }
      case GgufValueType::kArray: {
        LS_ASSIGN_OR_RETURN(GgufArray v, ReadArray(depth + 1, what));
        out.value = std::move(v);
        break;
      }
    }
    return out;
  }

  absl::StatusOr<GgufArray> ReadArray(int depth, const std::string& what) {
    if (depth > kMaxGgufArrayNesting) {
      return reader_.Error(what, absl::StrCat("arrays nested deeper than ",
                                              kMaxGgufArrayNesting, " levels"));
    }
    LS_ASSIGN_OR_RETURN(const uint32_t raw_type, reader_.Read<uint32_t>(what));
    if (!IsKnownValueType(raw_type)) {
      return reader_.Error(
          what, absl::StrCat("unknown array element type ", raw_type));
    }
    const auto element_type = static_cast<GgufValueType>(raw_type);
    LS_ASSIGN_OR_RETURN(const uint64_t count, reader_.Read<uint64_t>(what));
    // The smallest encoding of one element: a scalar's size, a string's
    // length field, a nested array's type + count.
    uint64_t min_bytes = ScalarBytes(element_type);
    if (element_type == GgufValueType::kString) min_bytes = 8;
    if (element_type == GgufValueType::kArray) min_bytes = 12;
    if (count > reader_.remaining() / min_bytes) {
      return reader_.Error(
          what,
          absl::StrCat("array of ", count, " ", GgufValueTypeName(element_type),
                       " elements cannot fit in the ", reader_.remaining(),
                       " bytes left in the file"));
    }
    total_elements_ += count;
    if (total_elements_ > kMaxMetadataElements) {
      return reader_.Error(
          what, absl::StrCat("more than ", kMaxMetadataElements,
                             " metadata array elements in the file"));
    }
    GgufArray array;
    array.element_type = element_type;
    array.elements.reserve(count);
    for (uint64_t i = 0; i < count; ++i) {
      LS_ASSIGN_OR_RETURN(GgufValue element, ReadValue(raw_type, depth, what));
      array.elements.push_back(std::move(element));
    }
    return array;
  }

  Reader reader_;
  uint64_t total_elements_ = 0;
};

uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  const uint64_t rem = value % alignment;
  return rem == 0 ? value : value + (alignment - rem);
}

}  // namespace

const GgufTypeInfo* FindGgufTypeInfo(uint32_t raw_type) {
  for (const GgufTypeInfo& info : kTypes) {
    if (static_cast<uint32_t>(info.type) == raw_type) return &info;
  }
  return nullptr;
}

std::string GgufTypeName(GgufType type) {
  const GgufTypeInfo* info = FindGgufTypeInfo(static_cast<uint32_t>(type));
  if (info != nullptr) return info->name;
  return absl::StrCat("type", static_cast<uint32_t>(type));
}

const char* GgufValueTypeName(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
      return "uint8";
    case GgufValueType::kInt8:
      return "int8";
    case GgufValueType::kUint16:
      return "uint16";
    case GgufValueType::kInt16:
      return "int16";
    case GgufValueType::kUint32:
      return "uint32";
    case GgufValueType::kInt32:
      return "int32";
    case GgufValueType::kFloat32:
      return "float32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kUint64:
      return "uint64";
    case GgufValueType::kInt64:
      return "int64";
    case GgufValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

absl::StatusOr<GgufFile> ParseGgufBytes(absl::string_view bytes,
                                        std::string name) {
  GgufFile file;
  file.name_ = std::move(name);
  const std::string& source = file.name_;
  Parser parser(bytes, source);
  Reader& reader = parser.reader_;

  LS_ASSIGN_OR_RETURN(const uint32_t magic, reader.Read<uint32_t>("header"));
  if (magic != kGgufMagic) {
    return reader.Error("header", "bad magic (not a GGUF file)");
  }
  LS_ASSIGN_OR_RETURN(file.version_, reader.Read<uint32_t>("header"));
  if (file.version_ != 2 && file.version_ != 3) {
    std::string hint;
    if (file.version_ == 1) hint = " (GGUF v1 is obsolete; re-convert)";
    if (file.version_ == 0x02000000 || file.version_ == 0x03000000) {
      hint = " (a big-endian file)";
    }
    return reader.Error(
        "header", absl::StrCat("unsupported GGUF version ", file.version_, hint,
                               "; supported: 2, 3"));
  }
  LS_ASSIGN_OR_RETURN(const uint64_t tensor_count,
                      reader.Read<uint64_t>("header"));
  LS_ASSIGN_OR_RETURN(const uint64_t kv_count, reader.Read<uint64_t>("header"));
  // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor
  // info at least 8 (name length) + 4 (n_dims) + 8 (a dim) + 4 + 8.
  if (kv_count > reader.remaining() / 13) {
    return reader.Error("header", absl::StrCat("metadata count ", kv_count,
                                               " cannot fit in a file of ",
                                               bytes.size(), " bytes"));
  }
  if (tensor_count > reader.remaining() / 32) {
    return reader.Error("header", absl::StrCat("tensor count ", tensor_count,
                                               " cannot fit in a file of ",
                                               bytes.size(), " bytes"));
  }

  file.metadata_.reserve(kv_count);
  for (uint64_t i = 0; i < kv_count; ++i) {
    const std::string what = absl::StrCat("metadata entry ", i);
    LS_ASSIGN_OR_RETURN(std::string key,
                        reader.ReadString(what + " key", kMaxNameBytes));
    const std::string key_what = absl::StrCat("key '", key, "'");
    LS_ASSIGN_OR_RETURN(const uint32_t raw_type,
                        reader.Read<uint32_t>(key_what));
    LS_ASSIGN_OR_RETURN(GgufValue value,
                        parser.ReadValue(raw_type, 0, key_what));
    if (!file.metadata_index_.emplace(key, file.metadata_.size()).second) {
      return reader.Error(key_what, "duplicate key");
    }
    file.metadata_.push_back({std::move(key), std::move(value)});
  }

  if (const GgufValue* alignment = file.Find("general.alignment")) {
    if (!IsUnsigned(alignment->type) && !IsSigned(alignment->type)) {
      return reader.Error("key 'general.alignment'",
                          absl::StrCat("must be an integer, got ",
                                       GgufValueTypeName(alignment->type)));
    }
    LS_ASSIGN_OR_RETURN(const int64_t value, file.GetInt("general.alignment"));
    if (value <= 0 || value > (int64_t{1} << 30) ||
        (value & (value - 1)) != 0) {
      return reader.Error("key 'general.alignment'",
                          absl::StrCat("alignment ", value,
                                       " is not a power of two in [1, 2^30]"));
    }
    file.alignment_ = static_cast<uint32_t>(value);
  }

  if (tensor_count > reader.remaining() / 32) {
    return reader.Error(
        "header",
        absl::StrCat("tensor count ", tensor_count, " cannot fit in the ",
                     reader.remaining(), " bytes after the metadata"));
  }
  file.tensors_.reserve(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensor tensor;
    LS_ASSIGN_OR_RETURN(
        tensor.name, reader.ReadString(absl::StrCat("tensor info ", i, " name"),
                                       kMaxNameBytes));
    const std::string what = absl::StrCat("tensor '", tensor.name, "'");
    LS_ASSIGN_OR_RETURN(const uint32_t n_dims, reader.Read<uint32_t>(what));
    if (n_dims < 1 || n_dims > kMaxGgufDims) {
      return reader.Error(what, absl::StrCat("n_dims ", n_dims, " outside [1, ",
                                             kMaxGgufDims, "]"));
    }
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      LS_ASSIGN_OR_RETURN(const uint64_t dim, reader.Read<uint64_t>(what));
      if (dim == 0 ||
          dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return reader.Error(what, absl::StrCat("dimension ", d, " is ", dim,
                                               "; must be positive"));
      }
      tensor.dims.push_back(static_cast<int64_t>(dim));
      if (__builtin_mul_overflow(numel, static_cast<int64_t>(dim), &numel)) {
        return reader.Error(what, "element count overflows int64");
      }
    }
    tensor.numel = numel;
    LS_ASSIGN_OR_RETURN(const uint32_t raw_type, reader.Read<uint32_t>(what));
    const GgufTypeInfo* info = FindGgufTypeInfo(raw_type);
    if (info == nullptr) {
      return reader.Error(what, absl::StrCat("unknown tensor type ", raw_type));
    }
    tensor.type = info->type;
    if (tensor.dims[0] % info->block_elements != 0) {
      return reader.Error(what,
                          absl::StrCat("row length ", tensor.dims[0],
                                       " is not a multiple of the ", info->name,
                                       " block size ", info->block_elements));
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(
            static_cast<uint64_t>(numel / info->block_elements),
            static_cast<uint64_t>(info->block_bytes), &nbytes) ||
        nbytes > std::numeric_limits<size_t>::max()) {
      return reader.Error(what, "byte size overflows");
    }
    tensor.nbytes = static_cast<size_t>(nbytes);
    LS_ASSIGN_OR_RETURN(tensor.offset, reader.Read<uint64_t>(what));
    if (tensor.offset % file.alignment_ != 0) {
      return reader.Error(what,
                          absl::StrCat("data offset ", tensor.offset,
                                       " is not a multiple of the alignment ",
                                       file.alignment_));
    }
    if (!file.tensor_index_.emplace(tensor.name, file.tensors_.size()).second) {
      return reader.Error(what, "duplicate tensor name");
    }
    file.tensors_.push_back(std::move(tensor));
  }

  // pos <= size, so aligning cannot overflow.
  file.data_offset_ = AlignUp(reader.pos(), file.alignment_);
  const uint64_t data_size =
      file.data_offset_ <= bytes.size() ? bytes.size() - file.data_offset_ : 0;
  if (!file.tensors_.empty() && file.data_offset_ > bytes.size()) {
    return reader.Error("data section",
                        absl::StrCat("starts at ", file.data_offset_,
                                     ", beyond the end of the file (",
                                     bytes.size(), " bytes)"));
  }
  const auto* base = reinterpret_cast<const uint8_t*>(bytes.data());
  for (GgufTensor& tensor : file.tensors_) {
    if (tensor.offset > data_size ||
        tensor.nbytes > data_size - tensor.offset) {
      return reader.Error(
          absl::StrCat("tensor '", tensor.name, "'"),
          absl::StrCat("bytes [", tensor.offset, ", +", tensor.nbytes,
                       ") of type ", GgufTypeName(tensor.type),
                       " extend beyond the data section of ", data_size,
                       " bytes"));
    }
    tensor.data = base + file.data_offset_ + tensor.offset;
  }
  // No two tensors may share bytes.
  std::vector<const GgufTensor*> by_offset;
  by_offset.reserve(file.tensors_.size());
  for (const GgufTensor& tensor : file.tensors_) by_offset.push_back(&tensor);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensor* a, const GgufTensor* b) {
              return a->offset < b->offset;
            });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensor& prev = *by_offset[i - 1];
    const GgufTensor& cur = *by_offset[i];
    if (cur.offset < prev.offset + prev.nbytes) {
      return reader.Error(
          absl::StrCat("tensor '", cur.name, "'"),
          absl::StrCat("bytes at offset ", cur.offset, " overlap tensor '",
                       prev.name, "' [", prev.offset, ", ",
                       prev.offset + prev.nbytes, ")"));
    }
  }
  return file;
}

absl::StatusOr<GgufFile> GgufFile::Open(const std::string& path) {
  LS_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::Open(path));
  LS_ASSIGN_OR_RETURN(GgufFile file, ParseGgufBytes(mapped.view(), path));
  // Moving the mapping keeps its address, so tensor pointers stay valid.
  file.file_ = std::move(mapped);
  return file;
}

const GgufValue* GgufFile::Find(absl::string_view key) const {
  auto it = metadata_index_.find(key);
  if (it == metadata_index_.end()) return nullptr;
  return &metadata_[it->second].value;
}

const GgufTensor* GgufFile::FindTensor(absl::string_view name) const {
  auto it = tensor_index_.find(name);
  if (it == tensor_index_.end()) return nullptr;
  return &tensors_[it->second];
}

namespace {

absl::Status KeyError(const std::string& file, absl::string_view key,
                      absl::string_view reason) {
  return absl::InvalidArgumentError(
      absl::StrCat(file, ": key '", key, "': ", reason));
}

absl::Status WrongType(const std::string& file, absl::string_view key,
                       absl::string_view expected, const GgufValue& value) {
  std::string actual = GgufValueTypeName(value.type);
  if (const auto* array = std::get_if<GgufArray>(&value.value)) {
    absl::StrAppend(&actual, " of ", GgufValueTypeName(array->element_type));
  }
  return KeyError(file, key,
                  absl::StrCat("expected ", expected, ", got ", actual));
}

// An integer value as int64, or nullopt (with *reason set).
std::optional<int64_t> AsInt(const GgufValue& value, std::string* reason) {
  if (IsSigned(value.type)) return std::get<int64_t>(value.value);
  if (IsUnsigned(value.type)) {
    const uint64_t v = std::get<uint64_t>(value.value);
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      *reason = absl::StrCat("value ", v, " exceeds int64");
      return std::nullopt;
    }
    return static_cast<int64_t>(v);
  }
  *reason = "not an integer";
  return std::nullopt;
}

std::optional<double> AsFloat(const GgufValue& value) {
  if (IsFloat(value.type)) return std::get<double>(value.value);
  if (IsSigned(value.type)) {
    return static_cast<double>(std::get<int64_t>(value.value));
  }
  if (IsUnsigned(value.type)) {
    return static_cast<double>(std::get<uint64_t>(value.value));
  }
  return std::nullopt;
}

}  // namespace

#define LS_GGUF_FIND_OR_NOT_FOUND(value, key)                   \
  const GgufValue* value = Find(key);                           \
  if (value == nullptr) {                                       \
    return absl::NotFoundError(                                 \
        absl::StrCat(name_, ": key '", key, "': not present")); \
  }

absl::StatusOr<std::string> GgufFile::GetString(absl::string_view key) const {
  LS_GGUF_FIND_OR_NOT_FOUND(value, key);
  if (value->type != GgufValueType::kString) {
    return WrongType(name_, key, "string", *value);
  }
  return std::get<std::string>(value->value);
}

absl::StatusOr<int64_t> GgufFile::GetInt(absl::string_view key) const {
  LS_GGUF_FIND_OR_NOT_FOUND(value, key);
  if (!IsSigned(value->type) && !IsUnsigned(value->type)) {
    return WrongType(name_, key, "an integer", *value);
  }
  std::string reason;
  std::optional<int64_t> v = AsInt(*value, &reason);
  if (!v.has_value()) return KeyError(name_, key, reason);
  return *v;
}

absl::StatusOr<double> GgufFile::GetFloat(absl::string_view key) const {
  LS_GGUF_FIND_OR_NOT_FOUND(value, key);
  std::optional<double> v = AsFloat(*value);
  if (!v.has_value()) return WrongType(name_, key, "a number", *value);
  return *v;
}

absl::StatusOr<bool> GgufFile::GetBool(absl::string_view key) const {
  LS_GGUF_FIND_OR_NOT_FOUND(value, key);
  if (value->type != GgufValueType::kBool) {
    return WrongType(name_, key, "bool", *value);
  }
  return std::get<bool>(value->value);
}

absl::StatusOr<int64_t> GgufFile::GetArrayLength(absl::string_view key) const {
  LS_GGUF_FIND_OR_NOT_FOUND(value, key);
  const auto* array = std::get_if<GgufArray>(&value->value);
  if (array == nullptr) return WrongType(name_, key, "an array", *value);
  return static_cast<int64_t>(array->elements.size());
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(
    absl::string_view key) const {
  LS_GGUF_FIND_OR_NOT_FOUND(value, key);
  const auto* array = std::get_if<GgufArray>(&value->value);
  if (array == nullptr || array->element_type != GgufValueType::kString) {
    return WrongType(name_, key, "array of string", *value);
  }
  std::vector<std::string> out;
  out.reserve(array->elements.size());
  for (const GgufValue& element : array->elements) {
    out.push_back(std::get<std::string>(element.value));
  }
  return out;
}

absl::StatusOr<std::vector<float>> GgufFile::GetFloatArray(
    absl::string_view key) const {
  LS_GGUF_FIND_OR_NOT_FOUND(value, key);
  const auto* array = std::get_if<GgufArray>(&value->value);
  if (array == nullptr ||
      (!IsFloat(array->element_type) && !IsSigned(array->element_type) &&
       !IsUnsigned(array->element_type))) {
    return WrongType(name_, key, "array of numbers", *value);
  }
  std::vector<float> out;
  out.reserve(array->elements.size());
  for (const GgufValue& element : array->elements) {
    out.push_back(static_cast<float>(*AsFloat(element)));
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(
    absl::string_view key) const {
  LS_GGUF_FIND_OR_NOT_FOUND(value, key);
  const auto* array = std::get_if<GgufArray>(&value->value);
  if (array == nullptr ||
      (!IsSigned(array->element_type) && !IsUnsigned(array->element_type))) {
    return WrongType(name_, key, "array of integers", *value);
  }
  std::vector<int64_t> out;
  out.reserve(array->elements.size());
  for (size_t i = 0; i < array->elements.size(); ++i) {
    std::string reason;
    std::optional<int64_t> v = AsInt(array->elements[i], &reason);
    if (!v.has_value()) {
      return KeyError(name_, key, absl::StrCat("element ", i, ": ", reason));
    }
    out.push_back(*v);
  }
  return out;
}

#undef LS_GGUF_FIND_OR_NOT_FOUND

}  // namespace litestage
