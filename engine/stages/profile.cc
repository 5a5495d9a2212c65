// Skip profiles: parsing and validation of litestage.profile/v1 documents,
// the built-ins (full, even:K, last:K) and JSON output. ~860 lines because
// the parser checks every field with a message naming its JSON path; the
// validation against a model is the shorter half.
#include "engine/stages/profile.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "engine/util/check.h"
#include "engine/util/json_util.h"
#include "engine/util/mapped_file.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace litestage {
namespace {

using nlohmann::json;

constexpr char kAttentionPrefix[] = "attention.";
constexpr char kMlpPrefix[] = "mlp.";

// A layer index or a builtin's K: ASCII digits only, no sign, no spaces, no
// leading zeros (so every value has one spelling). False on overflow.
bool ParseCanonicalCount(absl::string_view text, int64_t* value) {
  if (text.empty() || text.size() > 18) return false;
  for (char c : text) {
    if (!absl::ascii_isdigit(c)) return false;
  }
  if (text.size() > 1 && text[0] == '0') return false;
  return absl::SimpleAtoi(text, value);
}

// Why `config` is unusable, with `path` ("stages.recall.early_exit") naming
// the field; empty when it is fine. The same rules as
// ValidateEarlyExitConfig, spelled with the file's field names.
std::string EarlyExitProblem(const EarlyExitConfig& config,
                             absl::string_view path) {
  if (config.window < 0 || config.window > kMaxEarlyExitWindow) {
    return absl::StrCat(path, ".window: must be in [0, ", kMaxEarlyExitWindow,
                        "] (0 disables), got ", config.window);
  }
  if (config.min_tokens < 0 || config.min_tokens > kMaxEarlyExitMinTokens) {
    return absl::StrCat(path, ".min_tokens: must be in [0, ",
                        kMaxEarlyExitMinTokens, "], got ", config.min_tokens);
  }
  if (!std::isfinite(config.threshold)) {
    return absl::StrCat(path, ".threshold: must be a finite number, got ",
                        config.threshold);
  }
  if (config.kind == ConfidenceKind::kMaxProb &&
      !(config.threshold >= 0.0f && config.threshold <= 1.0f)) {
    return absl::StrCat(path,
                        ".threshold: must be in [0, 1] for max_prob "
                        "confidence, got ",
                        config.threshold);
  }
  return "";
}

// The shortest decimal that reads back as `value` through a double (the
// JSON number type), so 0.3f is written as 0.3, not 0.30000001192092896.
double FloatForJson(float value) {
  char buffer[64];
  const auto [end, error] =
      std::to_chars(buffer, buffer + sizeof(buffer) - 1, value);
  if (error == std::errc()) {
    *end = '\0';
    const double shortest = std::strtod(buffer, nullptr);
    if (static_cast<float>(shortest) == value) return shortest;
  }
  return static_cast<double>(value);
}

// Sub-layers a SkipSet skips in the canonical order: attention by layer,
// then MLP by layer.
std::vector<SublayerRef> SkippedRefs(const SkipSet& skip) {
  std::vector<SublayerRef> refs;
  for (size_t layer = 0; layer < skip.attention.size(); ++layer) {
    if (skip.attention[layer]) {
      refs.push_back({SublayerKind::kAttention, static_cast<int64_t>(layer)});
    }
  }
  for (size_t layer = 0; layer < skip.mlp.size(); ++layer) {
    if (skip.mlp[layer]) {
      refs.push_back({SublayerKind::kMlp, static_cast<int64_t>(layer)});
    }
  }
  return refs;
}

void SetSkipped(const SublayerRef& ref, SkipSet* skip) {
  std::vector<bool>& row =
      ref.kind == SublayerKind::kAttention ? skip->attention : skip->mlp;
  LS_CHECK_LT(ref.layer, static_cast<int64_t>(row.size()));
  row[ref.layer] = true;
}

// Dense index of a sub-layer among all 2 * num_layers: attention j is j,
// MLP j is num_layers + j.
int64_t DenseIndex(const SublayerRef& ref, int64_t num_layers) {
  return ref.kind == SublayerKind::kAttention ? ref.layer
                                              : num_layers + ref.layer;
}

// Reads one profile document. Every error is InvalidArgument
// "<source>: <json path>: <reason>".
class ProfileParser {
 public:
  explicit ProfileParser(absl::string_view source) : source_(source) {}

