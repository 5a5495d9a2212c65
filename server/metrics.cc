#include "server/metrics.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/util/check.h"
#include "prometheus/text_serializer.h"

namespace litestage {
namespace {

// Bucket choice. Every latency set runs in 1-2.5-5 steps per decade (the
// Prometheus client default's spacing), so histogram_quantile interpolates
// within a factor of ~2.5 anywhere in the range, and spans the range the
// metric really takes on the machines litestage runs on:
//
// Stage latency/prefill/decode: one stage is a full generation (a re-prefill
// of the few-shot prompt plus up to max_new_tokens of decode). A small model
// on a GPU finishes a short stage in ~10 ms; a 0.5B model on two CPU cores
// decoding a few hundred tokens takes minutes. 10 ms .. 10 min. The three
// share one set so prefill + decode ~= latency can be compared bucket by
// bucket.
const std::vector<double> kStageLatencyBuckets = {
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 600};

// Request latency {method}: cheap unary RPCs (health, listing pipelines)
// take ~1 ms; a whole reasoning request runs every stage, so up to tens of
// minutes on CPU. 1 ms .. 30 min.
const std::vector<double> kRequestLatencyBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
    2.5,   5,      10,    25,   50,    100,  250, 600,  1800};

// Time to first token: one prefill plus queueing; ~1 ms for a short prompt
// on a GPU, tens of seconds for a long prompt on CPU or a deep queue.
// 1 ms .. 60 s (vLLM goes to 2560 s; beyond a minute the exact value no
// longer matters, +Inf counts it).
const std::vector<double> kTimeToFirstTokenBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5,   1,      2.5,   5,    10,    25,   60};

// Inter-token latency: one decode step of the whole batch; ~1 ms (small
// model, GPU) to ~1 s (large batch on CPU), 5 s as the ceiling. Denser
// between 5 ms and 100 ms, where CPU decode of the 0.5B models sits and
// where a skip profile's speed-up shows.
const std::vector<double> kInterTokenLatencyBuckets = {
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.05,  0.075,  0.1,   0.25,   0.5,  1,     2.5,  5};

// Batch size: sequences per engine step; the scheduler's batches grow in
// powers of two up to 256 (a fan-out stage alone is num_choices sequences).
const std::vector<double> kBatchSizeBuckets = {1,  2,  4,   8,  16,
                                               32, 64, 128, 256};

constexpr int64_t kWarningsBeforeThrottling = 16;

}  // namespace

const std::vector<double>& StageLatencyBuckets() {
  return kStageLatencyBuckets;
}
const std::vector<double>& RequestLatencyBuckets() {
  return kRequestLatencyBuckets;
}
const std::vector<double>& TimeToFirstTokenBuckets() {
  return kTimeToFirstTokenBuckets;
}
const std::vector<double>& InterTokenLatencyBuckets() {
  return kInterTokenLatencyBuckets;
}
const std::vector<double>& BatchSizeBuckets() { return kBatchSizeBuckets; }

