// LiteStageServer::Job as the stage runner's listener: stage and token
// events to the client, latency and stage metrics, and the answer.
#include "server/job.h"

#include <utility>

#include "server/convert.h"
#include "server/metrics.h"
#include "server/server_state.h"

namespace litestage {

const char* MethodName(Method method) {
  switch (method) {
    case Method::kReason:
      return "Reason";
    case Method::kReasonStream:
      return "ReasonStream";
    case Method::kGenerate:
      return "Generate";
    case Method::kGenerateStream:
      return "GenerateStream";
  }
  return "Unknown";
}

namespace {

void FillTimings(const LiteStageServer::Job& job, double total_seconds,
                 v1::Timings* out) {
  out->set_queue_seconds(job.queue_seconds);
  out->set_total_seconds(total_seconds);
  out->set_time_to_first_token_seconds(job.ttft_seconds.value_or(0));
}

}  // namespace

absl::Status AsRequestError(absl::Status status) {
  if (absl::IsResourceExhausted(status)) {
    return absl::OutOfRangeError(status.message());
  }
  return status;
}

void LiteStageServer::Job::OnStageStarted(size_t /*session*/, size_t stage,
                                          size_t branches) {
  last_text.assign(branches, std::nullopt);
  if (!emit_reason) return;
  v1::ReasonEvent event;
  event.set_request_id(request_id);
  v1::StageStarted* started = event.mutable_stage_started();
  started->set_stage_index(static_cast<int32_t>(stage));
  started->set_name(pipeline->stages[stage].name);
  started->set_branches(static_cast<int32_t>(branches));
  emit_reason(std::move(event));
}

void LiteStageServer::Job::OnText(size_t /*session*/, size_t stage,
                                  size_t branch, const std::string& piece) {
  const ServerClock::time_point now = ServerClock::now();
  ServerMetrics* metrics = server->metrics();
  if (!ttft_seconds.has_value()) {
    ttft_seconds = SecondsSince(arrival, now);
    if (metrics) metrics->ObserveTimeToFirstToken(*ttft_seconds);
  } else if (last_text[branch].has_value() && metrics) {
    metrics->ObserveInterTokenLatency(SecondsSince(*last_text[branch], now));
  }
  last_text[branch] = now;
  v1::TokenDelta delta;
  delta.set_stage_index(static_cast<int32_t>(stage));
  delta.set_branch(static_cast<int32_t>(branch));
  delta.set_text(piece);
  if (emit_reason) {
    v1::ReasonEvent event;
    event.set_request_id(request_id);
    *event.mutable_delta() = std::move(delta);
    emit_reason(std::move(event));
  } else if (emit_generate) {
    v1::GenerateEvent event;
    event.set_request_id(request_id);
    *event.mutable_delta() = std::move(delta);
    emit_generate(std::move(event));
  }
}

void LiteStageServer::Job::OnStageFinished(size_t /*session*/, size_t stage,
                                           const StageRecord& record) {
  if (ServerMetrics* metrics = server->metrics()) {
    metrics->ObserveStage(pipeline->name, record);
    // Profiles spelled by clients (even:K, last:K) get their series on
    // first use; the server's own were set at start-up.
    metrics->SetStageSkipRatio(
        pipeline->name, record.name, profile_name,
        profile->SkipRatio(record.name, server->impl_->num_layers));
  }
  if (emit_reason) {
    v1::ReasonEvent event;
    event.set_request_id(request_id);
    StageRecordToProto(static_cast<int32_t>(stage), record,
                       event.mutable_stage_finished());
    emit_reason(std::move(event));
  }
}

void LiteStageServer::Job::OnDone(absl::Status status,
                                  StageRunner::JobResult result) {
  runner_job.reset();
  if (!status.ok()) {
    server->CompleteJob(*this, ToGrpc(AsRequestError(std::move(status))),
                        nullptr);
    return;
  }
  const double total = SecondsSince(arrival, ServerClock::now());
  if (IsReason(method)) {
    v1::ReasonResponse response;
    response.set_request_id(request_id);
    response.set_pipeline(pipeline->name);
    response.set_profile(profile_name);
    ReasoningResultToProto(result.sessions[0], &response);
    FillTimings(*this, total, response.mutable_timings());
    server->CompleteJob(*this, grpc::Status::OK, &response);
  } else {
    v1::GenerateResponse response;
    response.set_request_id(request_id);
    GenerationResultToProto(*result.generation, &response);
    FillTimings(*this, total, response.mutable_timings());
    server->CompleteJob(*this, grpc::Status::OK, &response);
  }
}

}  // namespace litestage
