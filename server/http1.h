// HTTP/1.1 request heads and responses (RFC 9112), as much as the metrics
// endpoint (server/metrics_http.h) needs: GET/HEAD request heads with
// keep-alive, strict enough that garbage is refused at its first bytes.
// Separate from the connection loop so that the parsing stands on its own.
#ifndef LITESTAGE_SERVER_HTTP1_H_
#define LITESTAGE_SERVER_HTTP1_H_

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace litestage::http1 {

struct HttpError {
  int code = 400;
  std::string message;  // the response body's first line
};

struct Request {
  std::string method;
  std::string path;  // without the query
  int minor_version = 1;
  bool keep_alive = true;
  bool has_body = false;
};

// Whether the start of a request head that has not ended yet can still
// become a valid request: rejects garbage (a TLS handshake, binary noise)
// at once instead of waiting for the head timeout.
std::optional<HttpError> CheckIncompleteHead(std::string_view in);

// The whole head (request line, header lines, the empty line) into
// `request`.
std::optional<HttpError> ParseHead(std::string_view head, Request* request);

// The end of the head (just past its empty line), or npos, searching from
// `from`. Bare LF line ends are accepted (RFC 9112 2.2).
size_t FindHeadEnd(std::string_view in, size_t from);

// A whole response: status line, headers and (unless `head_only`) `body`.
std::string BuildResponse(int code, const char* content_type,
                          const std::string& body, bool keep_alive,
                          bool head_only, const char* extra_headers = "");

// Errors close the connection (what follows a bad head cannot be trusted to
// start a request) except where `keep_alive` says otherwise.
std::string BuildError(const HttpError& error, bool head_only,
                       bool keep_alive = false, const char* extra_headers = "");

}  // namespace litestage::http1

#endif  // LITESTAGE_SERVER_HTTP1_H_