ServerMetrics::ServerMetrics(
    std::shared_ptr<prometheus::Registry> registry, const ModelLabels& model,
    const std::map<std::string, std::vector<std::string>>& stages_by_pipeline)
    : registry_(std::move(registry)) {
  LS_CHECK(registry_ != nullptr) << "ServerMetrics needs a registry";
  prometheus::Registry& r = *registry_;

  stage_latency_ =
      &prometheus::BuildHistogram()
           .Name("litestage_stage_latency_seconds")
           .Help(
               "Wall time of one pipeline stage of a request (all its "
               "branches), prefill plus decode.")
           .Register(r);
  stage_prefill_ =
      &prometheus::BuildHistogram()
           .Name("litestage_stage_prefill_seconds")
           .Help(
               "Prefill part of a stage: until every branch had its first "
               "token (each stage re-prefills with its own skip set).")
           .Register(r);
  stage_decode_ = &prometheus::BuildHistogram()
                       .Name("litestage_stage_decode_seconds")
                       .Help(
                           "Decode part of a stage: from the first token "
                           "of every branch to the stage's end.")
                       .Register(r);
  sublayers_ =
      &prometheus::BuildCounter()
           .Name("litestage_sublayers_total")
           .Help(
               "Sub-layer passes per token, by kind (attention|mlp) and "
               "action (executed|skipped by the stage's skip profile).")
           .Register(r);
  stage_skip_ratio_ =
      &prometheus::BuildGauge()
           .Name("litestage_stage_skip_ratio")
           .Help(
               "Fraction of sub-layers the profile skips in the stage "
               "(0..1), as configured.")
           .Register(r);
  stage_early_exits_ =
      &prometheus::BuildCounter()
           .Name("litestage_stage_early_exits_total")
           .Help("Stage branches ended by confidence early exit.")
           .Register(r);
  stage_generated_tokens_ = &prometheus::BuildCounter()
                                 .Name("litestage_stage_generated_tokens_total")
                                 .Help(
                                     "Tokens generated in the stage (sum "
                                     "over its branches).")
                                 .Register(r);
  request_latency_ =
      &prometheus::BuildHistogram()
           .Name("litestage_request_latency_seconds")
           .Help("Wall time of one RPC from arrival to its final status.")
           .Register(r);
  requests_ = &prometheus::BuildCounter()
                   .Name("litestage_requests_total")
                   .Help("Finished RPCs by method and gRPC status code name.")
                   .Register(r);
  time_to_first_token_ =
      &prometheus::BuildHistogram()
           .Name("litestage_time_to_first_token_seconds")
           .Help(
               "Time from a request's arrival to its first generated "
               "token, queueing included.")
           .Register(r)
           .Add({}, kTimeToFirstTokenBuckets);
  inter_token_latency_ =
      &prometheus::BuildHistogram()
           .Name("litestage_inter_token_latency_seconds")
           .Help("Time between consecutive generated tokens of a sequence.")
           .Register(r)
           .Add({}, kInterTokenLatencyBuckets);
  batch_size_ = &prometheus::BuildHistogram()
                     .Name("litestage_batch_size")
                     .Help("Sequences in one engine step (decode batch).")
                     .Register(r)
                     .Add({}, kBatchSizeBuckets);
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("litestage_queue_depth")
                      .Help("Requests waiting for the scheduler.")
                      .Register(r)
                      .Add({});
  requests_running_ = &prometheus::BuildGauge()
                           .Name("litestage_requests_running")
                           .Help("Requests the scheduler is running now.")
                           .Register(r)
                           .Add({});
  kv_cache_usage_ = &prometheus::BuildGauge()
                         .Name("litestage_kv_cache_usage_ratio")
                         .Help("Fraction of the KV cache in use (0..1).")
                         .Register(r)
                         .Add({});
  prefix_cache_tokens_ =
      &prometheus::BuildCounter()
           .Name("litestage_prefix_cache_tokens_total")
           .Help(
               "Prompt tokens of the stage by result: hit (K/V reused from "
               "the prefix cache or a shared fan-out prefix, not computed) "
               "or computed.")
           .Register(r);
  prefix_cache_blocks_ =
      &prometheus::BuildGauge()
           .Name("litestage_prefix_cache_blocks")
           .Help(
               "KV blocks findable by content in the prefix cache (held by "
               "a running sequence, or only cached: those make room, least "
               "recently released first, when the KV cache is full).")
           .Register(r)
           .Add({});
  prefix_cache_evictions_ =
      &prometheus::BuildCounter()
           .Name("litestage_prefix_cache_evictions_total")
           .Help(
               "Cached KV blocks reused for new tokens under memory pressure.")
           .Register(r)
           .Add({});
  prometheus::BuildGauge()
      .Name("litestage_model_info")
      .Help("The served model; always 1, the labels carry the information.")
      .Register(r)
      .Add({{"model", model.model},
            {"backend", model.backend},
            {"dtype", model.dtype}})
      .Set(1);

  for (const auto& [pipeline, stage_names] : stages_by_pipeline) {
    for (const std::string& stage : stage_names) {
      const prometheus::Labels labels = {{"pipeline", pipeline},
                                         {"stage", stage}};
      auto sublayer = [&](const char* kind, const char* action) {
        prometheus::Labels with_kind = labels;
        with_kind["kind"] = kind;
        with_kind["action"] = action;
        return &sublayers_->Add(with_kind);
      };
      StageSeries series;
      series.latency = &stage_latency_->Add(labels, kStageLatencyBuckets);
      series.prefill = &stage_prefill_->Add(labels, kStageLatencyBuckets);
      series.decode = &stage_decode_->Add(labels, kStageLatencyBuckets);
      series.attention_executed = sublayer("attention", "executed");
      series.attention_skipped = sublayer("attention", "skipped");
      series.mlp_executed = sublayer("mlp", "executed");
      series.mlp_skipped = sublayer("mlp", "skipped");
      series.early_exits = &stage_early_exits_->Add(labels);
      series.generated_tokens = &stage_generated_tokens_->Add(labels);
      prometheus::Labels hit = labels, computed = labels;
      hit["result"] = "hit";
      computed["result"] = "computed";
      series.prefix_hit_tokens = &prefix_cache_tokens_->Add(hit);
      series.prefix_computed_tokens = &prefix_cache_tokens_->Add(computed);
      stages_[{pipeline, stage}] = series;
    }
  }
}

