// BPE from tokenizer.json: the normalizers, pre-tokenizers, decoders and
// merges that the supported families use, and the Encode/Decode paths. ~970
// lines: each supported tokenizer.json component is parsed and validated
// here next to the code that applies it; pre-tokenizer splitting itself is
// in pretokenize.cc.
#include "engine/tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <optional>
#include <queue>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "engine/tokenizer/added_tokens.h"
#include "engine/tokenizer/pretokenize.h"
#include "engine/tokenizer/unicode.h"
#include "engine/util/json_util.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

using nlohmann::json;

constexpr absl::string_view kMetaspace = "\xE2\x96\x81";  // U+2581 "▁".
// Ids above this are rejected: no real vocabulary comes close, and it keeps a
// hostile file from making us allocate an id table of 2^31 strings.
constexpr int64_t kMaxTokenId = 1 << 24;

// One step of the normalizer chain.
struct NormalizerStep {
  enum class Kind : uint8_t { kUnicode, kPrepend, kReplace, kLowercase };
  Kind kind;
  unicode::NormalForm form = unicode::NormalForm::kNfc;  // kUnicode.
  std::string text;         // kPrepend: the prefix; kReplace: the pattern.
  std::string replacement;  // kReplace.
};

// One step of the pre-tokenizer chain.
struct PreTokenizerStep {
  enum class Kind : uint8_t { kSplit, kByteLevel, kMetaspace, kDigits };
  Kind kind;
  SplitPattern pattern = SplitPattern::kGpt2;  // kSplit; kByteLevel use_regex.
  bool use_regex = false;                      // kByteLevel.
  bool add_prefix_space = false;               // kByteLevel.
  std::string replacement;                     // kMetaspace.
  bool prepend_always = false;                 // kMetaspace "always".
  bool prepend_first = false;                  // kMetaspace "first".
  bool split = false;                          // kMetaspace.
  bool individual_digits = false;              // kDigits.
};

// A piece of text on its way through the pre-tokenizers. `first` marks the
// piece that starts the input (Metaspace prepend_scheme "first").
struct Piece {
  std::string text;
  bool first;
};

// Where json_text's value `key` of `object` is, or nullptr when absent/null.
const json* Find(const json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::Status Unsupported(const std::string& source, absl::string_view what) {
  return absl::UnimplementedError(
      absl::StrCat(source, ": unsupported tokenizer.json feature: ", what));
}

// Reads a {"String": s} or {"Regex": r} pattern object.
absl::StatusOr<std::pair<bool, std::string>> ReadPattern(
    const json& object, const std::string& source, absl::string_view where) {
  const json* pattern = Find(object, "pattern");
  if (pattern == nullptr || !pattern->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", where, " has no \"pattern\" object"));
  }
  if (const json* s = Find(*pattern, "String");
      s != nullptr && s->is_string()) {
    return std::make_pair(false, s->get<std::string>());
  }
  if (const json* r = Find(*pattern, "Regex"); r != nullptr && r->is_string()) {
    return std::make_pair(true, r->get<std::string>());
  }
  return absl::InvalidArgumentError(absl::StrCat(
      source, ": ", where, " pattern is neither {\"String\"} nor {\"Regex\"}"));
}

absl::StatusOr<std::string> TypeOf(const json& object,
                                   const std::string& source,
                                   absl::string_view where) {
  if (!object.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", where, " is not an object"));
  }
  return JsonString(object, "type", absl::StrCat(source, " ", where));
}

