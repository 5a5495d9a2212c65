// Skip profiles (engine/stages/profile.h): the litestage.profile/v1 parser
// with the message for each malformed field, the built-ins, validation
// against a model and the JSON round trip. One file (~840 lines) because
// most of it is the table of malformed documents, one case per check.
#include "engine/stages/profile.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "engine/model/weights.h"
#include "engine/util/check.h"
#include "engine/util/json_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/scoped_temp_dir.h"

namespace litestage {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr char kSource[] = "/profiles/test.json";
const std::vector<std::string> kStages = {"recall", "analysis", "summary"};

// A real fingerprint: the synthetic "tiny" model (2 layers, width 64).
const ModelFingerprint& TinyFingerprint() {
  static const ModelFingerprint fingerprint = [] {
    auto weights = MakeSyntheticWeights("tiny", DType::kF32, 1);
    LS_CHECK(weights.ok()) << weights.status();
    return ComputeModelFingerprint(**weights);
  }();
  return fingerprint;
}

// A hand-made 5-layer model (the size of stories260K).
ModelFingerprint FiveLayerFingerprint() {
  ModelFingerprint fingerprint;
  fingerprint.architecture = "LlamaForCausalLM";
  fingerprint.num_hidden_layers = 5;
  fingerprint.hidden_size = 64;
  fingerprint.config_hash = 0x3584d76594c89677ull;
  fingerprint.tensor_hash = 0x442c9650b3a706faull;
  return fingerprint;
}

std::vector<std::string> AllRefs(int64_t num_layers) {
  std::vector<std::string> refs;
  for (int64_t j = num_layers - 1; j >= 0; --j) {
    refs.push_back("mlp." + std::to_string(j));
    refs.push_back("attention." + std::to_string(j));
  }
  return refs;
}

// A valid document for the 5-layer model and the tinythinker pipeline.
json ValidDocument() {
  const ModelFingerprint model = FiveLayerFingerprint();
  return json{
      {"schema", "litestage.profile/v1"},
      {"name", "stories-obqa-eps2"},
      {"model",
       {{"architecture", model.architecture},
        {"num_layers", model.num_hidden_layers},
        {"hidden_size", model.hidden_size},
        {"fingerprint", model.ToString()}}},
      {"pipeline", "tinythinker"},
      {"ranking", AllRefs(5)},
      {"stages",
       {{"recall",
         {{"skip", {"mlp.3", "attention.3"}},
          {"early_exit",
           {{"window", 8},
            {"threshold", 0.3},
            {"confidence", "max_prob"},
            {"min_tokens", 8}}}}},
        {"analysis", {{"skip", json::array()}}},
        {"summary",
         {{"skip", {"mlp.1"}},
          {"early_exit",
           {{"window", 4},
            {"threshold", 12.5},
            {"confidence", "max_logit"}}}}}}},
      {"provenance",
       {{"method", "litestage-search"},
        {"created", "2025-01-02T03:04:05Z"},
        {"dataset", "obqa-search-64"},
        {"accuracy", 0.41},
        {"full_accuracy", 0.43},
        {"latency_seconds", 1.2},
        {"full_latency_seconds", 1.9},
        {"notes", "epsilon 0.02"}}},
  };
}

absl::StatusOr<Profile> ParseDocument(const json& document) {
  return ParseProfile(document.dump(), kSource);
}

// Parses ValidDocument() changed by `mutate` and expects InvalidArgument
// naming the file, the JSON path of the field and the reason.
void ExpectParseError(const std::function<void(json&)>& mutate,
                      const std::string& field_path,
                      const std::string& reason) {
  json document = ValidDocument();
  mutate(document);
  absl::StatusOr<Profile> profile = ParseDocument(document);
  ASSERT_FALSE(profile.ok()) << "accepted: " << document.dump();
  EXPECT_EQ(profile.status().code(), absl::StatusCode::kInvalidArgument)
      << profile.status();
  const std::string message(profile.status().message());
  EXPECT_THAT(message,
              HasSubstr(std::string(kSource) + ": " + field_path + ": "))
      << document.dump();
  EXPECT_THAT(message, HasSubstr(reason));
}

TEST(ProfileParseTest, ValidDocument) {
  absl::StatusOr<Profile> profile = ParseDocument(ValidDocument());
  ASSERT_TRUE(profile.ok()) << profile.status();
  EXPECT_EQ(profile->name, "stories-obqa-eps2");
  EXPECT_FALSE(profile->builtin);
  EXPECT_EQ(profile->model, FiveLayerFingerprint());
  EXPECT_EQ(profile->pipeline, "tinythinker");
  ASSERT_EQ(profile->ranking.size(), 10u);
  EXPECT_EQ(profile->ranking[0], (SublayerRef{SublayerKind::kMlp, 4}));
  EXPECT_EQ(profile->ranking[1], (SublayerRef{SublayerKind::kAttention, 4}));
  ASSERT_EQ(profile->stages.size(), 3u);

  const StageProfile& recall = profile->ForStage("recall");
  EXPECT_EQ(recall.skip.attention,
            (std::vector<bool>{false, false, false, true, false}));
  EXPECT_EQ(recall.skip.mlp,
            (std::vector<bool>{false, false, false, true, false}));
  EXPECT_EQ(recall.early_exit.window, 8);
  EXPECT_FLOAT_EQ(recall.early_exit.threshold, 0.3f);
  EXPECT_EQ(recall.early_exit.kind, ConfidenceKind::kMaxProb);
  EXPECT_EQ(recall.early_exit.min_tokens, 8);

  const StageProfile& analysis = profile->ForStage("analysis");
  EXPECT_EQ(analysis.skip.attention, std::vector<bool>(5, false));
  EXPECT_EQ(analysis.skip.mlp, std::vector<bool>(5, false));
  EXPECT_FALSE(analysis.early_exit.enabled());

  const StageProfile& summary = profile->ForStage("summary");
  EXPECT_EQ(summary.skip.num_skipped(), 1);
  EXPECT_TRUE(summary.skip.skips_mlp(1));
  EXPECT_EQ(summary.early_exit.kind, ConfidenceKind::kMaxLogit);
  EXPECT_FLOAT_EQ(summary.early_exit.threshold, 12.5f);
  EXPECT_EQ(summary.early_exit.min_tokens, 0);

  EXPECT_EQ(profile->provenance.method, "litestage-search");
  EXPECT_EQ(profile->provenance.accuracy, 0.41);
  EXPECT_EQ(profile->provenance.full_latency_seconds, 1.9);
  EXPECT_EQ(profile->provenance.notes, "epsilon 0.02");
}

TEST(ProfileParseTest, OptionalPartsMayBeAbsent) {
  json document = ValidDocument();
  document.erase("ranking");
  document.erase("provenance");
  document["provenance"] = json::object();
  absl::StatusOr<Profile> profile = ParseDocument(document);
  ASSERT_TRUE(profile.ok()) << profile.status();
  EXPECT_TRUE(profile->ranking.empty());
  EXPECT_EQ(profile->provenance, ProfileProvenance{});
}

TEST(ProfileParseTest, SkipRatio) {
  absl::StatusOr<Profile> profile = ParseDocument(ValidDocument());
  ASSERT_TRUE(profile.ok()) << profile.status();
  EXPECT_DOUBLE_EQ(profile->SkipRatio("recall", 5), 0.2);
  EXPECT_DOUBLE_EQ(profile->SkipRatio("analysis", 5), 0.0);
  EXPECT_DOUBLE_EQ(profile->SkipRatio("summary", 5), 0.1);
}

TEST(ProfileParseTest, BadJsonNamesTheSource) {
  absl::StatusOr<Profile> profile = ParseProfile("{\"schema\": ", kSource);
  ASSERT_FALSE(profile.ok());
  EXPECT_EQ(profile.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(profile.status().message()),
              HasSubstr(std::string(kSource) + ": not valid JSON"));
  profile = ParseProfile("[1, 2]", kSource);
  ASSERT_FALSE(profile.ok());
  EXPECT_THAT(std::string(profile.status().message()),
              HasSubstr("must be a JSON object"));
}

TEST(ProfileParseTest, TopLevelErrors) {
  ExpectParseError([](json& d) { d["schema"] = "litestage.profile/v2"; },
                   "schema", "must be \"litestage.profile/v1\"");
  ExpectParseError([](json& d) { d.erase("schema"); }, "schema",
                   "missing required key");
  ExpectParseError([](json& d) { d["schema"] = 1; }, "schema",
                   "must be a string");
  ExpectParseError([](json& d) { d["extra"] = 1; }, "extra", "unknown key");
  ExpectParseError([](json& d) { d.erase("name"); }, "name",
                   "missing required key");
  ExpectParseError([](json& d) { d["name"] = "has space"; }, "name",
                   "must match");
  ExpectParseError([](json& d) { d["name"] = "-dash"; }, "name", "must match");
  ExpectParseError([](json& d) { d["name"] = ""; }, "name", "must match");
  ExpectParseError([](json& d) { d["name"] = "even:2"; }, "name", "must match");
  ExpectParseError([](json& d) { d["name"] = "full"; }, "name",
                   "builtin profile name");
  ExpectParseError([](json& d) { d.erase("pipeline"); }, "pipeline",
                   "missing required key");
  ExpectParseError([](json& d) { d["pipeline"] = ""; }, "pipeline",
                   "must not be empty");
  ExpectParseError([](json& d) { d["pipeline"] = json::array(); }, "pipeline",
                   "must be a string");
  ExpectParseError([](json& d) { d.erase("stages"); }, "stages",
                   "missing required key");
  ExpectParseError([](json& d) { d["stages"] = json::object(); }, "stages",
                   "at least one stage");
  ExpectParseError([](json& d) { d["stages"] = json::array(); }, "stages",
                   "must be a JSON object");
}

TEST(ProfileParseTest, ModelErrors) {
  ExpectParseError([](json& d) { d.erase("model"); }, "model",
                   "missing required key");
  ExpectParseError([](json& d) { d["model"] = "x"; }, "model",
                   "must be a JSON object");
  for (const char* key :
       {"architecture", "num_layers", "hidden_size", "fingerprint"}) {
    ExpectParseError([key](json& d) { d["model"].erase(key); },
                     std::string("model.") + key, "missing required key");
  }
  ExpectParseError([](json& d) { d["model"]["dtype"] = "bf16"; }, "model.dtype",
                   "unknown key");
  ExpectParseError([](json& d) { d["model"]["num_layers"] = 0; },
                   "model.num_layers", "must be >= 1");
  ExpectParseError([](json& d) { d["model"]["num_layers"] = 5.5; },
                   "model.num_layers", "must be an integer");
  ExpectParseError([](json& d) { d["model"]["num_layers"] = "5"; },
                   "model.num_layers", "must be an integer");
  ExpectParseError([](json& d) { d["model"]["hidden_size"] = -1; },
                   "model.hidden_size", "must be >= 1");
  ExpectParseError([](json& d) { d["model"]["fingerprint"] = "abc"; },
                   "model.fingerprint", "malformed model fingerprint");
  // The readable fields must agree with the fingerprint.
  ExpectParseError([](json& d) { d["model"]["num_layers"] = 6; },
                   "model.fingerprint", "but model says");
  ExpectParseError([](json& d) { d["model"]["architecture"] = "Qwen2"; },
                   "model.fingerprint", "but model says");
}

TEST(ProfileParseTest, RankingErrors) {
  ExpectParseError([](json& d) { d["ranking"] = "mlp.1"; }, "ranking",
                   "must be an array");
  ExpectParseError([](json& d) { d["ranking"] = json::array(); }, "ranking",
                   "must list all 2 * num_layers = 10 sub-layers once, has 0");
  ExpectParseError([](json& d) { d["ranking"].erase(3); }, "ranking",
                   "has 9; missing 'attention.3'");
  ExpectParseError([](json& d) { d["ranking"][3] = "mlp.4"; }, "ranking[3]",
                   "duplicate 'mlp.4' (also at ranking[0])");
  ExpectParseError([](json& d) { d["ranking"].push_back("mlp.5"); },
                   "ranking[10]", "layer 5 is out of range");
  ExpectParseError([](json& d) { d["ranking"][2] = 7; }, "ranking[2]",
                   "must be a string");
}

TEST(ProfileParseTest, StageErrors) {
  ExpectParseError([](json& d) { d["stages"]["recall"] = json::array(); },
                   "stages.recall", "must be a JSON object");
  ExpectParseError([](json& d) { d["stages"]["recall"]["budget"] = 1; },
                   "stages.recall.budget", "unknown key");
  ExpectParseError([](json& d) { d["stages"]["analysis"].erase("skip"); },
                   "stages.analysis.skip", "missing required key");
  ExpectParseError([](json& d) { d["stages"]["analysis"]["skip"] = "mlp.1"; },
                   "stages.analysis.skip", "must be an array");
  ExpectParseError(
      [](json& d) { d["stages"]["recall"]["skip"].push_back("mlp.3"); },
      "stages.recall.skip[2]", "duplicate 'mlp.3' (also at skip[0])");
  ExpectParseError(
      [](json& d) { d["stages"]["recall"]["skip"].push_back("mlp.5"); },
      "stages.recall.skip[2]",
      "layer 5 is out of range; model.num_layers is 5");
  ExpectParseError(
      [](json& d) { d["stages"]["summary"]["skip"][0] = "mlp.-1"; },
      "stages.summary.skip[0]", "'mlp.-1': layer index must be >= 0");
  for (const char* bad : {"mlp", "mlp.", "mlp.x", "mlp.01", "mlp.+1", "mlp. 1",
                          "ffn.1", "Attention.1", "attention.1.0"}) {
    ExpectParseError(
        [bad](json& d) { d["stages"]["summary"]["skip"][0] = bad; },
        "stages.summary.skip[0]", std::string("'") + bad + "'");
  }
  ExpectParseError([](json& d) { d["stages"]["summary"]["skip"][0] = 1; },
                   "stages.summary.skip[0]", "must be a string");
}

TEST(ProfileParseTest, EarlyExitErrors) {
  const std::string path = "stages.recall.early_exit";
  const auto set = [](const char* key, json value) {
    return [key, value](json& d) {
      d["stages"]["recall"]["early_exit"][key] = value;
    };
  };
  ExpectParseError(set("window", -1), path + ".window",
                   "must be in [0, 4096] (0 disables), got -1");
  ExpectParseError(set("window", 2.5), path + ".window", "must be an integer");
  ExpectParseError(set("min_tokens", -3), path + ".min_tokens",
                   "must be in [0, 1048576], got -3");
  ExpectParseError(set("threshold", 1.5), path + ".threshold",
                   "must be in [0, 1] for max_prob confidence, got 1.5");
  ExpectParseError(set("threshold", -0.1), path + ".threshold",
                   "must be in [0, 1] for max_prob");
  ExpectParseError(set("threshold", "0.3"), path + ".threshold",
                   "must be a number");
  ExpectParseError(set("threshold", 1e300), path + ".threshold",
                   "out of float range");
  ExpectParseError(set("confidence", "entropy"), path + ".confidence",
                   "must be \"max_prob\" or \"max_logit\", got \"entropy\"");
  ExpectParseError(set("patience", 3), path + ".patience", "unknown key");
  ExpectParseError(
      [](json& d) { d["stages"]["recall"]["early_exit"].erase("window"); },
      path + ".window", "missing required key");
  ExpectParseError(
      [](json& d) { d["stages"]["recall"]["early_exit"].erase("threshold"); },
      path + ".threshold", "missing required key");
  ExpectParseError([](json& d) { d["stages"]["recall"]["early_exit"] = 8; },
                   path, "must be a JSON object");
  // A non-finite threshold cannot be spelled in JSON; an overflowing literal
  // is the nearest thing.
  json document = ValidDocument();
  std::string text = document.dump();
  const std::string from = "\"threshold\":0.3";
  ASSERT_NE(text.find(from), std::string::npos);
  text.replace(text.find(from), from.size(), "\"threshold\":1e999");
  absl::StatusOr<Profile> profile = ParseProfile(text, kSource);
  ASSERT_FALSE(profile.ok());
  EXPECT_THAT(std::string(profile.status().message()), HasSubstr(kSource));

  // max_logit thresholds are not limited to [0, 1].
  document["stages"]["recall"]["early_exit"]["confidence"] = "max_logit";
  document["stages"]["recall"]["early_exit"]["threshold"] = -4.0;
  EXPECT_TRUE(ParseDocument(document).ok());
  // window 0 disables early exit and is valid.
  document["stages"]["recall"]["early_exit"]["window"] = 0;
  profile = ParseDocument(document);
  ASSERT_TRUE(profile.ok()) << profile.status();
  EXPECT_FALSE(profile->ForStage("recall").early_exit.enabled());
}

TEST(ProfileParseTest, ProvenanceErrors) {
  ExpectParseError([](json& d) { d["provenance"]["seed"] = 1; },
                   "provenance.seed", "unknown key");
  ExpectParseError([](json& d) { d["provenance"]["accuracy"] = 1.5; },
                   "provenance.accuracy", "must be in [0, 1], got 1.5");
  ExpectParseError([](json& d) { d["provenance"]["full_accuracy"] = "high"; },
                   "provenance.full_accuracy", "must be a number");
  ExpectParseError([](json& d) { d["provenance"]["latency_seconds"] = -1; },
                   "provenance.latency_seconds", "must be >= 0");
  ExpectParseError([](json& d) { d["provenance"]["notes"] = 3; },
                   "provenance.notes", "must be a string");
  ExpectParseError([](json& d) { d["provenance"] = json::array(); },
                   "provenance", "must be a JSON object");
}

TEST(ProfileTest, SublayerRefNames) {
  EXPECT_EQ(SublayerRefName({SublayerKind::kAttention, 3}), "attention.3");
  EXPECT_EQ(SublayerRefName({SublayerKind::kMlp, 0}), "mlp.0");
  for (const SublayerRef ref : {SublayerRef{SublayerKind::kAttention, 0},
                                SublayerRef{SublayerKind::kMlp, 29},
                                SublayerRef{SublayerKind::kAttention, 1000}}) {
    absl::StatusOr<SublayerRef> parsed = ParseSublayerRef(SublayerRefName(ref));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, ref);
  }
  EXPECT_FALSE(ParseSublayerRef("mlp.99999999999999999999").ok());
}

