// Parser for the safetensors format: an 8-byte little-endian header length,
// a JSON header mapping tensor names to {dtype, shape, data_offsets}, then the
// raw tensor bytes. Everything in the header is untrusted and validated:
// sizes, offsets inside the data section, byte counts matching the shape and
// no two tensors sharing bytes.
#ifndef LITESTAGE_ENGINE_MODEL_SAFETENSORS_H_
#define LITESTAGE_ENGINE_MODEL_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/model/tensor.h"
#include "engine/util/mapped_file.h"

namespace litestage {

// Headers larger than this are rejected before parsing (the format's own
// reference implementation uses the same bound).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct SafetensorsTensor {
  std::string name;
  std::string dtype_name;      // As written: "F32", "BF16", "I64", ...
  std::optional<DType> dtype;  // nullopt: a valid dtype litestage cannot use.
  std::vector<int64_t> shape;  // Row-major dims, each >= 0; [] is a scalar.
  const uint8_t* data = nullptr;  // [nbytes] u8, inside the file; may be
                                  // unaligned for the element type.
  size_t nbytes = 0;              // numel * element size, checked.
};

// The tensors of one buffer, sorted by name. Data pointers point into the
// bytes that were parsed.
struct SafetensorsHeader {
  std::vector<SafetensorsTensor> tensors;
  std::map<std::string, std::string> metadata;  // "__metadata__" strings.

  // Binary search by name; nullptr when absent.
  const SafetensorsTensor* Find(absl::string_view name) const;
};

// A parsed safetensors file that owns its mapping, so the tensor views stay
// valid as long as it (or the MappedFile moved out of it) lives.
class SafetensorsFile {
 public:
  SafetensorsFile() = default;
  SafetensorsFile(MappedFile file, SafetensorsHeader header)
      : file_(std::move(file)), header_(std::move(header)) {}

  const std::string& path() const { return file_.path(); }
  const std::vector<SafetensorsTensor>& tensors() const {
    return header_.tensors;
  }
  const std::map<std::string, std::string>& metadata() const {
    return header_.metadata;
  }
  const SafetensorsTensor* Find(absl::string_view name) const {
    return header_.Find(name);
  }
  // Moves the mapping out (its address, hence every tensor pointer, stays
  // the same). The file's tensor list remains readable.
  MappedFile TakeMapping() { return std::move(file_); }

 private:
  MappedFile file_;
  SafetensorsHeader header_;
};

// Parses `bytes` as a whole safetensors file; `name` (usually the path)
// prefixes every error, together with the tensor concerned. Tensors with a
// dtype litestage cannot use are listed with dtype == nullopt; unknown dtype
// strings are errors.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsBytes(absl::string_view bytes,
                                                        absl::string_view name);

// Parses a mapped file; errors name file.path().
absl::StatusOr<SafetensorsFile> ParseSafetensors(MappedFile file);

// Maps `path` and parses it.
absl::StatusOr<SafetensorsFile> OpenSafetensors(const std::string& path);

// "[2, 3]" for error messages.
std::string ShapeToString(const std::vector<int64_t>& shape);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_MODEL_SAFETENSORS_H_