absl::Status ParseNormalizer(const json& node, const std::string& source,
                             std::vector<NormalizerStep>* steps) {
  LS_ASSIGN_OR_RETURN(const std::string type,
                      TypeOf(node, source, "normalizer"));
  NormalizerStep step;
  if (type == "Sequence") {
    const json* list = Find(node, "normalizers");
    if (list == nullptr || !list->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": normalizer Sequence has no \"normalizers\" array"));
    }
    for (const json& child : *list) {
      LS_RETURN_IF_ERROR(ParseNormalizer(child, source, steps));
    }
    return absl::OkStatus();
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    step.kind = NormalizerStep::Kind::kUnicode;
    step.form = type == "NFC"    ? unicode::NormalForm::kNfc
                : type == "NFD"  ? unicode::NormalForm::kNfd
                : type == "NFKC" ? unicode::NormalForm::kNfkc
                                 : unicode::NormalForm::kNfkd;
  } else if (type == "Prepend") {
    step.kind = NormalizerStep::Kind::kPrepend;
    LS_ASSIGN_OR_RETURN(step.text,
                        JsonString(node, "prepend", source + " Prepend"));
  } else if (type == "Replace") {
    step.kind = NormalizerStep::Kind::kReplace;
    LS_ASSIGN_OR_RETURN(auto pattern,
                        ReadPattern(node, source, "normalizer Replace"));
    if (pattern.first)
      return Unsupported(source, "normalizer Replace with a Regex");
    step.text = pattern.second;
    LS_ASSIGN_OR_RETURN(step.replacement,
                        JsonString(node, "content", source + " Replace"));
  } else if (type == "Lowercase") {
    step.kind = NormalizerStep::Kind::kLowercase;
  } else {
    return Unsupported(source, absl::StrCat("normalizer type ", type));
  }
  if (step.kind == NormalizerStep::Kind::kReplace && step.text.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": normalizer Replace has an empty pattern"));
  }
  steps->push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status ParsePreTokenizer(const json& node, const std::string& source,
                               std::vector<PreTokenizerStep>* steps) {
  LS_ASSIGN_OR_RETURN(const std::string type,
                      TypeOf(node, source, "pre_tokenizer"));
  PreTokenizerStep step;
  const std::string where = absl::StrCat(source, " pre_tokenizer ", type);
  if (type == "Sequence") {
    const json* list = Find(node, "pretokenizers");
    if (list == nullptr || !list->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": pre_tokenizer Sequence has no \"pretokenizers\" array"));
    }
    for (const json& child : *list) {
      LS_RETURN_IF_ERROR(ParsePreTokenizer(child, source, steps));
    }
    return absl::OkStatus();
  }
  if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::kSplit;
    LS_ASSIGN_OR_RETURN(auto pattern,
                        ReadPattern(node, source, "pre_tokenizer Split"));
    std::optional<SplitPattern> known =
        pattern.first ? RecognizeSplitRegex(pattern.second) : std::nullopt;
    if (!known.has_value()) {
      return Unsupported(source,
                         absl::StrCat("Split pattern ", pattern.second));
    }
    step.pattern = *known;
    LS_ASSIGN_OR_RETURN(std::string behavior,
                        JsonString(node, "behavior", where, "Isolated"));
    LS_ASSIGN_OR_RETURN(bool invert, JsonBool(node, "invert", where, false));
    if (behavior != "Isolated" || invert) {
      return Unsupported(source, absl::StrCat("Split behavior ", behavior,
                                              invert ? " (inverted)" : ""));
    }
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    LS_ASSIGN_OR_RETURN(step.add_prefix_space,
                        JsonBool(node, "add_prefix_space", where, true));
    LS_ASSIGN_OR_RETURN(step.use_regex,
                        JsonBool(node, "use_regex", where, true));
    step.pattern = SplitPattern::kGpt2;
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::Kind::kMetaspace;
    LS_ASSIGN_OR_RETURN(step.replacement, JsonString(node, "replacement", where,
                                                     std::string(kMetaspace)));
    LS_ASSIGN_OR_RETURN(step.split, JsonBool(node, "split", where, true));
    // Older files write add_prefix_space instead of prepend_scheme.
    LS_ASSIGN_OR_RETURN(bool add_prefix_space,
                        JsonBool(node, "add_prefix_space", where, true));
    LS_ASSIGN_OR_RETURN(std::string scheme,
                        JsonString(node, "prepend_scheme", where,
                                   add_prefix_space ? "always" : "never"));
    if (scheme != "always" && scheme != "first" && scheme != "never") {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": unknown prepend_scheme ", scheme));
    }
    step.prepend_always = scheme == "always";
    step.prepend_first = scheme == "first";
  } else if (type == "Digits") {
    step.kind = PreTokenizerStep::Kind::kDigits;
    LS_ASSIGN_OR_RETURN(step.individual_digits,
                        JsonBool(node, "individual_digits", where, false));
  } else {
    return Unsupported(source, absl::StrCat("pre_tokenizer type ", type));
  }
  steps->push_back(std::move(step));
  return absl::OkStatus();
}

// The decoder chain, evaluated per token at load time: each token's bytes in
// the decoded stream, plus whether the fused output loses a leading space.
struct DecoderSpec {
  enum class Kind : uint8_t {
    kByteLevel,
    kReplace,
    kByteFallback,
    kStrip,
    kMetaspace
  };
  struct Step {
    Kind kind;
    std::string from;  // kReplace pattern; kMetaspace replacement.
    std::string to;    // kReplace content.
    int strip_start = 0;
  };
  std::vector<Step> per_token;
  bool strips_leading_space = false;
};

