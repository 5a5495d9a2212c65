// Prometheus metrics of the litestage server: per-stage latency, sub-layer
// execution/skip counts and early exits (what LiteStage changes), plus the
// request-level set every LLM server exports (vLLM's names, with a
// `litestage_` prefix). docs/metrics.md lists every metric, its labels,
// its buckets and example PromQL.
//
// Label values are bounded by construction: pipeline and stage names come
// from the pipelines the server loaded (given to the constructor), never
// from requests. Observations for a pipeline/stage outside that set are
// dropped with a warning instead of creating a series.
//
// Thread safety: every method may be called from any thread concurrently
// (the per-stage tables are built in the constructor and only read later;
// prometheus-cpp metrics are themselves thread-safe).
#ifndef LITESTAGE_SERVER_METRICS_H_
#define LITESTAGE_SERVER_METRICS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/stages/session.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/metrics_http.h"

namespace litestage {

// Exported once as litestage_model_info{model,backend,dtype} 1.
struct ModelLabels {
  std::string model;    // e.g. "qwen2.5-0.5b"
  std::string backend;  // e.g. "cpu", "cuda"
  std::string dtype;    // e.g. "bf16"
};

// Bucket upper bounds (seconds, or sequences for batch size). Exposed so
// tests and docs can refer to them; see metrics.cc for why these values.
const std::vector<double>& StageLatencyBuckets();
const std::vector<double>& RequestLatencyBuckets();
const std::vector<double>& TimeToFirstTokenBuckets();
const std::vector<double>& InterTokenLatencyBuckets();
const std::vector<double>& BatchSizeBuckets();

class ServerMetrics {
 public:
  // Distinct `profile` label values accepted by SetStageSkipRatio; further
  // ones are dropped with a warning (profiles such as "even:K" may be
  // spelled by clients, so this caps the series count).
  static constexpr size_t kMaxSkipRatioProfiles = 64;

  // Registers every metric in `registry` (one ServerMetrics per registry).
  // `stages_by_pipeline`: pipeline name -> its stage names, the only
  // pipeline/stage label values ever used. Every per-stage series is created
  // here at zero, so dashboards show zeros and PromQL ratios exist before
  // the first request.
  ServerMetrics(std::shared_ptr<prometheus::Registry> registry,
                const ModelLabels& model,
                const std::map<std::string, std::vector<std::string>>&
                    stages_by_pipeline);

  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // One finished stage of a request of `pipeline` (record.name is the
  // stage): latency/prefill/decode histograms, sublayers_total{kind,action}
  // += record.sublayers, early_exits_total += record.early_exits,
  // generated_tokens_total += record.generated_tokens. An unknown
  // pipeline/stage is ignored with a warning.
  void ObserveStage(const std::string& pipeline, const StageRecord& record);

  // The fraction of sub-layers `profile` skips in a stage (0..1).
  void SetStageSkipRatio(const std::string& pipeline, const std::string& stage,
                         const std::string& profile, double ratio);

  // One finished RPC: requests_total{method,code} and
  // request_latency_seconds{method}. `method`: the RPC's name as the server
  // names it (a fixed set); `code`: the gRPC status code name ("OK",
  // "INVALID_ARGUMENT", ...).
  void ObserveRequest(const std::string& method, const std::string& code,
                      double seconds);

  void ObserveTimeToFirstToken(double seconds);
  void ObserveInterTokenLatency(double seconds);
  void ObserveBatchSize(int64_t sequences);
  void SetQueueDepth(int64_t requests);
  void SetRequestsRunning(int64_t requests);
  void SetKvCacheUsage(double ratio);  // 0..1
  // The KV prefix cache now: blocks published (held or only cached) and the
  // evictions so far (a running total from the block manager).
  void SetPrefixCache(int64_t cached_blocks, int64_t evictions_so_far);

  // The registry in Prometheus text exposition format (what /metrics
  // serves), for tests and debugging.
  std::string Serialize() const;

 private:
  // The series of one (pipeline, stage), created in the constructor.
  struct StageSeries {
    prometheus::Histogram* latency = nullptr;
    prometheus::Histogram* prefill = nullptr;
    prometheus::Histogram* decode = nullptr;
    prometheus::Counter* attention_executed = nullptr;
    prometheus::Counter* attention_skipped = nullptr;
    prometheus::Counter* mlp_executed = nullptr;
    prometheus::Counter* mlp_skipped = nullptr;
    prometheus::Counter* early_exits = nullptr;
    prometheus::Counter* generated_tokens = nullptr;
    prometheus::Counter* prefix_hit_tokens = nullptr;
    prometheus::Counter* prefix_computed_tokens = nullptr;
  };

  // nullptr (after a rate-limited warning) when the pair is not configured.
  const StageSeries* FindStage(const std::string& pipeline,
                               const std::string& stage,
                               const char* caller) const;
  // Logs the first few drops, then every power of two, so a misconfigured
  // caller cannot flood the log.
  void WarnDropped(const std::string& what) const;

  std::shared_ptr<prometheus::Registry> registry_;

  prometheus::Family<prometheus::Histogram>* stage_latency_;
  prometheus::Family<prometheus::Histogram>* stage_prefill_;
  prometheus::Family<prometheus::Histogram>* stage_decode_;
  prometheus::Family<prometheus::Counter>* sublayers_;
  prometheus::Family<prometheus::Gauge>* stage_skip_ratio_;
  prometheus::Family<prometheus::Counter>* stage_early_exits_;
  prometheus::Family<prometheus::Counter>* stage_generated_tokens_;
  prometheus::Family<prometheus::Histogram>* request_latency_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Histogram* time_to_first_token_;
  prometheus::Histogram* inter_token_latency_;
  prometheus::Histogram* batch_size_;
  prometheus::Gauge* queue_depth_;
  prometheus::Gauge* requests_running_;
  prometheus::Gauge* kv_cache_usage_;
  prometheus::Family<prometheus::Counter>* prefix_cache_tokens_;
  prometheus::Gauge* prefix_cache_blocks_;
  prometheus::Counter* prefix_cache_evictions_;
  std::atomic<int64_t> evictions_reported_{0};

  // (pipeline, stage) -> series; immutable after construction.
  std::map<std::pair<std::string, std::string>, StageSeries> stages_;

  // Profiles seen by SetStageSkipRatio (bounded by kMaxSkipRatioProfiles).
  mutable std::mutex profiles_mutex_;
  std::set<std::string> skip_ratio_profiles_;

  mutable std::atomic<int64_t> dropped_observations_{0};
};

// Serves the registry on http://`address`/metrics ("host:port"; port 0
// picks a free one, see MetricsHttpServer::port()) with MetricsHttpServer
// and its default limits (server/metrics_http.h, docs/metrics.md) until the
// returned server is destroyed. InvalidArgument for a malformed address or a
// null registry; Unavailable naming the address and the system's reason when
// it cannot bind (port in use, address not on this host).
absl::StatusOr<std::unique_ptr<MetricsHttpServer>> StartMetricsServer(
    const std::string& address, std::shared_ptr<prometheus::Registry> registry);

}  // namespace litestage

#endif  // LITESTAGE_SERVER_METRICS_H_