  absl::StatusOr<Profile> Parse(const json& document) {
    if (!document.is_object()) {
      return Error("(document)", absl::StrCat("must be a JSON object, got ",
                                              document.type_name()));
    }
    // The schema first: a file of another kind gets that message rather than
    // one about its unknown keys.
    LS_ASSIGN_OR_RETURN(const json* schema,
                        Member(document, "", "schema", /*required=*/true));
    LS_ASSIGN_OR_RETURN(std::string schema_name, String(*schema, "schema"));
    if (schema_name != kProfileSchema) {
      return Error("schema", absl::StrCat("must be \"", kProfileSchema,
                                          "\", got \"", schema_name, "\""));
    }
    LS_RETURN_IF_ERROR(CheckKeys(document, "",
                                 {"schema", "name", "model", "pipeline",
                                  "ranking", "stages", "provenance"}));

    Profile profile;
    LS_ASSIGN_OR_RETURN(const json* name,
                        Member(document, "", "name", /*required=*/true));
    LS_ASSIGN_OR_RETURN(profile.name, String(*name, "name"));
    LS_RETURN_IF_ERROR(CheckName(profile.name));

    LS_ASSIGN_OR_RETURN(const json* model,
                        Member(document, "", "model", /*required=*/true));
    LS_ASSIGN_OR_RETURN(profile.model, ParseModel(*model));
    num_layers_ = profile.model.num_hidden_layers;

    LS_ASSIGN_OR_RETURN(const json* pipeline,
                        Member(document, "", "pipeline", /*required=*/true));
    LS_ASSIGN_OR_RETURN(profile.pipeline, String(*pipeline, "pipeline"));
    if (profile.pipeline.empty()) return Error("pipeline", "must not be empty");

    LS_ASSIGN_OR_RETURN(const json* ranking,
                        Member(document, "", "ranking", /*required=*/false));
    if (ranking != nullptr) {
      LS_ASSIGN_OR_RETURN(profile.ranking, ParseRanking(*ranking));
    }

    LS_ASSIGN_OR_RETURN(const json* stages,
                        Member(document, "", "stages", /*required=*/true));
    LS_ASSIGN_OR_RETURN(profile.stages, ParseStages(*stages));

    LS_ASSIGN_OR_RETURN(const json* provenance,
                        Member(document, "", "provenance", /*required=*/false));
    if (provenance != nullptr) {
      LS_ASSIGN_OR_RETURN(profile.provenance, ParseProvenance(*provenance));
    }
    return profile;
  }

 private:
  absl::Status Error(absl::string_view path, absl::string_view reason) const {
    return absl::InvalidArgumentError(absl::StrCat(
        source_, ": ", TruncateForMessage(path, 200), ": ", reason));
  }

  static std::string Join(absl::string_view path, absl::string_view key) {
    return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
  }

  static std::string Index(absl::string_view path, size_t index) {
    return absl::StrCat(path, "[", index, "]");
  }

  // Member `key` of `object` (at `path`), nullptr when optional and absent.
  // An explicit null is a type error, not "absent": the format has no nulls.
  absl::StatusOr<const json*> Member(const json& object, absl::string_view path,
                                     const char* key, bool required) const {
    auto it = object.find(key);
    if (it == object.end()) {
      if (required) return Error(Join(path, key), "missing required key");
      return nullptr;
    }
    return &*it;
  }

