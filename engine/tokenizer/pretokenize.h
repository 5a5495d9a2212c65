// Hand-written equivalents of the pre-tokenizer regexes used by byte-level
// BPE models. RE2 has no look-ahead (the `\s+(?!\S)` branch), so the GPT-2,
// Qwen2 and Llama-3 patterns are matched directly on Unicode categories.
#ifndef LITESTAGE_ENGINE_TOKENIZER_PRETOKENIZE_H_
#define LITESTAGE_ENGINE_TOKENIZER_PRETOKENIZE_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace litestage {

enum class SplitPattern : uint8_t {
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kGpt2,
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|
  //  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kQwen2,
  // As kQwen2 with \p{N}{1,3}.
  kLlama3,
};

// Recognizes one of the supported regexes in a tokenizer.json Split pattern.
std::optional<SplitPattern> RecognizeSplitRegex(absl::string_view regex);

// The regex text of `pattern` (as it appears in tokenizer.json files).
absl::string_view SplitRegexText(SplitPattern pattern);

// Cuts `text` into the consecutive matches of `pattern` (the "Isolated"
// behaviour: every byte lands in exactly one piece). Pieces view `text`.
std::vector<absl::string_view> SplitWithPattern(absl::string_view text,
                                                SplitPattern pattern);

// Digits pre-tokenizer: digit runs (or single digits) become their own pieces.
std::vector<absl::string_view> SplitDigits(absl::string_view text,
                                           bool individual_digits);

// GPT-2's reversible byte -> printable code point table (bytes_to_unicode).
const std::array<char32_t, 256>& ByteToUnicode();

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_TOKENIZER_PRETOKENIZE_H_
