// LoadTokenizer (model directory -> tokenizer with BOS/EOS), the byte
// tokenizer for synthetic models and the incremental detokenizer.
#include "engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/model/gguf.h"
#include "engine/tokenizer/added_tokens.h"
#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/gguf_tokenizer.h"
#include "engine/tokenizer/sentencepiece_tokenizer.h"
#include "engine/tokenizer/unicode.h"
#include "engine/util/check.h"
#include "engine/util/json_util.h"
#include "engine/util/mapped_file.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

using nlohmann::json;

// Whether `path` names anything (following symlinks): a FIFO or directory
// in place of a tokenizer file is then read and rejected with the reason
// instead of being silently ignored.
bool FileExists(const std::string& path) {
  std::error_code error;
  return std::filesystem::exists(path, error);
}

// Reads `path` as JSON when it exists; an empty object when it does not.
absl::StatusOr<json> ReadOptionalJson(const std::string& path) {
  if (!FileExists(path)) return json::object();
  LS_ASSIGN_OR_RETURN(json value, ReadJsonFile(path, kMaxMetadataFileBytes));
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": top level is not an object"));
  }
  return value;
}

// A token named in a config: a string or {"content": string}.
absl::StatusOr<std::optional<std::string>> TokenName(
    const json& config, const char* key, const std::string& source) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::optional<std::string>();
  if (it->is_string())
    return std::optional<std::string>(it->get<std::string>());
  if (it->is_object()) {
    LS_ASSIGN_OR_RETURN(
        std::string content,
        JsonString(*it, "content", absl::StrCat(source, " ", key)));
    return std::optional<std::string>(content);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      source, ": \"", key, "\" is neither a string nor {\"content\": ...}"));
}

// eos_token_id / bos_token_id: an int, a list of ints or absent.
absl::StatusOr<std::vector<int32_t>> IdList(const json& config, const char* key,
                                            const std::string& source) {
  std::vector<int32_t> ids;
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return ids;
  auto add = [&](const json& value) -> absl::Status {
    if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
        value.get<int64_t>() > INT32_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": \"", key, "\" holds a non-id value"));
    }
    ids.push_back(value.get<int32_t>());
    return absl::OkStatus();
  };
  if (it->is_array()) {
    for (const json& value : *it) LS_RETURN_IF_ERROR(add(value));
  } else {
    LS_RETURN_IF_ERROR(add(*it));
  }
  return ids;
}

// The token id of `name`, failing when the tokenizer does not know it.
absl::StatusOr<int32_t> NamedId(const Tokenizer& tokenizer,
                                const std::string& name,
                                const std::string& source, const char* key) {
  const int32_t id = tokenizer.TokenToId(name);
  if (id < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": ", key, " \"", name, "\" is not a token of the tokenizer"));
  }
  return id;
}