  absl::Status CheckKeys(const json& object, absl::string_view path,
                         std::initializer_list<const char*> allowed) const {
    for (auto it = object.begin(); it != object.end(); ++it) {
      bool known = false;
      for (const char* key : allowed) known = known || it.key() == key;
      if (!known) {
        return Error(Join(path, it.key()),
                     absl::StrCat("unknown key (allowed here: ",
                                  absl::StrJoin(allowed, ", "), ")"));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<const json*> Object(const json& value,
                                     absl::string_view path) const {
    if (!value.is_object()) {
      return Error(
          path, absl::StrCat("must be a JSON object, got ", value.type_name()));
    }
    return &value;
  }

  absl::StatusOr<std::string> String(const json& value,
                                     absl::string_view path) const {
    if (!value.is_string()) {
      return Error(path,
                   absl::StrCat("must be a string, got ", value.type_name()));
    }
    return value.get<std::string>();
  }

  absl::StatusOr<int64_t> Int(const json& value, absl::string_view path) const {
    if (!value.is_number_integer()) {
      return Error(path, absl::StrCat("must be an integer, got ",
                                      value.is_number() ? JsonForMessage(value)
                                                        : value.type_name()));
    }
    if (value.is_number_unsigned() &&
        value.get<uint64_t>() >
            static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Error(path,
                   absl::StrCat("out of range, got ", JsonForMessage(value)));
    }
    return value.get<int64_t>();
  }

  absl::StatusOr<double> Number(const json& value,
                                absl::string_view path) const {
    if (!value.is_number()) {
      return Error(path,
                   absl::StrCat("must be a number, got ", value.type_name()));
    }
    const double number = value.get<double>();
    if (!std::isfinite(number)) {
      return Error(path, absl::StrCat("must be a finite number, got ", number));
    }
    return number;
  }

  absl::Status CheckName(const std::string& name) const {
    bool ok = !name.empty() && absl::ascii_isalnum(name[0]);
    for (char c : name) {
      ok = ok && (absl::ascii_isalnum(c) || c == '_' || c == '.' || c == '-');
    }
    if (!ok) {
      return Error("name", absl::StrCat("must match [A-Za-z0-9][A-Za-z0-9_.-]*"
                                        ", got \"",
                                        name, "\""));
    }
    if (IsBuiltinProfileSpec(name)) {
      return Error("name", absl::StrCat("\"", name,
                                        "\" is a builtin profile name; a "
                                        "file profile needs another"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ModelFingerprint> ParseModel(const json& value) const {
    LS_ASSIGN_OR_RETURN(const json* model, Object(value, "model"));
    LS_RETURN_IF_ERROR(CheckKeys(
        *model, "model",
        {"architecture", "num_layers", "hidden_size", "fingerprint"}));
    LS_ASSIGN_OR_RETURN(const json* architecture,
                        Member(*model, "model", "architecture", true));
    LS_ASSIGN_OR_RETURN(const json* num_layers,
                        Member(*model, "model", "num_layers", true));
    LS_ASSIGN_OR_RETURN(const json* hidden_size,
                        Member(*model, "model", "hidden_size", true));
    LS_ASSIGN_OR_RETURN(const json* fingerprint_text,
                        Member(*model, "model", "fingerprint", true));

    ModelFingerprint stated;
    LS_ASSIGN_OR_RETURN(stated.architecture,
                        String(*architecture, "model.architecture"));
    if (stated.architecture.empty()) {
      return Error("model.architecture", "must not be empty");
    }
    LS_ASSIGN_OR_RETURN(stated.num_hidden_layers,
                        Int(*num_layers, "model.num_layers"));
    if (stated.num_hidden_layers <= 0) {
      return Error("model.num_layers", absl::StrCat("must be >= 1, got ",
                                                    stated.num_hidden_layers));
    }
    LS_ASSIGN_OR_RETURN(stated.hidden_size,
                        Int(*hidden_size, "model.hidden_size"));
    if (stated.hidden_size <= 0) {
      return Error("model.hidden_size",
                   absl::StrCat("must be >= 1, got ", stated.hidden_size));
    }
    LS_ASSIGN_OR_RETURN(std::string text,
                        String(*fingerprint_text, "model.fingerprint"));
    absl::StatusOr<ModelFingerprint> fingerprint = ParseModelFingerprint(text);
    if (!fingerprint.ok()) {
      return Error("model.fingerprint", fingerprint.status().message());
    }
    // The readable fields are there for people; they must agree with the
    // fingerprint that is actually compared.
    if (fingerprint->architecture != stated.architecture ||
        fingerprint->num_hidden_layers != stated.num_hidden_layers ||
        fingerprint->hidden_size != stated.hidden_size) {
      return Error(
          "model.fingerprint",
          absl::StrCat("describes ", fingerprint->architecture, " with ",
                       fingerprint->num_hidden_layers, " layers of width ",
                       fingerprint->hidden_size, " but model says ",
                       stated.architecture, " with ", stated.num_hidden_layers,
                       " layers of width ", stated.hidden_size));
    }
    return *fingerprint;
  }

  // A "kind.N" reference at `path`, with N < num_layers_.
  absl::StatusOr<SublayerRef> Ref(const json& value,
                                  absl::string_view path) const {
    LS_ASSIGN_OR_RETURN(std::string name, String(value, path));
    absl::StatusOr<SublayerRef> ref = ParseSublayerRef(name);
    if (!ref.ok()) return Error(path, ref.status().message());
    if (ref->layer >= num_layers_) {
      return Error(path, absl::StrCat("'", name, "': layer ", ref->layer,
                                      " is out of range; model.num_layers is ",
                                      num_layers_));
    }
    return *ref;
  }

  absl::StatusOr<std::vector<SublayerRef>> ParseRanking(
      const json& value) const {
    if (!value.is_array()) {
      return Error("ranking",
                   absl::StrCat("must be an array, got ", value.type_name()));
    }
    std::vector<SublayerRef> ranking;
    std::vector<int64_t> first_seen(2 * num_layers_, -1);  // [2L] entry index
    for (size_t i = 0; i < value.size(); ++i) {
      const std::string path = Index("ranking", i);
      LS_ASSIGN_OR_RETURN(SublayerRef ref, Ref(value[i], path));
      int64_t& seen = first_seen[DenseIndex(ref, num_layers_)];
      if (seen >= 0) {
        return Error(path, absl::StrCat("duplicate '", SublayerRefName(ref),
                                        "' (also at ranking[", seen, "])"));
      }
      seen = static_cast<int64_t>(i);
      ranking.push_back(ref);
    }
    if (static_cast<int64_t>(ranking.size()) != 2 * num_layers_) {
      // No duplicates and every layer in range: something is missing.
      std::string missing;
      for (int64_t dense = 0; dense < 2 * num_layers_; ++dense) {
        if (first_seen[dense] >= 0) continue;
        missing = SublayerRefName(
            dense < num_layers_
                ? SublayerRef{SublayerKind::kAttention, dense}
                : SublayerRef{SublayerKind::kMlp, dense - num_layers_});
        break;
      }
      return Error("ranking",
                   absl::StrCat("must list all 2 * num_layers = ",
                                2 * num_layers_, " sub-layers once, has ",
                                ranking.size(), "; missing '", missing, "'"));
    }
    return ranking;
  }

  absl::StatusOr<std::map<std::string, StageProfile>> ParseStages(
      const json& value) const {
    LS_ASSIGN_OR_RETURN(const json* stages, Object(value, "stages"));
    if (stages->empty()) return Error("stages", "must list at least one stage");
    std::map<std::string, StageProfile> result;
    for (auto it = stages->begin(); it != stages->end(); ++it) {
      if (it.key().empty()) return Error("stages", "a stage name is empty");
      const std::string path = Join("stages", it.key());
      LS_ASSIGN_OR_RETURN(result[it.key()], ParseStage(it.value(), path));
    }
    return result;
  }

  absl::StatusOr<StageProfile> ParseStage(const json& value,
                                          const std::string& path) const {
    LS_ASSIGN_OR_RETURN(const json* stage, Object(value, path));
    LS_RETURN_IF_ERROR(CheckKeys(*stage, path, {"skip", "early_exit"}));
    StageProfile result;
    result.skip.attention.assign(num_layers_, false);
    result.skip.mlp.assign(num_layers_, false);

    const std::string skip_path = Join(path, "skip");
    LS_ASSIGN_OR_RETURN(const json* skip, Member(*stage, path, "skip", true));
    if (!skip->is_array()) {
      return Error(skip_path,
                   absl::StrCat("must be an array, got ", skip->type_name()));
    }
    std::vector<int64_t> first_seen(2 * num_layers_, -1);  // [2L] entry index
    for (size_t i = 0; i < skip->size(); ++i) {
      const std::string entry_path = Index(skip_path, i);
      LS_ASSIGN_OR_RETURN(SublayerRef ref, Ref((*skip)[i], entry_path));
      int64_t& seen = first_seen[DenseIndex(ref, num_layers_)];
      if (seen >= 0) {
        return Error(entry_path,
                     absl::StrCat("duplicate '", SublayerRefName(ref),
                                  "' (also at skip[", seen, "])"));
      }
      seen = static_cast<int64_t>(i);
      SetSkipped(ref, &result.skip);
    }

    LS_ASSIGN_OR_RETURN(const json* early_exit,
                        Member(*stage, path, "early_exit", false));
    if (early_exit != nullptr) {
      LS_ASSIGN_OR_RETURN(
          result.early_exit,
          ParseEarlyExit(*early_exit, Join(path, "early_exit")));
    }
    return result;
  }

  absl::StatusOr<EarlyExitConfig> ParseEarlyExit(
      const json& value, const std::string& path) const {
    LS_ASSIGN_OR_RETURN(const json* object, Object(value, path));
    LS_RETURN_IF_ERROR(CheckKeys(
        *object, path, {"window", "threshold", "confidence", "min_tokens"}));
    EarlyExitConfig config;
    LS_ASSIGN_OR_RETURN(const json* window,
                        Member(*object, path, "window", true));
    LS_ASSIGN_OR_RETURN(config.window, Int(*window, Join(path, "window")));
    LS_ASSIGN_OR_RETURN(const json* threshold,
                        Member(*object, path, "threshold", true));
    LS_ASSIGN_OR_RETURN(double threshold_value,
                        Number(*threshold, Join(path, "threshold")));
    config.threshold = static_cast<float>(threshold_value);
    if (!std::isfinite(config.threshold)) {
      return Error(Join(path, "threshold"),
                   absl::StrCat("out of float range, got ", threshold_value));
    }
    LS_ASSIGN_OR_RETURN(const json* confidence,
                        Member(*object, path, "confidence", false));
    if (confidence != nullptr) {
      const std::string confidence_path = Join(path, "confidence");
      LS_ASSIGN_OR_RETURN(std::string name,
                          String(*confidence, confidence_path));
      absl::StatusOr<ConfidenceKind> kind = ParseConfidenceKind(name);
      if (!kind.ok()) {
        return Error(
            confidence_path,
            absl::StrCat("must be \"max_prob\" or \"max_logit\", got \"", name,
                         "\""));
      }
      config.kind = *kind;
    }
    LS_ASSIGN_OR_RETURN(const json* min_tokens,
                        Member(*object, path, "min_tokens", false));
    if (min_tokens != nullptr) {
      LS_ASSIGN_OR_RETURN(config.min_tokens,
                          Int(*min_tokens, Join(path, "min_tokens")));
    }
    const std::string problem = EarlyExitProblem(config, path);
    if (!problem.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(source_, ": ", problem));
    }
    return config;
  }

  absl::StatusOr<ProfileProvenance> ParseProvenance(const json& value) const {
    LS_ASSIGN_OR_RETURN(const json* object, Object(value, "provenance"));
    LS_RETURN_IF_ERROR(CheckKeys(
        *object, "provenance",
        {"method", "created", "dataset", "accuracy", "full_accuracy",
         "latency_seconds", "full_latency_seconds", "notes", "search"}));
    ProfileProvenance provenance;
    for (auto [key, field] : {std::pair{"method", &provenance.method},
                              std::pair{"created", &provenance.created},
                              std::pair{"dataset", &provenance.dataset},
                              std::pair{"notes", &provenance.notes}}) {
      LS_ASSIGN_OR_RETURN(const json* member,
                          Member(*object, "provenance", key, false));
      if (member == nullptr) continue;
      LS_ASSIGN_OR_RETURN(*field, String(*member, Join("provenance", key)));
    }
    struct NumberField {
      const char* key;
      std::optional<double>* field;
      bool fraction;  // In [0, 1]; else >= 0.
    };
    for (const NumberField& number :
         {NumberField{"accuracy", &provenance.accuracy, true},
          NumberField{"full_accuracy", &provenance.full_accuracy, true},
          NumberField{"latency_seconds", &provenance.latency_seconds, false},
          NumberField{"full_latency_seconds", &provenance.full_latency_seconds,
                      false}}) {
      LS_ASSIGN_OR_RETURN(const json* member,
                          Member(*object, "provenance", number.key, false));
      if (member == nullptr) continue;
      const std::string path = Join("provenance", number.key);
      LS_ASSIGN_OR_RETURN(double parsed, Number(*member, path));
      if (number.fraction && !(parsed >= 0.0 && parsed <= 1.0)) {
        return Error(path, absl::StrCat("must be in [0, 1], got ", parsed));
      }
      if (!number.fraction && parsed < 0.0) {
        return Error(path, absl::StrCat("must be >= 0, got ", parsed));
      }
      *number.field = parsed;
    }
    LS_ASSIGN_OR_RETURN(const json* search,
                        Member(*object, "provenance", "search", false));
    if (search != nullptr) {
      LS_ASSIGN_OR_RETURN(const json* search_object,
                          Object(*search, "provenance.search"));
      provenance.search = *search_object;
    }
    return provenance;
  }

  std::string source_;
  int64_t num_layers_ = 0;  // model.num_layers, once read.
};

absl::Status Prefixed(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat(prefix, ": ", status.message()));
}

// Every skipped layer of `skip` is below `num_layers`.
absl::Status CheckSkipRange(const Profile& profile,
                            const std::string& stage_name, const SkipSet& skip,
                            int64_t num_layers) {
  for (const SublayerRef& ref : SkippedRefs(skip)) {
    if (ref.layer >= num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "profile '", profile.name, "' stage '", stage_name, "' skips ",
          SublayerRefName(ref), " but the model has ", num_layers, " layers"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string SublayerRefName(const SublayerRef& ref) {
  return absl::StrCat(
      ref.kind == SublayerKind::kAttention ? kAttentionPrefix : kMlpPrefix,
      ref.layer);
}

absl::StatusOr<SublayerRef> ParseSublayerRef(absl::string_view name) {
  SublayerRef ref;
  absl::string_view layer = name;
  if (absl::ConsumePrefix(&layer, kAttentionPrefix)) {
    ref.kind = SublayerKind::kAttention;
  } else if (absl::ConsumePrefix(&layer, kMlpPrefix)) {
    ref.kind = SublayerKind::kMlp;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", name, "': not a sub-layer; expected attention.N or mlp.N"));
  }
  if (absl::StartsWith(layer, "-")) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", name, "': layer index must be >= 0"));
  }
  if (!ParseCanonicalCount(layer, &ref.layer)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", name,
                     "': layer index must be a whole number in decimal "
                     "digits without sign or leading zeros"));
  }
  return ref;
}

const StageProfile& Profile::ForStage(const std::string& stage_name) const {
  if (every_stage.has_value()) return *every_stage;
  auto it = stages.find(stage_name);
  LS_CHECK(it != stages.end())
      << "profile '" << name << "' has no stage '" << stage_name
      << "' (ValidateProfile should have rejected it)";
  return it->second;
}

double Profile::SkipRatio(const std::string& stage_name,
                          int64_t num_layers) const {
  LS_CHECK_LT(0, num_layers);
  return static_cast<double>(ForStage(stage_name).skip.num_skipped()) /
         static_cast<double>(2 * num_layers);
}

absl::StatusOr<Profile> ParseProfile(absl::string_view json_text,
                                     absl::string_view source) {
  // Bounded before nlohmann builds a DOM that later code would recurse
  // through.
  LS_RETURN_IF_ERROR(CheckJsonLimits(json_text, source));
  json document;
  try {
    document = json::parse(json_text.begin(), json_text.end());
  } catch (const json::exception& error) {
    // nlohmann's message carries the line and column.
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": not valid JSON: ", error.what()));
  }
  return ProfileParser(source).Parse(document);
}

absl::StatusOr<Profile> LoadProfileFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) {
    // ReadFileToString names the path; say what the file was for.
    return absl::Status(
        text.status().code(),
        absl::StrCat("cannot read profile file: ", text.status().message()));
  }
  return ParseProfile(*text, path);
}

bool IsBuiltinProfileSpec(absl::string_view spec) {
  return spec == "full" || absl::StartsWith(spec, "even:") ||
         absl::StartsWith(spec, "last:");
}

absl::StatusOr<Profile> BuiltinProfile(absl::string_view spec,
                                       int64_t num_layers) {
  if (!IsBuiltinProfileSpec(spec)) {
    return absl::NotFoundError(absl::StrCat(
        "'", spec, "' is not a builtin profile (full, even:K, last:K)"));
  }
  if (num_layers <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "profile '", spec, "': the model must have layers, got ", num_layers));
  }
  Profile profile;
  profile.builtin = true;
  profile.provenance.method = "builtin";
  if (spec == "full") {
    profile.name = "full";
    profile.every_stage = StageProfile{};
    return profile;
  }
  const absl::string_view kind = spec.substr(0, 4);  // "even" | "last"
  int64_t count = 0;
  if (!ParseCanonicalCount(spec.substr(5), &count) || count > num_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "profile '", spec, "': K must be a whole number in [0, ", num_layers,
        "] (the model's layer count), written in digits only"));
  }
  StageProfile stage;
  stage.skip.attention.assign(num_layers, false);
  stage.skip.mlp.assign(num_layers, false);
  for (int64_t i = 0; i < count; ++i) {
    // even: floor((i + 1) * L / (K + 1)) steps by L / (K + 1) >= 1 for
    // K < L, and is i for K == L: always K distinct layers in [0, L).
    const int64_t layer = kind == "even" ? (i + 1) * num_layers / (count + 1)
                                         : num_layers - count + i;
    LS_CHECK(layer >= 0 && layer < num_layers && !stage.skip.attention[layer])
        << spec << " over " << num_layers << " layers";
    stage.skip.attention[layer] = true;
    stage.skip.mlp[layer] = true;
  }
  profile.name = absl::StrCat(kind, ":", count);
  profile.every_stage = std::move(stage);
  return profile;
}