TEST(ProfileTest, RoundTrip) {
  absl::StatusOr<Profile> profile = ParseDocument(ValidDocument());
  ASSERT_TRUE(profile.ok()) << profile.status();
  const std::string text = ProfileToJson(*profile);
  absl::StatusOr<Profile> again = ParseProfile(text, "roundtrip.json");
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << text;
  EXPECT_EQ(*again, *profile);
  EXPECT_EQ(ProfileToJson(*again), text);
  // Canonical, ranking-free order: attention by layer, then MLP.
  const json written = json::parse(text);
  EXPECT_EQ(written["stages"]["recall"]["skip"],
            json({"attention.3", "mlp.3"}));
  // Floats are written in their shortest form.
  EXPECT_NE(text.find("\"threshold\": 0.3,"), std::string::npos) << text;
  EXPECT_EQ(written["model"]["fingerprint"], FiveLayerFingerprint().ToString());
}

TEST(ProfileTest, RoundTripOfABuiltUpProfile) {
  const ModelFingerprint model = TinyFingerprint();
  Profile profile;
  profile.name = "tiny.search_1";
  profile.model = model;
  profile.pipeline = "two-stage";
  for (int64_t j = 0; j < model.num_hidden_layers; ++j) {
    profile.ranking.push_back({SublayerKind::kMlp, j});
    profile.ranking.push_back({SublayerKind::kAttention, j});
  }
  StageProfile first;
  first.skip = SkipSetFromRanking(profile.ranking, 3, model.num_hidden_layers);
  first.early_exit = {.window = 0, .threshold = 0.123456789f};  // Disabled.
  StageProfile second;
  second.skip = SkipSetFromRanking(profile.ranking, 0, model.num_hidden_layers);
  second.early_exit = {.window = 16,
                       .threshold = 7.25f,
                       .kind = ConfidenceKind::kMaxLogit,
                       .min_tokens = 2};
  profile.stages = {{"first", first}, {"second", second}};
  profile.provenance.accuracy = 1.0 / 3.0;
  profile.provenance.latency_seconds = 0.1 + 0.2;

  absl::StatusOr<Profile> again =
      ParseProfile(ProfileToJson(profile), "built.json");
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << ProfileToJson(profile);
  EXPECT_EQ(*again, profile);
  EXPECT_TRUE(ValidateProfile(*again, model, model.num_hidden_layers,
                              "two-stage", {"first", "second"})
                  .ok());
}

