#include "engine/stages/dataset.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/util/json_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/scoped_temp_dir.h"
#include "tests/stages/scratch_dir.h"

namespace litestage {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// $LITESTAGE_SHARED/data/<relative>; skips when LITESTAGE_SHARED is unset.
// When it is set, a missing file is a failure (the loader reports it).
#define SHARED_DATA_OR_SKIP(var, relative)                   \
  const char* shared_env_ = std::getenv("LITESTAGE_SHARED"); \
  if (shared_env_ == nullptr || *shared_env_ == '\0') {      \
    GTEST_SKIP() << "LITESTAGE_SHARED is not set";           \
  }                                                          \
  const std::string var = absl::StrCat(shared_env_, "/data/", relative)

TEST(SharedDatasetTest, ObqaTest) {
  SHARED_DATA_OR_SKIP(path, "obqa/test.jsonl");
  absl::StatusOr<std::vector<QuestionItem>> items = LoadQuestions(path);
  ASSERT_TRUE(items.ok()) << items.status();
  ASSERT_EQ(items->size(), 500u);
  size_t answer_counts[4] = {};
  for (const QuestionItem& item : *items) {
    ASSERT_EQ(item.choices.size(), 4u) << item.id;
    ASSERT_TRUE(item.answer.has_value()) << item.id;
    ASSERT_LT(*item.answer, 4u);
    ++answer_counts[*item.answer];
  }
  // MANIFEST.txt: answerKey counts A138 B126 C132 D104.
  EXPECT_THAT(answer_counts, ElementsAre(138, 126, 132, 104));
  const QuestionItem& first = items->front();
  EXPECT_EQ(first.id, "8-343");
  EXPECT_THAT(first.question,
              StartsWith("A person wants to start saving money"));
  EXPECT_THAT(
      first.choices,
      ElementsAre("make more phone calls", "quit eating lunch out",
                  "buy less with monopoly money", "have lunch with friends"));
  EXPECT_EQ(first.answer, 1u);
}

TEST(SharedDatasetTest, CsqaDev) {
  SHARED_DATA_OR_SKIP(path, "csqa/dev_rand_split.jsonl");
  absl::StatusOr<std::vector<QuestionItem>> items = LoadQuestions(path);
  ASSERT_TRUE(items.ok()) << items.status();
  ASSERT_EQ(items->size(), 1221u);
  size_t answer_counts[5] = {};
  for (const QuestionItem& item : *items) {
    ASSERT_EQ(item.choices.size(), 5u) << item.id;
    ASSERT_TRUE(item.answer.has_value()) << item.id;
    ++answer_counts[*item.answer];
  }
  // MANIFEST.txt: A239 B255 C241 D251 E235.
  EXPECT_THAT(answer_counts, ElementsAre(239, 255, 241, 251, 235));
  const QuestionItem& first = items->front();
  EXPECT_EQ(first.id, "1afa02df02c908a558b4036e80242fac");
  EXPECT_THAT(first.question, StartsWith("A revolving door is convenient"));
  EXPECT_THAT(first.choices, ElementsAre("bank", "library", "department store",
                                         "mall", "new york"));
  EXPECT_EQ(first.answer, 0u);
}

TEST(SharedDatasetTest, StrategyQaDev) {
  SHARED_DATA_OR_SKIP(path, "strategyqa/dev.json");
  absl::StatusOr<std::vector<QuestionItem>> items = LoadQuestions(path);
  ASSERT_TRUE(items.ok()) << items.status();
  ASSERT_EQ(items->size(), 229u);
  size_t yes = 0;
  for (const QuestionItem& item : *items) {
    ASSERT_THAT(item.choices, ElementsAre("yes", "no")) << item.id;
    ASSERT_TRUE(item.answer.has_value()) << item.id;
    if (*item.answer == 0) ++yes;
  }
  // MANIFEST.txt: dev answers False 122 / True 107.
  EXPECT_EQ(yes, 107u);
  const QuestionItem& first = items->front();
  EXPECT_EQ(first.id, "e0044a7b4d146d611e73");
  EXPECT_EQ(first.question,
            "Will the Albany in Georgia reach a hundred thousand occupants "
            "before the one in New York?");
  EXPECT_EQ(first.answer, 1u);  // false -> "no".
}

TEST(SharedDatasetTest, LimitKeepsTheFirstItems) {
  SHARED_DATA_OR_SKIP(path, "obqa/test.jsonl");
  absl::StatusOr<std::vector<QuestionItem>> items = LoadQuestions(path, 3);
  ASSERT_TRUE(items.ok()) << items.status();
  ASSERT_EQ(items->size(), 3u);
  EXPECT_EQ(items->front().id, "8-343");
}

// ---------------------------------------------------------------------------
// Small files written here.

class DatasetFileTest : public ScratchDirTest {
 protected:
  // The error of loading `content`; fails the test when it loads.
  std::string Error(const std::string& content) {
    const std::string path = Write("bad.jsonl", content);
    absl::StatusOr<std::vector<QuestionItem>> items = LoadQuestions(path);
    EXPECT_FALSE(items.ok()) << content;
    if (items.ok()) return "";
    EXPECT_THAT(std::string(items.status().message()), StartsWith(path));
    return std::string(items.status().message());
  }
};

TEST_F(DatasetFileTest, PlainJsonl) {
  const std::string path = Write(
      "plain.jsonl",
      "{\"question\": \"Sky colour?\", \"choices\": [\"red\", \"blue\"], "
      "\"answer\": \"B\"}\n"
      "\n"
      "{\"id\": \"q2\", \"question\": \"2+2?\", \"choices\": [\"3\", \"4\", "
      "\"5\"], \"answer\": 1}\r\n"
      "{\"question\": \"Unlabelled?\", \"choices\": [\"x\", \"y\"]}\n");
  absl::StatusOr<std::vector<QuestionItem>> items = LoadQuestions(path);
  ASSERT_TRUE(items.ok()) << items.status();
  ASSERT_EQ(items->size(), 3u);
  EXPECT_EQ((*items)[0].id, "line 1");
  EXPECT_EQ((*items)[0].question, "Sky colour?");
  EXPECT_THAT((*items)[0].choices, ElementsAre("red", "blue"));
  EXPECT_EQ((*items)[0].answer, 1u);
  EXPECT_EQ((*items)[1].id, "q2");
  EXPECT_EQ((*items)[1].answer, 1u);
  EXPECT_EQ((*items)[2].id, "line 4");
  EXPECT_EQ((*items)[2].answer, std::nullopt);

  items = LoadQuestions(path, 1);
  ASSERT_TRUE(items.ok()) << items.status();
  EXPECT_EQ(items->size(), 1u);
}

TEST_F(DatasetFileTest, NestedChoicesAreSortedByLabel) {
  const std::string path = Write(
      "obqa.jsonl",
      R"({"id": "x", "question": {"stem": "S?", "choices": [{"label": "B", "text": "b"}, {"label": "A", "text": "a"}]}, "answerKey": "B"})"
      "\n");
  absl::StatusOr<std::vector<QuestionItem>> items = LoadQuestions(path);
  ASSERT_TRUE(items.ok()) << items.status();
  ASSERT_EQ(items->size(), 1u);
  EXPECT_THAT((*items)[0].choices, ElementsAre("a", "b"));
  EXPECT_EQ((*items)[0].answer, 1u);
}

TEST_F(DatasetFileTest, JsonArrayOfYesNoQuestions) {
  const std::string path =
      Write("sqa.json",
            R"([{"qid": "a1", "question": "Is water wet?", "answer": true},
          {"question": "Is fire cold?", "answer": false},
          {"question": "Unknown?"}])");
  absl::StatusOr<std::vector<QuestionItem>> items = LoadQuestions(path);
  ASSERT_TRUE(items.ok()) << items.status();
  ASSERT_EQ(items->size(), 3u);
  EXPECT_EQ((*items)[0].id, "a1");
  EXPECT_EQ((*items)[0].answer, 0u);
  EXPECT_EQ((*items)[1].id, "item 2");
  EXPECT_EQ((*items)[1].answer, 1u);
  EXPECT_EQ((*items)[2].answer, std::nullopt);
  EXPECT_THAT((*items)[2].choices, ElementsAre("yes", "no"));
}

