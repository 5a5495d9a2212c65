// litestage-eval end to end, as a user runs it: the real stories260K model
// from ../shared, a zero-shot TinyThinker pipeline file written here (its
// 512-token context cannot hold the few-shot example), 3 OBQA test
// questions, every kind of profile spec. Checks the JSON and CSV outputs and
// that bad specs fail naming the spec. Needs LITESTAGE_SHARED and
// LITESTAGE_BIN_DIR (fails, never skips, without them).
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "engine/stages/pipeline.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/run_command.h"
#include "tests/common/scoped_temp_dir.h"
#include "tests/stages/tiny_pipeline.h"

namespace litestage {
namespace {

using ::testing::HasSubstr;

using ::litestage::testing::CommandResult;
using ::litestage::testing::ReadFile;
using ::litestage::testing::RunCommand;

class EvalCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* shared = std::getenv("LITESTAGE_SHARED");
    const char* bin = std::getenv("LITESTAGE_BIN_DIR");
    ASSERT_NE(shared, nullptr) << "LITESTAGE_SHARED is not set";
    ASSERT_NE(bin, nullptr) << "LITESTAGE_BIN_DIR is not set";
    model_ = std::string(shared) + "/models/stories260K";
    dataset_ = std::string(shared) + "/data/obqa/test.jsonl";
    calibration_ = std::string(shared) + "/data/obqa/train.jsonl";
    binary_ = std::string(bin) + "/litestage-eval";
    ASSERT_TRUE(std::filesystem::exists(model_ + "/config.json")) << model_;
    ASSERT_TRUE(std::filesystem::exists(dataset_)) << dataset_;
    ASSERT_TRUE(std::filesystem::exists(binary_)) << binary_;
    const Pipeline pipeline = ZeroShotTinyThinker();
    ASSERT_FALSE(pipeline.stages.empty());
    pipeline_ = dir_.path() + "/pipeline.json";
    std::ofstream(pipeline_) << PipelineToJson(pipeline);
  }

  std::string Command(const std::string& extra) const {
    return "'" + binary_ + "' --model '" + model_ + "' --pipeline '" +
           pipeline_ + "' --dataset '" + dataset_ +
           "' --calibration-dataset '" + calibration_ +
           "' --calibration 2 --threads 2 " +
           "--max-new-tokens 24 --progress=false " + extra;
  }

  testing::ScopedTempDir dir_{"eval_cli_test"};
  std::string model_, dataset_, calibration_, binary_, pipeline_;
};