// provenance.search (what litestage-search measured) is free-form JSON,
// kept as parsed and written back as is; it must be an object.
TEST(ProfileTest, ProvenanceSearchIsKeptAndRoundTrips) {
  json document = ValidDocument();
  document["provenance"]["search"] = {
      {"metric", "fidelity"},
      {"epsilon", 0.02},
      {"search_questions", {"obqa-7", "obqa-9"}},
      {"table",
       {{{"stage", "recall"}, {"k", 3}, {"metric_ci", {0.81, 0.93}}},
        {{"stage", "summary"}, {"k", 0}, {"early_exit", nullptr}}}}};
  absl::StatusOr<Profile> profile = ParseDocument(document);
  ASSERT_TRUE(profile.ok()) << profile.status();
  EXPECT_EQ(profile->provenance.search, document["provenance"]["search"]);
  const std::string text = ProfileToJson(*profile);
  absl::StatusOr<Profile> again = ParseProfile(text, "roundtrip.json");
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << text;
  EXPECT_EQ(*again, *profile);
  EXPECT_EQ(ProfileToJson(*again), text);

  // Without it, nothing changes (older files and writers).
  json plain = ValidDocument();
  absl::StatusOr<Profile> old = ParseDocument(plain);
  ASSERT_TRUE(old.ok());
  EXPECT_TRUE(old->provenance.search.is_null());
  EXPECT_EQ(json::parse(ProfileToJson(*old))["provenance"].count("search"), 0u);

  ExpectParseError([](json& d) { d["provenance"]["search"] = json::array(); },
                   "provenance.search", "must be a JSON object");
  ExpectParseError([](json& d) { d["provenance"]["search"] = "text"; },
                   "provenance.search", "must be a JSON object");
  // A number a double cannot hold would be written back as null; the JSON
  // parser already refuses it.
  json with_number = ValidDocument();
  with_number["provenance"]["search"] = {{"table", {{{"latency", 12345.5}}}}};
  std::string overflow = with_number.dump();
  overflow.replace(overflow.find("12345.5"), 7, "1e999");
  absl::StatusOr<Profile> infinite = ParseProfile(overflow, kSource);
  ASSERT_FALSE(infinite.ok());
  EXPECT_THAT(std::string(infinite.status().message()),
              HasSubstr("not valid JSON"));
}

