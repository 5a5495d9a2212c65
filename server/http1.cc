// HTTP/1.1 request heads and responses (RFC 9112), as much as a metrics
// endpoint needs: server/http1.h.
#include "server/http1.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "absl/strings/str_cat.h"

namespace litestage::http1 {
namespace {

constexpr char kErrorContentType[] = "text/plain; charset=utf-8";

// tchar of RFC 9110 5.6.2: the characters of methods and header names.
bool IsTokenChar(unsigned char c) {
  if (c >= '0' && c <= '9') return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != '\0';
}

bool IsToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return IsTokenChar(static_cast<unsigned char>(c));
  });
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view TrimWhitespace(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

// A line without its LF and its CR, if any; a CR elsewhere is left for the
// callers to reject.
std::string_view WithoutCr(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

// The request line "METHOD SP target SP HTTP/1.x" into `request`.
std::optional<HttpError> ParseRequestLine(std::string_view line,
                                          Request* request) {
  const size_t first = line.find(' ');
  const size_t second =
      first == std::string_view::npos ? first : line.find(' ', first + 1);
  if (second == std::string_view::npos ||
      line.find(' ', second + 1) != std::string_view::npos) {
    return HttpError{400, "malformed request line"};
  }
  const std::string_view method = line.substr(0, first);
  const std::string_view target = line.substr(first + 1, second - first - 1);
  const std::string_view version = line.substr(second + 1);
  if (!IsToken(method)) return HttpError{400, "malformed method"};
  if (target.empty() || !std::all_of(target.begin(), target.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u > 0x20 && u < 0x7f;
      })) {
    return HttpError{400, "malformed request target"};
  }
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" ||
      version[6] != '.' ||
      !std::isdigit(static_cast<unsigned char>(version[5])) ||
      !std::isdigit(static_cast<unsigned char>(version[7]))) {
    return HttpError{400, "malformed HTTP version"};
  }
  if (version[5] != '1') {
    return HttpError{505, "only HTTP/1.0 and HTTP/1.1 are served"};
  }
  request->method = std::string(method);
  request->minor_version = version[7] - '0';
  request->keep_alive = request->minor_version >= 1;

  // origin-form "/path?query"; absolute-form "http://host/path" is allowed
  // by RFC 9112 3.2.2 and reduced to its path.
  std::string_view path = target;
  for (std::string_view scheme : {"http://", "https://"}) {
    if (path.size() >= scheme.size() &&
        EqualsIgnoreCase(path.substr(0, scheme.size()), scheme)) {
      path.remove_prefix(scheme.size());
      const size_t slash = path.find('/');
      path = slash == std::string_view::npos ? "/" : path.substr(slash);
    }
  }
  path = path.substr(0, path.find_first_of("?#"));
  request->path = std::string(path);
  return std::nullopt;
}

const char* ReasonPhrase(int code) {
  switch (code) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Error";
  }
}

