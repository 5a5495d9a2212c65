#include "engine/tokenizer/pretokenize.h"

#include "engine/tokenizer/unicode.h"

namespace litestage {
namespace {

using unicode::CodePoint;

constexpr absl::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr absl::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr absl::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

bool IsNewline(char32_t cp) { return cp == '\r' || cp == '\n'; }

char32_t AsciiLower(char32_t cp) {
  return (cp >= 'A' && cp <= 'Z') ? cp + ('a' - 'A') : cp;
}

// Matches a contraction ('s 't 're 've 'm 'll 'd) at `i`; returns its length
// in code points or 0.
size_t MatchContraction(const std::vector<CodePoint>& cps, size_t i,
                        bool ignore_case) {
  if (cps[i].value != '\'' || i + 1 >= cps.size()) return 0;
  auto at = [&](size_t k) -> char32_t {
    if (k >= cps.size()) return 0;
    return ignore_case ? AsciiLower(cps[k].value) : cps[k].value;
  };
  const char32_t a = at(i + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  const char32_t b = at(i + 2);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') ||
      (a == 'l' && b == 'l')) {
    return 3;
  }
  return 0;
}

size_t RunOf(const std::vector<CodePoint>& cps, size_t i,
             bool (*pred)(char32_t)) {
  size_t j = i;
  while (j < cps.size() && pred(cps[j].value)) ++j;
  return j;
}

bool IsOther(char32_t cp) {
  return !unicode::IsWhitespace(cp) && !unicode::IsLetter(cp) &&
         !unicode::IsNumber(cp);
}

// Whitespace alternatives shared by all patterns: `\s+(?!\S)|\s+`, and
// `\s*[\r\n]+` first when `newline_rule`. Returns the end index.
size_t MatchWhitespace(const std::vector<CodePoint>& cps, size_t i,
                       bool newline_rule) {
  const size_t run_end = RunOf(cps, i, unicode::IsWhitespace);
  if (newline_rule) {
    // \s* backtracks to the last newline of the run; [\r\n]+ takes it.
    for (size_t k = run_end; k > i; --k) {
      if (IsNewline(cps[k - 1].value)) return k;
    }
  }
  if (run_end == cps.size()) return run_end;
  // Followed by non-space: leave the last space to the next piece.
  if (run_end - i >= 2) return run_end - 1;
  return run_end;
}

// Returns the end (code point index) of the match starting at `i`.
size_t MatchAt(const std::vector<CodePoint>& cps, size_t i,
               SplitPattern pattern) {
  const size_t n = cps.size();
  const char32_t c = cps[i].value;
  const bool gpt2 = pattern == SplitPattern::kGpt2;
  if (size_t len = MatchContraction(cps, i, /*ignore_case=*/!gpt2); len > 0) {
    return i + len;
  }
  const char32_t next = i + 1 < n ? cps[i + 1].value : 0;
  const bool has_next = i + 1 < n;
  // Letters.
  if (gpt2) {
    if (c == ' ' && has_next && unicode::IsLetter(next)) {
      return RunOf(cps, i + 1, unicode::IsLetter);
    }
  } else if (!IsNewline(c) && !unicode::IsLetter(c) && !unicode::IsNumber(c) &&
             has_next && unicode::IsLetter(next)) {
    return RunOf(cps, i + 1, unicode::IsLetter);
  }
  if (unicode::IsLetter(c)) return RunOf(cps, i, unicode::IsLetter);
  // Numbers.
  if (gpt2) {
    if (c == ' ' && has_next && unicode::IsNumber(next)) {
      return RunOf(cps, i + 1, unicode::IsNumber);
    }
    if (unicode::IsNumber(c)) return RunOf(cps, i, unicode::IsNumber);
  } else if (unicode::IsNumber(c)) {
    const size_t limit = pattern == SplitPattern::kLlama3 ? 3 : 1;
    size_t j = i;
    while (j < n && j - i < limit && unicode::IsNumber(cps[j].value)) ++j;
    return j;
  }
  // Punctuation and symbols, optionally after one space.
  size_t start = i;
  if (c == ' ' && has_next && IsOther(next)) start = i + 1;
  if (IsOther(cps[start].value)) {
    size_t j = RunOf(cps, start, IsOther);
    if (!gpt2) j = RunOf(cps, j, IsNewline);
    return j;
  }
  return MatchWhitespace(cps, i, /*newline_rule=*/!gpt2);
}

}  // namespace

std::optional<SplitPattern> RecognizeSplitRegex(absl::string_view regex) {
  if (regex == kGpt2Regex) return SplitPattern::kGpt2;
  if (regex == kQwen2Regex) return SplitPattern::kQwen2;
  if (regex == kLlama3Regex) return SplitPattern::kLlama3;
  return std::nullopt;
}

absl::string_view SplitRegexText(SplitPattern pattern) {
  switch (pattern) {
    case SplitPattern::kGpt2:
      return kGpt2Regex;
    case SplitPattern::kQwen2:
      return kQwen2Regex;
    case SplitPattern::kLlama3:
      return kLlama3Regex;
  }
  return kGpt2Regex;
}

std::vector<absl::string_view> SplitWithPattern(absl::string_view text,
                                                SplitPattern pattern) {
  const std::vector<CodePoint> cps = unicode::Decode(text);
  std::vector<absl::string_view> pieces;
  size_t i = 0;
  while (i < cps.size()) {
    size_t end = MatchAt(cps, i, pattern);
    if (end <= i) end = i + 1;  // Defensive: always make progress.
    const size_t begin_byte = cps[i].offset;
    const size_t end_byte = end < cps.size() ? cps[end].offset : text.size();
    pieces.push_back(text.substr(begin_byte, end_byte - begin_byte));
    i = end;
  }
  return pieces;
}

std::vector<absl::string_view> SplitDigits(absl::string_view text,
                                           bool individual_digits) {
  const std::vector<CodePoint> cps = unicode::Decode(text);
  std::vector<absl::string_view> pieces;
  size_t i = 0;
  while (i < cps.size()) {
    const bool digit = unicode::IsNumber(cps[i].value);
    size_t j = i + 1;
    if (!digit || !individual_digits) {
      while (j < cps.size() && unicode::IsNumber(cps[j].value) == digit) ++j;
    }
    const size_t end_byte = j < cps.size() ? cps[j].offset : text.size();
    pieces.push_back(text.substr(cps[i].offset, end_byte - cps[i].offset));
    i = j;
  }
  return pieces;
}

const std::array<char32_t, 256>& ByteToUnicode() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    std::array<bool, 256> printable{};
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      t[b] = printable[b] ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

}  // namespace litestage