// The fuzz seed with provenance.search is a valid profile (so the fuzzer
// starts inside the round-trip path) and round-trips.
TEST(ProfileTest, SearchedFuzzSeedParsesAndRoundTrips) {
  absl::StatusOr<Profile> profile =
      LoadProfileFile(std::string(LITESTAGE_TEST_DATA_DIR) +
                      "/fuzz/corpus/fuzz_profile/searched.json");
  ASSERT_TRUE(profile.ok()) << profile.status();
  EXPECT_EQ(profile->provenance.search["metric"], "fidelity");
  absl::StatusOr<Profile> again =
      ParseProfile(ProfileToJson(*profile), "roundtrip.json");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, *profile);
}

TEST(ProfileTest, SkipSetFromRanking) {
  const std::vector<SublayerRef> ranking = {
      {SublayerKind::kMlp, 2},       {SublayerKind::kAttention, 0},
      {SublayerKind::kMlp, 0},       {SublayerKind::kAttention, 2},
      {SublayerKind::kAttention, 1}, {SublayerKind::kMlp, 1}};
  const SkipSet none = SkipSetFromRanking(ranking, 0, 3);
  EXPECT_EQ(none.attention, std::vector<bool>(3, false));
  EXPECT_EQ(none.mlp, std::vector<bool>(3, false));
  const SkipSet three = SkipSetFromRanking(ranking, 3, 3);
  EXPECT_EQ(three.attention, (std::vector<bool>{true, false, false}));
  EXPECT_EQ(three.mlp, (std::vector<bool>{true, false, true}));
  EXPECT_EQ(three.num_skipped(), 3);
  const SkipSet all = SkipSetFromRanking(ranking, 6, 3);
  EXPECT_EQ(all.num_skipped(), 6);
}

