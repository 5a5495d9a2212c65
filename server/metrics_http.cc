// MetricsHttpServer: one epoll thread that accepts, parses, serializes the
// registry and writes, never blocking on a peer (see metrics_http.h for the
// limits and why). HTTP parsing lives in http1.cc; the rest stays one file
// (~800 lines) because it is one state machine over one connection table
// (accept, read, respond, flush, linger, evict, deadlines).
#include "server/metrics_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <limits>
#include <optional>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/util/check.h"
#include "prometheus/text_serializer.h"
#include "server/http1.h"

namespace litestage {
namespace {

using http1::BuildError;
using http1::BuildResponse;
using http1::CheckIncompleteHead;
using http1::FindHeadEnd;
using http1::HttpError;
using http1::ParseHead;
using http1::Request;

using Clock = std::chrono::steady_clock;

// epoll user data of the two fds that are not connections; connection ids
// start above them and are never reused, so a stale event for a connection
// closed earlier in the same epoll_wait batch finds nothing.
constexpr uint64_t kListenId = 0;
constexpr uint64_t kWakeId = 1;
constexpr uint64_t kFirstConnectionId = 2;

// After a response that ends the connection: how long the server keeps
// reading (and dropping) what the peer still sends before it closes, as
// Apache and nginx do. Closing with unread input makes the kernel send RST,
// which can destroy the response before the peer reads it (e.g. the 431 to a
// client still sending an oversize head). Bounded by time, and by bytes per
// turn so a fast sender cannot hold the thread.
constexpr std::chrono::milliseconds kLingerTimeout{1000};
constexpr size_t kLingerBytesPerTurn = 64 * 1024;

// Accepts per wake-up of the listening socket, and responses to one
// connection's pipelined requests per turn, so neither a connection flood nor
// a pipelining client can starve the other connections.
constexpr int kMaxAcceptsPerWakeup = 64;
constexpr int kMaxResponsesPerTurn = 4;
// When accept() fails for lack of fds or memory and nothing can be evicted.
constexpr std::chrono::milliseconds kAcceptPause{100};

constexpr char kMetricsContentType[] =
    "text/plain; version=0.0.4; charset=utf-8";

std::string ErrnoString(int error) {
  char buffer[256];
  // GNU strerror_r: returns a pointer that may or may not be `buffer`.
  return strerror_r(error, buffer, sizeof(buffer));
}

absl::Status SystemError(const std::string& address, const char* call,
                         int error) {
  return absl::UnavailableError(absl::StrCat("cannot serve metrics on \"",
                                             address, "\": ", call, ": ",
                                             ErrnoString(error)));
}

// Owns a file descriptor until released.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
};

// "host:port" -> a socket address, without name resolution: a DNS lookup
// at start-up could hang, and a name with several addresses would leave
// unclear which one is served.
absl::StatusOr<SocketAddress> ParseAddress(const std::string& address) {
  auto invalid = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot serve metrics on \"", address, "\": ", why,
        " (expected host:port, host an IPv4 or IPv6 literal or localhost)"));
  };
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return invalid("no port");
  std::string host = address.substr(0, colon);
  const std::string port_text = address.substr(colon + 1);
  if (port_text.empty() || port_text.size() > 5 ||
      !std::all_of(port_text.begin(), port_text.end(),
                   [](char c) { return c >= '0' && c <= '9'; })) {
    return invalid("bad port \"" + port_text + "\"");
  }
  const int port = std::stoi(port_text);
  if (port > 65535) return invalid("port out of range");

  SocketAddress result;
  // "[::1]:9090", or "::1:9090" (the port is always after the last colon).
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) host = "0.0.0.0";
  if (host == "localhost") host = "127.0.0.1";
  if (host.find(':') != std::string::npos) {
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&result.storage);
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) != 1) {
      return invalid("bad IPv6 address \"" + host + "\"");
    }
    result.length = sizeof(sockaddr_in6);
    return result;
  }
  auto* v4 = reinterpret_cast<sockaddr_in*>(&result.storage);
  v4->sin_family = AF_INET;
  v4->sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) != 1) {
    return invalid("bad host \"" + host + "\"");
  }
  result.length = sizeof(sockaddr_in);
  return result;
}

