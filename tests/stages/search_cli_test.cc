// litestage-search end to end, as a user runs it: the real stories260K
// model from ../shared, a zero-shot TinyThinker pipeline file written here,
// 2 calibration + 3 search OBQA train questions. Checks the profile (loads,
// validates against the model, provenance holds disjoint question ids and
// the table), search.csv, that a second identical run re-measures nothing
// and writes the same profile, that litestage-eval evaluates the profile
// and that litestage-server serves it. Needs LITESTAGE_SHARED and
// LITESTAGE_BIN_DIR (fails, never skips, without them).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/model/fingerprint.h"
#include "engine/stages/pipeline.h"
#include "engine/stages/profile.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/run_command.h"
#include "tests/common/scoped_temp_dir.h"
#include "tests/stages/tiny_pipeline.h"

namespace litestage {
namespace {

using ::litestage::testing::CommandResult;
using ::litestage::testing::ReadFile;
using ::litestage::testing::RunCommand;
using ::testing::HasSubstr;

nlohmann::json ReadJson(const std::string& path) {
  return nlohmann::json::parse(ReadFile(path), nullptr, false);
}

class SearchCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* shared = std::getenv("LITESTAGE_SHARED");
    const char* bin = std::getenv("LITESTAGE_BIN_DIR");
    ASSERT_NE(shared, nullptr) << "LITESTAGE_SHARED is not set";
    ASSERT_NE(bin, nullptr) << "LITESTAGE_BIN_DIR is not set";
    model_ = std::string(shared) + "/models/stories260K";
    dataset_ = std::string(shared) + "/data/obqa/train.jsonl";
    bin_ = bin;
    ASSERT_TRUE(std::filesystem::exists(model_ + "/config.json")) << model_;
    ASSERT_TRUE(std::filesystem::exists(dataset_)) << dataset_;
    for (const char* binary : {"litestage-search", "litestage-eval",
                               "litestage-server", "litestage-cli"}) {
      ASSERT_TRUE(std::filesystem::exists(bin_ + "/" + binary)) << binary;
    }
    const Pipeline pipeline = ZeroShotTinyThinker();
    ASSERT_FALSE(pipeline.stages.empty());
    for (const PipelineStage& stage : pipeline.stages) {
      stage_names_.push_back(stage.name);
    }
    pipeline_ = dir_.path() + "/pipeline.json";
    std::ofstream(pipeline_) << PipelineToJson(pipeline);
  }

  std::string SearchCommand() const {
    return "'" + bin_ + "/litestage-search' --model '" + model_ +
           "' --pipeline '" + pipeline_ + "' --dataset '" + dataset_ +
           "' --calibration 2 --search 3 --max-skip 2 --metric fidelity "
           "--epsilon 0.5 --threads 2 --max-new-tokens 24 --batch 2 "
           "--latency-questions 1 --out '" +
           profile_ + "' --report-dir '" + report_ + "'";
  }

  testing::ScopedTempDir dir_{"search_cli_test"};
  std::string model_, dataset_, bin_, pipeline_;
  std::vector<std::string> stage_names_;
  std::string profile_ = dir_.path() + "/searched.json";
  std::string report_ = dir_.path() + "/report";
};

