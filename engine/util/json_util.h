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
#include "engine/util/mapped_file.h"
#include "nlohmann/json.hpp"

namespace litestage {

// Deepest nesting of arrays/objects accepted in any JSON input. nlohmann's
// parser is iterative, but dump() (and anything else walking the DOM)
// recurses once per level, so a document nested 100k deep overflows the
// stack. The deepest real inputs (tokenizer.json normalizer sequences) nest
// under 10 levels; 64 leaves ample room.
inline constexpr int kMaxJsonDepth = 64;
// Largest JSON text parsed: above every file-kind limit in mapped_file.h and
// the safetensors header limit (100 MB), so those name the real bound.
inline constexpr size_t kMaxJsonTextBytes = size_t{128} << 20;

// InvalidArgument "<source>: JSON nesting deeper than 64 levels at byte N"
// when `text` nests arrays/objects deeper than `max_depth`, or is larger than
// kMaxJsonTextBytes. A linear scan that skips strings (and escapes inside
// them), run before nlohmann builds anything.
absl::Status CheckJsonLimits(absl::string_view text, absl::string_view source,
                             int max_depth = kMaxJsonDepth);

// Parses `text` after CheckJsonLimits; `source` (usually the file path)
// prefixes error messages.
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text,
                                         absl::string_view source);

// Reads file `path` (at most `max_bytes`, see ReadFileToString) and parses it.
absl::StatusOr<nlohmann::json> ReadJsonFile(
    const std::string& path, uint64_t max_bytes = kMaxSmallFileBytes);

// `value` rendered for an error message: compact JSON cut to `max_chars`
// with "..." appended when longer. Never renders more than it shows and
// never recurses deeper than kMaxJsonDepth, so untrusted input of any size
// or depth cannot blow up the message (or the stack).
std::string JsonForMessage(const nlohmann::json& value, size_t max_chars = 80);

// `text` cut to `max_chars` with "..." appended when longer: for echoing
// untrusted keys and strings in messages.
std::string TruncateForMessage(absl::string_view text, size_t max_chars = 80);

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