TEST(ProfileDeathTest, ForStageOfAMissingStageIsAProgrammerError) {
  absl::StatusOr<Profile> profile = ParseDocument(ValidDocument());
  ASSERT_TRUE(profile.ok()) << profile.status();
  EXPECT_DEATH(profile->ForStage("critique"), "critique");
  EXPECT_DEATH(SkipSetFromRanking({}, 1, 3), "count=1");
}

// --- Builtins ---------------------------------------------------------------

std::vector<int64_t> SkippedLayers(const Profile& profile) {
  const SkipSet& skip = profile.ForStage("any stage").skip;
  std::vector<int64_t> layers;
  for (size_t j = 0; j < skip.attention.size(); ++j) {
    EXPECT_EQ(skip.attention[j], skip.mlp[j]) << "builtins skip whole layers";
    if (skip.attention[j]) layers.push_back(static_cast<int64_t>(j));
  }
  return layers;
}

TEST(BuiltinProfileTest, Full) {
  absl::StatusOr<Profile> full = BuiltinProfile("full", 5);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_TRUE(full->builtin);
  EXPECT_EQ(full->name, "full");
  EXPECT_EQ(full->ForStage("recall"), StageProfile{});
  EXPECT_FALSE(full->ForStage("summary").early_exit.enabled());
  EXPECT_EQ(full->SkipRatio("recall", 5), 0.0);
  EXPECT_EQ(full->provenance.method, "builtin");
}