absl::Status ParseDecoder(const json& node, const std::string& source,
                          bool* fused, DecoderSpec* spec) {
  LS_ASSIGN_OR_RETURN(const std::string type, TypeOf(node, source, "decoder"));
  const std::string where = absl::StrCat(source, " decoder ", type);
  DecoderSpec::Step step;
  if (type == "Sequence") {
    const json* list = Find(node, "decoders");
    if (list == nullptr || !list->is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": decoder Sequence has no \"decoders\" array"));
    }
    for (const json& child : *list) {
      LS_RETURN_IF_ERROR(ParseDecoder(child, source, fused, spec));
    }
    return absl::OkStatus();
  }
  if (type == "Fuse") {
    *fused = true;
    return absl::OkStatus();
  }
  if (*fused) {
    // After Fuse there is one token: only a leading-space Strip is supported.
    if (type != "Strip")
      return Unsupported(source, absl::StrCat("decoder ", type, " after Fuse"));
  }
  if (type == "ByteLevel") {
    step.kind = DecoderSpec::Kind::kByteLevel;
  } else if (type == "Replace") {
    step.kind = DecoderSpec::Kind::kReplace;
    LS_ASSIGN_OR_RETURN(auto pattern,
                        ReadPattern(node, source, "decoder Replace"));
    if (pattern.first)
      return Unsupported(source, "decoder Replace with a Regex");
    if (pattern.second.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": decoder Replace has an empty pattern"));
    }
    step.from = pattern.second;
    LS_ASSIGN_OR_RETURN(step.to, JsonString(node, "content", where));
  } else if (type == "ByteFallback") {
    step.kind = DecoderSpec::Kind::kByteFallback;
  } else if (type == "Strip") {
    step.kind = DecoderSpec::Kind::kStrip;
    LS_ASSIGN_OR_RETURN(std::string content,
                        JsonString(node, "content", where, " "));
    LS_ASSIGN_OR_RETURN(int64_t start, JsonInt(node, "start", where, 0));
    LS_ASSIGN_OR_RETURN(int64_t stop, JsonInt(node, "stop", where, 0));
    if (content != " " || stop != 0 || start < 0 || start > 1) {
      return Unsupported(source, "decoder Strip other than one leading space");
    }
    if (*fused) {
      spec->strips_leading_space = spec->strips_leading_space || start == 1;
      return absl::OkStatus();
    }
    step.strip_start = static_cast<int>(start);
  } else if (type == "Metaspace") {
    step.kind = DecoderSpec::Kind::kMetaspace;
    LS_ASSIGN_OR_RETURN(step.from, JsonString(node, "replacement", where,
                                              std::string(kMetaspace)));
    LS_ASSIGN_OR_RETURN(bool add_prefix_space,
                        JsonBool(node, "add_prefix_space", where, true));
    LS_ASSIGN_OR_RETURN(std::string scheme,
                        JsonString(node, "prepend_scheme", where,
                                   add_prefix_space ? "always" : "never"));
    spec->strips_leading_space = scheme != "never";
  } else {
    return Unsupported(source, absl::StrCat("decoder type ", type));
  }
  spec->per_token.push_back(std::move(step));
  return absl::OkStatus();
}

// <0xNN> -> NN, or -1.
int ParseByteToken(absl::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>')
    return -1;
  int value = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = token[i];
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else {
      return -1;
    }
    value = value * 16 + digit;
  }
  return value;
}

