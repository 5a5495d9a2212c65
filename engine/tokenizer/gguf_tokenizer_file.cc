// The GgufFile side of the GGUF tokenizer: reading tokenizer.ggml.* and
// tokenizer.chat_template (kept apart from gguf_tokenizer.cc so the metadata
// -> tokenizer logic has no dependency on the file parser).
#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/model/gguf.h"
#include "engine/tokenizer/gguf_tokenizer.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

// An optional id key: nullopt when absent, an error when not a valid int32.
absl::StatusOr<std::optional<int32_t>> OptionalId(const GgufFile& file,
                                                  absl::string_view key) {
  if (file.Find(key) == nullptr) return std::optional<int32_t>();
  LS_ASSIGN_OR_RETURN(int64_t id, file.GetInt(key));
  if (id < 0 || id > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": ", key, " = ", id, " is not a token id"));
  }
  return std::optional<int32_t>(static_cast<int32_t>(id));
}

absl::StatusOr<std::optional<bool>> OptionalBool(const GgufFile& file,
                                                 absl::string_view key) {
  if (file.Find(key) == nullptr) return std::optional<bool>();
  LS_ASSIGN_OR_RETURN(bool value, file.GetBool(key));
  return std::optional<bool>(value);
}

}  // namespace

absl::StatusOr<GgufTokenizerData> ReadGgufTokenizerData(const GgufFile& file) {
  GgufTokenizerData data;
  if (file.Find("tokenizer.ggml.model") == nullptr) {
    return absl::NotFoundError(absl::StrCat(
        file.path(), ": no tokenizer.ggml.model (the file has no tokenizer)"));
  }
  LS_ASSIGN_OR_RETURN(data.model, file.GetString("tokenizer.ggml.model"));
  if (file.Find("tokenizer.ggml.pre") != nullptr) {
    LS_ASSIGN_OR_RETURN(data.pre, file.GetString("tokenizer.ggml.pre"));
  }
  LS_ASSIGN_OR_RETURN(data.tokens,
                      file.GetStringArray("tokenizer.ggml.tokens"));
  if (file.Find("tokenizer.ggml.merges") != nullptr) {
    LS_ASSIGN_OR_RETURN(data.merges,
                        file.GetStringArray("tokenizer.ggml.merges"));
  }
  if (file.Find("tokenizer.ggml.token_type") != nullptr) {
    LS_ASSIGN_OR_RETURN(std::vector<int64_t> types,
                        file.GetIntArray("tokenizer.ggml.token_type"));
    data.token_types.reserve(types.size());
    for (int64_t type : types) {
      data.token_types.push_back(
          static_cast<int32_t>(std::clamp<int64_t>(type, -1, 1000)));
    }
  }
  if (file.Find("tokenizer.ggml.scores") != nullptr) {
    LS_ASSIGN_OR_RETURN(data.scores,
                        file.GetFloatArray("tokenizer.ggml.scores"));
  }
  LS_ASSIGN_OR_RETURN(data.bos_id,
                      OptionalId(file, "tokenizer.ggml.bos_token_id"));
  LS_ASSIGN_OR_RETURN(data.eos_id,
                      OptionalId(file, "tokenizer.ggml.eos_token_id"));
  LS_ASSIGN_OR_RETURN(data.unk_id,
                      OptionalId(file, "tokenizer.ggml.unknown_token_id"));
  LS_ASSIGN_OR_RETURN(data.add_bos,
                      OptionalBool(file, "tokenizer.ggml.add_bos_token"));
  LS_ASSIGN_OR_RETURN(data.add_eos,
                      OptionalBool(file, "tokenizer.ggml.add_eos_token"));
  return data;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(
    const GgufFile& file) {
  LS_ASSIGN_OR_RETURN(GgufTokenizerData data, ReadGgufTokenizerData(file));
  return BuildGgufTokenizer(data, file.path());
}

absl::StatusOr<ChatTemplate> LoadGgufChatTemplate(const GgufFile& file) {
  if (file.Find("tokenizer.chat_template") == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(file.path(), ": model has no tokenizer.chat_template"));
  }
  LS_ASSIGN_OR_RETURN(std::string text,
                      file.GetString("tokenizer.chat_template"));
  // The template writes bos_token/eos_token by name; they are the texts of
  // the bos/eos ids.
  std::vector<std::string> tokens;
  if (file.Find("tokenizer.ggml.tokens") != nullptr) {
    LS_ASSIGN_OR_RETURN(tokens, file.GetStringArray("tokenizer.ggml.tokens"));
  }
  auto token_text = [&](const std::optional<int32_t>& id) {
    return id.has_value() && static_cast<size_t>(*id) < tokens.size()
               ? tokens[*id]
               : std::string();
  };
  LS_ASSIGN_OR_RETURN(std::optional<int32_t> bos,
                      OptionalId(file, "tokenizer.ggml.bos_token_id"));
  LS_ASSIGN_OR_RETURN(std::optional<int32_t> eos,
                      OptionalId(file, "tokenizer.ggml.eos_token_id"));
  absl::StatusOr<ChatTemplate> result =
      ChatTemplate::FromTemplateText(text, token_text(bos), token_text(eos));
  if (!result.ok()) {
    return absl::Status(result.status().code(),
                        absl::StrCat(file.path(), ": tokenizer.chat_template: ",
                                     result.status().message()));
  }
  return result;
}

}  // namespace litestage
