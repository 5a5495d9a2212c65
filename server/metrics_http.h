// MetricsHttpServer: the HTTP/1.1 server behind the Prometheus /metrics
// endpoint (GET and HEAD of /metrics, keep-alive), one thread, non-blocking
// sockets on epoll.
//
// It replaces prometheus-cpp's Exposer (civetweb), which has two worker
// threads and no request timeout: two unfinished requests, or a few silent
// TCP connections, blinded every scrape. Here no connection can hold the
// thread: every read and write is non-blocking, and every resource a peer can
// make the server hold is bounded (MetricsHttpOptions):
//   * open connections: at the cap, accepting one more closes the connection
//     that has waited longest for a request (a silent, idle or half-sent one)
//     instead of refusing the newcomer, so a fresh scraper always gets in;
//   * request head: at most max_request_head_bytes per connection (431 and
//     close beyond), received within head_timeout of its first byte or of
//     the connection's start; keep-alive connections close after
//     idle_timeout without a request;
//   * responses: written from a per-connection buffer as the peer reads; a
//     response not taken within response_timeout closes the connection, the
//     bytes buffered over all connections are capped, and so is each
//     socket's kernel send buffer.
// civetweb's 100 KiB thread stacks also crash processes that load cuBLASLt
// (docs/metrics.md); this thread has the default stack.
//
// The registry is collected and serialized on the server's thread, once per
// request (collecting is fast and prometheus-cpp's metrics are thread-safe).
#ifndef LITESTAGE_SERVER_METRICS_HTTP_H_
#define LITESTAGE_SERVER_METRICS_HTTP_H_

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "prometheus/registry.h"

namespace litestage {

// The defaults are what litestage-server uses; docs/metrics.md explains them.
struct MetricsHttpOptions {
  // Open connections at most; accepting one more closes the one waiting
  // longest for its request head (or, if every connection is busy writing,
  // the one writing longest).
  int max_connections = 256;
  // Request line plus headers; a longer head gets 431 and the connection is
  // closed. Prometheus sends ~200 bytes.
  size_t max_request_head_bytes = 8 * 1024;
  // From a connection's start (or the first byte of a keep-alive request)
  // to the end of its request head.
  std::chrono::milliseconds head_timeout{5000};
  // A keep-alive connection without a new request is closed after this.
  std::chrono::milliseconds idle_timeout{60000};
  // A response the peer has not taken whole by then closes the connection
  // (Prometheus's default scrape timeout is 10 s).
  std::chrono::milliseconds response_timeout{10000};
  // SO_SNDBUF of each connection (0: the kernel's autotuning, up to
  // net.ipv4.tcp_wmem's maximum, 4 MiB by default). Set, it bounds what a
  // peer that does not read can pin in kernel memory (Linux doubles the
  // value); the rest of a response waits in the server, counted below.
  int socket_send_buffer_bytes = 128 * 1024;
  // Unsent response bytes over all connections. A response that would
  // exceed it first closes the connections stuck longest in a write; if it
  // still does not fit it is answered 503.
  size_t max_buffered_response_bytes = 64 * 1024 * 1024;
};

class MetricsHttpServer {
 public:
  // Counters for tests and debugging; read at any time from any thread.
  struct Stats {
    int64_t open_connections = 0;
    int64_t accepted = 0;
    // Closed to make room at max_connections or in the response budget.
    int64_t evicted = 0;
    // Closed by head_timeout, idle_timeout or response_timeout.
    int64_t timed_out = 0;
    int64_t responses = 0;  // every status, 200 and errors
    // Response bytes not yet taken by the kernel, over all connections.
    int64_t buffered_response_bytes = 0;
  };

  // Listens on `address` ("host:port"; host: an IPv4 or IPv6 literal, IPv6
  // in brackets, or "localhost"; port 0 picks a free one, see port()) and
  // serves `registry` on /metrics until destroyed. InvalidArgument for a
  // malformed address or a null registry; Unavailable naming the address and
  // the system's reason when the socket cannot be bound (port in use, an
  // address not on this host).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address,
      std::shared_ptr<prometheus::Registry> registry,
      const MetricsHttpOptions& options = {});

  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Stops the thread and closes every connection (unsent responses are
  // dropped); returns promptly whatever the peers do.
  ~MetricsHttpServer();

  // The bound port (the chosen one when started with port 0).
  int port() const { return port_; }

  Stats stats() const;

 private:
  class Loop;

  MetricsHttpServer(std::unique_ptr<Loop> loop, int port);

  std::unique_ptr<Loop> loop_;
  const int port_;
  std::thread thread_;
};

}  // namespace litestage

#endif  // LITESTAGE_SERVER_METRICS_HTTP_H_
