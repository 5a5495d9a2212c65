// UTF-8 and Unicode helpers for the tokenizers: code point iteration,
// character classes of the pre-tokenizer regexes, lossy UTF-8 repair and
// normalization (utf8proc).
#ifndef LITESTAGE_ENGINE_TOKENIZER_UNICODE_H_
#define LITESTAGE_ENGINE_TOKENIZER_UNICODE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace litestage::unicode {

// One decoded character: its code point and where its bytes lie in the text.
// Invalid bytes decode to U+FFFD with length 1.
struct CodePoint {
  char32_t value;
  size_t offset;  // Byte offset of the first byte in the source text.
  size_t length;  // Number of bytes (1..4).
};

// Decodes `text` into code points; never fails (see CodePoint).
std::vector<CodePoint> Decode(absl::string_view text);

// Appends the UTF-8 encoding of `cp` to `out`.
void AppendUtf8(char32_t cp, std::string* out);

// Unicode general category tests (\p{L}, \p{N}) and the White_Space property
// (what \s means in the Oniguruma regexes Hugging Face tokenizers use).
bool IsLetter(char32_t cp);
bool IsNumber(char32_t cp);
bool IsWhitespace(char32_t cp);

// Replaces every ill-formed sequence by U+FFFD, one per maximal subpart, the
// way Rust's String::from_utf8_lossy (and so HF decode) does.
std::string RepairUtf8(absl::string_view bytes);

// Length of the longest prefix of `bytes` that does not end inside a UTF-8
// character: a trailing, still-completable character start is held back.
size_t CompleteUtf8PrefixLength(absl::string_view bytes);

enum class NormalForm : uint8_t { kNfc, kNfd, kNfkc, kNfkd };
// Unicode normalization of valid UTF-8 (invalid input is an error).
absl::StatusOr<std::string> Normalize(absl::string_view text, NormalForm form);
// Simple per-code-point lowercase mapping.
std::string Lowercase(absl::string_view text);

}  // namespace litestage::unicode

#endif  // LITESTAGE_ENGINE_TOKENIZER_UNICODE_H_