std::string ApplyDecoderSteps(const std::string& token,
                              const DecoderSpec& spec) {
  static const absl::flat_hash_map<char32_t, uint8_t>* const kUnicodeToByte =
      [] {
        auto* map = new absl::flat_hash_map<char32_t, uint8_t>();
        const auto& table = ByteToUnicode();
        for (int b = 0; b < 256; ++b)
          (*map)[table[b]] = static_cast<uint8_t>(b);
        return map;
      }();
  std::string text = token;
  for (const DecoderSpec::Step& step : spec.per_token) {
    switch (step.kind) {
      case DecoderSpec::Kind::kByteLevel: {
        std::string bytes;
        bool all_mapped = true;
        for (const unicode::CodePoint& cp : unicode::Decode(text)) {
          auto it = kUnicodeToByte->find(cp.value);
          if (it == kUnicodeToByte->end()) {
            all_mapped = false;
            break;
          }
          bytes.push_back(static_cast<char>(it->second));
        }
        // HF keeps a token with an unmappable character as its UTF-8 text.
        if (all_mapped) text = std::move(bytes);
        break;
      }
      case DecoderSpec::Kind::kReplace:
        text = absl::StrReplaceAll(text, {{step.from, step.to}});
        break;
      case DecoderSpec::Kind::kByteFallback:
        if (int byte = ParseByteToken(text); byte >= 0) {
          text = std::string(1, static_cast<char>(byte));
        }
        break;
      case DecoderSpec::Kind::kStrip:
        if (step.strip_start > 0 && !text.empty() && text[0] == ' ')
          text.erase(0, 1);
        break;
      case DecoderSpec::Kind::kMetaspace:
        text = absl::StrReplaceAll(text, {{step.from, " "}});
        break;
    }
  }
  return text;
}

class BpeTokenizer : public TemplatedTokenizer {
 public:
  using Tokenizer::Encode;
  absl::StatusOr<std::vector<int32_t>> Encode(
      absl::string_view text, bool add_special_tokens,
      absl::Span<const TextRange> plain_text) const override;
  std::string Decode(absl::Span<const int32_t> ids,
                     bool skip_special_tokens) const override;
  std::string TokenBytes(int32_t id, bool skip_special) const override;
  bool StripsLeadingSpace() const override { return strips_leading_space_; }
  int32_t vocab_size() const override {
    return static_cast<int32_t>(id_to_token_.size());
  }
  bool IsSpecial(int32_t id) const override {
    return id >= 0 && id < vocab_size() && is_special_[id];
  }
  int32_t TokenToId(absl::string_view token) const override;

  absl::Status Load(const json& root, const std::string& source);