int BoundPort(int fd) {
  sockaddr_storage storage{};
  socklen_t length = sizeof(storage);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &length) != 0) {
    return -1;
  }
  if (storage.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port);
  }
  return ntohs(reinterpret_cast<sockaddr_in*>(&storage)->sin_port);
}

}  // namespace

// ---------------------------------------------------------------------------

class MetricsHttpServer::Loop {
 public:
  Loop(Fd listen_fd, Fd epoll_fd, Fd wake_fd,
       std::shared_ptr<prometheus::Registry> registry,
       const MetricsHttpOptions& options)
      : listen_fd_(std::move(listen_fd)),
        epoll_fd_(std::move(epoll_fd)),
        wake_fd_(std::move(wake_fd)),
        registry_(std::move(registry)),
        options_(options) {}

  ~Loop() { CloseAll(); }

  // Serves until Stop(); on the server's thread.
  void Run();

  // From any thread: Run() returns soon after.
  void Stop() {
    stopping_.store(true);
    const uint64_t one = 1;
    // Can only fail if the counter is saturated, i.e. already signalled.
    [[maybe_unused]] ssize_t n = write(wake_fd_.get(), &one, sizeof(one));
  }

  Stats stats() const {
    Stats stats;
    stats.open_connections = open_connections_.load();
    stats.accepted = accepted_.load();
    stats.evicted = evicted_.load();
    stats.timed_out = timed_out_.load();
    stats.responses = responses_.load();
    stats.buffered_response_bytes = buffered_bytes_published_.load();
    return stats;
  }

 private:
  enum class State {
    kReadingHead,  // waiting for (the rest of) a request head
    kWriting,      // `out` not yet sent whole
    kLingering,    // response sent, write side shut, dropping input
  };

  struct Connection {
    uint64_t id = 0;
    Fd fd;
    State state = State::kReadingHead;
    // A keep-alive connection between requests: idle_timeout applies until
    // the next request's first byte, then head_timeout.
    bool idle = false;
    bool peer_closed = false;  // read returned EOF
    bool keep_alive = false;   // of the response in `out`
    uint32_t events = 0;       // epoll interest now
    std::string in;            // unparsed input, <= max_request_head_bytes+1
    // Of the head being received in `in`: where the search for its end goes
    // on, and whether its request line was found valid. Without them a slow
    // loris would make every byte cost a scan of the whole head.
    size_t scanned = 0;
    bool request_line_checked = false;
    std::string out;  // the response being written
    size_t out_sent = 0;
    Clock::time_point deadline;
    // When the connection began to wait for what it waits for now; the
    // longest waiting is evicted first.
    Clock::time_point waiting_since;
  };

  // What a step of a connection's state machine left it in.
  enum class Step { kWait, kContinue, kClosed };

  void AcceptConnections(Clock::time_point now);
  void HandleEvent(uint64_t id, Clock::time_point now);
  // Reads what the peer sent; false if the connection was closed.
  bool Receive(Connection& c, Clock::time_point now);
  // Runs the connection's state machine as far as its input and the
  // socket's send buffer allow.
  void Drive(Connection& c, Clock::time_point now);
  Step ParseAndRespond(Connection& c, Clock::time_point now);
  Step Flush(Connection& c, Clock::time_point now);
  void Respond(Connection& c, std::string response, bool keep_alive,
               Clock::time_point now);
  std::string MetricsResponse(const Request& request, bool head_only);
  // Both return false if the connection was closed.
  bool StartLingering(Connection& c, Clock::time_point now);
  bool Discard(Connection& c);
  void SetInterest(Connection& c, uint32_t events);
  void ExpireDeadlines(Clock::time_point now);
  int NextTimeoutMs(Clock::time_point now) const;
  // Closes the connection that waited longest (lingering ones first, then
  // those reading a head, then writers; only writers, which hold response
  // bytes, if `writers_only`); false if there is none but `keep`.
  bool EvictOne(uint64_t keep, bool writers_only);
  void Close(Connection& c);
  void CloseAll();
  // Changes buffered_bytes_ and what stats() reports.
  void AddBuffered(int64_t delta) {
    buffered_bytes_ =
        static_cast<size_t>(static_cast<int64_t>(buffered_bytes_) + delta);
    buffered_bytes_published_.store(static_cast<int64_t>(buffered_bytes_));
  }

