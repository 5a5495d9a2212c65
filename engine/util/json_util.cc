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

// Appends a bounded rendering of `value` to `out`; stops once `out` holds
// more than `budget` characters.
void AppendBounded(const json& value, size_t budget, int depth,
                   std::string& out) {
  if (out.size() > budget) return;
  if (depth > kMaxJsonDepth) {
    out += "...";
    return;
  }
  if (value.is_array()) {
    out += '[';
    bool first = true;
    for (const json& element : value) {
      if (out.size() > budget) return;
      if (!first) out += ',';
      first = false;
      AppendBounded(element, budget, depth + 1, out);
    }
    out += ']';
  } else if (value.is_object()) {
    out += '{';
    bool first = true;
    for (auto it = value.begin(); it != value.end(); ++it) {
      if (out.size() > budget) return;
      if (!first) out += ',';
      first = false;
      // Keys and strings are cut before dumping: a 100 MB string must not
      // be copied to show 80 characters of it.
      AppendBounded(json(it.key().substr(0, budget)), budget, depth + 1, out);
      out += ':';
      AppendBounded(*it, budget, depth + 1, out);
    }
    out += '}';
  } else if (value.is_string()) {
    const std::string& text = value.get_ref<const std::string&>();
    out += json(text.substr(0, budget))
               .dump(-1, ' ', false, json::error_handler_t::replace);
  } else {
    out += value.dump();
  }
}

}  // namespace

absl::Status CheckJsonLimits(absl::string_view text, absl::string_view source,
                             int max_depth) {
  if (text.size() > kMaxJsonTextBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": JSON text is ", text.size(),
                     " bytes, over the limit of ", kMaxJsonTextBytes));
  }
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": JSON nesting deeper than ", max_depth,
                         " levels at byte ", i));
      }
    } else if (c == ']' || c == '}') {
      // Unbalanced closers are the parser's to report.
      if (depth > 0) --depth;
    }
  }
  return absl::OkStatus();
}

std::string JsonForMessage(const json& value, size_t max_chars) {
  std::string out;
  AppendBounded(value, max_chars, 0, out);
  if (out.size() > max_chars) {
    out.resize(max_chars);
    out += "...";
  }
  return out;
}

std::string TruncateForMessage(absl::string_view text, size_t max_chars) {
  if (text.size() <= max_chars) return std::string(text);
  return absl::StrCat(text.substr(0, max_chars), "...");
}

absl::StatusOr<json> ParseJson(absl::string_view text,
                               absl::string_view source) {
  LS_RETURN_IF_ERROR(CheckJsonLimits(text, source));
  json parsed = json::parse(text.begin(), text.end(), /*cb=*/nullptr,
                            /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  }
  return parsed;
}

absl::StatusOr<json> ReadJsonFile(const std::string& path, uint64_t max_bytes) {
  LS_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, max_bytes));
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