 private:
  struct MergeInfo {
    int32_t rank;
    int32_t merged_id;
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  absl::Status LoadModel(const json& model, const std::string& source);
  absl::Status LoadAddedTokens(const json& root, const std::string& source);
  absl::Status LoadPostProcessor(const json& node, const std::string& source);
  std::string NormalizeText(absl::string_view text) const;
  std::vector<Piece> PreTokenize(std::string text, bool first) const;
  // Appends the BPE ids of one pre-tokenized word.
  void EncodeWord(absl::string_view word, std::vector<int32_t>* ids) const;
  void InitialSymbols(absl::string_view word,
                      std::vector<int32_t>* symbols) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;  // Model vocabulary.
  absl::flat_hash_map<uint64_t, MergeInfo> merges_;  // (left, right) -> merge.
  std::vector<std::string> id_to_token_;  // [vocab_size] token text ("" = gap).
  std::vector<std::string> token_bytes_;  // [vocab_size] decoded bytes.
  std::vector<bool> is_special_;          // [vocab_size].
  std::vector<AddedToken> added_tokens_;
  AddedTokenMatcher matcher_;
  std::vector<NormalizerStep> normalizers_;
  std::vector<PreTokenizerStep> pre_tokenizers_;
  bool byte_level_ = false;  // Words are byte-mapped (GPT-2 bytes_to_unicode).
  std::array<int32_t, 256> byte_level_ids_{};  // Byte -> id of its char, or -1.
  std::array<int32_t, 256> fallback_ids_{};    // Byte -> id of <0xNN>, or -1.
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;
  bool strips_leading_space_ = false;
};

absl::Status BpeTokenizer::LoadModel(const json& model,
                                     const std::string& source) {
  if (!model.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": \"model\" is not an object"));
  }
  LS_ASSIGN_OR_RETURN(std::string type,
                      JsonString(model, "type", source + " model", "BPE"));
  if (type != "BPE") {
    return Unsupported(source,
                       absl::StrCat("model type ", type, " (only BPE)"));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    LS_ASSIGN_OR_RETURN(std::string value,
                        JsonString(model, key, source + " model", ""));
    if (!value.empty()) return Unsupported(source, absl::StrCat("model ", key));
  }
  LS_ASSIGN_OR_RETURN(byte_fallback_, JsonBool(model, "byte_fallback",
                                               source + " model", false));
  LS_ASSIGN_OR_RETURN(fuse_unk_,
                      JsonBool(model, "fuse_unk", source + " model", false));
  LS_ASSIGN_OR_RETURN(ignore_merges_, JsonBool(model, "ignore_merges",
                                               source + " model", false));

  const json* vocab = Find(model, "vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": model has no \"vocab\" object"));
  }
  int64_t max_id = -1;
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it->is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": vocab entry \"", it.key(), "\" has a non-integer id"));
    }
    const int64_t id = it->get<int64_t>();
    if (id < 0 || id >= kMaxTokenId) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": vocab entry \"", it.key(), "\" has out-of-range id ", id));
    }
    vocab_[it.key()] = static_cast<int32_t>(id);
    max_id = std::max(max_id, id);
  }
  id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  for (const auto& [token, id] : vocab_) id_to_token_[id] = token;

  const json* merges = Find(model, "merges");
  if (merges != nullptr && !merges->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": model \"merges\" is not an array"));
  }
  if (merges != nullptr) {
    int32_t rank = 0;
    for (const json& merge : *merges) {
      std::string left, right;
      if (merge.is_string()) {
        const std::string& text = merge.get_ref<const std::string&>();
        std::vector<std::string> parts = absl::StrSplit(text, ' ');
        if (parts.size() != 2) {
          return absl::InvalidArgumentError(absl::StrCat(
              source, ": merge #", rank, " \"", text, "\" is not two tokens"));
        }
        left = std::move(parts[0]);
        right = std::move(parts[1]);
      } else if (merge.is_array() && merge.size() == 2 &&
                 merge[0].is_string() && merge[1].is_string()) {
        left = merge[0].get<std::string>();
        right = merge[1].get<std::string>();
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": merge #", rank,
                         " is neither \"a b\" nor [\"a\", \"b\"]"));
      }
      auto left_it = vocab_.find(left);
      auto right_it = vocab_.find(right);
      auto merged_it = vocab_.find(left + right);
      if (left_it == vocab_.end() || right_it == vocab_.end() ||
          merged_it == vocab_.end()) {
        const std::string& missing = left_it == vocab_.end()    ? left
                                     : right_it == vocab_.end() ? right
                                                                : left + right;
        return absl::InvalidArgumentError(absl::StrCat(
            source, ": merge #", rank, " (\"", left, "\", \"", right,
            "\") names token \"", missing, "\" missing from the vocab"));
      }
      // The first (lowest-rank) occurrence of a duplicated merge wins.
      merges_.try_emplace(PairKey(left_it->second, right_it->second),
                          MergeInfo{rank, merged_it->second});
      ++rank;
    }
  }
  LS_ASSIGN_OR_RETURN(std::string unk,
                      JsonString(model, "unk_token", source + " model", ""));
  if (!unk.empty()) {
    auto it = vocab_.find(unk);
    if (it == vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": unk_token \"", unk, "\" is not in the vocab"));
    }
    unk_id_ = it->second;
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::LoadAddedTokens(const json& root,
                                           const std::string& source) {
  const json* list = Find(root, "added_tokens");
  if (list == nullptr) return absl::OkStatus();
  if (!list->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": \"added_tokens\" is not an array"));
  }
  for (const json& entry : *list) {
    const std::string where = absl::StrCat(source, " added_tokens");
    if (!entry.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": entry is not an object"));
    }
    AddedToken token;
    LS_ASSIGN_OR_RETURN(token.content, JsonString(entry, "content", where));
    LS_ASSIGN_OR_RETURN(int64_t id, JsonInt(entry, "id", where));
    if (id < 0 || id >= kMaxTokenId || token.content.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": token \"", token.content, "\" has bad id ", id,
                       " or is empty"));
    }
    token.id = static_cast<int32_t>(id);
    LS_ASSIGN_OR_RETURN(token.special,
                        JsonBool(entry, "special", where, false));
    LS_ASSIGN_OR_RETURN(token.lstrip, JsonBool(entry, "lstrip", where, false));
    LS_ASSIGN_OR_RETURN(token.rstrip, JsonBool(entry, "rstrip", where, false));
    added_tokens_.push_back(std::move(token));
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::LoadPostProcessor(const json& node,
                                             const std::string& source) {
  LS_ASSIGN_OR_RETURN(const std::string type,
                      TypeOf(node, source, "post_processor"));
  if (type == "ByteLevel") return absl::OkStatus();  // Offsets only.
  if (type == "Sequence") {
    const json* list = Find(node, "processors");
    if (list == nullptr || !list->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": post_processor Sequence has no \"processors\" array"));
    }
    for (const json& child : *list)
      LS_RETURN_IF_ERROR(LoadPostProcessor(child, source));
    return absl::OkStatus();
  }
  if (type != "TemplateProcessing") {
    return Unsupported(source, absl::StrCat("post_processor type ", type));
  }
  const std::string where = source + " post_processor TemplateProcessing";
  const json* single = Find(node, "single");
  const json* specials = Find(node, "special_tokens");
  if (single == nullptr || !single->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": no \"single\" array"));
  }
  std::vector<int32_t> prefix, suffix;
  bool seen_sequence = false;
  for (const json& item : *single) {
    if (Find(item, "Sequence") != nullptr) {
      seen_sequence = true;
      continue;
    }
    const json* special = Find(item, "SpecialToken");
    if (special == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": item is neither Sequence nor SpecialToken"));
    }
    LS_ASSIGN_OR_RETURN(std::string name, JsonString(*special, "id", where));
    const json* entry =
        specials != nullptr ? Find(*specials, name.c_str()) : nullptr;
    const json* ids = entry != nullptr ? Find(*entry, "ids") : nullptr;
    if (ids == nullptr || !ids->is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": special token \"", name, "\" has no ids"));
    }
    for (const json& id : *ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
          id.get<int64_t>() >= vocab_size()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": special token \"", name, "\" has a bad id"));
      }
      (seen_sequence ? suffix : prefix).push_back(id.get<int32_t>());
    }
  }
  set_prefix_ids(std::move(prefix));
  set_suffix_ids(std::move(suffix));
  return absl::OkStatus();
}

