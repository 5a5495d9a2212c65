// Statistics for litestage-cli bench: latency percentiles and a tally of
// request outcomes by gRPC status code name. Free of gRPC so that it is tested
// on known data without a server.
#ifndef LITESTAGE_CLIENT_LOAD_STATS_H_
#define LITESTAGE_CLIENT_LOAD_STATS_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace litestage {

// The p-th percentile (p in [0, 100]) of `sorted_values` (ascending), by
// linear interpolation between the closest ranks: rank = p / 100 * (n - 1),
// the value at floor(rank) plus the fraction times the step to the next one.
// This is NumPy's default ("linear") and what most load tools report; it is
// exact for p = 0 (min), 50 of an odd count (median) and 100 (max). Returns 0
// for an empty input; p outside [0, 100] is clamped.
double Percentile(const std::vector<double>& sorted_values, double p);

struct LatencySummary {
  int64_t count = 0;
  double mean = 0.0;  // Seconds; all fields are 0 when count is 0.
  double min = 0.0;
  double max = 0.0;
  double p50 = 0.0;
  double p90 = 0.0;
  double p99 = 0.0;
};

// Summarizes `values` (seconds, any order).
LatencySummary Summarize(std::vector<double> values);

// The outcome of one request as the load generator saw it.
struct RequestOutcome {
  // gRPC status code name ("OK", "UNAVAILABLE", ...).
  std::string code = "OK";
  // The status message of a failed request (one is kept per code).
  std::string message;
  // Client-side end-to-end latency, seconds.
  double seconds = 0.0;
  // Model tokens generated (OK requests; from the response).
  int64_t generated_tokens = 0;
  // Server-side time to first token, seconds; < 0 when unknown.
  double time_to_first_token_seconds = -1.0;
  // Per-stage latency from the response's StageRecords: (stage name,
  // seconds), in pipeline order.
  std::vector<std::pair<std::string, double>> stage_seconds;
};

struct LoadReport {
  int64_t requests = 0;  // Every finished request, OK or not.
  int64_t ok = 0;
  int64_t failed = 0;
  double wall_seconds = 0.0;
  // OK requests per wall-clock second.
  double requests_per_second = 0.0;
  // Generated tokens of OK requests per wall-clock second.
  int64_t generated_tokens = 0;
  double generated_tokens_per_second = 0.0;
  // Request counts by status code name, OK included (sorted by name).
  std::map<std::string, int64_t> codes;
  // One status message per failing code name, to show what went wrong.
  std::map<std::string, std::string> first_error_messages;
  // End-to-end latency of OK requests.
  LatencySummary latency;
  // Server-side time to first token of OK requests that reported one.
  LatencySummary time_to_first_token;
  // Per-stage latency of OK requests, stages in first-seen order.
  std::vector<std::pair<std::string, LatencySummary>> stages;
};

// Collects request outcomes from many client threads (thread-safe) and
// reports them.
class LoadStats {
 public:
  void Record(RequestOutcome outcome);
  // `wall_seconds`: the run's duration, for throughput (0 gives 0 rates).
  LoadReport Report(double wall_seconds) const;

 private:
  mutable std::mutex mutex_;
  std::vector<RequestOutcome> outcomes_;  // Guarded by mutex_.
};

}  // namespace litestage

#endif  // LITESTAGE_CLIENT_LOAD_STATS_H_