  Fd listen_fd_;
  Fd epoll_fd_;
  Fd wake_fd_;
  const std::shared_ptr<prometheus::Registry> registry_;
  const MetricsHttpOptions options_;
  std::atomic<bool> stopping_{false};

  // Only the loop's thread touches these.
  std::unordered_map<uint64_t, Connection> connections_;
  uint64_t next_id_ = kFirstConnectionId;
  size_t buffered_bytes_ = 0;  // unsent response bytes, all connections
  bool accept_paused_ = false;
  Clock::time_point accept_resume_;
  int64_t accept_errors_ = 0;

  std::atomic<int64_t> open_connections_{0};
  std::atomic<int64_t> accepted_{0};
  std::atomic<int64_t> evicted_{0};
  std::atomic<int64_t> timed_out_{0};
  std::atomic<int64_t> responses_{0};
  std::atomic<int64_t> buffered_bytes_published_{0};  // buffered_bytes_
};

void MetricsHttpServer::Loop::Run() {
  std::array<epoll_event, 64> events;
  while (!stopping_.load()) {
    const int timeout = NextTimeoutMs(Clock::now());
    const int n = epoll_wait(epoll_fd_.get(), events.data(),
                             static_cast<int>(events.size()), timeout);
    if (n < 0) {
      // Anything but EINTR means a bad epoll fd or buffer: a bug here.
      LS_CHECK(errno == EINTR) << "epoll_wait: " << ErrnoString(errno);
      continue;
    }
    const Clock::time_point now = Clock::now();
    for (int i = 0; i < n; ++i) {
      const uint64_t id = events[i].data.u64;
      if (id == kWakeId) {
        uint64_t count;
        [[maybe_unused]] ssize_t r =
            read(wake_fd_.get(), &count, sizeof(count));
      } else if (id == kListenId) {
        AcceptConnections(now);
      } else {
        HandleEvent(id, now);
      }
    }
    if (accept_paused_ && now >= accept_resume_) {
      epoll_event event{};
      event.events = EPOLLIN;
      event.data.u64 = kListenId;
      if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, listen_fd_.get(), &event) ==
          0) {
        accept_paused_ = false;
      }
    }
    ExpireDeadlines(now);
  }
  CloseAll();
}