TEST_F(DatasetFileTest, ErrorsNamePathLineAndField) {
  const std::string good =
      R"({"question": "Q?", "choices": ["a", "b"], "answer": "A"})"
      "\n";
  EXPECT_THAT(Error(good + "{not json\n"), HasSubstr(":2: not valid JSON"));
  EXPECT_THAT(Error(good + good + R"({"choices": ["a"]})"),
              HasSubstr(":3: question: missing"));
  EXPECT_THAT(Error(R"({"question": "  ", "choices": ["a"]})"),
              HasSubstr(":1: question: empty"));
  EXPECT_THAT(Error(R"({"question": "Q", "choices": ["a", 5]})"),
              HasSubstr(":1: choices[1]: must be a string"));
  EXPECT_THAT(Error(R"({"question": "Q", "choices": ["a", ""]})"),
              HasSubstr(":1: choices[1]: empty"));
  EXPECT_THAT(Error(R"({"question": "Q", "choices": []})"),
              HasSubstr(":1: choices: must be a non-empty array"));
  EXPECT_THAT(
      Error(R"({"question": "Q", "choices": ["a", "b"], "answer": "C"})"),
      HasSubstr(":1: answer: 'C' is beyond the 2 choices"));
  EXPECT_THAT(Error(R"({"question": "Q", "choices": ["a", "b"], "answer": 2})"),
              HasSubstr(":1: answer: index 2 is outside [0, 2)"));
  EXPECT_THAT(
      Error(
          R"({"question": {"stem": "S", "choices": [{"label": "A", "text": "a"}, {"label": "C", "text": "c"}]}})"),
      AllOf(HasSubstr(":1: question.choices: "), HasSubstr("label 'C'")));
  EXPECT_THAT(
      Error(R"({"question": {"stem": "S", "choices": [{"label": "A"}]}})"),
      HasSubstr(":1: question.choices[0].text: missing"));
  EXPECT_THAT(
      Error(R"({"question": {"choices": [{"label": "A", "text": "a"}]}})"),
      HasSubstr(":1: question.stem: missing"));
  EXPECT_THAT(
      Error(
          R"({"question": {"stem": "S", "choices": [{"label": "A", "text": "a"}]}, "answerKey": "E"})"),
      HasSubstr(":1: answerKey: 'E' is beyond the 1 choices"));
  EXPECT_THAT(Error(R"([{"question": "Q", "answer": "yes"}])"),
              HasSubstr(": item 1: answer: must be true or false"));
  EXPECT_THAT(Error(R"([{"question": "Q"}, 7])"),
              HasSubstr(": item 2: expected a JSON object"));
  EXPECT_THAT(Error("[1, 2"), HasSubstr("not a valid JSON array"));
  EXPECT_THAT(Error("\n\n"), HasSubstr("no questions"));
  EXPECT_THAT(Error("[]"), HasSubstr("no questions"));
}

