// Test helper that writes GGUF files field by field, so the parser's and the
// loader's validation can be exercised with crafted (also malformed) input.
#ifndef LITESTAGE_TESTS_MODEL_GGUF_WRITER_H_
#define LITESTAGE_TESTS_MODEL_GGUF_WRITER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/model/gguf.h"

namespace litestage::testing {

// Little-endian encodings of GGUF fields.
std::string GgufU32(uint32_t value);
std::string GgufU64(uint64_t value);
std::string GgufStr(const std::string& value);  // u64 length + bytes.

class GgufWriter {
 public:
  // Metadata, in the order added. Each adds key, type and value.
  void AddU32(const std::string& key, uint32_t value);
  void AddI32(const std::string& key, int32_t value);
  void AddU64(const std::string& key, uint64_t value);
  void AddF32(const std::string& key, float value);
  void AddBool(const std::string& key, bool value);
  void AddString(const std::string& key, const std::string& value);
  void AddStringArray(const std::string& key,
                      const std::vector<std::string>& values);
  void AddI32Array(const std::string& key, const std::vector<int32_t>& values);
  void AddF32Array(const std::string& key, const std::vector<float>& values);
  // A key with an arbitrary raw type number and encoded value bytes.
  void AddRaw(const std::string& key, uint32_t type, const std::string& value);

  // A tensor whose data is `bytes`, placed after the previous tensor at the
  // next multiple of `alignment`. `dims` are in GGUF order (innermost first).
  void AddTensor(const std::string& name, const std::vector<uint64_t>& dims,
                 GgufType type, const std::string& bytes);
  // A tensor info with explicit raw type and offset; its data (if any) must
  // come from `extra_data`.
  void AddTensorInfo(const std::string& name, const std::vector<uint64_t>& dims,
                     uint32_t raw_type, uint64_t offset);

  std::string Build() const;

  uint32_t magic = 0x46554747;  // "GGUF"
  uint32_t version = 3;
  uint32_t alignment = kDefaultGgufAlignment;  // Used for layout only.
  std::optional<uint64_t> tensor_count;        // Overrides the real counts.
  std::optional<uint64_t> kv_count;
  std::string extra_data;  // Appended to the data section.

 private:
  struct Info {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t raw_type;
    uint64_t offset;
  };
  void AddKey(const std::string& key, GgufValueType type,
              const std::string& value);

  std::string metadata_;
  uint64_t metadata_count_ = 0;
  std::vector<Info> infos_;
  std::string data_;
};

// Floats as little-endian f32 bytes.
std::string F32Bytes(const std::vector<float>& values);

}  // namespace litestage::testing

#endif  // LITESTAGE_TESTS_MODEL_GGUF_WRITER_H_
