#include "tests/model/gguf_writer.h"

#include <cstring>

namespace litestage::testing {
namespace {

template <typename T>
std::string Pod(T value) {
  std::string out(sizeof(T), '\0');
  std::memcpy(out.data(), &value, sizeof(T));
  return out;
}

}  // namespace

std::string GgufU32(uint32_t value) { return Pod(value); }
std::string GgufU64(uint64_t value) { return Pod(value); }
std::string GgufStr(const std::string& value) {
  return GgufU64(value.size()) + value;
}

std::string F32Bytes(const std::vector<float>& values) {
  std::string out;
  for (float v : values) out += Pod(v);
  return out;
}

void GgufWriter::AddKey(const std::string& key, GgufValueType type,
                        const std::string& value) {
  AddRaw(key, static_cast<uint32_t>(type), value);
}

void GgufWriter::AddRaw(const std::string& key, uint32_t type,
                        const std::string& value) {
  metadata_ += GgufStr(key) + GgufU32(type) + value;
  ++metadata_count_;
}

void GgufWriter::AddU32(const std::string& key, uint32_t value) {
  AddKey(key, GgufValueType::kUint32, Pod(value));
}
void GgufWriter::AddI32(const std::string& key, int32_t value) {
  AddKey(key, GgufValueType::kInt32, Pod(value));
}
void GgufWriter::AddU64(const std::string& key, uint64_t value) {
  AddKey(key, GgufValueType::kUint64, Pod(value));
}
void GgufWriter::AddF32(const std::string& key, float value) {
  AddKey(key, GgufValueType::kFloat32, Pod(value));
}
void GgufWriter::AddBool(const std::string& key, bool value) {
  AddKey(key, GgufValueType::kBool, std::string(1, value ? '\1' : '\0'));
}
void GgufWriter::AddString(const std::string& key, const std::string& value) {
  AddKey(key, GgufValueType::kString, GgufStr(value));
}
void GgufWriter::AddStringArray(const std::string& key,
                                const std::vector<std::string>& values) {
  std::string encoded = GgufU32(static_cast<uint32_t>(GgufValueType::kString)) +
                        GgufU64(values.size());
  for (const std::string& v : values) encoded += GgufStr(v);
  AddKey(key, GgufValueType::kArray, encoded);
}
void GgufWriter::AddI32Array(const std::string& key,
                             const std::vector<int32_t>& values) {
  std::string encoded = GgufU32(static_cast<uint32_t>(GgufValueType::kInt32)) +
                        GgufU64(values.size());
  for (int32_t v : values) encoded += Pod(v);
  AddKey(key, GgufValueType::kArray, encoded);
}
void GgufWriter::AddF32Array(const std::string& key,
                             const std::vector<float>& values) {
  std::string encoded =
      GgufU32(static_cast<uint32_t>(GgufValueType::kFloat32)) +
      GgufU64(values.size()) + F32Bytes(values);
  AddKey(key, GgufValueType::kArray, encoded);
}

void GgufWriter::AddTensor(const std::string& name,
                           const std::vector<uint64_t>& dims, GgufType type,
                           const std::string& bytes) {
  while (data_.size() % alignment != 0) data_ += '\0';
  infos_.push_back(Info{name, dims, static_cast<uint32_t>(type), data_.size()});
  data_ += bytes;
}

void GgufWriter::AddTensorInfo(const std::string& name,
                               const std::vector<uint64_t>& dims,
                               uint32_t raw_type, uint64_t offset) {
  infos_.push_back(Info{name, dims, raw_type, offset});
}

std::string GgufWriter::Build() const {
  std::string out = GgufU32(magic) + GgufU32(version) +
                    GgufU64(tensor_count.value_or(infos_.size())) +
                    GgufU64(kv_count.value_or(metadata_count_)) + metadata_;
  for (const Info& info : infos_) {
    out +=
        GgufStr(info.name) + GgufU32(static_cast<uint32_t>(info.dims.size()));
    for (uint64_t d : info.dims) out += GgufU64(d);
    out += GgufU32(info.raw_type) + GgufU64(info.offset);
  }
  if (!infos_.empty() || !data_.empty() || !extra_data.empty()) {
    while (out.size() % alignment != 0) out += '\0';
  }
  return out + data_ + extra_data;
}

}  // namespace litestage::testing