TEST_F(DatasetFileTest, MissingFileNamesThePath) {
  const std::string path = (dir_ / "absent.jsonl").string();
  absl::StatusOr<std::vector<QuestionItem>> items = LoadQuestions(path);
  ASSERT_FALSE(items.ok());
  EXPECT_EQ(items.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(items.status().message()), HasSubstr(path));
}

TEST_F(DatasetFileTest, FileTypeSizeAndNestingAreBounded) {
  const std::string fifo = (dir_ / "fifo.jsonl").string();
  testing::MakeFifo(fifo);
  EXPECT_EQ(LoadQuestions(fifo).status().message(),
            fifo + ": not a regular file (fifo)");
  EXPECT_EQ(LoadQuestions("/dev/zero").status().message(),
            "/dev/zero: not a regular file (character device)");
  EXPECT_EQ(LoadQuestions(dir_.string()).status().message(),
            dir_.string() + ": not a regular file (directory)");
  const std::string big = (dir_ / "big.jsonl").string();
  testing::MakeSparseFile(big, kMaxDatasetFileBytes + 1);
  EXPECT_THAT(std::string(LoadQuestions(big).status().message()),
              AllOf(StartsWith(big), HasSubstr("over the limit of 67108864")));
  // A JSON array document and a JSONL line, each nested too deep.
  EXPECT_THAT(Error(testing::NestedJsonArrays(100'000)),
              HasSubstr("nesting deeper than 64"));
  EXPECT_THAT(Error("{\"question\": \"q\", \"x\": " +
                    testing::NestedJsonArrays(100'000) + "}\n"),
              AllOf(HasSubstr("bad.jsonl:1"), HasSubstr("nesting deeper")));
  EXPECT_THAT(Error(testing::NestedJsonArrays(kMaxJsonDepth)),
              ::testing::Not(HasSubstr("nesting")));
}

}  // namespace
}  // namespace litestage