void ServerMetrics::WarnDropped(const std::string& what) const {
  const int64_t dropped = ++dropped_observations_;
  // First few, then at 32, 64, 128, ...: enough to notice, never a flood.
  if (dropped <= kWarningsBeforeThrottling || (dropped & (dropped - 1)) == 0) {
    LS_LOG(WARNING) << "metrics: ignored " << what << " (" << dropped
                    << " observations ignored so far)";
  }
}

const ServerMetrics::StageSeries* ServerMetrics::FindStage(
    const std::string& pipeline, const std::string& stage,
    const char* caller) const {
  auto it = stages_.find({pipeline, stage});
  if (it == stages_.end()) {
    WarnDropped(absl::StrCat(caller, " for pipeline \"", pipeline,
                             "\" stage \"", stage,
                             "\": not a stage of a loaded pipeline"));
    return nullptr;
  }
  return &it->second;
}

void ServerMetrics::ObserveStage(const std::string& pipeline,
                                 const StageRecord& record) {
  const StageSeries* series = FindStage(pipeline, record.name, "ObserveStage");
  if (series == nullptr) return;
  series->latency->Observe(record.seconds);
  series->prefill->Observe(record.prefill_seconds);
  series->decode->Observe(record.decode_seconds);
  // Counter::Increment ignores negative values, so a corrupt record cannot
  // make a counter go backwards.
  series->attention_executed->Increment(
      static_cast<double>(record.sublayers.attention_executed));
  series->attention_skipped->Increment(
      static_cast<double>(record.sublayers.attention_skipped));
  series->mlp_executed->Increment(
      static_cast<double>(record.sublayers.mlp_executed));
  series->mlp_skipped->Increment(
      static_cast<double>(record.sublayers.mlp_skipped));
  series->early_exits->Increment(static_cast<double>(record.early_exits));
  series->generated_tokens->Increment(
      static_cast<double>(record.generated_tokens));
  series->prefix_hit_tokens->Increment(
      static_cast<double>(record.cached_prompt_tokens));
  series->prefix_computed_tokens->Increment(
      static_cast<double>(record.prompt_tokens - record.cached_prompt_tokens));
}

void ServerMetrics::SetStageSkipRatio(const std::string& pipeline,
                                      const std::string& stage,
                                      const std::string& profile,
                                      double ratio) {
  if (FindStage(pipeline, stage, "SetStageSkipRatio") == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(profiles_mutex_);
    if (!skip_ratio_profiles_.contains(profile)) {
      if (skip_ratio_profiles_.size() >= kMaxSkipRatioProfiles) {
        WarnDropped(absl::StrCat("SetStageSkipRatio for profile \"", profile,
                                 "\": already ", kMaxSkipRatioProfiles,
                                 " distinct profiles"));
        return;
      }
      skip_ratio_profiles_.insert(profile);
    }
  }
  stage_skip_ratio_
      ->Add({{"pipeline", pipeline}, {"stage", stage}, {"profile", profile}})
      .Set(ratio);
}

void ServerMetrics::ObserveRequest(const std::string& method,
                                   const std::string& code, double seconds) {
  requests_->Add({{"method", method}, {"code", code}}).Increment();
  // Family::Add returns the existing histogram for known labels (the
  // buckets argument is then unused).
  request_latency_->Add({{"method", method}}, kRequestLatencyBuckets)
      .Observe(seconds);
}

void ServerMetrics::ObserveTimeToFirstToken(double seconds) {
  time_to_first_token_->Observe(seconds);
}

void ServerMetrics::ObserveInterTokenLatency(double seconds) {
  inter_token_latency_->Observe(seconds);
}

void ServerMetrics::ObserveBatchSize(int64_t sequences) {
  batch_size_->Observe(static_cast<double>(sequences));
}

void ServerMetrics::SetQueueDepth(int64_t requests) {
  queue_depth_->Set(static_cast<double>(requests));
}

void ServerMetrics::SetRequestsRunning(int64_t requests) {
  requests_running_->Set(static_cast<double>(requests));
}

void ServerMetrics::SetKvCacheUsage(double ratio) {
  kv_cache_usage_->Set(ratio);
}

void ServerMetrics::SetPrefixCache(int64_t cached_blocks,
                                   int64_t evictions_so_far) {
  prefix_cache_blocks_->Set(static_cast<double>(cached_blocks));
  const int64_t before = evictions_reported_.exchange(evictions_so_far);
  if (evictions_so_far > before) {
    prefix_cache_evictions_->Increment(
        static_cast<double>(evictions_so_far - before));
  }
}

std::string ServerMetrics::Serialize() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> StartMetricsServer(
    const std::string& address,
    std::shared_ptr<prometheus::Registry> registry) {
  return MetricsHttpServer::Start(address, std::move(registry));
}

}  // namespace litestage