TEST(BuiltinProfileTest, Even) {
  absl::StatusOr<Profile> zero = BuiltinProfile("even:0", 5);
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_TRUE(SkippedLayers(*zero).empty());
  EXPECT_EQ(zero->name, "even:0");

  absl::StatusOr<Profile> one = BuiltinProfile("even:1", 5);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(SkippedLayers(*one), std::vector<int64_t>{2});
  EXPECT_DOUBLE_EQ(one->SkipRatio("analysis", 5), 0.2);

  absl::StatusOr<Profile> two = BuiltinProfile("even:2", 30);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(SkippedLayers(*two), (std::vector<int64_t>{10, 20}));

  absl::StatusOr<Profile> all = BuiltinProfile("even:5", 5);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(SkippedLayers(*all), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_DOUBLE_EQ(all->SkipRatio("recall", 5), 1.0);
}

TEST(BuiltinProfileTest, EvenPicksKDistinctLayersForEveryK) {
  for (int64_t layers = 1; layers <= 64; ++layers) {
    for (int64_t k = 0; k <= layers; ++k) {
      const std::string spec = "even:" + std::to_string(k);
      absl::StatusOr<Profile> profile = BuiltinProfile(spec, layers);
      ASSERT_TRUE(profile.ok()) << profile.status();
      const std::vector<int64_t> skipped = SkippedLayers(*profile);
      ASSERT_EQ(static_cast<int64_t>(skipped.size()), k)
          << spec << " L=" << layers;
      for (int64_t i = 0; i < k; ++i) {
        EXPECT_EQ(skipped[i], (i + 1) * layers / (k + 1));
      }
      EXPECT_DOUBLE_EQ(profile->SkipRatio("s", layers),
                       static_cast<double>(k) / layers);
    }
  }
}

TEST(BuiltinProfileTest, Last) {
  absl::StatusOr<Profile> two = BuiltinProfile("last:2", 5);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(SkippedLayers(*two), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(two->name, "last:2");
  absl::StatusOr<Profile> zero = BuiltinProfile("last:0", 5);
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_TRUE(SkippedLayers(*zero).empty());
  absl::StatusOr<Profile> all = BuiltinProfile("last:5", 5);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(SkippedLayers(*all).size(), 5u);
}

TEST(BuiltinProfileTest, BadSpecs) {
  for (const char* spec :
       {"even:", "even:-1", "even:6", "last: 1", "last:1 ", "even:+1",
        "even:01", "last:x", "even:99999999999999999999999"}) {
    EXPECT_TRUE(IsBuiltinProfileSpec(spec)) << spec;
    absl::StatusOr<Profile> profile = BuiltinProfile(spec, 5);
    ASSERT_FALSE(profile.ok()) << spec;
    EXPECT_EQ(profile.status().code(), absl::StatusCode::kInvalidArgument)
        << spec;
    EXPECT_THAT(std::string(profile.status().message()),
                HasSubstr(std::string("'") + spec + "'"));
    EXPECT_THAT(std::string(profile.status().message()), HasSubstr("[0, 5]"));
  }
  for (const char* spec : {"fast", "Full", "even", "first:1", ""}) {
    EXPECT_FALSE(IsBuiltinProfileSpec(spec)) << spec;
    absl::StatusOr<Profile> profile = BuiltinProfile(spec, 5);
    ASSERT_FALSE(profile.ok()) << spec;
    EXPECT_EQ(profile.status().code(), absl::StatusCode::kNotFound) << spec;
  }
  EXPECT_FALSE(BuiltinProfile("full", 0).ok());
}

// --- ValidateProfile / ResolveProfile ---------------------------------------

TEST(ValidateProfileTest, AcceptsTheMatchingModelAndPipeline) {
  absl::StatusOr<Profile> profile = ParseDocument(ValidDocument());
  ASSERT_TRUE(profile.ok()) << profile.status();
  EXPECT_TRUE(ValidateProfile(*profile, FiveLayerFingerprint(), 5,
                              "tinythinker", kStages)
                  .ok());
}

TEST(ValidateProfileTest, FingerprintMismatch) {
  absl::StatusOr<Profile> profile = ParseDocument(ValidDocument());
  ASSERT_TRUE(profile.ok()) << profile.status();
  ModelFingerprint other = FiveLayerFingerprint();
  other.tensor_hash ^= 1;
  const absl::Status status =
      ValidateProfile(*profile, other, 5, "tinythinker", kStages);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("made for another model"));
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("expected fingerprint " + other.ToString()));
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("got " + FiveLayerFingerprint().ToString()));

  const absl::Status tiny =
      ValidateProfile(*profile, TinyFingerprint(), 2, "tinythinker", kStages);
  EXPECT_EQ(tiny.code(), absl::StatusCode::kFailedPrecondition) << tiny;
}

