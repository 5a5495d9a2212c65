#include "engine/tokenizer/sentencepiece_tokenizer.h"

#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/tokenizer/added_tokens.h"
#include "engine/tokenizer/sp_model.h"
#include "engine/tokenizer/unicode.h"

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

class SentencePieceTokenizer : public TemplatedTokenizer {
 public:
  absl::Status Load(absl::string_view contents, const std::string& source) {
    const std::string error =
        model_.Load(std::string_view(contents.data(), contents.size()));
    if (!error.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": not a valid SentencePiece model: ", error));
    }
    const int count = model_.PieceCount();
    if (count <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": model has no pieces"));
    }
    token_bytes_.resize(count);
    is_special_.assign(count, false);
    std::vector<AddedToken> specials;
    for (int id = 0; id < count; ++id) {
      const std::string piece = model_.IdToPiece(id);
      if (model_.IsControl(id) || model_.IsUnknown(id)) {
        is_special_[id] = true;
        token_bytes_[id] = piece;
        if (!piece.empty()) specials.push_back({piece, id, true, false, false});
      } else if (int byte = ByteValue(piece); model_.IsByte(id) && byte >= 0) {
        token_bytes_[id] = std::string(1, static_cast<char>(byte));
      } else {
        token_bytes_[id] = absl::StrReplaceAll(piece, {{kMetaspace, " "}});
      }
    }
    matcher_ = AddedTokenMatcher(specials);
    // add_dummy_prefix shows as a leading "▁" on the first piece of "a".
    std::vector<int> probe;
    if (model_.Encode("a", &probe).empty() && !probe.empty()) {
      strips_leading_space_ =
          absl::StartsWith(model_.IdToPiece(probe[0]), kMetaspace);
    }
    if (model_.BosId() >= 0 && model_.BosId() < count) {
      set_prefix_ids({model_.BosId()});
    }
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
    std::vector<int> piece_ids;
    for (const TextSegment& segment : matcher_.Split(text, plain_text)) {
      if (segment.added_id >= 0) {
        ids.push_back(segment.added_id);
        continue;
      }
      if (segment.text.empty()) continue;
      const std::string error = model_.Encode(
          std::string_view(segment.text.data(), segment.text.size()),
          &piece_ids);
      if (!error.empty()) {
        return absl::InternalError(
            absl::StrCat("sentencepiece Encode failed: ", error));
      }
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
    const int id =
        model_.PieceToId(std::string_view(token.data(), token.size()));
    // PieceToId answers unk for unknown pieces; only "<unk>" itself is unk.
    if (id == model_.UnkId() && model_.IdToPiece(id) != token) return -1;
    return id;
  }

 private:
  SpModel model_;
  std::vector<std::string> token_bytes_;  // [vocab_size] decoded bytes.
  std::vector<bool> is_special_;          // [vocab_size] control or unknown.
  AddedTokenMatcher matcher_;             // Splits at control/unk pieces.
  bool strips_leading_space_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TemplatedTokenizer>> LoadSentencePieceModel(
    absl::string_view contents, const std::string& source) {
  auto tokenizer = std::make_unique<SentencePieceTokenizer>();
  absl::Status status = tokenizer->Load(contents, source);
  if (!status.ok()) return status;
  return std::unique_ptr<TemplatedTokenizer>(std::move(tokenizer));
}

}  // namespace litestage