absl::Status Configure(const std::string& model_dir,
                       TemplatedTokenizer* tokenizer) {
  const std::string config_path = model_dir + "/tokenizer_config.json";
  const std::string map_path = model_dir + "/special_tokens_map.json";
  const std::string generation_path = model_dir + "/generation_config.json";
  const std::string model_config_path = model_dir + "/config.json";
  LS_ASSIGN_OR_RETURN(const json config, ReadOptionalJson(config_path));
  LS_ASSIGN_OR_RETURN(const json special_map, ReadOptionalJson(map_path));
  LS_ASSIGN_OR_RETURN(const json generation, ReadOptionalJson(generation_path));
  LS_ASSIGN_OR_RETURN(const json model_config,
                      ReadOptionalJson(model_config_path));

  // BOS.
  int32_t bos = -1;
  LS_ASSIGN_OR_RETURN(std::optional<std::string> bos_name,
                      TokenName(config, "bos_token", config_path));
  std::string bos_source = config_path;
  if (!bos_name.has_value()) {
    LS_ASSIGN_OR_RETURN(bos_name,
                        TokenName(special_map, "bos_token", map_path));
    bos_source = map_path;
  }
  if (bos_name.has_value()) {
    LS_ASSIGN_OR_RETURN(
        bos, NamedId(*tokenizer, *bos_name, bos_source, "bos_token"));
  } else {
    LS_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                        IdList(generation, "bos_token_id", generation_path));
    if (ids.empty()) {
      LS_ASSIGN_OR_RETURN(
          ids, IdList(model_config, "bos_token_id", model_config_path));
    }
    if (!ids.empty()) bos = ids[0];
  }
  if (bos < 0 && !tokenizer->prefix_ids().empty())
    bos = tokenizer->prefix_ids()[0];
  if (bos >= tokenizer->vocab_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        model_dir, ": bos id ", bos, " is outside the vocabulary"));
  }
  tokenizer->set_bos_id(bos);

  // EOS: what generation stops on, plus the tokenizer's own eos_token.
  LS_ASSIGN_OR_RETURN(std::vector<int32_t> eos,
                      IdList(generation, "eos_token_id", generation_path));
  if (eos.empty()) {
    LS_ASSIGN_OR_RETURN(
        eos, IdList(model_config, "eos_token_id", model_config_path));
  }
  LS_ASSIGN_OR_RETURN(std::optional<std::string> eos_name,
                      TokenName(config, "eos_token", config_path));
  std::string eos_source = config_path;
  if (!eos_name.has_value()) {
    LS_ASSIGN_OR_RETURN(eos_name,
                        TokenName(special_map, "eos_token", map_path));
    eos_source = map_path;
  }
  int32_t eos_token = -1;
  if (eos_name.has_value()) {
    LS_ASSIGN_OR_RETURN(
        eos_token, NamedId(*tokenizer, *eos_name, eos_source, "eos_token"));
    if (std::find(eos.begin(), eos.end(), eos_token) == eos.end()) {
      eos.push_back(eos_token);
    }
  }
  for (int32_t id : eos) {
    if (id >= tokenizer->vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          model_dir, ": eos id ", id, " is outside the vocabulary"));
    }
  }
  tokenizer->set_eos_ids(eos);

  // add_bos_token / add_eos_token override the template when given.
  if (config.contains("add_bos_token") && !config["add_bos_token"].is_null()) {
    LS_ASSIGN_OR_RETURN(bool add_bos,
                        JsonBool(config, "add_bos_token", config_path));
    std::vector<int32_t> prefix = tokenizer->prefix_ids();
    const bool has_bos = !prefix.empty() && prefix[0] == bos;
    if (add_bos && !has_bos && bos >= 0) prefix.insert(prefix.begin(), bos);
    if (!add_bos && has_bos) prefix.erase(prefix.begin());
    tokenizer->set_prefix_ids(std::move(prefix));
  }
  if (config.contains("add_eos_token") && !config["add_eos_token"].is_null()) {
    LS_ASSIGN_OR_RETURN(bool add_eos,
                        JsonBool(config, "add_eos_token", config_path));
    std::vector<int32_t> suffix = tokenizer->suffix_ids();
    const bool has_eos = !suffix.empty() && suffix.back() == eos_token;
    if (add_eos && !has_eos && eos_token >= 0) suffix.push_back(eos_token);
    if (!add_eos && has_eos) suffix.pop_back();
    tokenizer->set_suffix_ids(std::move(suffix));
  }
  return absl::OkStatus();
}

constexpr int32_t kByteBos = 256;
constexpr int32_t kByteEos = 257;

class ByteTokenizer : public Tokenizer {
 public:
  explicit ByteTokenizer(int32_t vocab_size) : vocab_size_(vocab_size) {
    std::vector<AddedToken> specials;
    if (vocab_size_ > kByteEos) {
      set_bos_id(kByteBos);
      set_eos_ids({kByteEos});
      specials.push_back({"<s>", kByteBos, true, false, false});
      specials.push_back({"</s>", kByteEos, true, false, false});
    }
    matcher_ = AddedTokenMatcher(specials);
  }

  using Tokenizer::Encode;
  absl::StatusOr<std::vector<int32_t>> Encode(
      absl::string_view text, bool add_special_tokens,
      absl::Span<const TextRange> plain_text) const override {
    std::vector<int32_t> ids;
    if (add_special_tokens && bos_id() >= 0) ids.push_back(bos_id());
    for (const TextSegment& segment : matcher_.Split(text, plain_text)) {
      if (segment.added_id >= 0) {
        ids.push_back(segment.added_id);
        continue;
      }
      for (char c : segment.text) {
        const int32_t id = static_cast<uint8_t>(c);
        if (id >= vocab_size_) {
          return absl::InvalidArgumentError(
              absl::StrCat("byte tokenizer: byte ", id,
                           " needs a vocabulary of 256, have ", vocab_size_));
        }
        ids.push_back(id);
      }
    }
    return ids;
  }