absl::Status BpeTokenizer::Load(const json& root, const std::string& source) {
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": top level is not an object"));
  }
  const json* model = Find(root, "model");
  if (model == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": no \"model\""));
  }
  LS_RETURN_IF_ERROR(LoadModel(*model, source));
  LS_RETURN_IF_ERROR(LoadAddedTokens(root, source));

  // The id table covers the model vocabulary and the added tokens.
  int32_t size = static_cast<int32_t>(id_to_token_.size());
  for (const AddedToken& token : added_tokens_)
    size = std::max(size, token.id + 1);
  id_to_token_.resize(size);
  is_special_.assign(size, false);
  for (const AddedToken& token : added_tokens_) {
    id_to_token_[token.id] = token.content;
    is_special_[token.id] = token.special;
  }
  matcher_ = AddedTokenMatcher(added_tokens_);

  if (const json* node = Find(root, "normalizer")) {
    LS_RETURN_IF_ERROR(ParseNormalizer(*node, source, &normalizers_));
  }
  if (const json* node = Find(root, "pre_tokenizer")) {
    LS_RETURN_IF_ERROR(ParsePreTokenizer(*node, source, &pre_tokenizers_));
  }
  for (const PreTokenizerStep& step : pre_tokenizers_) {
    if (step.kind == PreTokenizerStep::Kind::kByteLevel) byte_level_ = true;
  }
  if (byte_level_) {
    const auto& table = ByteToUnicode();
    for (int b = 0; b < 256; ++b) {
      std::string ch;
      unicode::AppendUtf8(table[b], &ch);
      // Some vocabularies (SmolLM2) lack a few control bytes and bytes that
      // never occur in UTF-8; HF's BPE turns such a byte into unk_token, or
      // drops it without one, and so does InitialSymbols.
      auto it = vocab_.find(ch);
      byte_level_ids_[b] = it == vocab_.end() ? -1 : it->second;
    }
  }
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(absl::StrFormat("<0x%02X>", b));
    fallback_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
  if (const json* node = Find(root, "post_processor")) {
    LS_RETURN_IF_ERROR(LoadPostProcessor(*node, source));
  }
  const json* decoder = Find(root, "decoder");
  if (decoder == nullptr) return Unsupported(source, "no decoder");
  DecoderSpec spec;
  bool fused = false;
  LS_RETURN_IF_ERROR(ParseDecoder(*decoder, source, &fused, &spec));
  strips_leading_space_ = spec.strips_leading_space;
  token_bytes_.resize(size);
  for (int32_t id = 0; id < size; ++id) {
    token_bytes_[id] = ApplyDecoderSteps(id_to_token_[id], spec);
  }
  return absl::OkStatus();
}