void MetricsHttpServer::Loop::AcceptConnections(Clock::time_point now) {
  for (int i = 0; i < kMaxAcceptsPerWakeup; ++i) {
    Fd fd(accept4(listen_fd_.get(), nullptr, nullptr,
                  SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (fd.get() < 0) {
      const int error = errno;
      if (error == EAGAIN || error == EWOULDBLOCK) return;
      if (error == EINTR || error == ECONNABORTED || error == EPROTO) continue;
      if ((error == EMFILE || error == ENFILE || error == ENOBUFS ||
           error == ENOMEM) &&
          EvictOne(/*keep=*/0, /*writers_only=*/false)) {
        continue;  // an fd is free now
      }
      // Nothing to evict (or an unexpected error): stop watching the
      // listening socket for a moment instead of spinning on it.
      ++accept_errors_;
      if ((accept_errors_ & (accept_errors_ - 1)) == 0) {  // 1, 2, 4, ...
        LS_LOG(WARNING) << "metrics server: accept: " << ErrnoString(error)
                        << " (" << accept_errors_ << " so far)";
      }
      epoll_event event{};
      event.data.u64 = kListenId;
      epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, listen_fd_.get(), &event);
      accept_paused_ = true;
      accept_resume_ = now + kAcceptPause;
      return;
    }
    // Responses go out in one send(); Nagle would only delay their tails.
    const int one = 1;
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (options_.socket_send_buffer_bytes > 0) {
      setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUF,
                 &options_.socket_send_buffer_bytes,
                 sizeof(options_.socket_send_buffer_bytes));
    }
    // Make room before adding, so the newcomer is never the one evicted.
    while (static_cast<int>(connections_.size()) >=
               std::max(options_.max_connections, 1) &&
           EvictOne(/*keep=*/0, /*writers_only=*/false)) {
    }
    const uint64_t id = next_id_++;
    epoll_event event{};
    event.events = EPOLLIN | EPOLLRDHUP;
    event.data.u64 = id;
    if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd.get(), &event) != 0) {
      continue;  // fd closes; the peer sees a reset
    }
    Connection& c = connections_[id];
    c.id = id;
    c.fd = std::move(fd);
    c.events = event.events;
    c.deadline = now + options_.head_timeout;
    c.waiting_since = now;
    open_connections_.store(static_cast<int64_t>(connections_.size()));
    accepted_.fetch_add(1);
  }
}

void MetricsHttpServer::Loop::HandleEvent(uint64_t id, Clock::time_point now) {
  auto it = connections_.find(id);
  if (it == connections_.end()) return;  // closed earlier in this batch
  Connection& c = it->second;
  switch (c.state) {
    case State::kReadingHead:
      if (Receive(c, now)) Drive(c, now);
      return;
    case State::kWriting:
      Drive(c, now);
      return;
    case State::kLingering:
      Discard(c);
      return;
  }
}

bool MetricsHttpServer::Loop::Receive(Connection& c, Clock::time_point now) {
  // One byte past the limit is enough to know the head is too long.
  const size_t limit = options_.max_request_head_bytes + 1;
  char buffer[4096];
  while (c.in.size() < limit && !c.peer_closed) {
    const size_t want = std::min(sizeof(buffer), limit - c.in.size());
    const ssize_t n = recv(c.fd.get(), buffer, want, 0);
    if (n > 0) {
      if (c.idle) {
        c.idle = false;
        c.deadline = now + options_.head_timeout;
        c.waiting_since = now;
      }
      c.in.append(buffer, static_cast<size_t>(n));
    } else if (n == 0) {
      c.peer_closed = true;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      break;
    } else {
      Close(c);
      return false;
    }
  }
  if (c.in.size() >= limit || c.peer_closed) {
    // Nothing more is read until the input is dealt with; level-triggered
    // EPOLLIN would report the same bytes (or EOF) again and again.
    SetInterest(c, 0);
  }
  return true;
}