  std::string Decode(absl::Span<const int32_t> ids,
                     bool skip_special_tokens) const override {
    std::string bytes;
    for (int32_t id : ids) bytes += TokenBytes(id, skip_special_tokens);
    return unicode::RepairUtf8(bytes);
  }

  std::string TokenBytes(int32_t id, bool skip_special) const override {
    if (id >= 0 && id < 256 && id < vocab_size_)
      return std::string(1, static_cast<char>(id));
    if (skip_special || !IsSpecial(id)) return std::string();
    return id == kByteBos ? "<s>" : "</s>";
  }

  bool StripsLeadingSpace() const override { return false; }
  int32_t vocab_size() const override { return vocab_size_; }
  bool IsSpecial(int32_t id) const override {
    return vocab_size_ > kByteEos && (id == kByteBos || id == kByteEos);
  }
  int32_t TokenToId(absl::string_view token) const override {
    if (vocab_size_ > kByteEos && token == "<s>") return kByteBos;
    if (vocab_size_ > kByteEos && token == "</s>") return kByteEos;
    if (token.size() == 1 && static_cast<uint8_t>(token[0]) < vocab_size_) {
      return static_cast<uint8_t>(token[0]);
    }
    return -1;
  }

 private:
  int32_t vocab_size_;
  AddedTokenMatcher matcher_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(
    const std::string& model_dir) {
  if (IsGgufPath(model_dir)) {
    LS_ASSIGN_OR_RETURN(const GgufFile file, GgufFile::Open(model_dir));
    return LoadGgufTokenizer(file);
  }
  std::error_code error;
  if (!std::filesystem::is_directory(model_dir, error)) {
    return absl::NotFoundError(
        absl::StrCat(model_dir, ": tokenizer directory does not exist"));
  }
  const std::string json_path = model_dir + "/tokenizer.json";
  const std::string sp_path = model_dir + "/tokenizer.model";
  std::unique_ptr<TemplatedTokenizer> tokenizer;
  if (FileExists(json_path)) {
    LS_ASSIGN_OR_RETURN(std::string text,
                        ReadFileToString(json_path, kMaxTokenizerFileBytes));
    LS_ASSIGN_OR_RETURN(tokenizer, ParseTokenizerJson(text, json_path));
  } else if (FileExists(sp_path)) {
    LS_ASSIGN_OR_RETURN(std::string contents,
                        ReadFileToString(sp_path, kMaxTokenizerFileBytes));
    LS_ASSIGN_OR_RETURN(tokenizer, LoadSentencePieceModel(contents, sp_path));
  } else {
    return absl::NotFoundError(absl::StrCat(
        model_dir, ": has neither tokenizer.json nor tokenizer.model"));
  }
  LS_RETURN_IF_ERROR(Configure(model_dir, tokenizer.get()));
  return std::unique_ptr<Tokenizer>(std::move(tokenizer));
}

std::unique_ptr<Tokenizer> MakeByteTokenizer(int32_t vocab_size) {
  LS_CHECK(vocab_size > 0) << "byte tokenizer needs a positive vocab size";
  return std::make_unique<ByteTokenizer>(vocab_size);
}

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer* tokenizer,
                                               bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string IncrementalDetokenizer::Push(int32_t id) {
  std::string bytes = tokenizer_->TokenBytes(id, skip_special_tokens_);
  if (bytes.empty()) return std::string();
  if (first_) {
    // Decode() drops one leading space of the whole text, i.e. of the first
    // token that produces any bytes.
    first_ = false;
    if (tokenizer_->StripsLeadingSpace() && bytes[0] == ' ') bytes.erase(0, 1);
  }
  pending_ += bytes;
  const size_t complete = unicode::CompleteUtf8PrefixLength(pending_);
  std::string out =
      unicode::RepairUtf8(absl::string_view(pending_).substr(0, complete));
  pending_.erase(0, complete);
  return out;
}

std::string IncrementalDetokenizer::Flush() {
  std::string out = unicode::RepairUtf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace litestage