TEST_F(EvalCliTest, EveryProfileKindOnThreeObqaQuestions) {
  const std::string csv = dir_.path() + "/out.csv";
  const std::string log = dir_.path() + "/stderr.txt";
  // full is listed last: the tool evaluates it first anyway.
  const CommandResult run = RunCommand(
      Command("--limit 3 --json --csv '" + csv +
              "' --profiles even:1,last:1,adaskip:2,full@ee=4,0.3,full"),
      log);
  ASSERT_EQ(run.exit_code, 0) << ReadFile(log);
  const nlohmann::json out = nlohmann::json::parse(run.output, nullptr, false);
  ASSERT_FALSE(out.is_discarded()) << run.output;
  EXPECT_EQ(out["question_ids"].size(), 3u);
  EXPECT_EQ(out["few_shot"], true);  // The file's (empty) few-shot.
  ASSERT_TRUE(out["calibration"].is_object());
  EXPECT_EQ(out["calibration"]["question_ids"].size(), 2u);
  EXPECT_EQ(out["calibration"]["ranking"].size(), 10u);  // 2 x 5 layers.

  const std::vector<std::string> expected = {"full", "even:1", "last:1",
                                             "adaskip:2", "full@ee=4,0.3"};
  ASSERT_EQ(out["profiles"].size(), expected.size());
  for (size_t p = 0; p < expected.size(); ++p) {
    const nlohmann::json& s = out["profiles"][p];
    SCOPED_TRACE(expected[p]);
    EXPECT_EQ(s["profile"], expected[p]);
    EXPECT_EQ(s["n"], 3);
    for (const char* rate : {"accuracy", "answered_rate", "agreement"}) {
      EXPECT_GE(s[rate].get<double>(), 0) << rate;
      EXPECT_LE(s[rate].get<double>(), 1) << rate;
    }
    for (const char* ci : {"accuracy_ci95", "agreement_ci95"}) {
      EXPECT_LE(s[ci][0].get<double>(), s[ci][1].get<double>()) << ci;
      EXPECT_GE(s[ci][0].get<double>(), 0) << ci;
      EXPECT_LE(s[ci][1].get<double>(), 1) << ci;
    }
    EXPECT_GT(s["mean_seconds"].get<double>(), 0);
    EXPECT_GE(s["p90_seconds"].get<double>(), 0);
    EXPECT_GT(s["speedup"].get<double>(), 0);
    ASSERT_EQ(s["stages"].size(), 3u);
    for (const nlohmann::json& stage : s["stages"]) {
      EXPECT_GE(stage["fidelity"].get<double>(), 0);
      EXPECT_LE(stage["fidelity"].get<double>(), 1);
      EXPECT_GT(stage["fidelity_total"].get<int64_t>(), 0);
      EXPECT_GT(stage["mean_prompt_tokens"].get<double>(), 0);
      EXPECT_LE(stage["mean_generated_tokens"].get<double>(), 4 * 24);
      EXPECT_GE(stage["early_exit_rate"].get<double>(), 0);
      EXPECT_LE(stage["early_exit_rate"].get<double>(), 1);
    }
  }
  const nlohmann::json& full = out["profiles"][0];
  EXPECT_EQ(full["agreement"], 1.0);
  EXPECT_EQ(full["speedup"], 1.0);
  for (const nlohmann::json& stage : full["stages"]) {
    EXPECT_EQ(stage["fidelity"], 1.0) << stage["name"];
    EXPECT_EQ(stage["early_exit_rate"], 0.0) << stage["name"];
  }
  // Early exit alone keeps the skip set, so the teacher-forced fidelity
  // stays exact; a skipping profile's does not.
  for (const nlohmann::json& stage : out["profiles"][4]["stages"]) {
    EXPECT_EQ(stage["fidelity"], 1.0) << stage["name"];
  }
  EXPECT_LT(out["profiles"][1]["stages"][0]["fidelity"].get<double>(), 1.0);
  // One row per (profile, question).
  EXPECT_EQ(out["rows"].size(), 15u);
  std::set<std::string> seen;
  for (const nlohmann::json& row : out["rows"]) {
    seen.insert(row["profile"].get<std::string>() + "/" +
                row["question_id"].get<std::string>());
  }
  EXPECT_EQ(seen.size(), 15u);

  // The CSVs: a header and one line per profile / per (profile, question);
  // the early-exit spec's commas quoted.
  const std::string summary = ReadFile(csv);
  EXPECT_EQ(std::count(summary.begin(), summary.end(), '\n'), 6);
  EXPECT_THAT(summary, HasSubstr("\"full@ee=4,0.3\","));
  EXPECT_THAT(summary, HasSubstr("recall_fidelity"));
  const std::string questions = ReadFile(dir_.path() + "/out-questions.csv");
  EXPECT_EQ(std::count(questions.begin(), questions.end(), '\n'), 16);
}

