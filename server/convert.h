// Proto conversion and status mapping of the gRPC service: the requests'
// sampling and early-exit messages into engine settings (validated, errors
// naming the field), stage records, results and profiles into response
// messages, absl::Status into grpc::Status.
#ifndef LITESTAGE_SERVER_CONVERT_H_
#define LITESTAGE_SERVER_CONVERT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/runtime/engine.h"
#include "engine/stages/profile.h"
#include "engine/stages/session.h"
#include "grpcpp/support/status.h"
#include "litestage/v1/litestage.pb.h"

namespace litestage {

// The same code and message (absl and gRPC share the code numbering).
grpc::Status ToGrpc(const absl::Status& status);
// The canonical name of a code ("INVALID_ARGUMENT"): the `code` label of
// litestage_requests_total.
std::string StatusCodeLabel(grpc::StatusCode code);

// InvalidArgument naming "sampling.<field>"; top_p 0 (unset) means 1.
absl::StatusOr<SamplingParams> SamplingFromProto(const v1::SamplingParams& p);
// InvalidArgument naming "early_exit.<field>". `max_new_tokens`: the most
// tokens a stage (Reason) or the request (Generate) may generate; a window
// longer than that could never fill.
absl::StatusOr<EarlyExitConfig> EarlyExitFromProto(const v1::EarlyExit& p,
                                                   int64_t max_new_tokens);

void EarlyExitToProto(const EarlyExitConfig& config, v1::EarlyExit* out);
void SublayersToProto(const SublayerCounts& counts, v1::SublayerCounts* out);
void StageRecordToProto(int32_t index, const StageRecord& record,
                        v1::StageRecord* out);
// The stages, choices, answer and token counts; the caller sets request
// id, pipeline, profile and timings.
void ReasoningResultToProto(const ReasoningResult& result,
                            v1::ReasonResponse* out);
// Text, finish reason, counts and mean confidence; the caller sets request
// id and timings.
void GenerationResultToProto(const GenerationResult& result,
                             v1::GenerateResponse* out);

// "method=search; created=...; ..." for ProfileInfo.provenance.
std::string ProvenanceText(const ProfileProvenance& p);
void StageProfileToProto(const std::string& stage, const StageProfile& sp,
                         int64_t num_layers, v1::StageProfileInfo* out);

}  // namespace litestage

#endif  // LITESTAGE_SERVER_CONVERT_H_
