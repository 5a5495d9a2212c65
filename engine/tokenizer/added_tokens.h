// Splitting input text at added tokens ("<|im_start|>", "<s>", ...) before
// the model sees it, as Hugging Face tokenizers do: leftmost match wins, the
// longest token among those starting there.
#ifndef LITESTAGE_ENGINE_TOKENIZER_ADDED_TOKENS_H_
#define LITESTAGE_ENGINE_TOKENIZER_ADDED_TOKENS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/tokenizer/tokenizer.h"

namespace litestage {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;  // The match swallows whitespace on its left.
  bool rstrip = false;  // The match swallows whitespace on its right.
};

// A stretch of input: plain text (added_id < 0) or one added token.
struct TextSegment {
  absl::string_view text;
  size_t offset = 0;  // Byte offset of `text` in the input.
  int32_t added_id = -1;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(const std::vector<AddedToken>& tokens);

  // Cuts `text` into plain segments and added tokens, in order. Segments view
  // `text`. A special token is not matched where its text would overlap a
  // range of `plain_text` (sorted or not; Tokenizer::Encode says why).
  std::vector<TextSegment> Split(
      absl::string_view text,
      absl::Span<const TextRange> plain_text = {}) const;

 private:
  // Tokens bucketed by first byte, longest first within a bucket.
  std::vector<std::vector<AddedToken>> by_first_byte_ =
      std::vector<std::vector<AddedToken>>(256);
  bool empty_ = true;
};

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_TOKENIZER_ADDED_TOKENS_H_