TEST_F(SearchCliTest, ProfileCacheEvalAndServer) {
  const std::string log = dir_.path() + "/stderr.txt";
  const CommandResult first = RunCommand(SearchCommand(), log);
  ASSERT_EQ(first.exit_code, 0) << ReadFile(log);
  EXPECT_THAT(first.output, HasSubstr("vs target"));
  EXPECT_THAT(first.output, HasSubstr("litestage-eval --model"));

  // The profile loads and fits the model it was searched on.
  absl::StatusOr<Profile> profile = LoadProfileFile(profile_);
  ASSERT_TRUE(profile.ok()) << profile.status();
  const nlohmann::json summary = ReadJson(report_ + "/summary.json");
  ASSERT_TRUE(summary.is_object()) << ReadFile(report_ + "/summary.json");
  absl::StatusOr<ModelFingerprint> fingerprint =
      ParseModelFingerprint(summary["fingerprint"].get<std::string>());
  ASSERT_TRUE(fingerprint.ok()) << fingerprint.status();
  EXPECT_EQ(summary["num_layers"], 5);
  EXPECT_TRUE(ValidateProfile(*profile, *fingerprint, 5,
                              "tinythinker-zero-shot", stage_names_)
                  .ok());
  EXPECT_EQ(profile->provenance.method, "litestage-search");
  EXPECT_EQ(profile->name, "search-fidelity-e0.5");
  EXPECT_EQ(profile->ranking.size(), 10u);

  // Provenance: disjoint question sets, the metric and the whole table.
  const nlohmann::json& search = profile->provenance.search;
  ASSERT_TRUE(search.is_object());
  EXPECT_EQ(search["metric"], "fidelity");
  EXPECT_EQ(search["epsilon"], 0.5);
  EXPECT_EQ(search["max_skip"], 2);
  // One question measured alone, the other two batched and predicted.
  EXPECT_EQ(search["latency"]["batch"], 2);
  EXPECT_EQ(search["latency"]["measured_alone"], 1);
  ASSERT_EQ(search["calibration_questions"].size(), 2u);
  ASSERT_EQ(search["search_questions"].size(), 3u);
  std::set<std::string> ids;
  for (const char* part : {"calibration_questions", "search_questions"}) {
    for (const nlohmann::json& id : search[part]) {
      EXPECT_TRUE(ids.insert(id.get<std::string>()).second) << id;
    }
  }
  EXPECT_EQ(search["full_metric"], 1.0);  // full agrees with itself.
  EXPECT_DOUBLE_EQ(search["target"].get<double>(), 0.5);
  // 1 full + 3 stages x 3 budgets, then early exits (2 windows x up to 3
  // thresholds per stage, plus the "none" candidate).
  const nlohmann::json& table = search["table"];
  ASSERT_TRUE(table.is_array());
  EXPECT_GE(table.size(), 10u);
  EXPECT_EQ(table[0]["phase"], "full");
  int chosen = 0;
  for (const nlohmann::json& row : table) chosen += row["chosen"].get<bool>();
  EXPECT_GE(chosen, 3);  // At least one skip budget per stage.

  // search.csv: a header and one line per table row.
  const std::string csv = ReadFile(report_ + "/search.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'),
            static_cast<long>(table.size()) + 1);
  EXPECT_THAT(csv, HasSubstr("phase,stage,k,"));

  // Every distinct configuration measured once per question, freshly.
  const int64_t measured = summary["measurements"].get<int64_t>();
  EXPECT_EQ(summary["cache"]["misses"], 3 * measured);
  EXPECT_EQ(summary["cache"]["hits"], 0);
  EXPECT_EQ(summary["full_runs"], 3);
  EXPECT_EQ(summary["candidate_runs"], 3 * (measured - 1));
  EXPECT_EQ(summary["ranking_cached"], false);

  // The same run again: everything from the cache, the same profile.
  const std::string first_profile = ReadFile(profile_);
  const CommandResult second = RunCommand(SearchCommand(), log);
  ASSERT_EQ(second.exit_code, 0) << ReadFile(log);
  const nlohmann::json again = ReadJson(report_ + "/summary.json");
  EXPECT_EQ(again["cache"]["misses"], 0);
  EXPECT_EQ(again["cache"]["hits"], 3 * measured);
  EXPECT_EQ(again["full_runs"], 0);
  EXPECT_EQ(again["candidate_runs"], 0);
  EXPECT_EQ(again["ranking_cached"], true);
  EXPECT_EQ(ReadFile(profile_), first_profile);

  // An interrupted search: the entries of the last configuration measured
  // (the newest files) never written. Exactly those are measured again (an
  // earlier one lost would change the latencies later decisions see, and so
  // which configurations follow).
  std::vector<std::filesystem::path> entries;
  for (const auto& entry :
       std::filesystem::directory_iterator(report_ + "/cache")) {
    const std::string file = entry.path().filename().string();
    if (entry.is_regular_file() && file.rfind("importance-", 0) != 0) {
      entries.push_back(entry.path());
    }
  }
  ASSERT_EQ(entries.size(), static_cast<size_t>(3 * measured));
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    return std::filesystem::last_write_time(a) >
           std::filesystem::last_write_time(b);
  });
  for (size_t i = 0; i < 3; ++i) std::filesystem::remove(entries[i]);
  const CommandResult resumed = RunCommand(SearchCommand(), log);
  ASSERT_EQ(resumed.exit_code, 0) << ReadFile(log);
  const nlohmann::json third = ReadJson(report_ + "/summary.json");
  EXPECT_EQ(third["cache"]["misses"], 3);
  EXPECT_EQ(third["cache"]["hits"], 3 * measured - 3);
  EXPECT_EQ(third["full_runs"], 0);
  EXPECT_EQ(third["candidate_runs"], 3);
  EXPECT_EQ(third["measurements"], measured);

  // litestage-eval evaluates the file on held-out questions.
  const CommandResult eval =
      RunCommand("'" + bin_ + "/litestage-eval' --model '" + model_ +
                     "' --pipeline '" + pipeline_ + "' --dataset '" + dataset_ +
                     "' --offset 5 --limit 2 --threads 2 --max-new-tokens 24 "
                     "--progress=false --json --profiles full,'" +
                     profile_ + "'",
                 log);
  ASSERT_EQ(eval.exit_code, 0) << ReadFile(log);
  const nlohmann::json evaluated =
      nlohmann::json::parse(eval.output, nullptr, false);
  ASSERT_FALSE(evaluated.is_discarded()) << eval.output;
  ASSERT_EQ(evaluated["profiles"].size(), 2u);
  EXPECT_EQ(evaluated["profiles"][1]["profile"], profile_);
  EXPECT_EQ(evaluated["profiles"][1]["n"], 2);
  EXPECT_EQ(evaluated["fingerprint"], summary["fingerprint"]);

  // litestage-server loads it and lists it (ListProfiles).
  const std::string port_file = dir_.path() + "/port";
  const std::string server_log = dir_.path() + "/server.txt";
  const pid_t server = fork();
  ASSERT_GE(server, 0);
  if (server == 0) {
    const std::string binary = bin_ + "/litestage-server";
    freopen(server_log.c_str(), "w", stderr);
    execl(binary.c_str(), binary.c_str(), "--model", model_.c_str(),
          "--profiles", profile_.c_str(), "--pipelines", pipeline_.c_str(),
          "--port", "0", "--port-file", port_file.c_str(), "--metrics-port",
          "0", "--threads", "2", static_cast<char*>(nullptr));
    _exit(127);
  }
  std::string port;
  for (int i = 0; i < 600 && port.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    port = ReadFile(port_file);
    if (waitpid(server, nullptr, WNOHANG) == server) break;  // Died.
  }
  std::string listed;
  if (!port.empty()) {
    while (!port.empty() && (port.back() == '\n' || port.back() == ' ')) {
      port.pop_back();
    }
    listed =
        RunCommand("'" + bin_ + "/litestage-cli' profiles --target 127.0.0.1:" +
                       port + " --pipeline tinythinker-zero-shot",
                   log)
            .output;
  }
  kill(server, SIGTERM);
  waitpid(server, nullptr, 0);
  ASSERT_FALSE(port.empty()) << ReadFile(server_log);
  EXPECT_THAT(listed, HasSubstr("search-fidelity-e0.5")) << ReadFile(log);
}

