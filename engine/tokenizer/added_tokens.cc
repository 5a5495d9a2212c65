#include "engine/tokenizer/added_tokens.h"

#include <algorithm>

#include "engine/tokenizer/unicode.h"

namespace litestage {
namespace {

// Length of the whitespace run ending at `end` / starting at `begin`.
size_t WhitespaceBefore(absl::string_view text, size_t begin, size_t end) {
  size_t pos = end;
  while (pos > begin) {
    // Step back over one UTF-8 character.
    size_t start = pos - 1;
    while (start > begin && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80)
      --start;
    const auto cps = unicode::Decode(text.substr(start, pos - start));
    if (cps.size() != 1 || !unicode::IsWhitespace(cps[0].value)) break;
    pos = start;
  }
  return end - pos;
}

size_t WhitespaceAfter(absl::string_view text, size_t begin) {
  size_t pos = begin;
  for (const unicode::CodePoint& cp : unicode::Decode(text.substr(begin))) {
    if (!unicode::IsWhitespace(cp.value)) break;
    pos = begin + cp.offset + cp.length;
  }
  return pos - begin;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens) {
  for (const AddedToken& token : tokens) {
    if (token.content.empty()) continue;
    by_first_byte_[static_cast<uint8_t>(token.content[0])].push_back(token);
    empty_ = false;
  }
  for (auto& bucket : by_first_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(),
                     [](const AddedToken& a, const AddedToken& b) {
                       return a.content.size() > b.content.size();
                     });
  }
}

namespace {

bool OverlapsAny(size_t begin, size_t end, absl::Span<const TextRange> ranges) {
  for (const TextRange& range : ranges) {
    if (begin < range.end && range.begin < end) return true;
  }
  return false;
}

}  // namespace

std::vector<TextSegment> AddedTokenMatcher::Split(
    absl::string_view text, absl::Span<const TextRange> plain_text) const {
  std::vector<TextSegment> segments;
  size_t plain_start = 0;  // Start of the pending plain segment.
  size_t pos = 0;
  while (!empty_ && pos < text.size()) {
    const AddedToken* match = nullptr;
    for (const AddedToken& token :
         by_first_byte_[static_cast<uint8_t>(text[pos])]) {
      if (text.substr(pos, token.content.size()) == token.content &&
          !(token.special &&
            OverlapsAny(pos, pos + token.content.size(), plain_text))) {
        match = &token;
        break;
      }
    }
    if (match == nullptr) {
      ++pos;
      continue;
    }
    size_t begin = pos;
    size_t end = pos + match->content.size();
    if (match->lstrip) begin -= WhitespaceBefore(text, plain_start, begin);
    if (match->rstrip) end += WhitespaceAfter(text, end);
    if (begin > plain_start) {
      segments.push_back(
          {text.substr(plain_start, begin - plain_start), plain_start, -1});
    }
    segments.push_back({text.substr(begin, end - begin), begin, match->id});
    plain_start = pos = end;
  }
  if (plain_start < text.size() || segments.empty()) {
    segments.push_back({text.substr(plain_start), plain_start, -1});
  }
  return segments;
}

}  // namespace litestage