int32_t BpeTokenizer::TokenToId(absl::string_view token) const {
  for (const AddedToken& added : added_tokens_) {
    if (added.content == token) return added.id;
  }
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

std::string BpeTokenizer::NormalizeText(absl::string_view text) const {
  std::string out(text);
  for (const NormalizerStep& step : normalizers_) {
    switch (step.kind) {
      case NormalizerStep::Kind::kUnicode: {
        // Input was validated as UTF-8, so normalization cannot fail.
        absl::StatusOr<std::string> normalized =
            unicode::Normalize(out, step.form);
        if (normalized.ok()) out = *std::move(normalized);
        break;
      }
      case NormalizerStep::Kind::kPrepend:
        if (!out.empty()) out.insert(0, step.text);
        break;
      case NormalizerStep::Kind::kReplace:
        out = absl::StrReplaceAll(out, {{step.text, step.replacement}});
        break;
      case NormalizerStep::Kind::kLowercase:
        out = unicode::Lowercase(out);
        break;
    }
  }
  return out;
}

std::vector<Piece> BpeTokenizer::PreTokenize(std::string text,
                                             bool first) const {
  std::vector<Piece> pieces;
  pieces.push_back({std::move(text), first});
  auto split_views = [](const Piece& piece,
                        const std::vector<absl::string_view>& views,
                        std::vector<Piece>* out) {
    bool first_view = true;
    for (absl::string_view view : views) {
      out->push_back({std::string(view), piece.first && first_view});
      first_view = false;
    }
  };
  for (const PreTokenizerStep& step : pre_tokenizers_) {
    std::vector<Piece> next;
    for (Piece& piece : pieces) {
      switch (step.kind) {
        case PreTokenizerStep::Kind::kSplit:
          split_views(piece, SplitWithPattern(piece.text, step.pattern), &next);
          break;
        case PreTokenizerStep::Kind::kByteLevel:
          if (step.add_prefix_space &&
              (piece.text.empty() || piece.text[0] != ' ')) {
            piece.text.insert(0, " ");
          }
          if (step.use_regex) {
            split_views(piece, SplitWithPattern(piece.text, step.pattern),
                        &next);
          } else {
            next.push_back(std::move(piece));
          }
          break;
        case PreTokenizerStep::Kind::kMetaspace: {
          std::string replaced =
              absl::StrReplaceAll(piece.text, {{" ", step.replacement}});
          if ((step.prepend_always || (step.prepend_first && piece.first)) &&
              !absl::StartsWith(replaced, step.replacement)) {
            replaced.insert(0, step.replacement);
          }
          if (!step.split) {
            next.push_back({std::move(replaced), piece.first});
            break;
          }
          // Split before every replacement character (MergedWithNext).
          std::vector<absl::string_view> views;
          size_t start = 0;
          size_t pos = replaced.find(step.replacement, 1);
          while (pos != std::string::npos) {
            views.push_back(
                absl::string_view(replaced).substr(start, pos - start));
            start = pos;
            pos =
                replaced.find(step.replacement, pos + step.replacement.size());
          }
          views.push_back(absl::string_view(replaced).substr(start));
          split_views(piece, views, &next);
          break;
        }
        case PreTokenizerStep::Kind::kDigits:
          split_views(piece, SplitDigits(piece.text, step.individual_digits),
                      &next);
          break;
      }
    }
    pieces = std::move(next);
  }
  return pieces;
}

void BpeTokenizer::InitialSymbols(absl::string_view word,
                                  std::vector<int32_t>* symbols) const {
  if (byte_level_) {
    bool previous_unk = false;
    for (char c : word) {
      const int32_t id = byte_level_ids_[static_cast<uint8_t>(c)];
      if (id >= 0) {
        symbols->push_back(id);
        previous_unk = false;
      } else if (unk_id_ >= 0) {
        if (!(fuse_unk_ && previous_unk)) symbols->push_back(unk_id_);
        previous_unk = true;
      }
    }
    return;
  }
  bool previous_unk = false;
  for (const unicode::CodePoint& cp : unicode::Decode(word)) {
    absl::string_view ch = word.substr(cp.offset, cp.length);
    auto it = vocab_.find(ch);
    if (it != vocab_.end()) {
      symbols->push_back(it->second);
      previous_unk = false;
      continue;
    }
    if (byte_fallback_) {
      bool all_bytes = true;
      for (char c : ch)
        all_bytes = all_bytes && fallback_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all_bytes) {
        for (char c : ch)
          symbols->push_back(fallback_ids_[static_cast<uint8_t>(c)]);
        previous_unk = false;
        continue;
      }
    }
    if (unk_id_ < 0) continue;  // HF drops characters it cannot represent.
    if (!(fuse_unk_ && previous_unk)) symbols->push_back(unk_id_);
    previous_unk = true;
  }
}

