#include "engine/model/safetensors.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/util/json_util.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

using nlohmann::json;

struct DTypeInfo {
  const char* name;
  size_t size;                 // Bytes per element.
  std::optional<DType> dtype;  // nullopt: valid but unusable here.
};

// Every dtype the safetensors specification defines.
constexpr DTypeInfo kDTypes[] = {
    {"F32", 4, DType::kF32},      {"F16", 2, DType::kF16},
    {"BF16", 2, DType::kBF16},    {"F64", 8, std::nullopt},
    {"I64", 8, std::nullopt},     {"U64", 8, std::nullopt},
    {"I32", 4, std::nullopt},     {"U32", 4, std::nullopt},
    {"I16", 2, std::nullopt},     {"U16", 2, std::nullopt},
    {"I8", 1, std::nullopt},      {"U8", 1, std::nullopt},
    {"BOOL", 1, std::nullopt},    {"F8_E4M3", 1, std::nullopt},
    {"F8_E5M2", 1, std::nullopt},
};

const DTypeInfo* FindDType(absl::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.name) return &info;
  }
  return nullptr;
}

constexpr size_t kMaxRank = 8;

absl::Status TensorError(absl::string_view source, absl::string_view tensor,
                         absl::string_view reason) {
  return absl::InvalidArgumentError(absl::StrCat(
      source, ": tensor '", TruncateForMessage(tensor), "': ", reason));
}

// A JSON number that is a non-negative integer fitting in uint64.
std::optional<uint64_t> NonNegativeInteger(const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer()) {
    const int64_t signed_value = value.get<int64_t>();
    if (signed_value >= 0) return static_cast<uint64_t>(signed_value);
  }
  return std::nullopt;
}

absl::StatusOr<SafetensorsTensor> ParseEntry(
    const std::string& name, const json& entry, const uint8_t* data_section,
    uint64_t data_size, absl::string_view source, uint64_t* begin_out) {
  if (!entry.is_object()) {
    return TensorError(source, name,
                       absl::StrCat("header entry must be an object, got ",
                                    entry.type_name()));
  }
  SafetensorsTensor tensor;
  tensor.name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return TensorError(source, name, "'dtype' must be a string");
  }
  tensor.dtype_name = dtype_it->get<std::string>();
  const DTypeInfo* info = FindDType(tensor.dtype_name);
  if (info == nullptr) {
    return TensorError(
        source, name,
        absl::StrCat("unknown dtype '", TruncateForMessage(tensor.dtype_name),
                     "'"));
  }
  tensor.dtype = info->dtype;

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return TensorError(source, name, "'shape' must be a list of integers");
  }
  if (shape_it->size() > kMaxRank) {
    return TensorError(source, name,
                       absl::StrCat("rank ", shape_it->size(),
                                    " exceeds the maximum of ", kMaxRank));
  }
  // numel * element size must fit in the data section, which bounds every
  // intermediate product without overflow: each step checks before it
  // multiplies.
  uint64_t nbytes = info->size;
  bool has_zero_dim = false;
  for (const json& dim_json : *shape_it) {
    const std::optional<uint64_t> dim = NonNegativeInteger(dim_json);
    if (!dim ||
        *dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TensorError(source, name,
                         absl::StrCat("shape entries must be non-negative "
                                      "integers, got ",
                                      JsonForMessage(dim_json)));
    }
    tensor.shape.push_back(static_cast<int64_t>(*dim));
    if (*dim == 0) has_zero_dim = true;
    if (!has_zero_dim && *dim != 0 &&
        nbytes > std::numeric_limits<uint64_t>::max() / *dim) {
      return TensorError(source, name,
                         absl::StrCat("shape ", JsonForMessage(*shape_it),
                                      " overflows the byte count"));
    }
    if (!has_zero_dim) nbytes *= *dim;
  }
  if (has_zero_dim) nbytes = 0;

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() ||
      offsets_it->size() != 2) {
    return TensorError(source, name,
                       "'data_offsets' must be a list [begin, end]");
  }
  const std::optional<uint64_t> begin = NonNegativeInteger((*offsets_it)[0]);
  const std::optional<uint64_t> end = NonNegativeInteger((*offsets_it)[1]);
  if (!begin || !end) {
    return TensorError(source, name,
                       absl::StrCat("'data_offsets' must be non-negative "
                                    "integers, got ",
                                    JsonForMessage(*offsets_it)));
  }
  if (*end < *begin) {
    return TensorError(
        source, name,
        absl::StrCat("data_offsets end ", *end, " is before begin ", *begin));
  }
  if (*end > data_size) {
    return TensorError(
        source, name,
        absl::StrCat("data_offsets [", *begin, ", ", *end,
                     "] exceed the data section of ", data_size, " bytes"));
  }
  if (*end - *begin != nbytes) {
    return TensorError(
        source, name,
        absl::StrCat("data_offsets span ", *end - *begin, " bytes but ",
                     tensor.dtype_name, " shape ", ShapeToString(tensor.shape),
                     " needs ", nbytes));
  }
  tensor.data = data_section + *begin;
  tensor.nbytes = static_cast<size_t>(nbytes);
  *begin_out = *begin;
  return tensor;
}

}  // namespace

