// LoadSentencePieceModel: sentencepiece's normalizer (the parts of it a BPE
// model with an identity normalizer uses) in front of the shared
// SentencePiece-BPE tokenizer, plus legacy special-token splitting and
// decoding.
#include "engine/tokenizer/sentencepiece_tokenizer.h"

#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/tokenizer/added_tokens.h"
#include "engine/tokenizer/gguf_tokenizer.h"
#include "engine/tokenizer/sp_model.h"
#include "engine/tokenizer/unicode.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

constexpr absl::string_view kMetaspace = "\xE2\x96\x81";  // U+2581 "▁".

// "<0xNN>" -> NN, else -1.
int ByteValue(absl::string_view piece) {
  if (piece.size() != 6 || !absl::StartsWith(piece, "<0x") || piece[5] != '>') {
    return -1;
  }
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    const int digit = (c >= '0' && c <= '9')   ? c - '0'
                      : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                      : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                               : -1;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

// What we do not implement is refused rather than tokenized differently.
absl::Status CheckSupported(const SpModel& model, const std::string& source) {
  auto unimplemented = [&](absl::string_view what) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": SentencePiece model uses ", what,
                     ", which litestage does not implement"));
  };
  switch (model.model_type) {
    case SpModelType::kBpe:
      break;
    case SpModelType::kUnigram:
      return unimplemented("model_type UNIGRAM (only BPE is supported)");
    case SpModelType::kWord:
      return unimplemented("model_type WORD (only BPE is supported)");
    case SpModelType::kChar:
      return unimplemented("model_type CHAR (only BPE is supported)");
  }
  // An empty charsmap is the identity, whatever the normalizer's name.
  if (model.precompiled_charsmap_size > 0) {
    return unimplemented(absl::StrCat("normalizer \"", model.normalizer_name,
                                      "\" with a precompiled charsmap"));
  }
  if (model.denormalizer_charsmap_size > 0) {
    return unimplemented("a denormalizer with a precompiled charsmap");
  }
  if (model.treat_whitespace_as_suffix) {
    return unimplemented("treat_whitespace_as_suffix");
  }
  return absl::OkStatus();
}

class SentencePieceTokenizer : public TemplatedTokenizer {
 public:
  absl::Status Load(absl::string_view contents, const std::string& source) {
    LS_ASSIGN_OR_RETURN(const SpModel model, ParseSpModel(contents, source));
    LS_RETURN_IF_ERROR(CheckSupported(model, source));
    add_dummy_prefix_ = model.add_dummy_prefix;
    remove_extra_whitespaces_ = model.remove_extra_whitespaces;
    escape_whitespaces_ = model.escape_whitespaces;
    // sentencepiece's decoder drops the dummy prefix's "▁".
    strips_leading_space_ = add_dummy_prefix_ && escape_whitespaces_;

    const int32_t count = static_cast<int32_t>(model.pieces.size());
    GgufTokenizerData data;
    data.model = "llama";
    token_bytes_.resize(count);
    is_special_.assign(count, false);
    std::vector<AddedToken> specials;
    for (int32_t id = 0; id < count; ++id) {
      const SpPiece& piece = model.pieces[id];
      piece_to_id_[piece.piece] = id;
      data.tokens.push_back(piece.piece);
      data.scores.push_back(piece.score);
      // GGUF's token types are sentencepiece's, by design.
      data.token_types.push_back(static_cast<int32_t>(piece.type));
      if (piece.type == SpPieceType::kControl ||
          piece.type == SpPieceType::kUnknown) {
        is_special_[id] = true;
        token_bytes_[id] = piece.piece;
        specials.push_back({piece.piece, id, true, false, false});
        if (piece.type == SpPieceType::kUnknown) data.unk_id = id;
      } else if (int byte = ByteValue(piece.piece);
                 piece.type == SpPieceType::kByte && byte >= 0) {
        token_bytes_[id] = std::string(1, static_cast<char>(byte));
      } else {
        token_bytes_[id] =
            absl::StrReplaceAll(piece.piece, {{kMetaspace, " "}});
      }
    }
    matcher_ = AddedTokenMatcher(specials);
    LlamaVocabOptions options;
    options.pre_normalized = true;
    options.byte_fallback = model.byte_fallback;
    options.strip_leading_space = strips_leading_space_;
    options.sentencepiece_merges = true;
    LS_ASSIGN_OR_RETURN(bpe_, BuildLlamaVocabTokenizer(data, options, source));
    if (bpe_->vocab_size() != count) {
      return absl::InternalError(absl::StrCat(
          source, ": ", count, " pieces became ", bpe_->vocab_size(), " ids"));
    }
    // As sentencepiece's bos_id()/eos_id(): the piece named by the trainer
    // spec, when it is a control piece.
    const int32_t bos = ControlId(model, model.bos_piece);
    const int32_t eos = ControlId(model, model.eos_piece);
    set_bos_id(bos);
    if (eos >= 0) set_eos_ids({eos});
    if (bos >= 0) set_prefix_ids({bos});
    return absl::OkStatus();
  }

