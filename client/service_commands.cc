// litestage-cli info, profiles and health: what the server runs and whether
// it serves.
#include <algorithm>
#include <iostream>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/cli_common.h"
#include "client/cli_flags.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace litestage::cli {

namespace {

void PrintProfile(const pb::ProfileInfo& profile) {
  std::cout << "  " << profile.name()
            << (profile.builtin()
                    ? " (built-in)"
                    : absl::StrCat(" (pipeline ", profile.pipeline(), ")"))
            << "\n";
  for (const pb::StageProfileInfo& stage : profile.stages()) {
    std::cout << absl::StrFormat(
        "    %s: skip attention %d, mlp %d layers (ratio %.3f); early exit "
        "%s\n",
        stage.stage(), stage.skipped_attention_layers(),
        stage.skipped_mlp_layers(), stage.skip_ratio(),
        EarlyExitSettings(stage.early_exit()));
  }
  if (!profile.provenance().empty()) {
    std::cout << Indent(profile.provenance(), "    # ") << "\n";
  }
}

}  // namespace

int RunInfo(pb::LiteStage::Stub& stub) {
  grpc::ClientContext context;
  SetDeadline(context);
  pb::ServerInfo info;
  const grpc::Status status =
      stub.GetServerInfo(&context, pb::GetServerInfoRequest(), &info);
  if (!status.ok()) return RpcError(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJsonLine(info);
    return kExitOk;
  }
  std::cout << "version      " << info.version() << "\n"
            << "model        " << info.model() << "\n"
            << "fingerprint  " << info.fingerprint() << "\n"
            << "backend      " << info.backend() << " (device " << info.device()
            << ", dtype " << info.dtype() << ", " << info.num_layers()
            << " layers)\n"
            << "defaults     pipeline " << info.default_pipeline()
            << ", profile " << info.default_profile() << "\n";
  const pb::Limits& limits = info.limits();
  std::cout << absl::StrFormat(
      "limits       queue %d, batch %d, kv cache %d tokens, context %d, "
      "max new tokens %d, max choices %d\n",
      limits.max_queue(), limits.max_batch(), limits.kv_cache_tokens(),
      limits.context_length(), limits.max_new_tokens(), limits.max_choices());
  std::cout << "pipelines:\n";
  for (const pb::PipelineInfo& pipeline : info.pipelines()) {
    std::cout << "  " << pipeline.name() << ": "
              << absl::StrJoin(pipeline.stages(), " -> ") << " (choices "
              << pipeline.min_choices() << ".." << pipeline.max_choices();
    if (!pipeline.default_choices().empty()) {
      std::cout << ", default "
                << absl::StrJoin(pipeline.default_choices(), "|");
    }
    std::cout << ")\n";
    if (!pipeline.description().empty()) {
      std::cout << "    " << pipeline.description() << "\n";
    }
  }
  std::cout << "profiles:\n";
  for (const pb::ProfileInfo& profile : info.profiles()) PrintProfile(profile);
  return kExitOk;
}

int RunProfiles(pb::LiteStage::Stub& stub) {
  grpc::ClientContext context;
  SetDeadline(context);
  pb::ListProfilesRequest request;
  request.set_pipeline(absl::GetFlag(FLAGS_pipeline));
  pb::ListProfilesResponse response;
  const grpc::Status status = stub.ListProfiles(&context, request, &response);
  if (!status.ok()) return RpcError(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJsonLine(response);
    return kExitOk;
  }
  std::cout << "profiles:\n";
  for (const pb::ProfileInfo& profile : response.profiles()) {
    PrintProfile(profile);
  }
  return kExitOk;
}

int RunHealth(const std::shared_ptr<grpc::Channel>& channel) {
  using ::grpc::health::v1::Health;
  using ::grpc::health::v1::HealthCheckRequest;
  using ::grpc::health::v1::HealthCheckResponse;
  std::unique_ptr<Health::Stub> stub = Health::NewStub(channel);
  grpc::ClientContext context;
  SetDeadline(context);
  HealthCheckRequest request;
  request.set_service(absl::GetFlag(FLAGS_service));
  HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return RpcError(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJsonLine(response);
  } else {
    std::cout << HealthCheckResponse::ServingStatus_Name(response.status())
              << "\n";
  }
  return response.status() == HealthCheckResponse::SERVING ? kExitOk
                                                           : kExitNotServing;
}

}  // namespace litestage::cli
