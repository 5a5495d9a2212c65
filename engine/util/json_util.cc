#include "engine/util/json_util.h"

#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/util/mapped_file.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

using nlohmann::json;

// Returns the member or nullptr when absent/null. Requires an object.
absl::StatusOr<const json*> Member(const json& object, const char* key,
                                   absl::string_view source) {
  if (!object.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": expected a JSON object holding '", key, "'"));
  }
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::Status Missing(const char* key, absl::string_view source) {
  return absl::NotFoundError(
      absl::StrCat(source, ": missing required key '", key, "'"));
}

absl::Status WrongType(const char* key, absl::string_view source,
                       const char* expected, const json& value) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": key '", key,
                                                 "' must be ", expected,
                                                 ", got ", value.type_name()));
}

}  // namespace

absl::StatusOr<json> ParseJson(absl::string_view text,
                               absl::string_view source) {
  json parsed = json::parse(text.begin(), text.end(), /*cb=*/nullptr,
                            /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  }
  return parsed;
}

absl::StatusOr<json> ReadJsonFile(const std::string& path) {
  LS_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseJson(text, path);
}

absl::StatusOr<int64_t> JsonInt(const json& object, const char* key,
                                absl::string_view source,
                                std::optional<int64_t> fallback) {
  LS_ASSIGN_OR_RETURN(const json* value, Member(object, key, source));
  if (value == nullptr) {
    if (fallback) return *fallback;
    return Missing(key, source);
  }
  if (value->is_number_integer()) return value->get<int64_t>();
  if (value->is_number_float()) {
    const double d = value->get<double>();
    if (std::isfinite(d) && d == std::floor(d) &&
        std::fabs(d) < 9.0e15) {  // Integral floats such as 1.0e4 are accepted.
      return static_cast<int64_t>(d);
    }
  }
  return WrongType(key, source, "an integer", *value);
}

absl::StatusOr<double> JsonDouble(const json& object, const char* key,
                                  absl::string_view source,
                                  std::optional<double> fallback) {
  LS_ASSIGN_OR_RETURN(const json* value, Member(object, key, source));
  if (value == nullptr) {
    if (fallback) return *fallback;
    return Missing(key, source);
  }
  if (!value->is_number()) return WrongType(key, source, "a number", *value);
  return value->get<double>();
}

absl::StatusOr<bool> JsonBool(const json& object, const char* key,
                              absl::string_view source,
                              std::optional<bool> fallback) {
  LS_ASSIGN_OR_RETURN(const json* value, Member(object, key, source));
  if (value == nullptr) {
    if (fallback) return *fallback;
    return Missing(key, source);
  }
  if (!value->is_boolean()) return WrongType(key, source, "a boolean", *value);
  return value->get<bool>();
}

absl::StatusOr<std::string> JsonString(const json& object, const char* key,
                                       absl::string_view source,
                                       std::optional<std::string> fallback) {
  LS_ASSIGN_OR_RETURN(const json* value, Member(object, key, source));
  if (value == nullptr) {
    if (fallback) return *fallback;
    return Missing(key, source);
  }
  if (!value->is_string()) return WrongType(key, source, "a string", *value);
  return value->get<std::string>();
}

}  // namespace litestage