  using Tokenizer::Encode;
  absl::StatusOr<std::vector<int32_t>> Encode(
      absl::string_view text, bool add_special_tokens,
      absl::Span<const TextRange> plain_text) const override {
    if (unicode::RepairUtf8(text) != text) {
      return absl::InvalidArgumentError("Encode: text is not valid UTF-8");
    }
    std::vector<int32_t> ids;
    for (const TextSegment& segment : matcher_.Split(text, plain_text)) {
      if (segment.added_id >= 0) {
        ids.push_back(segment.added_id);
        continue;
      }
      const std::string normalized = Normalize(segment.text);
      if (normalized.empty()) continue;
      // Control pieces were split off above (where allowed): the inner
      // tokenizer must not match them again inside plain text.
      const TextRange all[] = {{0, normalized.size()}};
      LS_ASSIGN_OR_RETURN(std::vector<int32_t> piece_ids,
                          bpe_->Encode(normalized, false, all));
      ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
    }
    return ApplyTemplate(std::move(ids), add_special_tokens);
  }

  std::string Decode(absl::Span<const int32_t> ids,
                     bool skip_special_tokens) const override {
    std::string bytes;
    for (int32_t id : ids) bytes += TokenBytes(id, skip_special_tokens);
    if (strips_leading_space_ && !bytes.empty() && bytes[0] == ' ')
      bytes.erase(0, 1);
    return unicode::RepairUtf8(bytes);
  }

  std::string TokenBytes(int32_t id, bool skip_special) const override {
    if (id < 0 || id >= vocab_size()) return std::string();
    if (skip_special && is_special_[id]) return std::string();
    return token_bytes_[id];
  }

  bool StripsLeadingSpace() const override { return strips_leading_space_; }
  int32_t vocab_size() const override {
    return static_cast<int32_t>(token_bytes_.size());
  }
  bool IsSpecial(int32_t id) const override {
    return id >= 0 && id < vocab_size() && is_special_[id];
  }
  int32_t TokenToId(absl::string_view token) const override {
    auto it = piece_to_id_.find(token);
    return it == piece_to_id_.end() ? -1 : it->second;
  }

 private:
  static int32_t ControlId(const SpModel& model, const std::string& piece) {
    for (size_t id = 0; id < model.pieces.size(); ++id) {
      if (model.pieces[id].piece == piece) {
        return model.pieces[id].type == SpPieceType::kControl
                   ? static_cast<int32_t>(id)
                   : -1;
      }
    }
    return -1;
  }

  // sentencepiece's Normalizer::Normalize for an empty (identity) charsmap:
  // drop leading/trailing spaces and collapse runs of them
  // (remove_extra_whitespaces), write spaces as "▁" (escape_whitespaces),
  // and put one in front (add_dummy_prefix). Only U+0020 counts as a space
  // here; without a charsmap tabs and newlines are ordinary characters.
  // Leading spaces are trimmed before escaping, trailing ones after, as
  // sentencepiece does.
  std::string Normalize(absl::string_view text) const {
    std::string out;
    out.reserve(text.size() + 8);
    const absl::string_view space =
        escape_whitespaces_ ? kMetaspace : absl::string_view(" ");
    if (remove_extra_whitespaces_) {
      while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
      while (!text.empty() && text.back() == ' ') text.remove_suffix(1);
    }
    if (text.empty()) return out;
    if (add_dummy_prefix_) absl::StrAppend(&out, space);
    bool previous_space = false;
    for (char c : text) {
      if (c != ' ') {
        out.push_back(c);
        previous_space = false;
        continue;
      }
      if (!(remove_extra_whitespaces_ && previous_space)) {
        absl::StrAppend(&out, space);
      }
      previous_space = true;
    }
    // sentencepiece trims trailing spaces after escaping, so a "▁" the user
    // typed at the end goes too (and the dummy prefix, if nothing else is
    // left).
    if (remove_extra_whitespaces_) {
      while (absl::EndsWith(out, space)) out.resize(out.size() - space.size());
    }
    return out;
  }

  std::unique_ptr<TemplatedTokenizer> bpe_;  // BPE over normalized text.
  absl::flat_hash_map<std::string, int32_t> piece_to_id_;
  std::vector<std::string> token_bytes_;  // [vocab_size] decoded bytes.
  std::vector<bool> is_special_;          // [vocab_size] control or unknown.
  AddedTokenMatcher matcher_;             // Splits at control/unk pieces.
  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = true;
  bool escape_whitespaces_ = true;
  bool strips_leading_space_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TemplatedTokenizer>> LoadSentencePieceModel(
    absl::string_view contents, const std::string& source) {
  auto tokenizer = std::make_unique<SentencePieceTokenizer>();
  LS_RETURN_IF_ERROR(tokenizer->Load(contents, source));
  return std::unique_ptr<TemplatedTokenizer>(std::move(tokenizer));
}

}  // namespace litestage
