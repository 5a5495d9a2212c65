#include "engine/tokenizer/gguf_tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/pretokenize.h"
#include "engine/tokenizer/unicode.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace litestage {
namespace {

using nlohmann::json;

constexpr int32_t kControl = static_cast<int32_t>(GgufTokenType::kControl);
constexpr int32_t kUserDefined =
    static_cast<int32_t>(GgufTokenType::kUserDefined);

// How a gpt2-type vocabulary splits text before BPE, by tokenizer.ggml.pre.
// Mirrors llama.cpp's pre-tokenizer table for the names we have a splitter
// for; transformers (integrations/gguf) uses the same regexes.
absl::StatusOr<json> GptPreTokenizer(const std::string& pre,
                                     const std::string& source) {
  auto byte_level = [](bool use_regex) {
    return json{{"type", "ByteLevel"},
                {"add_prefix_space", false},
                {"trim_offsets", false},
                {"use_regex", use_regex}};
  };
  auto split_then_bytes = [&](SplitPattern pattern) {
    return json{
        {"type", "Sequence"},
        {"pretokenizers",
         json::array({json{{"type", "Split"},
                           {"pattern",
                            {{"Regex", std::string(SplitRegexText(pattern))}}},
                           {"behavior", "Isolated"},
                           {"invert", false}},
                      byte_level(false)})}};
  };
  if (pre.empty() || pre == "default" || pre == "gpt-2" || pre == "gpt2") {
    return byte_level(true);
  }
  if (pre == "smollm") {
    // llama.cpp: "\p{N}" then the GPT-2 regex; SmolLM's tokenizer.json:
    // Sequence[Digits(individual_digits), ByteLevel(use_regex)].
    return json{
        {"type", "Sequence"},
        {"pretokenizers",
         json::array({json{{"type", "Digits"}, {"individual_digits", true}},
                      byte_level(true)})}};
  }
  if (pre == "qwen2" || pre == "deepseek-r1-qwen") {
    return split_then_bytes(SplitPattern::kQwen2);
  }
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3" ||
      pre == "smaug-bpe" || pre == "falcon3") {
    return split_then_bytes(SplitPattern::kLlama3);
  }
  return absl::UnimplementedError(absl::StrCat(
      source, ": tokenizer.ggml.pre \"", pre,
      "\" names a pre-tokenizer litestage does not implement (supported: "
      "default, gpt-2, smollm, qwen2, llama-bpe)"));
}

// GPT-2's byte alphabet (bytes_to_unicode), as code points.
const absl::flat_hash_set<char32_t>& ByteAlphabet() {
  static const auto* alphabet = [] {
    auto* set = new absl::flat_hash_set<char32_t>();
    for (char32_t c : ByteToUnicode()) set->insert(c);
    return set;
  }();
  return *alphabet;
}

bool SpelledInByteAlphabet(const std::string& token) {
  for (const unicode::CodePoint& c : unicode::Decode(token)) {
    if (!ByteAlphabet().contains(c.value)) return false;
  }
  return true;
}

// transformers' byte_level_tokenizer: a token written with characters outside
// the byte alphabet (some converters store raw text) is respelled from its
// UTF-8 bytes.
std::string ByteLevelSpelling(const std::string& token) {
  if (SpelledInByteAlphabet(token)) return token;
  std::string out;
  for (char c : token) {
    unicode::AppendUtf8(ByteToUnicode()[static_cast<uint8_t>(c)], &out);
  }
  return out;
}

json AddedTokenJson(int32_t id, const std::string& content, bool special) {
  return json{{"id", id},          {"content", content}, {"single_word", false},
              {"lstrip", false},   {"rstrip", false},    {"normalized", false},
              {"special", special}};
}

// {token: id}; a token listed twice keeps its last id (a Python dict built
// from enumerate(), as transformers does).
json VocabJson(const std::vector<std::string>& tokens) {
  json vocab = json::object();
  for (size_t id = 0; id < tokens.size(); ++id) vocab[tokens[id]] = id;
  return vocab;
}

absl::StatusOr<json> GptDocument(const GgufTokenizerData& data,
                                 const std::string& source) {
  std::vector<std::string> spelled;
  spelled.reserve(data.tokens.size());
  for (const std::string& token : data.tokens) {
    spelled.push_back(ByteLevelSpelling(token));
  }
  json merges = json::array();
  for (size_t i = 0; i < data.merges.size(); ++i) {
    const std::string& merge = data.merges[i];
    const size_t space = merge.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == merge.size() ||
        merge.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tokenizer.ggml.merges[", i, "] \"", merge,
                       "\" is not two tokens separated by one space"));
    }
    merges.push_back(
        json::array({merge.substr(0, space), merge.substr(space + 1)}));
  }
  // CONTROL tokens become special added tokens unless spelled outside the
  // byte alphabet (llama.cpp mislabels), USER_DEFINED ones plain added
  // tokens; both are then matched whole in text.
  json added = json::array();
  for (size_t id = 0; id < data.token_types.size(); ++id) {
    const std::string& token = data.tokens[id];
    if (data.token_types[id] == kControl && SpelledInByteAlphabet(token)) {
      added.push_back(AddedTokenJson(static_cast<int32_t>(id), token, true));
    }
  }
  for (size_t id = 0; id < data.token_types.size(); ++id) {
    if (data.token_types[id] == kUserDefined) {
      added.push_back(
          AddedTokenJson(static_cast<int32_t>(id), spelled[id], false));
    }
  }
  LS_ASSIGN_OR_RETURN(json pre_tokenizer, GptPreTokenizer(data.pre, source));
  return json{{"version", "1.0"},
              {"added_tokens", std::move(added)},
              {"normalizer", nullptr},
              {"pre_tokenizer", std::move(pre_tokenizer)},
              {"post_processor", nullptr},
              {"decoder",
               {{"type", "ByteLevel"},
                {"add_prefix_space", true},
                {"trim_offsets", true},
                {"use_regex", true}}},
              {"model",
               {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", ""},
                {"end_of_word_suffix", ""},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab", VocabJson(spelled)},
                {"merges", std::move(merges)}}}};
}

