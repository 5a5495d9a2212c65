// Stage skip profiles: per stage of a pipeline, which attention/MLP
// sub-layers to skip and how confidence early exit is set, for one model.
//
// File format (JSON, schema "litestage.profile/v1"): docs/profiles.md.
// Built-in profiles need no file and fit any model and pipeline:
//   full     nothing skipped, no early exit
//   even:K   K whole layers (attention + MLP), evenly spaced, skipped in
//            every stage ("unified skipping" baseline)
//   last:K   the last K whole layers skipped in every stage (the
//            early-exit baseline)
#ifndef LITESTAGE_ENGINE_STAGES_PROFILE_H_
#define LITESTAGE_ENGINE_STAGES_PROFILE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/backend/backend.h"
#include "engine/model/fingerprint.h"
#include "engine/runtime/engine.h"
#include "nlohmann/json.hpp"

namespace litestage {

inline constexpr char kProfileSchema[] = "litestage.profile/v1";

struct SublayerRef {
  SublayerKind kind = SublayerKind::kAttention;
  int64_t layer = 0;
  bool operator==(const SublayerRef& other) const = default;
};
// "attention.3" / "mlp.0" (the file format's spelling).
std::string SublayerRefName(const SublayerRef& ref);
absl::StatusOr<SublayerRef> ParseSublayerRef(absl::string_view name);

struct StageProfile {
  SkipSet skip;  // Sized [num_layers] or empty.
  EarlyExitConfig early_exit;
  bool operator==(const StageProfile& other) const = default;
};

// Where a profile came from and what it measured (free-form but typed).
struct ProfileProvenance {
  std::string method;                   // "builtin", "litestage-search", ...
  std::string created;                  // ISO 8601 date-time, may be empty.
  std::string dataset;                  // Calibration/search set, may be empty.
  std::optional<double> accuracy;       // On `dataset`, in [0, 1].
  std::optional<double> full_accuracy;  // Full model, same set.
  std::optional<double> latency_seconds;  // Mean end-to-end per request.
  std::optional<double> full_latency_seconds;
  std::string notes;
  // What litestage-search measured (docs/search.md, "Provenance"): a JSON
  // object kept as parsed, null when absent. Its content is the search's
  // business; the profile only requires an object.
  nlohmann::json search;
  bool operator==(const ProfileProvenance& other) const = default;
};

struct Profile {
  std::string name;  // "full", "even:2", or the file's "name".
  bool builtin = false;
  // Files only: the model it was made for and its pipeline.
  ModelFingerprint model;
  std::string pipeline;
  // Every sub-layer, most redundant first (may be empty for builtins).
  std::vector<SublayerRef> ranking;
  // Per stage name. Builtins use `every_stage` for all stages instead.
  std::map<std::string, StageProfile> stages;
  std::optional<StageProfile> every_stage;
  ProfileProvenance provenance;

  // The settings for stage `stage_name` (every_stage for builtins; a stage
  // not listed in a file profile is an error caught by ValidateProfile).
  const StageProfile& ForStage(const std::string& stage_name) const;
  // Fraction of the 2 * num_layers sub-layers stage `stage_name` skips.
  double SkipRatio(const std::string& stage_name, int64_t num_layers) const;

  bool operator==(const Profile& other) const = default;
};

// Parses a profile document; errors start with `source` (the path) and name
// the key/stage and the reason. Rejects unknown fields and other schemas,
// negative layers, unknown sub-layer kinds, duplicate entries, bad
// early-exit values. Does not yet check against a model: see
// ValidateProfile.
absl::StatusOr<Profile> ParseProfile(absl::string_view json_text,
                                     absl::string_view source);
absl::StatusOr<Profile> LoadProfileFile(const std::string& path);

// "full", "even:K", "last:K" for a model of `num_layers` layers;
// InvalidArgument for K outside [0, num_layers] or other specs, NotFound if
// `spec` is not a builtin name at all.
absl::StatusOr<Profile> BuiltinProfile(absl::string_view spec,
                                       int64_t num_layers);
bool IsBuiltinProfileSpec(absl::string_view spec);

// Checks a profile against the loaded model and the pipeline it will run:
// fingerprint equal (FailedPrecondition listing both), every layer index in
// [0, num_layers), the ranking a permutation of all 2 * num_layers
// sub-layers (when present), the pipeline name equal, every pipeline stage
// present and no unknown stage. Builtins always pass.
absl::Status ValidateProfile(const Profile& profile,
                             const ModelFingerprint& model, int64_t num_layers,
                             const std::string& pipeline_name,
                             const std::vector<std::string>& stage_names);

// A builtin spec, else a file path; then ValidateProfile.
absl::StatusOr<Profile> ResolveProfile(const std::string& spec_or_path,
                                       const ModelFingerprint& model,
                                       int64_t num_layers,
                                       const std::string& pipeline_name,
                                       const std::vector<std::string>& stages);

// The document of a file profile (ParseProfile(ProfileToJson(p)) == p).
std::string ProfileToJson(const Profile& profile);

// A SkipSet over `num_layers` skipping the first `count` entries of
// `ranking` (how the search turns "# skip for this stage" into sub-layers).
SkipSet SkipSetFromRanking(const std::vector<SublayerRef>& ranking,
                           int64_t count, int64_t num_layers);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_STAGES_PROFILE_H_
