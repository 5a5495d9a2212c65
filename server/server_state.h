// LiteStageServer::Impl: the catalog of pipelines and profiles (shared by
// the handlers, read-only once the server is ready) and the engine,
// scheduler and stage runner of the scheduler thread. Internal to server/.
#ifndef LITESTAGE_SERVER_SERVER_STATE_H_
#define LITESTAGE_SERVER_SERVER_STATE_H_

#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/scheduler.h"
#include "engine/stages/pipeline.h"
#include "engine/stages/profile.h"
#include "engine/stages/stage_runner.h"
#include "server/job.h"
#include "server/server.h"
#include "server/wire.h"

namespace litestage {

// State shared by handlers (read-only once ready) and the scheduler thread.
struct LiteStageServer::Impl {
  // Immutable once ready: set by Start(), and the shipped profiles by Load()
  // before ready_ is released.
  std::map<std::string, Pipeline> pipelines;
  // File (and shipped) profiles by name, with their paths (for messages).
  std::map<std::string, std::shared_ptr<const Profile>> file_profiles;
  std::map<std::string, std::string> profile_paths;
  int64_t max_choices = 0;

  // Set by the scheduler thread before ready_ (release), read after.
  std::unique_ptr<Engine> engine;
  int64_t num_layers = 0;
  int64_t context_length = 0;

  // Scheduler thread only. The runner is declared after the scheduler it
  // drives, so it goes first.
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<StageRunner> runner;
  std::list<std::shared_ptr<Job>> active;  // Started, until answered.

  const Pipeline* FindPipeline(const std::string& name) const {
    auto it = pipelines.find(name);
    return it == pipelines.end() ? nullptr : &it->second;
  }

  std::string PipelineNames() const {
    std::vector<std::string> names;
    for (const auto& [name, unused] : pipelines) names.push_back(name);
    return absl::StrJoin(names, ", ");
  }

  std::string ProfileNames() const {
    std::vector<std::string> names = {"full", "even:K", "last:K"};
    for (const auto& [name, unused] : file_profiles) names.push_back(name);
    return absl::StrJoin(names, ", ");
  }

  // `name` for `pipeline` (nullptr: Generate, any pipeline). Empty names
  // are resolved by the caller.
  absl::StatusOr<std::shared_ptr<const Profile>> ResolveProfile(
      const std::string& name, const Pipeline* pipeline) const {
    auto it = file_profiles.find(name);
    if (it != file_profiles.end()) {
      if (pipeline != nullptr && it->second->pipeline != pipeline->name) {
        return absl::InvalidArgumentError(absl::StrCat(
            "profile: '", name, "' is made for pipeline '",
            it->second->pipeline, "', not '", pipeline->name, "'"));
      }
      return it->second;
    }
    if (IsBuiltinProfileSpec(name)) {
      absl::StatusOr<Profile> builtin = BuiltinProfile(name, num_layers);
      if (!builtin.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("profile: ", builtin.status().message()));
      }
      return std::make_shared<const Profile>(*std::move(builtin));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("profile: unknown profile '", Abbreviate(name),
                     "'; this server has: ", ProfileNames()));
  }
};

}  // namespace litestage

#endif  // LITESTAGE_SERVER_SERVER_STATE_H_