// transformers' generate_merges(vocab, scores): every split of a token into
// two vocabulary tokens is a merge ranked by the whole token's score (best
// first); ties keep vocabulary order, then shorter left/right pieces first
// in the stable descending sort.
// `merged_types`, when not empty, lists the token types a merge may produce
// (others are never built from smaller pieces).
std::vector<std::pair<std::string, std::string>> MergesFromScores(
    const std::vector<std::string>& tokens, const std::vector<float>& scores,
    const std::vector<int32_t>& token_types,
    const std::vector<int32_t>& merged_types) {
  // Dict semantics: first-insertion order, last value.
  absl::flat_hash_map<std::string, int32_t> vocab;
  absl::flat_hash_map<std::string, float> score_of;
  std::vector<std::string> order;
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (!vocab.contains(tokens[id])) order.push_back(tokens[id]);
    vocab[tokens[id]] = static_cast<int32_t>(id);
    score_of[tokens[id]] = scores[id];
  }
  struct Merge {
    std::string left, right;
    float score;
  };
  std::vector<Merge> merges;
  auto mergeable = [&](const std::string& token) {
    if (merged_types.empty()) return true;
    const size_t id = static_cast<size_t>(vocab[token]);
    const int32_t type = id < token_types.size()
                             ? token_types[id]
                             : static_cast<int32_t>(GgufTokenType::kNormal);
    return std::find(merged_types.begin(), merged_types.end(), type) !=
           merged_types.end();
  };
  for (const std::string& token : order) {
    if (!mergeable(token)) continue;
    // Python slices by code point.
    const std::vector<unicode::CodePoint> cps = unicode::Decode(token);
    std::vector<Merge> local;
    for (size_t i = 1; i < cps.size(); ++i) {
      const size_t offset = cps[i].offset;
      std::string left = token.substr(0, offset);
      std::string right = token.substr(offset);
      if (vocab.contains(left) && vocab.contains(right)) {
        local.push_back({std::move(left), std::move(right), score_of[token]});
      }
    }
    std::stable_sort(local.begin(), local.end(),
                     [&](const Merge& a, const Merge& b) {
                       return std::make_pair(vocab[a.left], vocab[a.right]) <
                              std::make_pair(vocab[b.left], vocab[b.right]);
                     });
    for (Merge& merge : local) merges.push_back(std::move(merge));
  }
  auto key = [](const Merge& m) {
    return std::make_tuple(m.score, unicode::Decode(m.left).size(),
                           unicode::Decode(m.right).size());
  };
  std::stable_sort(
      merges.begin(), merges.end(),
      [&](const Merge& a, const Merge& b) { return key(a) > key(b); });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (Merge& merge : merges) {
    out.emplace_back(std::move(merge.left), std::move(merge.right));
  }
  return out;
}

// transformers' LlamaTokenizer over the file's pieces: byte-fallback BPE
// with merges from the scores, Metaspace (prepend "first", no split) unless
// the caller normalizes text itself.
absl::StatusOr<json> LlamaDocument(const GgufTokenizerData& data,
                                   const LlamaVocabOptions& options,
                                   const std::string& source) {
  if (data.scores.size() != data.tokens.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": tokenizer.ggml.scores has ", data.scores.size(),
                     " entries for ", data.tokens.size(), " tokens"));
  }
  json merges = json::array();
  std::vector<int32_t> merged_types;
  if (options.sentencepiece_merges) {
    merged_types = {static_cast<int32_t>(GgufTokenType::kNormal), kUserDefined};
  }
  for (auto& [left, right] : MergesFromScores(data.tokens, data.scores,
                                              data.token_types, merged_types)) {
    merges.push_back(json::array({left, right}));
  }
  json added = json::array();
  for (size_t id = 0; id < data.token_types.size(); ++id) {
    const int32_t type = data.token_types[id];
    if (type == kControl || type == kUserDefined) {
      added.push_back(AddedTokenJson(static_cast<int32_t>(id), data.tokens[id],
                                     type == kControl));
    }
  }
  json unk = nullptr;
  if (data.unk_id.has_value()) unk = data.tokens[*data.unk_id];
  const std::string metaspace = "\xE2\x96\x81";  // "▁"
  json pre_tokenizer = nullptr;
  if (!options.pre_normalized) {
    pre_tokenizer = {{"type", "Metaspace"},
                     {"replacement", metaspace},
                     {"prepend_scheme", "first"},
                     {"split", false}};
  }
  json decoders =
      json::array({json{{"type", "Replace"},
                        {"pattern", {{"String", metaspace}}},
                        {"content", " "}},
                   json{{"type", "ByteFallback"}}, json{{"type", "Fuse"}}});
  if (options.strip_leading_space) {
    decoders.push_back(
        json{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  }
  return json{
      {"version", "1.0"},
      {"added_tokens", std::move(added)},
      {"normalizer", nullptr},
      {"pre_tokenizer", std::move(pre_tokenizer)},
      {"post_processor", nullptr},
      {"decoder", {{"type", "Sequence"}, {"decoders", std::move(decoders)}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", unk},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", true},
        {"byte_fallback", options.byte_fallback},
        {"ignore_merges", false},
        {"vocab", VocabJson(data.tokens)},
        {"merges", std::move(merges)}}}};
}