void BpeTokenizer::EncodeWord(absl::string_view word,
                              std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    std::string key;
    if (byte_level_) {
      for (char c : word)
        unicode::AppendUtf8(ByteToUnicode()[static_cast<uint8_t>(c)], &key);
    } else {
      key = std::string(word);
    }
    if (auto it = vocab_.find(key); it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  std::vector<int32_t> symbol_ids;
  InitialSymbols(word, &symbol_ids);
  const int n = static_cast<int>(symbol_ids.size());
  if (n <= 1) {
    ids->insert(ids->end(), symbol_ids.begin(), symbol_ids.end());
    return;
  }
  // Doubly linked list over the symbols; a merged-away symbol gets id -1.
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int left;  // Index of the left symbol; ties go to the leftmost pair.
    int32_t left_id;
    int32_t right_id;
    int32_t merged_id;
    bool operator>(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : left > other.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>,
                      std::greater<Candidate>>
      queue;
  auto push_pair = [&](int left) {
    if (left < 0 || next[left] < 0) return;
    const int right = next[left];
    auto it = merges_.find(PairKey(symbol_ids[left], symbol_ids[right]));
    if (it == merges_.end()) return;
    queue.push({it->second.rank, left, symbol_ids[left], symbol_ids[right],
                it->second.merged_id});
  };
  for (int i = 0; i + 1 < n; ++i) push_pair(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    const int left = top.left;
    const int right = next[left];
    if (symbol_ids[left] != top.left_id || right < 0 ||
        symbol_ids[right] != top.right_id) {
      continue;  // Stale: one side has been merged since.
    }
    symbol_ids[left] = top.merged_id;
    symbol_ids[right] = -1;
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    push_pair(prev[left]);
    push_pair(left);
  }
  for (int i = 0; i >= 0; i = next[i]) ids->push_back(symbol_ids[i]);
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::Encode(
    absl::string_view text, bool add_special_tokens,
    absl::Span<const TextRange> plain_text) const {
  if (unicode::RepairUtf8(text) != text) {
    return absl::InvalidArgumentError("Encode: text is not valid UTF-8");
  }
  std::vector<int32_t> ids;
  for (const TextSegment& segment : matcher_.Split(text, plain_text)) {
    if (segment.added_id >= 0) {
      ids.push_back(segment.added_id);
      continue;
    }
    if (segment.text.empty()) continue;
    const std::string normalized = NormalizeText(segment.text);
    for (const Piece& piece : PreTokenize(normalized, segment.offset == 0)) {
      EncodeWord(piece.text, &ids);
    }
  }
  return ApplyTemplate(std::move(ids), add_special_tokens);
}

std::string BpeTokenizer::TokenBytes(int32_t id, bool skip_special) const {
  if (id < 0 || id >= vocab_size()) return std::string();
  if (skip_special && is_special_[id]) return std::string();
  return token_bytes_[id];
}

std::string BpeTokenizer::Decode(absl::Span<const int32_t> ids,
                                 bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) bytes += TokenBytes(id, skip_special_tokens);
  if (strips_leading_space_ && !bytes.empty() && bytes[0] == ' ')
    bytes.erase(0, 1);
  return unicode::RepairUtf8(bytes);
}

}  // namespace

std::vector<int32_t> TemplatedTokenizer::ApplyTemplate(
    std::vector<int32_t> ids, bool add_special_tokens) const {
  if (!add_special_tokens) return ids;
  std::vector<int32_t> out = prefix_ids_;
  out.insert(out.end(), ids.begin(), ids.end());
  out.insert(out.end(), suffix_ids_.begin(), suffix_ids_.end());
  return out;
}

absl::StatusOr<std::unique_ptr<TemplatedTokenizer>> ParseTokenizerJson(
    absl::string_view json_text, const std::string& source) {
  LS_ASSIGN_OR_RETURN(json root, ParseJson(json_text, source));
  auto tokenizer = std::make_unique<BpeTokenizer>();
  LS_RETURN_IF_ERROR(tokenizer->Load(root, source));
  return std::unique_ptr<TemplatedTokenizer>(std::move(tokenizer));
}

}  // namespace litestage