std::string ShapeToString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

const SafetensorsTensor* SafetensorsHeader::Find(absl::string_view name) const {
  auto it = std::lower_bound(
      tensors.begin(), tensors.end(), name,
      [](const SafetensorsTensor& tensor, absl::string_view key) {
        return absl::string_view(tensor.name) < key;
      });
  if (it == tensors.end() || it->name != name) return nullptr;
  return &*it;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsBytes(
    absl::string_view bytes, absl::string_view name) {
  if (bytes.size() < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": truncated safetensors file (", bytes.size(),
                     " bytes, the header length alone needs 8)"));
  }
  const auto* base = reinterpret_cast<const uint8_t*>(bytes.data());
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | base[i];
  const uint64_t available = bytes.size() - 8;
  if (header_size > available) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": header length ", header_size,
                     " exceeds the file's remaining ", available, " bytes"));
  }
  if (header_size > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": header length ", header_size,
                     " exceeds the limit of ", kMaxSafetensorsHeaderBytes));
  }
  const absl::string_view header_text = bytes.substr(8, header_size);
  const std::string header_source = absl::StrCat(name, " (safetensors header)");
  LS_ASSIGN_OR_RETURN(const json header, ParseJson(header_text, header_source));
  if (!header.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        header_source, ": must be a JSON object, got ", header.type_name()));
  }

  const uint8_t* data_section = base + 8 + header_size;
  const uint64_t data_size = available - header_size;
  SafetensorsHeader result;
  std::vector<std::pair<uint64_t, size_t>> begin_and_index;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, ": '__metadata__' must be an object, got ", it->type_name()));
      }
      for (auto meta = it->begin(); meta != it->end(); ++meta) {
        if (meta->is_string()) {
          result.metadata[meta.key()] = meta->get<std::string>();
        }
      }
      continue;
    }
    uint64_t begin = 0;
    LS_ASSIGN_OR_RETURN(
        SafetensorsTensor tensor,
        ParseEntry(it.key(), *it, data_section, data_size, name, &begin));
    begin_and_index.emplace_back(begin, result.tensors.size());
    result.tensors.push_back(std::move(tensor));
  }

  // Two tensors sharing bytes would alias; reject like the reference
  // implementation. Sorting by (begin, end) puts empty tensors first.
  std::sort(begin_and_index.begin(), begin_and_index.end(),
            [&](const auto& a, const auto& b) {
              if (a.first != b.first) return a.first < b.first;
              return result.tensors[a.second].nbytes <
                     result.tensors[b.second].nbytes;
            });
  uint64_t previous_end = 0;
  const SafetensorsTensor* previous = nullptr;
  for (const auto& [begin, index] : begin_and_index) {
    const SafetensorsTensor& tensor = result.tensors[index];
    if (begin < previous_end) {
      return TensorError(
          name, tensor.name,
          absl::StrCat("bytes [", begin, ", ", begin + tensor.nbytes,
                       ") overlap tensor '", previous->name, "' ending at ",
                       previous_end));
    }
    if (tensor.nbytes > 0) {
      previous_end = begin + tensor.nbytes;
      previous = &tensor;
    }
  }

  std::sort(result.tensors.begin(), result.tensors.end(),
            [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
              return a.name < b.name;
            });
  return result;
}

absl::StatusOr<SafetensorsFile> ParseSafetensors(MappedFile file) {
  LS_ASSIGN_OR_RETURN(SafetensorsHeader header,
                      ParseSafetensorsBytes(file.view(), file.path()));
  return SafetensorsFile(std::move(file), std::move(header));
}

absl::StatusOr<SafetensorsFile> OpenSafetensors(const std::string& path) {
  LS_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  return ParseSafetensors(std::move(file));
}

}  // namespace litestage