absl::Status CheckId(const std::optional<int32_t>& id, const char* key,
                     size_t vocab_size, const std::string& source) {
  if (id.has_value() && (*id < 0 || static_cast<size_t>(*id) >= vocab_size)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", key, " ", *id, " is outside the ",
                     vocab_size, "-token vocabulary"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> BuildGgufTokenizer(
    const GgufTokenizerData& data, const std::string& source) {
  if (data.tokens.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": tokenizer.ggml.tokens is empty"));
  }
  if (!data.token_types.empty() &&
      data.token_types.size() != data.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": tokenizer.ggml.token_type has ", data.token_types.size(),
        " entries for ", data.tokens.size(), " tokens"));
  }
  LS_RETURN_IF_ERROR(CheckId(data.bos_id, "tokenizer.ggml.bos_token_id",
                             data.tokens.size(), source));
  LS_RETURN_IF_ERROR(CheckId(data.eos_id, "tokenizer.ggml.eos_token_id",
                             data.tokens.size(), source));
  LS_RETURN_IF_ERROR(CheckId(data.unk_id, "tokenizer.ggml.unknown_token_id",
                             data.tokens.size(), source));
  json document;
  bool default_add_bos = false;
  if (data.model == "gpt2") {
    LS_ASSIGN_OR_RETURN(document, GptDocument(data, source));
  } else if (data.model == "llama") {
    LS_ASSIGN_OR_RETURN(document,
                        LlamaDocument(data, LlamaVocabOptions(), source));
    default_add_bos = true;  // llama.cpp's (and transformers') default.
  } else {
    return absl::UnimplementedError(
        absl::StrCat(source, ": tokenizer.ggml.model \"", data.model,
                     "\" is not supported (only gpt2 and llama)"));
  }
  LS_ASSIGN_OR_RETURN(std::unique_ptr<TemplatedTokenizer> tokenizer,
                      ParseTokenizerJson(document.dump(), source));
  if (tokenizer->vocab_size() != static_cast<int32_t>(data.tokens.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": tokenizer.ggml.tokens lists ", data.tokens.size(),
        " tokens but only ", tokenizer->vocab_size(),
        " distinct ids remain (duplicate token text)"));
  }
  const int32_t bos = data.bos_id.value_or(-1);
  tokenizer->set_bos_id(bos);
  std::vector<int32_t> eos;
  if (data.eos_id.has_value()) eos.push_back(*data.eos_id);
  tokenizer->set_eos_ids(eos);
  std::vector<int32_t> prefix, suffix;
  if (data.add_bos.value_or(default_add_bos) && bos >= 0) prefix.push_back(bos);
  if (data.add_eos.value_or(false) && !eos.empty()) suffix.push_back(eos[0]);
  tokenizer->set_prefix_ids(std::move(prefix));
  tokenizer->set_suffix_ids(std::move(suffix));
  return std::unique_ptr<Tokenizer>(std::move(tokenizer));
}

absl::StatusOr<std::unique_ptr<TemplatedTokenizer>> BuildLlamaVocabTokenizer(
    const GgufTokenizerData& data, const LlamaVocabOptions& options,
    const std::string& source) {
  LS_RETURN_IF_ERROR(
      CheckId(data.unk_id, "unknown token id", data.tokens.size(), source));
  LS_ASSIGN_OR_RETURN(const json document,
                      LlamaDocument(data, options, source));
  return ParseTokenizerJson(document.dump(), source);
}

bool IsGgufPath(const std::string& path) {
  // Anything that exists and is not a directory is taken as a GGUF file, so
  // a FIFO or device named *.gguf is rejected by MappedFile::Open with the
  // reason rather than mistaken for a model directory.
  std::error_code error;
  return absl::EndsWithIgnoreCase(path, ".gguf") &&
         std::filesystem::exists(path, error) &&
         !std::filesystem::is_directory(path, error);
}

}  // namespace litestage
