// Typed, non-throwing access to JSON documents read from untrusted files.
// nlohmann::json throws on type mismatches; these helpers check first and
// return a Status naming the file and the key instead.
#ifndef LITESTAGE_ENGINE_UTIL_JSON_UTIL_H_
#define LITESTAGE_ENGINE_UTIL_JSON_UTIL_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace litestage {

// Parses `text`; `source` (usually the file path) prefixes error messages.
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text,
                                         absl::string_view source);

// Reads file `path` and parses it.
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);

// Each getter returns `fallback` when the key is absent or null (if given),
// NotFound when absent without a fallback, InvalidArgument on a wrong type or
// an out-of-range number. `source` names the file for the message.
absl::StatusOr<int64_t> JsonInt(const nlohmann::json& object, const char* key,
                                absl::string_view source,
                                std::optional<int64_t> fallback = std::nullopt);
absl::StatusOr<double> JsonDouble(
    const nlohmann::json& object, const char* key, absl::string_view source,
    std::optional<double> fallback = std::nullopt);
absl::StatusOr<bool> JsonBool(const nlohmann::json& object, const char* key,
                              absl::string_view source,
                              std::optional<bool> fallback = std::nullopt);
absl::StatusOr<std::string> JsonString(
    const nlohmann::json& object, const char* key, absl::string_view source,
    std::optional<std::string> fallback = std::nullopt);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_UTIL_JSON_UTIL_H_