absl::Status ValidateProfile(const Profile& profile,
                             const ModelFingerprint& model, int64_t num_layers,
                             const std::string& pipeline_name,
                             const std::vector<std::string>& stage_names) {
  LS_CHECK_LT(0, num_layers);
  if (profile.builtin) {
    // Builtins fit any model and pipeline; only a builtin made for a bigger
    // model (a caller's mistake) can fail here.
    LS_CHECK(profile.every_stage.has_value()) << profile.name;
    return CheckSkipRange(profile, "*", profile.every_stage->skip, num_layers);
  }
  if (profile.model != model) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile '", profile.name,
        "' was made for another model: expected fingerprint ", model.ToString(),
        " (the loaded model), got ", profile.model.ToString(),
        " (the profile's); search a profile for this model"));
  }
  if (profile.pipeline != pipeline_name) {
    return absl::InvalidArgumentError(
        absl::StrCat("profile '", profile.name, "' was made for pipeline ",
                     profile.pipeline, ", not ", pipeline_name));
  }
  for (const std::string& stage : stage_names) {
    if (!profile.stages.contains(stage)) {
      return absl::InvalidArgumentError(
          absl::StrCat("profile ", profile.name, " has no entry for stage '",
                       stage, "' of pipeline ", pipeline_name));
    }
  }
  for (const auto& [stage, settings] : profile.stages) {
    if (std::find(stage_names.begin(), stage_names.end(), stage) ==
        stage_names.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "profile ", profile.name, " has an entry for stage '", stage,
          "' which pipeline ", pipeline_name, " does not have (its stages: ",
          absl::StrJoin(stage_names, ", "), ")"));
    }
    LS_RETURN_IF_ERROR(
        CheckSkipRange(profile, stage, settings.skip, num_layers));
    const std::string problem = EarlyExitProblem(
        settings.early_exit, absl::StrCat("stages.", stage, ".early_exit"));
    if (!problem.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("profile ", profile.name, ": ", problem));
    }
  }
  if (!profile.ranking.empty()) {
    std::vector<bool> seen(2 * num_layers, false);  // [2L]
    for (const SublayerRef& ref : profile.ranking) {
      if (ref.layer < 0 || ref.layer >= num_layers) {
        return absl::InvalidArgumentError(absl::StrCat(
            "profile ", profile.name, ": ranking names ", SublayerRefName(ref),
            " but the model has ", num_layers, " layers"));
      }
      const int64_t dense = DenseIndex(ref, num_layers);
      if (seen[dense]) {
        return absl::InvalidArgumentError(
            absl::StrCat("profile ", profile.name, ": ranking lists ",
                         SublayerRefName(ref), " twice"));
      }
      seen[dense] = true;
    }
    if (static_cast<int64_t>(profile.ranking.size()) != 2 * num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "profile ", profile.name, ": ranking has ", profile.ranking.size(),
          " entries, must be a permutation of all 2 * ", num_layers, " = ",
          2 * num_layers, " sub-layers"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Profile> ResolveProfile(const std::string& spec_or_path,
                                       const ModelFingerprint& model,
                                       int64_t num_layers,
                                       const std::string& pipeline_name,
                                       const std::vector<std::string>& stages) {
  if (IsBuiltinProfileSpec(spec_or_path)) {
    LS_ASSIGN_OR_RETURN(Profile profile,
                        BuiltinProfile(spec_or_path, num_layers));
    LS_RETURN_IF_ERROR(
        ValidateProfile(profile, model, num_layers, pipeline_name, stages));
    return profile;
  }
  LS_ASSIGN_OR_RETURN(Profile profile, LoadProfileFile(spec_or_path));
  LS_RETURN_IF_ERROR(Prefixed(
      ValidateProfile(profile, model, num_layers, pipeline_name, stages),
      spec_or_path));
  return profile;
}

std::string ProfileToJson(const Profile& profile) {
  LS_CHECK(!profile.builtin)
      << "builtin profile '" << profile.name << "' has no file form";
  using ordered = nlohmann::ordered_json;
  ordered document;
  document["schema"] = kProfileSchema;
  document["name"] = profile.name;
  document["model"] = {
      {"architecture", profile.model.architecture},
      {"num_layers", profile.model.num_hidden_layers},
      {"hidden_size", profile.model.hidden_size},
      {"fingerprint", profile.model.ToString()},
  };
  document["pipeline"] = profile.pipeline;
  if (!profile.ranking.empty()) {
    ordered ranking = ordered::array();
    for (const SublayerRef& ref : profile.ranking) {
      ranking.push_back(SublayerRefName(ref));
    }
    document["ranking"] = std::move(ranking);
  }
  ordered stages = ordered::object();
  for (const auto& [name, stage] : profile.stages) {
    ordered skip = ordered::array();
    for (const SublayerRef& ref : SkippedRefs(stage.skip)) {
      skip.push_back(SublayerRefName(ref));
    }
    ordered entry;
    entry["skip"] = std::move(skip);
    // Written whenever it differs from the default, so a disabled config
    // with a threshold still round-trips.
    if (stage.early_exit != EarlyExitConfig{}) {
      entry["early_exit"] = {
          {"window", stage.early_exit.window},
          {"threshold", FloatForJson(stage.early_exit.threshold)},
          {"confidence", ConfidenceKindName(stage.early_exit.kind)},
          {"min_tokens", stage.early_exit.min_tokens},
      };
    }
    stages[name] = std::move(entry);
  }
  document["stages"] = std::move(stages);

  const ProfileProvenance& provenance = profile.provenance;
  ordered provenance_json = ordered::object();
  const auto add_string = [&](const char* key, const std::string& value) {
    if (!value.empty()) provenance_json[key] = value;
  };
  const auto add_number = [&](const char* key,
                              const std::optional<double>& value) {
    if (value.has_value()) provenance_json[key] = *value;
  };
  add_string("method", provenance.method);
  add_string("created", provenance.created);
  add_string("dataset", provenance.dataset);
  add_number("accuracy", provenance.accuracy);
  add_number("full_accuracy", provenance.full_accuracy);
  add_number("latency_seconds", provenance.latency_seconds);
  add_number("full_latency_seconds", provenance.full_latency_seconds);
  add_string("notes", provenance.notes);
  if (provenance.search.is_object()) {
    // ordered_json takes a json of the other flavour as is (keys sorted).
    provenance_json["search"] = ordered(provenance.search);
  }
  if (!provenance_json.empty()) {
    document["provenance"] = std::move(provenance_json);
  }
  // Replace, not throw, should a caller-built string be invalid UTF-8.
  return document.dump(2, ' ', /*ensure_ascii=*/false,
                       nlohmann::json::error_handler_t::replace) +
         "\n";
}

SkipSet SkipSetFromRanking(const std::vector<SublayerRef>& ranking,
                           int64_t count, int64_t num_layers) {
  LS_CHECK(count >= 0 && count <= static_cast<int64_t>(ranking.size()))
      << "count=" << count << " ranking size=" << ranking.size();
  SkipSet skip;
  skip.attention.assign(num_layers, false);
  skip.mlp.assign(num_layers, false);
  for (int64_t i = 0; i < count; ++i) {
    LS_CHECK(ranking[i].layer >= 0 && ranking[i].layer < num_layers)
        << SublayerRefName(ranking[i]) << " over " << num_layers << " layers";
    SetSkipped(ranking[i], &skip);
  }
  return skip;
}

}  // namespace litestage