TEST(ValidateProfileTest, PipelineAndStageMismatches) {
  absl::StatusOr<Profile> profile = ParseDocument(ValidDocument());
  ASSERT_TRUE(profile.ok()) << profile.status();
  const ModelFingerprint model = FiveLayerFingerprint();

  absl::Status status = ValidateProfile(*profile, model, 5, "cot", kStages);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("made for pipeline tinythinker, not cot"));

  status = ValidateProfile(*profile, model, 5, "tinythinker",
                           {"recall", "analysis", "summary", "critique"});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("profile stories-obqa-eps2 has no entry for stage "
                        "'critique' of pipeline tinythinker"));

  status = ValidateProfile(*profile, model, 5, "tinythinker",
                           {"recall", "analysis"});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("stage 'summary'"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("does not have"));
}

TEST(ValidateProfileTest, LayersAndRankingAgainstASmallerModel) {
  absl::StatusOr<Profile> profile = ParseDocument(ValidDocument());
  ASSERT_TRUE(profile.ok()) << profile.status();
  // A caller-built profile whose fingerprint claims a 3-layer model while
  // its stages skip layer 3 (only ValidateProfile can see this).
  ModelFingerprint small = FiveLayerFingerprint();
  small.num_hidden_layers = 3;
  profile->model = small;
  absl::Status status =
      ValidateProfile(*profile, small, 3, "tinythinker", kStages);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("stage 'recall' skips attention.3 "
                        "but the model has 3 layers"));

  // Stages in range, ranking still for 5 layers.
  for (auto& [name, stage] : profile->stages) {
    stage.skip.attention.resize(3);
    stage.skip.mlp.resize(3);
  }
  status = ValidateProfile(*profile, small, 3, "tinythinker", kStages);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("ranking names mlp.4"));

  // Ranking not a permutation: a duplicate, then a missing entry.
  profile->ranking = {{SublayerKind::kMlp, 0}, {SublayerKind::kMlp, 0}};
  status = ValidateProfile(*profile, small, 3, "tinythinker", kStages);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("ranking lists mlp.0 twice"));
  profile->ranking = {{SublayerKind::kMlp, 0}, {SublayerKind::kMlp, 1}};
  status = ValidateProfile(*profile, small, 3, "tinythinker", kStages);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("must be a permutation of all"));
  profile->ranking.clear();
  EXPECT_TRUE(ValidateProfile(*profile, small, 3, "tinythinker", kStages).ok());

  // A caller-built bad early exit is caught too.
  profile->stages["summary"].early_exit.window = -2;
  status = ValidateProfile(*profile, small, 3, "tinythinker", kStages);
  EXPECT_THAT(
      std::string(status.message()),
      HasSubstr("stages.summary.early_exit.window: must be in [0, 4096]"));
}

TEST(ValidateProfileTest, BuiltinsPassAnyModelAndPipeline) {
  for (const char* spec : {"full", "even:2", "last:5"}) {
    absl::StatusOr<Profile> profile = BuiltinProfile(spec, 5);
    ASSERT_TRUE(profile.ok()) << profile.status();
    EXPECT_TRUE(
        ValidateProfile(*profile, TinyFingerprint(), 5, "anything", {"a", "b"})
            .ok())
        << spec;
  }
}

class ResolveProfileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("litestage_profile_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path) << text;
    return path;
  }

  fs::path dir_;
};