// Batched: the same answers, token counts and fidelity as one request at a
// time; latency measured on the first question, predicted for the others,
// and the table says so.
TEST_F(EvalCliTest, BatchedRunKeepsTheOutputs) {
  const std::string log = dir_.path() + "/stderr.txt";
  const std::string profiles = " --profiles full,last:1 --progress=false";
  const CommandResult alone =
      RunCommand(Command("--limit 3 --json" + profiles), log);
  ASSERT_EQ(alone.exit_code, 0) << ReadFile(log);
  const CommandResult batched =
      RunCommand(Command("--limit 3 --json --batch 2 --latency-questions 1 "
                         "--kv-cache-tokens 8192" +
                         profiles),
                 log);
  ASSERT_EQ(batched.exit_code, 0) << ReadFile(log);
  const nlohmann::json a = nlohmann::json::parse(alone.output, nullptr, false);
  const nlohmann::json b =
      nlohmann::json::parse(batched.output, nullptr, false);
  ASSERT_FALSE(a.is_discarded() || b.is_discarded());
  EXPECT_EQ(b["batch"], 2);
  EXPECT_EQ(b["latency_questions"], 1);
  ASSERT_EQ(a["rows"].size(), 6u);
  ASSERT_EQ(b["rows"].size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    const nlohmann::json& x = a["rows"][i];
    const nlohmann::json& y = b["rows"][i];
    EXPECT_EQ(x["question_id"], y["question_id"]);
    EXPECT_EQ(x["answer_index"], y["answer_index"]) << i;
    EXPECT_EQ(y["latency_measured"], x["question_id"] == a["question_ids"][0])
        << i;
    for (size_t s = 0; s < 3; ++s) {
      for (const char* field :
           {"generated_tokens", "prefill_tokens", "fidelity_hits"}) {
        EXPECT_EQ(x["stages"][s][field], y["stages"][s][field])
            << i << " " << s << " " << field;
      }
    }
  }
  for (const nlohmann::json& s : b["profiles"]) {
    EXPECT_EQ(s["latency_measured"], 1);
    EXPECT_GT(s["mean_seconds"].get<double>(), 0);
  }
  const CommandResult table = RunCommand(
      Command("--limit 3 --batch 2 --latency-questions 2" + profiles), log);
  ASSERT_EQ(table.exit_code, 0) << ReadFile(log);
  EXPECT_THAT(table.output, HasSubstr("predicted for the rest"));
  EXPECT_THAT(table.output, HasSubstr("measured    2 of    3"));
}

TEST_F(EvalCliTest, TableAndErrors) {
  const std::string log = dir_.path() + "/stderr.txt";
  const CommandResult table =
      RunCommand(Command("--limit 1 --offset 2 --profiles even:1"), log);
  ASSERT_EQ(table.exit_code, 0) << ReadFile(log);
  EXPECT_THAT(table.output, HasSubstr("accuracy% [95%]"));
  EXPECT_THAT(table.output, HasSubstr("\nfull "));
  EXPECT_THAT(table.output, HasSubstr("\neven:1 "));
  EXPECT_THAT(table.output, HasSubstr("1 questions"));

  const CommandResult bad =
      RunCommand(Command("--limit 1 --profiles full,adaskip:x"), log);
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("'adaskip:x'"));
  const CommandResult ee =
      RunCommand(Command("--limit 1 --profiles full@ee=4,7"), log);
  EXPECT_EQ(ee.exit_code, 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("'full@ee=4,7'"));
  const CommandResult range = RunCommand(Command("--limit -1"), log);
  EXPECT_EQ(range.exit_code, 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("--limit"));
  // --device is the shared one (tools/question_tool_flags.h): a backend
  // that is not there is an error naming the plugin file looked for.
  const CommandResult device =
      RunCommand(Command("--limit 1 --device nosuch"), log);
  EXPECT_EQ(device.exit_code, 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("liblitestage_backend_nosuch.so"));
  // Calibration drawn from the evaluated file itself must skip them: with
  // the whole 500-question test set evaluated, nothing is left.
  const CommandResult overlap = RunCommand(
      "'" + binary_ + "' --model '" + model_ + "' --pipeline '" + pipeline_ +
          "' --dataset '" + dataset_ + "' --profiles adaskip:1 --calibration 1",
      log);
  EXPECT_EQ(overlap.exit_code, 1);
  EXPECT_THAT(ReadFile(log), HasSubstr("outside the evaluated ones"));
}

}  // namespace
}  // namespace litestage
