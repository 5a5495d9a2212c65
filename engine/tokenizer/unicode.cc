#include "engine/tokenizer/unicode.h"

#include <cstdlib>

#include "absl/status/status.h"
#include "utf8proc.h"

namespace litestage::unicode {
namespace {

// Number of bytes of a well-formed sequence starting with `lead`, 0 if `lead`
// cannot start one.
int SequenceLength(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Whether `byte` may follow `lead` as the second byte (Unicode Table 3-7).
bool ValidSecondByte(uint8_t lead, uint8_t byte) {
  switch (lead) {
    case 0xE0:
      return byte >= 0xA0 && byte <= 0xBF;
    case 0xED:
      return byte >= 0x80 && byte <= 0x9F;
    case 0xF0:
      return byte >= 0x90 && byte <= 0xBF;
    case 0xF4:
      return byte >= 0x80 && byte <= 0x8F;
    default:
      return byte >= 0x80 && byte <= 0xBF;
  }
}

// Number of bytes at `pos` that form a well-formed prefix of a character
// (the "maximal subpart"), and whether that prefix is the whole character.
struct Subpart {
  size_t length;
  bool complete;
};

Subpart ScanCharacter(absl::string_view bytes, size_t pos) {
  const uint8_t lead = static_cast<uint8_t>(bytes[pos]);
  const int need = SequenceLength(lead);
  if (need == 0) return {1, false};
  if (need == 1) return {1, true};
  size_t length = 1;
  while (length < static_cast<size_t>(need) && pos + length < bytes.size()) {
    const uint8_t byte = static_cast<uint8_t>(bytes[pos + length]);
    const bool ok = length == 1 ? ValidSecondByte(lead, byte)
                                : (byte >= 0x80 && byte <= 0xBF);
    if (!ok) break;
    ++length;
  }
  return {length, length == static_cast<size_t>(need)};
}

bool IsCategory(char32_t cp, std::initializer_list<utf8proc_category_t> set) {
  const utf8proc_category_t category =
      utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  for (utf8proc_category_t c : set) {
    if (c == category) return true;
  }
  return false;
}

}  // namespace

std::vector<CodePoint> Decode(absl::string_view text) {
  std::vector<CodePoint> out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const Subpart part = ScanCharacter(text, pos);
    if (!part.complete) {
      out.push_back({0xFFFD, pos, 1});
      ++pos;
      continue;
    }
    utf8proc_int32_t cp = 0;
    utf8proc_iterate(
        reinterpret_cast<const utf8proc_uint8_t*>(text.data() + pos),
        static_cast<utf8proc_ssize_t>(part.length), &cp);
    out.push_back({static_cast<char32_t>(cp), pos, part.length});
    pos += part.length;
  }
  return out;
}

void AppendUtf8(char32_t cp, std::string* out) {
  utf8proc_uint8_t buffer[4];
  const utf8proc_ssize_t n =
      utf8proc_encode_char(static_cast<utf8proc_int32_t>(cp), buffer);
  out->append(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
}

bool IsLetter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return IsCategory(
      cp, {UTF8PROC_CATEGORY_LU, UTF8PROC_CATEGORY_LL, UTF8PROC_CATEGORY_LT,
           UTF8PROC_CATEGORY_LM, UTF8PROC_CATEGORY_LO});
}

bool IsNumber(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return IsCategory(
      cp, {UTF8PROC_CATEGORY_ND, UTF8PROC_CATEGORY_NL, UTF8PROC_CATEGORY_NO});
}

bool IsWhitespace(char32_t cp) {
  // The Unicode White_Space property.
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string RepairUtf8(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Subpart part = ScanCharacter(bytes, pos);
    if (part.complete) {
      out.append(bytes.data() + pos, part.length);
    } else {
      out.append("\xEF\xBF\xBD");
    }
    pos += part.length;
  }
  return out;
}

size_t CompleteUtf8PrefixLength(absl::string_view bytes) {
  // A held-back tail is at most 3 bytes: the start of a 2-4 byte character.
  const size_t begin = bytes.size() > 3 ? bytes.size() - 3 : 0;
  for (size_t pos = bytes.size(); pos > begin; --pos) {
    const uint8_t byte = static_cast<uint8_t>(bytes[pos - 1]);
    if (byte >= 0x80 && byte <= 0xBF) continue;  // Continuation byte.
    const Subpart part = ScanCharacter(bytes, pos - 1);
    if (!part.complete && pos - 1 + part.length == bytes.size() &&
        SequenceLength(byte) > 1) {
      return pos - 1;
    }
    break;
  }
  return bytes.size();
}

absl::StatusOr<std::string> Normalize(absl::string_view text, NormalForm form) {
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::kNfc:
      options |= UTF8PROC_COMPOSE;
      break;
    case NormalForm::kNfd:
      options |= UTF8PROC_DECOMPOSE;
      break;
    case NormalForm::kNfkc:
      options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
      break;
    case NormalForm::kNfkd:
      options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
      break;
  }
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                   static_cast<utf8proc_ssize_t>(text.size()), &result,
                   static_cast<utf8proc_option_t>(options));
  if (n < 0) {
    return absl::InvalidArgumentError(
        std::string("unicode normalization failed: ") + utf8proc_errmsg(n));
  }
  std::string out(reinterpret_cast<const char*>(result),
                  static_cast<size_t>(n));
  std::free(result);
  return out;
}

std::string Lowercase(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const CodePoint& cp : Decode(text)) {
    AppendUtf8(static_cast<char32_t>(
                   utf8proc_tolower(static_cast<utf8proc_int32_t>(cp.value))),
               &out);
  }
  return out;
}

}  // namespace litestage::unicode