TEST_F(SearchCliTest, BadCommandLines) {
  const std::string log = dir_.path() + "/stderr.txt";
  const CommandResult metric =
      RunCommand(SearchCommand() + " --metric speed", log);
  EXPECT_EQ(metric.exit_code, 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("--metric"));
  const CommandResult windows =
      RunCommand(SearchCommand() + " --early-exit-windows 4,0", log);
  EXPECT_EQ(windows.exit_code, 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("--early-exit-windows"));
  const CommandResult skip =
      RunCommand(SearchCommand() + " --max-skip 11", log);
  EXPECT_EQ(skip.exit_code, 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("10 sub-layers"));
  const CommandResult few = RunCommand(
      SearchCommand() + " --offset 1048570 --calibration 2 --search 3", log);
  EXPECT_EQ(few.exit_code, 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("has only"));
  // The shared flags (tools/question_tool_flags.h): their ranges and --device.
  const CommandResult batch =
      RunCommand(SearchCommand() + " --batch 100000", log);
  EXPECT_EQ(batch.exit_code, 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("--batch"));
  const CommandResult kv =
      RunCommand(SearchCommand() + " --kv-cache-tokens 0", log);
  EXPECT_EQ(kv.exit_code, 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("--kv-cache-tokens"));
  const CommandResult device =
      RunCommand(SearchCommand() + " --device nosuch", log);
  EXPECT_EQ(device.exit_code, 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("liblitestage_backend_nosuch.so"));
}

}  // namespace
}  // namespace litestage