// IMF-fixdate (RFC 9110 5.6.7), e.g. "Tue, 01 Dec 2026 22:09:02 GMT";
// spelled out rather than strftime'd so the locale cannot change it.
std::string HttpDate() {
  static constexpr std::array<const char*, 7> kDays = {
      "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr std::array<const char*, 12> kMonths = {
      "Jan", "Feb", "Mar", "Apr", "May", "Jun",
      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buffer[40];
  std::snprintf(buffer, sizeof(buffer), "%s, %02d %s %04d %02d:%02d:%02d GMT",
                kDays[tm.tm_wday % 7], tm.tm_mday, kMonths[tm.tm_mon % 12],
                tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buffer;
}

}  // namespace

// Whether the start of a request head that has not ended yet can still
// become a valid request: rejects garbage (a TLS handshake, binary noise)
// at once instead of waiting for the head timeout.
std::optional<HttpError> CheckIncompleteHead(std::string_view in) {
  const size_t newline = in.find('\n');
  if (newline != std::string_view::npos) {
    Request ignored;
    return ParseRequestLine(WithoutCr(in.substr(0, newline)), &ignored);
  }
  const size_t space = in.find(' ');
  const std::string_view method = in.substr(0, space);
  if (!std::all_of(method.begin(), method.end(), [](char c) {
        return IsTokenChar(static_cast<unsigned char>(c));
      })) {
    return HttpError{400, "malformed method"};
  }
  return std::nullopt;
}

// The whole head (request line, header lines, the empty line) into
// `request`.
std::optional<HttpError> ParseHead(std::string_view head, Request* request) {
  size_t newline = head.find('\n');
  if (std::optional<HttpError> error =
          ParseRequestLine(WithoutCr(head.substr(0, newline)), request)) {
    return error;
  }
  bool content_length_seen = false;
  std::string_view content_length;
  while (true) {
    const size_t start = newline + 1;
    newline = head.find('\n', start);
    if (newline == std::string_view::npos) break;
    const std::string_view line =
        WithoutCr(head.substr(start, newline - start));
    if (line.empty()) break;  // the end of the head
    if (line.front() == ' ' || line.front() == '\t') {
      return HttpError{400, "obsolete header line folding"};
    }
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || !IsToken(line.substr(0, colon))) {
      return HttpError{400, "malformed header line"};
    }
    const std::string_view name = line.substr(0, colon);
    const std::string_view value = TrimWhitespace(line.substr(colon + 1));
    if (!std::all_of(value.begin(), value.end(), [](char c) {
          const auto u = static_cast<unsigned char>(c);
          return u >= 0x20 ? u != 0x7f : u == '\t';
        })) {
      return HttpError{400, "control character in a header value"};
    }
    if (EqualsIgnoreCase(name, "connection")) {
      std::string_view rest = value;
      while (!rest.empty()) {
        const size_t comma = rest.find(',');
        const std::string_view option = TrimWhitespace(rest.substr(0, comma));
        if (EqualsIgnoreCase(option, "close")) request->keep_alive = false;
        if (EqualsIgnoreCase(option, "keep-alive") &&
            request->minor_version == 0) {
          request->keep_alive = true;
        }
        rest = comma == std::string_view::npos ? std::string_view()
                                               : rest.substr(comma + 1);
      }
    } else if (EqualsIgnoreCase(name, "content-length")) {
      if (value.empty() ||
          !std::all_of(value.begin(), value.end(),
                       [](char c) { return c >= '0' && c <= '9'; }) ||
          (content_length_seen && value != content_length)) {
        return HttpError{400, "malformed Content-Length"};
      }
      content_length_seen = true;
      content_length = value;
      if (value.find_first_not_of('0') != std::string_view::npos) {
        request->has_body = true;
      }
    } else if (EqualsIgnoreCase(name, "transfer-encoding")) {
      request->has_body = true;
    }
  }
  return std::nullopt;
}

// The end of the head (just past its empty line), or npos, searching from
// `from`. Bare LF line ends are accepted (RFC 9112 2.2).
size_t FindHeadEnd(std::string_view in, size_t from) {
  const size_t crlf = in.find("\n\r\n", from);
  const size_t lf = in.find("\n\n", from);
  if (crlf == std::string_view::npos && lf == std::string_view::npos) {
    return std::string_view::npos;
  }
  if (crlf < lf) return crlf + 3;
  return lf + 2;
}

// A whole response: status line, headers and (unless `head_only`) `body`.
std::string BuildResponse(int code, const char* content_type,
                          const std::string& body, bool keep_alive,
                          bool head_only, const char* extra_headers) {
  std::string response = absl::StrCat(
      "HTTP/1.1 ", code, " ", ReasonPhrase(code), "\r\nDate: ", HttpDate(),
      "\r\nContent-Type: ", content_type, "\r\nContent-Length: ", body.size(),
      "\r\nConnection: ", keep_alive ? "keep-alive" : "close", "\r\n",
      extra_headers, "\r\n");
  if (!head_only) response += body;
  return response;
}

// Errors close the connection (what follows a bad head cannot be trusted to
// start a request) except where `keep_alive` says otherwise.
std::string BuildError(const HttpError& error, bool head_only, bool keep_alive,
                       const char* extra_headers) {
  return BuildResponse(error.code, kErrorContentType,
                       absl::StrCat(error.code, " ", ReasonPhrase(error.code),
                                    ": ", error.message, "\n"),
                       keep_alive, head_only, extra_headers);
}

}  // namespace litestage::http1