TEST_F(ResolveProfileTest, BuiltinsAndFiles) {
  const ModelFingerprint model = FiveLayerFingerprint();
  absl::StatusOr<Profile> builtin =
      ResolveProfile("last:1", model, 5, "tinythinker", kStages);
  ASSERT_TRUE(builtin.ok()) << builtin.status();
  EXPECT_EQ(SkippedLayers(*builtin), std::vector<int64_t>{4});
  EXPECT_FALSE(ResolveProfile("even:6", model, 5, "tinythinker", kStages).ok());

  const std::string path = Write("good.json", ValidDocument().dump(2));
  absl::StatusOr<Profile> loaded =
      ResolveProfile(path, model, 5, "tinythinker", kStages);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->name, "stories-obqa-eps2");

  ModelFingerprint other = model;
  other.config_hash = 1;
  absl::StatusOr<Profile> mismatched =
      ResolveProfile(path, other, 5, "tinythinker", kStages);
  ASSERT_FALSE(mismatched.ok());
  EXPECT_EQ(mismatched.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(mismatched.status().message()),
              HasSubstr(path + ": profile"));
}

TEST_F(ResolveProfileTest, FileErrorsNameThePath) {
  const std::string missing = (dir_ / "missing.json").string();
  absl::StatusOr<Profile> profile = LoadProfileFile(missing);
  ASSERT_FALSE(profile.ok());
  EXPECT_THAT(std::string(profile.status().message()), HasSubstr(missing));
  EXPECT_FALSE(
      ResolveProfile(missing, FiveLayerFingerprint(), 5, "tinythinker", kStages)
          .ok());

  const std::string broken = Write("broken.json", "{\"schema\": [");
  profile = LoadProfileFile(broken);
  ASSERT_FALSE(profile.ok());
  EXPECT_EQ(profile.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(profile.status().message()),
              HasSubstr(broken + ": not valid JSON"));

  json document = ValidDocument();
  document["stages"]["recall"]["early_exit"]["window"] = -1;
  const std::string bad_window = Write("bad_window.json", document.dump());
  profile = LoadProfileFile(bad_window);
  ASSERT_FALSE(profile.ok());
  EXPECT_EQ(profile.status().message(),
            bad_window +
                ": stages.recall.early_exit.window: must be in [0, 4096] (0 "
                "disables), got -1");
}

// The reproduction: a window of 1e12 made the monitor allocate 4 TB.
TEST_F(ResolveProfileTest, HugeEarlyExitWindowIsRejectedAtParse) {
  json document = ValidDocument();
  document["stages"]["recall"]["early_exit"]["window"] = 1'000'000'000'000;
  const std::string path = Write("huge_window.json", document.dump());
  absl::StatusOr<Profile> profile = LoadProfileFile(path);
  ASSERT_FALSE(profile.ok());
  EXPECT_EQ(profile.status().message(),
            path +
                ": stages.recall.early_exit.window: must be in [0, 4096] (0 "
                "disables), got 1000000000000");
  document["stages"]["recall"]["early_exit"]["window"] = kMaxEarlyExitWindow;
  EXPECT_TRUE(LoadProfileFile(Write("max_window.json", document.dump())).ok());
  document["stages"]["recall"]["early_exit"]["min_tokens"] =
      kMaxEarlyExitMinTokens + 1;
  profile = LoadProfileFile(Write("min_tokens.json", document.dump()));
  ASSERT_FALSE(profile.ok());
  EXPECT_THAT(profile.status().message(),
              HasSubstr("stages.recall.early_exit.min_tokens: must be in"));
}

TEST_F(ResolveProfileTest, FileTypeSizeAndNestingAreBounded) {
  const std::string fifo = (dir_ / "fifo.json").string();
  testing::MakeFifo(fifo);
  absl::StatusOr<Profile> profile = LoadProfileFile(fifo);
  ASSERT_FALSE(profile.ok());
  EXPECT_THAT(profile.status().message(),
              HasSubstr(fifo + ": not a regular file (fifo)"));
  profile = LoadProfileFile("/dev/zero");
  ASSERT_FALSE(profile.ok());
  EXPECT_THAT(profile.status().message(),
              HasSubstr("/dev/zero: not a regular file (character device)"));
  profile = LoadProfileFile(dir_.string());
  ASSERT_FALSE(profile.ok());
  EXPECT_THAT(profile.status().message(), HasSubstr("(directory)"));
  const std::string big = (dir_ / "big.json").string();
  testing::MakeSparseFile(big, kMaxSmallFileBytes + 1);
  EXPECT_THAT(LoadProfileFile(big).status().message(),
              AllOf(HasSubstr(big), HasSubstr("over the limit of 1048576")));
  const std::string deep =
      Write("deep.json", testing::NestedJsonArrays(100'000));
  EXPECT_THAT(LoadProfileFile(deep).status().message(),
              AllOf(HasSubstr(deep), HasSubstr("nesting deeper than 64")));
  const std::string at_bound =
      Write("at_bound.json", testing::NestedJsonArrays(kMaxJsonDepth));
  EXPECT_THAT(LoadProfileFile(at_bound).status().message(),
              ::testing::Not(HasSubstr("nesting")));
  json document = ValidDocument();
  const std::string target = Write("target.json", document.dump());
  fs::create_symlink(target, dir_ / "link.json");
  EXPECT_TRUE(LoadProfileFile((dir_ / "link.json").string()).ok());
}

}  // namespace
}  // namespace litestage