void MetricsHttpServer::Loop::Drive(Connection& c, Clock::time_point now) {
  int responses = 0;
  while (true) {
    Step step = Step::kWait;
    if (c.state == State::kReadingHead) {
      if (responses == kMaxResponsesPerTurn) {
        // More pipelined requests may be buffered; EPOLLOUT (the socket is
        // writable, the last response went out whole) brings the
        // connection back on the next turn.
        SetInterest(c, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
        return;
      }
      step = ParseAndRespond(c, now);
      if (step == Step::kContinue) ++responses;  // one was queued
    } else if (c.state == State::kWriting) {
      step = Flush(c, now);
    }
    if (step != Step::kContinue) return;
  }
}

MetricsHttpServer::Loop::Step MetricsHttpServer::Loop::ParseAndRespond(
    Connection& c, Clock::time_point now) {
  // RFC 9112 2.2: empty lines before a request line are ignored.
  const size_t start = c.in.find_first_not_of("\r\n");
  if (start != 0) {
    c.in.erase(0, start == std::string::npos ? c.in.size() : start);
    c.scanned = 0;
  }
  if (c.in.empty()) {
    if (c.peer_closed) {
      Close(c);
      return Step::kClosed;
    }
    SetInterest(c, EPOLLIN | EPOLLRDHUP);
    return Step::kWait;
  }

  const size_t head_end = FindHeadEnd(c.in, c.scanned);
  const bool too_long = head_end == std::string::npos
                            ? c.in.size() > options_.max_request_head_bytes
                            : head_end > options_.max_request_head_bytes;
  if (too_long) {
    Respond(c,
            BuildError(
                {431, absl::StrCat("the request head is over ",
                                   options_.max_request_head_bytes, " bytes")},
                /*head_only=*/false),
            /*keep_alive=*/false, now);
    return Step::kContinue;
  }
  if (head_end == std::string::npos) {
    // The end marker is at most 3 bytes: it may start in the last 2.
    c.scanned = c.in.size() < 2 ? 0 : c.in.size() - 2;
    if (!c.request_line_checked) {
      if (std::optional<HttpError> error = CheckIncompleteHead(c.in)) {
        Respond(c, BuildError(*error, /*head_only=*/false), false, now);
        return Step::kContinue;
      }
      c.request_line_checked = c.in.find('\n') != std::string::npos;
    }
    if (c.peer_closed) {
      Close(c);
      return Step::kClosed;
    }
    SetInterest(c, EPOLLIN | EPOLLRDHUP);
    return Step::kWait;
  }

  Request request;
  const std::optional<HttpError> error =
      ParseHead(std::string_view(c.in).substr(0, head_end), &request);
  c.in.erase(0, head_end);
  c.scanned = 0;
  c.request_line_checked = false;
  const bool head_only = request.method == "HEAD";
  if (error) {
    Respond(c, BuildError(*error, head_only), false, now);
  } else if (request.method != "GET" && request.method != "HEAD") {
    Respond(c,
            BuildError({405, "only GET and HEAD are served"}, false, false,
                       "Allow: GET, HEAD\r\n"),
            false, now);
  } else if (request.has_body) {
    // Never read, so the connection cannot continue after it.
    Respond(c,
            BuildError({400, "requests with a body are not served"}, head_only),
            false, now);
  } else if (request.path != "/metrics") {
    // Nothing is left unread, so the connection may go on.
    Respond(c,
            BuildError({404, "only /metrics is served"}, head_only,
                       request.keep_alive),
            request.keep_alive, now);
  } else {
    Respond(c, MetricsResponse(request, head_only), request.keep_alive, now);
  }
  return Step::kContinue;
}

std::string MetricsHttpServer::Loop::MetricsResponse(const Request& request,
                                                     bool head_only) {
  std::string body;
  // prometheus-cpp may throw (bad_alloc at least); this thread must not die
  // of it, and no exception may leave the library.
  try {
    body = prometheus::TextSerializer().Serialize(registry_->Collect());
  } catch (const std::exception& e) {
    LS_LOG(ERROR) << "metrics server: serializing the registry: " << e.what();
    return BuildError({500, "cannot serialize the metrics"}, head_only);
  } catch (...) {
    LS_LOG(ERROR) << "metrics server: serializing the registry failed";
    return BuildError({500, "cannot serialize the metrics"}, head_only);
  }
  return BuildResponse(200, kMetricsContentType, body, request.keep_alive,
                       head_only);
}

void MetricsHttpServer::Loop::Respond(Connection& c, std::string response,
                                      bool keep_alive, Clock::time_point now) {
  // Over the budget, the writers stuck longest make room; a response that
  // cannot fit even then is replaced by a short 503.
  while (buffered_bytes_ + response.size() >
             options_.max_buffered_response_bytes &&
         EvictOne(/*keep=*/c.id, /*writers_only=*/true)) {
  }
  if (buffered_bytes_ + response.size() >
      options_.max_buffered_response_bytes) {
    response =
        BuildError({503, "the response does not fit the buffer budget"}, false);
    keep_alive = false;
  }
  AddBuffered(static_cast<int64_t>(response.size()));
  responses_.fetch_add(1);  // after AddBuffered: tests wait for this
  c.out = std::move(response);
  c.out_sent = 0;
  c.keep_alive = keep_alive;
  c.state = State::kWriting;
  c.deadline = now + options_.response_timeout;
  c.waiting_since = now;
}

MetricsHttpServer::Loop::Step MetricsHttpServer::Loop::Flush(
    Connection& c, Clock::time_point now) {
  while (c.out_sent < c.out.size()) {
    const ssize_t n =
        send(c.fd.get(), c.out.data() + c.out_sent, c.out.size() - c.out_sent,
             MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.out_sent += static_cast<size_t>(n);
      AddBuffered(-n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // No reading meanwhile: the next request waits in the kernel, which
      // pushes back on a client that pipelines without reading.
      SetInterest(c, EPOLLOUT);
      return Step::kWait;
    } else {
      Close(c);  // EPIPE, ECONNRESET, ...
      return Step::kClosed;
    }
  }
  // Done: give the (possibly large) buffer back.
  std::string().swap(c.out);
  c.out_sent = 0;
  if (!c.keep_alive) {
    return StartLingering(c, now) ? Step::kWait : Step::kClosed;
  }
  c.state = State::kReadingHead;
  c.idle = c.in.empty();
  c.deadline = now + (c.idle ? options_.idle_timeout : options_.head_timeout);
  c.waiting_since = now;
  return Step::kContinue;  // a pipelined request may be complete already
}

bool MetricsHttpServer::Loop::StartLingering(Connection& c,
                                             Clock::time_point now) {
  if (c.peer_closed) {
    Close(c);
    return false;
  }
  shutdown(c.fd.get(), SHUT_WR);
  c.state = State::kLingering;
  c.in.clear();
  c.deadline = now + kLingerTimeout;
  c.waiting_since = now;
  SetInterest(c, EPOLLIN | EPOLLRDHUP);
  return Discard(c);
}

bool MetricsHttpServer::Loop::Discard(Connection& c) {
  char buffer[4096];
  for (size_t dropped = 0; dropped < kLingerBytesPerTurn;) {
    const ssize_t n = recv(c.fd.get(), buffer, sizeof(buffer), 0);
    if (n > 0) {
      dropped += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return true;
    } else {
      Close(c);  // EOF or an error
      return false;
    }
  }
  return true;  // more next turn (level-triggered)
}

void MetricsHttpServer::Loop::SetInterest(Connection& c, uint32_t events) {
  if (c.events == events) return;
  epoll_event event{};
  event.events = events;
  event.data.u64 = c.id;
  // MOD allocates nothing; it fails only for a bad fd or epoll fd: a bug.
  LS_CHECK(epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, c.fd.get(), &event) == 0)
      << "epoll_ctl: " << ErrnoString(errno);
  c.events = events;
}

void MetricsHttpServer::Loop::ExpireDeadlines(Clock::time_point now) {
  std::vector<uint64_t> expired;
  for (const auto& [id, c] : connections_) {
    if (c.deadline <= now) expired.push_back(id);
  }
  for (uint64_t id : expired) {
    Connection& c = connections_.at(id);
    // A lingering connection ending is the normal end, not a timeout.
    if (c.state != State::kLingering) timed_out_.fetch_add(1);
    Close(c);
  }
}

int MetricsHttpServer::Loop::NextTimeoutMs(Clock::time_point now) const {
  std::optional<Clock::time_point> next;
  if (accept_paused_) next = accept_resume_;
  for (const auto& [id, c] : connections_) {
    if (!next || c.deadline < *next) next = c.deadline;
  }
  if (!next) return -1;
  if (*next <= now) return 0;
  // Rounded up: waking a little early would only loop again.
  const auto ms =
      std::chrono::ceil<std::chrono::milliseconds>(*next - now).count();
  return static_cast<int>(
      std::min<int64_t>(ms, std::numeric_limits<int>::max()));
}

bool MetricsHttpServer::Loop::EvictOne(uint64_t keep, bool writers_only) {
  auto rank = [](State state) {
    switch (state) {
      case State::kLingering:
        return 0;
      case State::kReadingHead:
        return 1;
      case State::kWriting:
        return 2;
    }
    return 2;
  };
  Connection* victim = nullptr;
  for (auto& [id, c] : connections_) {
    if (id == keep || (writers_only && c.state != State::kWriting)) continue;
    if (victim == nullptr || rank(c.state) < rank(victim->state) ||
        (rank(c.state) == rank(victim->state) &&
         c.waiting_since < victim->waiting_since)) {
      victim = &c;
    }
  }
  if (victim == nullptr) return false;
  if (victim->state != State::kLingering) evicted_.fetch_add(1);
  Close(*victim);
  return true;
}

void MetricsHttpServer::Loop::Close(Connection& c) {
  AddBuffered(-static_cast<int64_t>(c.out.size() - c.out_sent));
  // close() removes the fd from the epoll set.
  connections_.erase(c.id);  // destroys `c` and closes its fd
  open_connections_.store(static_cast<int64_t>(connections_.size()));
}

void MetricsHttpServer::Loop::CloseAll() {
  connections_.clear();
  buffered_bytes_ = 0;
  buffered_bytes_published_.store(0);
  open_connections_.store(0);
}

// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& address, std::shared_ptr<prometheus::Registry> registry,
    const MetricsHttpOptions& options) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError("MetricsHttpServer: null registry");
  }
  absl::StatusOr<SocketAddress> parsed = ParseAddress(address);
  if (!parsed.ok()) return parsed.status();

  Fd listen_fd(socket(parsed->storage.ss_family,
                      SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (listen_fd.get() < 0) return SystemError(address, "socket", errno);
  // A restarted server may bind while old connections sit in TIME_WAIT. On
  // Linux this never lets two sockets listen on one port.
  const int one = 1;
  setsockopt(listen_fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(listen_fd.get(), reinterpret_cast<const sockaddr*>(&parsed->storage),
           parsed->length) != 0) {
    return SystemError(address, "bind", errno);
  }
  if (listen(listen_fd.get(), SOMAXCONN) != 0) {
    return SystemError(address, "listen", errno);
  }
  const int port = BoundPort(listen_fd.get());
  if (port < 0) return SystemError(address, "getsockname", errno);

  Fd epoll_fd(epoll_create1(EPOLL_CLOEXEC));
  if (epoll_fd.get() < 0) return SystemError(address, "epoll_create1", errno);
  Fd wake_fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (wake_fd.get() < 0) return SystemError(address, "eventfd", errno);
  for (const auto& [fd, id] : {std::pair{listen_fd.get(), kListenId},
                               std::pair{wake_fd.get(), kWakeId}}) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.u64 = id;
    if (epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, fd, &event) != 0) {
      return SystemError(address, "epoll_ctl", errno);
    }
  }

  auto loop =
      std::make_unique<Loop>(std::move(listen_fd), std::move(epoll_fd),
                             std::move(wake_fd), std::move(registry), options);
  std::unique_ptr<MetricsHttpServer> server(
      new MetricsHttpServer(std::move(loop), port));
  try {
    server->thread_ =
        std::thread([loop = server->loop_.get()] { loop->Run(); });
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot serve metrics on \"", address, "\": no thread: ", e.what()));
  }
  return server;
}

MetricsHttpServer::MetricsHttpServer(std::unique_ptr<Loop> loop, int port)
    : loop_(std::move(loop)), port_(port) {}

MetricsHttpServer::~MetricsHttpServer() {
  loop_->Stop();
  if (thread_.joinable()) thread_.join();
}

MetricsHttpServer::Stats MetricsHttpServer::stats() const {
  return loop_->stats();
}

}  // namespace litestage
