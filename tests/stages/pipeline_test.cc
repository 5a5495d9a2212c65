// Pipelines (engine/stages/pipeline.h): parsing with the error message for
// each malformed field, the built-in tinythinker, template rendering against
// hand-written expected prompts, fan-out joins and answer extraction. One
// file (~670 lines) because most of it is the table of malformed documents.
#include "engine/stages/pipeline.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/util/json_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/scoped_temp_dir.h"
#include "tests/stages/scratch_dir.h"

namespace litestage {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kFewShot[] =
    "What is the most likely to be an effect of acid rain on an aquatic "
    "environment?\n"
    "(A) decrease in plant life (B) increase in fish population (C) increase "
    "in plant growth (D) cleaner and clearer water\n"
    "Recall: Acid rain, containing harmful acidic compounds, detrimentally "
    "affects aquatic environments by altering water chemistry, harmful to "
    "aquatic life.\n"
    "Analyze: For option A, acid rain reduces water pH, harming aquatic "
    "plants, so it is correct. For option B, acid rain decreases fish "
    "populations by introducing harmful chemicals, so it is incorrect. For "
    "option C, acid rain impedes plant growth due to its acidity, so it is "
    "incorrect. For option D, acid rain pollutes water, reducing clarity, so "
    "it is incorrect.\n"
    "Summarize: So the answer is option A.\n\n";

Pipeline TinyThinker() {
  absl::StatusOr<Pipeline> pipeline = BuiltinPipeline("tinythinker");
  EXPECT_TRUE(pipeline.ok()) << pipeline.status();
  return pipeline.ok() ? *pipeline : Pipeline();
}

PromptInputs FogQuestion() {
  PromptInputs inputs;
  inputs.question = "There is most likely going to be fog around:";
  inputs.choices = {"a marsh", "a tundra", "the plains", "a desert"};
  return inputs;
}

// A minimal valid document; tests splice in the part they break.
std::string Doc(const std::string& top_extra, const std::string& stages) {
  return absl::StrCat(R"({"schema": "litestage.pipeline/v1", "name": "t",)",
                      top_extra, R"( "min_choices": 1, "stages": )", stages,
                      "}");
}

// ParsePipeline's error message for `json`; fails the test if it parses.
std::string ParseError(const std::string& json) {
  absl::StatusOr<Pipeline> p = ParsePipeline(json, "test.json");
  EXPECT_FALSE(p.ok()) << "parsed: " << json;
  if (p.ok()) return "";
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument)
      << p.status();
  return std::string(p.status().message());
}

// ---------------------------------------------------------------------------
// The built-in pipeline.

TEST(BuiltinPipelineTest, TinyThinkerParsesWithItsContent) {
  absl::StatusOr<Pipeline> p = BuiltinPipeline("tinythinker");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->name, "tinythinker");
  EXPECT_EQ(p->few_shot, kFewShot);
  EXPECT_EQ(p->min_choices, 2);
  EXPECT_EQ(p->max_choices, 5);
  EXPECT_EQ(p->default_choices, (std::vector<std::string>{"yes", "no"}));
  EXPECT_EQ(p->answer_regex, "the answer is option ([A-Z])");
  ASSERT_NE(p->compiled_answer_regex, nullptr);
  ASSERT_EQ(p->stages.size(), 3u);
  EXPECT_EQ(p->stages[0].name, "recall");
  EXPECT_EQ(p->stages[0].max_new_tokens, 128);
  EXPECT_EQ(p->stages[0].stop_strings, (std::vector<std::string>{"\n"}));
  EXPECT_FALSE(p->stages[0].fan_out);
  EXPECT_EQ(p->stages[1].name, "analysis");
  EXPECT_EQ(p->stages[1].max_new_tokens, 96);
  EXPECT_EQ(p->stages[1].stop_strings,
            (std::vector<std::string>{"\n", "For option "}));
  EXPECT_TRUE(p->stages[1].fan_out);
  EXPECT_EQ(p->stages[1].fan_out_item, "For option {option}, {output}");
  EXPECT_EQ(p->stages[2].name, "summary");
  EXPECT_EQ(p->stages[2].max_new_tokens, 48);
  EXPECT_EQ(p->StageIndex("summary"), 2);
  EXPECT_EQ(p->StageIndex("nope"), -1);
}

TEST(BuiltinPipelineTest, NamesAndResolve) {
  EXPECT_EQ(BuiltinPipelineNames(), (std::vector<std::string>{"tinythinker"}));
  absl::StatusOr<Pipeline> missing = BuiltinPipeline("nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("tinythinker"));
  absl::StatusOr<Pipeline> resolved = ResolvePipeline("tinythinker");
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(*resolved, TinyThinker());
  absl::StatusOr<Pipeline> typo = ResolvePipeline("tinythinkr");
  EXPECT_EQ(typo.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(typo.status().message()),
              AllOf(HasSubstr("tinythinkr"), HasSubstr("built-in")));
}

// The few-shot example must be laid out exactly as the stages render a
// question, so the model continues the format it was shown.
TEST(BuiltinPipelineTest, FewShotMatchesTheStageLayout) {
  Pipeline p = TinyThinker();
  p.few_shot.clear();
  PromptInputs inputs;
  inputs.question =
      "What is the most likely to be an effect of acid rain on an aquatic "
      "environment?";
  inputs.choices = {"decrease in plant life", "increase in fish population",
                    "increase in plant growth", "cleaner and clearer water"};
  inputs.stage_outputs["recall"] =
      "Acid rain, containing harmful acidic compounds, detrimentally affects "
      "aquatic environments by altering water chemistry, harmful to aquatic "
      "life.";
  inputs.stage_outputs["analysis"] = JoinFanOutOutputs(
      p.stages[1], inputs.choices,
      {"acid rain reduces water pH, harming aquatic plants, so it is correct.",
       "acid rain decreases fish populations by introducing harmful "
       "chemicals, so it is incorrect.",
       "acid rain impedes plant growth due to its acidity, so it is "
       "incorrect.",
       "acid rain pollutes water, reducing clarity, so it is incorrect."});
  absl::StatusOr<std::string> summary = RenderStagePrompt(p, 2, inputs, {});
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(absl::StrCat(*summary, " So the answer is option A.\n\n"),
            kFewShot);
  EXPECT_EQ(ExtractAnswer(p, kFewShot, inputs.choices), 0u);
}

// ---------------------------------------------------------------------------
// Rendering.

TEST(RenderTest, TinyThinkerStagesForFourChoices) {
  const Pipeline p = TinyThinker();
  PromptInputs inputs = FogQuestion();
  const std::string head =
      absl::StrCat(kFewShot,
                   "There is most likely going to be fog around:\n"
                   "(A) a marsh (B) a tundra (C) the plains (D) a desert\n");

  absl::StatusOr<std::string> recall = RenderStagePrompt(p, 0, inputs, {});
  ASSERT_TRUE(recall.ok()) << recall.status();
  EXPECT_EQ(*recall, absl::StrCat(head, "Recall:"));

  inputs.stage_outputs["recall"] = "Fog forms over wet ground.";
  const std::vector<std::string> letters = {"A", "B", "C", "D"};
  for (size_t option = 0; option < 4; ++option) {
    absl::StatusOr<std::string> branch =
        RenderStagePrompt(p, 1, inputs, option);
    ASSERT_TRUE(branch.ok()) << branch.status();
    EXPECT_EQ(*branch, absl::StrCat(head,
                                    "Recall: Fog forms over wet ground.\n"
                                    "Analyze: For option ",
                                    letters[option], ","));
  }

  inputs.stage_outputs["analysis"] = JoinFanOutOutputs(
      p.stages[1], inputs.choices,
      {"a marsh is wet, so it is correct.", "b.", "c.", "d."});
  absl::StatusOr<std::string> summary = RenderStagePrompt(p, 2, inputs, {});
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(*summary,
            absl::StrCat(head,
                         "Recall: Fog forms over wet ground.\n"
                         "Analyze: For option A, a marsh is wet, so it is "
                         "correct. For option B, b. For option C, c. For "
                         "option D, d.\n"
                         "Summarize:"));
}

TEST(RenderTest, OptionArgumentIsCheckedAgainstTheStage) {
  const Pipeline p = TinyThinker();
  PromptInputs inputs = FogQuestion();
  inputs.stage_outputs["recall"] = "r";
  // Fan-out stage without an option, non-fan-out stage with one, and an
  // option past the last choice.
  EXPECT_FALSE(RenderStagePrompt(p, 1, inputs, std::nullopt).ok());
  EXPECT_FALSE(RenderStagePrompt(p, 0, inputs, 0).ok());
  EXPECT_FALSE(RenderStagePrompt(p, 1, inputs, 4).ok());
  EXPECT_FALSE(RenderStagePrompt(p, 3, inputs, std::nullopt).ok());
}

TEST(RenderTest, MissingStageOutputFails) {
  const Pipeline p = TinyThinker();
  absl::StatusOr<std::string> summary =
      RenderStagePrompt(p, 2, FogQuestion(), {});
  ASSERT_FALSE(summary.ok());
  EXPECT_EQ(summary.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(summary.status().message()),
              AllOf(HasSubstr("summary"), HasSubstr("recall")));
}

TEST(RenderTest, OptionTextBracesAndCustomChoiceFormat) {
  absl::StatusOr<Pipeline> p = ParsePipeline(
      R"({"schema": "litestage.pipeline/v1", "name": "custom",
          "choice_format": "{letter}. {text}", "choice_separator": "\n",
          "min_choices": 1,
          "stages": [
            {"name": "judge", "fan_out": true,
             "fan_out_item": "[{option}: {option_text}] {output}",
             "fan_out_separator": " | ",
             "prompt": "{{json}} {{{question}}}\n{choices}\nIs '{option_text}' ({option}) right?"}
          ]})",
      "custom.json");
  ASSERT_TRUE(p.ok()) << p.status();
  PromptInputs inputs;
  inputs.question = "Q {not a placeholder}";
  inputs.choices = {"red", "blue"};
  absl::StatusOr<std::string> prompt = RenderStagePrompt(*p, 0, inputs, 1);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  // Inputs are inserted verbatim, even with braces in them.
  EXPECT_EQ(*prompt,
            "{json} {Q {not a placeholder}}\nA. red\nB. blue\n"
            "Is 'blue' (B) right?");
  EXPECT_EQ(JoinFanOutOutputs(p->stages[0], inputs.choices, {"yes", "no"}),
            "[A: red] yes | [B: blue] no");
}

TEST(RenderTest, JoinFanOutOutputsDefaultItem) {
  PipelineStage stage;
  stage.fan_out = true;
  EXPECT_EQ(JoinFanOutOutputs(stage, {"x", "y", "z"}, {"one.", "two.", ""}),
            "For option A, one. For option B, two. For option C, ");
  EXPECT_EQ(JoinFanOutOutputs(stage, {}, {}), "");
}

TEST(RenderTest, StrategyQaUsesDefaultChoices) {
  const Pipeline p = TinyThinker();
  PromptInputs inputs;
  inputs.question = "Can a goldfish drive a car?";
  EXPECT_TRUE(ValidatePromptInputs(p, inputs).ok());
  inputs.choices = EffectiveChoices(p, inputs.choices);
  EXPECT_EQ(inputs.choices, (std::vector<std::string>{"yes", "no"}));
  absl::StatusOr<std::string> recall = RenderStagePrompt(p, 0, inputs, {});
  ASSERT_TRUE(recall.ok()) << recall.status();
  EXPECT_EQ(*recall, absl::StrCat(kFewShot,
                                  "Can a goldfish drive a car?\n"
                                  "(A) yes (B) no\nRecall:"));
  // Requested choices win over the defaults.
  EXPECT_EQ(EffectiveChoices(p, {"x", "y", "z"}),
            (std::vector<std::string>{"x", "y", "z"}));
}

TEST(RenderTest, ChoiceLetter) {
  EXPECT_EQ(ChoiceLetter(0), "A");
  EXPECT_EQ(ChoiceLetter(3), "D");
  EXPECT_EQ(ChoiceLetter(25), "Z");
}

// ---------------------------------------------------------------------------
// Request validation.

TEST(ValidatePromptInputsTest, FieldsAreNamed) {
  const Pipeline p = TinyThinker();
  PromptInputs inputs = FogQuestion();
  EXPECT_TRUE(ValidatePromptInputs(p, inputs).ok());

  PromptInputs blank = inputs;
  blank.question = " \n\t";
  absl::Status s = ValidatePromptInputs(p, blank);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), StartsWith("question"));

  PromptInputs empty_choice = inputs;
  empty_choice.choices[2] = "  ";
  s = ValidatePromptInputs(p, empty_choice);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), StartsWith("choices[2]"));

  PromptInputs one = inputs;
  one.choices = {"only"};
  s = ValidatePromptInputs(p, one);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              AllOf(StartsWith("choices:"), HasSubstr("2 to 5")));

  PromptInputs six = inputs;
  six.choices = {"a", "b", "c", "d", "e", "f"};
  EXPECT_THAT(std::string(ValidatePromptInputs(p, six).message()),
              StartsWith("choices:"));

  // Without default choices, a request must bring choices.
  Pipeline no_defaults = p;
  no_defaults.default_choices.clear();
  PromptInputs none = inputs;
  none.choices.clear();
  EXPECT_TRUE(ValidatePromptInputs(p, none).ok());
  EXPECT_THAT(std::string(ValidatePromptInputs(no_defaults, none).message()),
              StartsWith("choices:"));
}

// ---------------------------------------------------------------------------
// Answer extraction.

TEST(ExtractAnswerTest, LettersTextsAndMisses) {
  const Pipeline p = TinyThinker();
  const std::vector<std::string> choices = FogQuestion().choices;
  EXPECT_EQ(ExtractAnswer(p, " So the answer is option C.", choices), 2u);
  EXPECT_EQ(ExtractAnswer(p, "the answer is option A. the answer is option B",
                          choices),
            0u);  // First match.
  EXPECT_EQ(ExtractAnswer(p, "So the answer is option E.", choices),
            std::nullopt);  // Past the fourth choice.
  EXPECT_EQ(ExtractAnswer(p, "So the answer is a marsh.", choices),
            std::nullopt);
  EXPECT_EQ(ExtractAnswer(p, "", choices), std::nullopt);
  // The built-in regex is case-sensitive: [A-Z] does not take "c".
  EXPECT_EQ(ExtractAnswer(p, "the answer is option c", choices), std::nullopt);

  Pipeline lower = p;
  lower.answer_regex = "(?i)the answer is option ([a-z])";
  lower.compiled_answer_regex.reset();  // Compiled on the fly.
  EXPECT_EQ(ExtractAnswer(lower, "THE ANSWER IS OPTION c.", choices), 2u);
  EXPECT_EQ(ExtractAnswer(lower, "the answer is option z", choices),
            std::nullopt);

  Pipeline text = p;
  text.answer_regex = "(?i)answer: ([^\\n]+)";
  text.compiled_answer_regex.reset();
  EXPECT_EQ(ExtractAnswer(text, "Answer: The Plains.\nmore", choices), 2u);
  EXPECT_EQ(ExtractAnswer(text, "answer:  a desert ", choices), 3u);
  EXPECT_EQ(ExtractAnswer(text, "answer: d", choices), 3u);  // Letter first.
  EXPECT_EQ(ExtractAnswer(text, "answer: a forest", choices), std::nullopt);

  Pipeline none = p;
  none.answer_regex.clear();
  none.compiled_answer_regex.reset();
  EXPECT_EQ(ExtractAnswer(none, "the answer is option A", choices),
            std::nullopt);
}

// ---------------------------------------------------------------------------
// Validation of pipeline documents: every message names the source, the
// stage (when there is one) and the reason.

struct BadDoc {
  std::string label;
  std::string json;
  std::vector<std::string> expected;  // Substrings of the message.
};

TEST(ParsePipelineTest, RejectsBadDocuments) {
  const std::string ok_stage = R"({"name": "a", "prompt": "{question}"})";
  std::string too_many = "[";
  for (int i = 0; i < 65; ++i) {
    absl::StrAppend(&too_many, i ? "," : "", R"({"name": "s)", i,
                    R"(", "prompt": "x"})");
  }
  too_many += "]";
  const std::vector<BadDoc> cases = {
      {"unknown placeholder",
       Doc("", R"([{"name": "analysis", "prompt": "{foo} {question}"}])"),
       {"stage 'analysis'", "unknown placeholder {foo} in prompt"}},
      {"missing stage",
       Doc("", R"([{"name": "sum", "prompt": "{stage.nope}"}])"),
       {"stage 'sum'", "{stage.nope}", "no stage 'nope'"}},
      {"same stage",
       Doc("", R"([{"name": "sum", "prompt": "{stage.sum}"}])"),
       {"stage 'sum'", "itself"}},
      {"later stage",
       Doc("",
           absl::StrCat(R"([{"name": "first", "prompt": "{stage.second}"},)",
                        R"({"name": "second", "prompt": "x"}])")),
       {"stage 'first'", "{stage.second}", "later"}},
      {"option outside fan-out",
       Doc("", R"([{"name": "summary", "prompt": "For {option}"}])"),
       {"stage 'summary'", "{option}", "fan-out"}},
      {"option_text outside fan-out",
       Doc("", R"([{"name": "summary", "prompt": "For {option_text}"}])"),
       {"stage 'summary'", "{option_text}", "fan-out"}},
      {"empty prompt",
       Doc("", R"([{"name": "recall", "prompt": ""}])"),
       {"stage 'recall'", "empty prompt"}},
      {"duplicate stage",
       Doc("", absl::StrCat("[", ok_stage, ",", ok_stage, "]")),
       {"stage 'a'", "duplicate stage name"}},
      {"malformed stage name",
       Doc("", R"([{"name": "Recall", "prompt": "x"}])"),
       {"stages[0]", "malformed stage name 'Recall'"}},
      {"stage name with dot",
       Doc("", R"([{"name": "a.b", "prompt": "x"}])"),
       {"stages[0]", "malformed stage name 'a.b'"}},
      {"bad regex",
       Doc(R"( "answer_regex": "option ([A-Z]",)", "[" + ok_stage + "]"),
       {"answer_regex", "does not compile"}},
      {"regex without group",
       Doc(R"( "answer_regex": "option [A-Z]",)", "[" + ok_stage + "]"),
       {"answer_regex", "no capturing group"}},
      {"regex on a stage",
       Doc("", R"j([{"name": "a", "prompt": "x", "answer_regex": "(x)"}])j"),
       {"stage 'a'", "unknown key 'answer_regex'", "pipeline level"}},
      {"zero max_new_tokens",
       Doc("", R"([{"name": "a", "prompt": "x", "max_new_tokens": 0}])"),
       {"stage 'a'", "max_new_tokens 0"}},
      {"negative max_new_tokens",
       Doc("", R"([{"name": "a", "prompt": "x", "max_new_tokens": -3}])"),
       {"stage 'a'", "max_new_tokens -3"}},
      {"too many stages", Doc("", too_many), {"65 stages", "64"}},
      {"no stages", Doc("", "[]"), {"no stages"}},
      {"lone open brace",
       Doc("", R"([{"name": "a", "prompt": "{question"}])"),
       {"stage 'a'", "unbalanced '{'", "in prompt"}},
      {"open brace inside placeholder",
       Doc("", R"([{"name": "a", "prompt": "{ques{question}"}])"),
       {"stage 'a'", "unbalanced '{'"}},
      {"lone close brace",
       Doc("", R"([{"name": "a", "prompt": "{question}}"}])"),
       {"stage 'a'", "lone '}'", "in prompt"}},
      {"unknown top-level key",
       Doc(R"( "colour": "red",)", "[" + ok_stage + "]"),
       {"unknown key 'colour'"}},
      {"unknown stage key",
       Doc("", R"([{"name": "a", "prompt": "x", "temperature": 0.5}])"),
       {"stage 'a'", "unknown key 'temperature'"}},
      {"wrong schema",
       absl::StrReplaceAll(Doc("", "[" + ok_stage + "]"),
                           {{"pipeline/v1", "pipeline/v2"}}),
       {"litestage.pipeline/v2", "not supported"}},
      {"bad fan_out_item placeholder",
       Doc("", R"([{"name": "an", "prompt": "x", "fan_out": true,
                   "fan_out_item": "{letter}: {output}"}])"),
       {"stage 'an'", "unknown placeholder {letter} in fan_out_item"}},
      {"fan_out_item without fan-out",
       Doc("", R"([{"name": "an", "prompt": "x",
                   "fan_out_item": "{output}"}])"),
       {"stage 'an'", "fan_out_item", "fan_out is true"}},
      {"bad choice_format",
       Doc(R"( "choice_format": "{option}) {text}",)", "[" + ok_stage + "]"),
       {"unknown placeholder {option} in choice_format"}},
      {"max_choices above 26",
       Doc(R"( "max_choices": 27,)", "[" + ok_stage + "]"),
       {"max_choices 27"}},
      {"min above max",
       Doc(R"( "max_choices": 0,)", "[" + ok_stage + "]"),
       {"min_choices 1", "max_choices 0"}},
      {"default choices outside range",
       Doc(R"( "max_choices": 1, "default_choices": ["yes", "no"],)",
           "[" + ok_stage + "]"),
       {"default_choices has 2"}},
      {"empty default choice",
       Doc(R"( "default_choices": ["yes", ""],)", "[" + ok_stage + "]"),
       {"default_choices[1] is empty"}},
      {"empty stop string",
       Doc("", R"([{"name": "a", "prompt": "x", "stop": [""]}])"),
       {"stage 'a'", "stop[0] is empty"}},
      {"stop not strings",
       Doc("", R"([{"name": "a", "prompt": "x", "stop": [3]}])"),
       {"stage 'a'", "stop[0] must be a string"}},
      {"prompt not a string",
       Doc("", R"([{"name": "a", "prompt": 7}])"),
       {"stage 'a'", "'prompt'", "must be a string"}},
      {"stage not an object",
       Doc("", R"(["recall"])"),
       {"stages[0]", "JSON object"}},
      {"bad pipeline name",
       absl::StrReplaceAll(Doc("", "[" + ok_stage + "]"),
                           {{R"("name": "t")", R"("name": "T T")"}}),
       {"malformed pipeline name 'T T'"}},
      {"not an object", "[1, 2]", {"JSON object"}},
      {"not JSON", "{\"schema\": ", {"not valid JSON"}},
  };
  for (const BadDoc& c : cases) {
    SCOPED_TRACE(c.label);
    const std::string message = ParseError(c.json);
    EXPECT_THAT(message, StartsWith("test.json: "));
    for (const std::string& part : c.expected) {
      EXPECT_THAT(message, HasSubstr(part));
    }
  }
}

TEST(ParsePipelineTest, FanOutNeedsChoices) {
  absl::StatusOr<Pipeline> p = ParsePipeline(
      R"({"schema": "litestage.pipeline/v1", "name": "t",
          "stages": [{"name": "an", "prompt": "{option}", "fan_out": true}]})",
      "test.json");
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(
      std::string(p.status().message()),
      AllOf(StartsWith("test.json: stage 'an'"), HasSubstr("min_choices")));
}

TEST(ParsePipelineTest, MissingRequiredKeysAreNamed) {
  for (const char* key : {"schema", "name", "stages"}) {
    SCOPED_TRACE(key);
    nlohmann::json doc =
        nlohmann::json::parse(Doc("", R"([{"name": "a", "prompt": "x"}])"));
    doc.erase(key);
    absl::StatusOr<Pipeline> p = ParsePipeline(doc.dump(), "test.json");
    ASSERT_FALSE(p.ok());
    EXPECT_THAT(std::string(p.status().message()),
                AllOf(StartsWith("test.json: "), HasSubstr(key)));
  }
  absl::StatusOr<Pipeline> p =
      ParsePipeline(Doc("", R"([{"prompt": "x"}])"), "test.json");
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(std::string(p.status().message()),
              AllOf(StartsWith("test.json: stages[0]"), HasSubstr("'name'")));
}

TEST(ParsePipelineTest, DefaultsAndEscapes) {
  absl::StatusOr<Pipeline> p = ParsePipeline(
      R"({"schema": "litestage.pipeline/v1", "name": "min-1.0",
          "stages": [{"name": "only", "prompt": "{{x}} }} {{ {question}"}]})",
      "min.json");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->choice_format, "({letter}) {text}");
  EXPECT_EQ(p->choice_separator, " ");
  EXPECT_EQ(p->min_choices, 0);
  EXPECT_EQ(p->max_choices, 26);
  EXPECT_TRUE(p->default_choices.empty());
  EXPECT_TRUE(p->answer_regex.empty());
  EXPECT_EQ(p->compiled_answer_regex, nullptr);
  EXPECT_EQ(p->stages[0].max_new_tokens, 200);
  EXPECT_TRUE(p->stages[0].stop_strings.empty());
  PromptInputs inputs;
  inputs.question = "why?";
  EXPECT_TRUE(ValidatePromptInputs(*p, inputs).ok());
  absl::StatusOr<std::string> prompt = RenderStagePrompt(*p, 0, inputs, {});
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(*prompt, "{x} } { why?");
}

// ---------------------------------------------------------------------------
// Serialisation and files.

TEST(PipelineToJsonTest, RoundTrips) {
  const Pipeline builtin = TinyThinker();
  const std::string json = PipelineToJson(builtin);
  absl::StatusOr<Pipeline> reparsed = ParsePipeline(json, "roundtrip.json");
  ASSERT_TRUE(reparsed.ok()) << reparsed.status() << "\n" << json;
  EXPECT_EQ(*reparsed, builtin);
  EXPECT_NE(reparsed->compiled_answer_regex, nullptr);
  EXPECT_EQ(PipelineToJson(*reparsed), json);

  Pipeline changed = builtin;
  changed.stages[1].fan_out_separator = "\n";
  EXPECT_FALSE(changed == builtin);
  absl::StatusOr<Pipeline> changed_back =
      ParsePipeline(PipelineToJson(changed), "changed.json");
  ASSERT_TRUE(changed_back.ok()) << changed_back.status();
  EXPECT_EQ(*changed_back, changed);
}

using PipelineFileTest = ScratchDirTest;

TEST_F(PipelineFileTest, LoadsAndResolvesFiles) {
  const std::string path = Write("mine.json", PipelineToJson(TinyThinker()));
  absl::StatusOr<Pipeline> loaded = LoadPipelineFile(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(*loaded, TinyThinker());
  absl::StatusOr<Pipeline> resolved = ResolvePipeline(path);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(*resolved, TinyThinker());
}

TEST_F(PipelineFileTest, MissingFileAndBadJsonNameThePath) {
  const std::string missing = (dir_ / "absent.json").string();
  absl::StatusOr<Pipeline> p = LoadPipelineFile(missing);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(p.status().message()), HasSubstr(missing));
  EXPECT_THAT(std::string(ResolvePipeline(missing).status().message()),
              HasSubstr(missing));

  const std::string bad = Write("bad.json", "{\"schema\": ");
  p = LoadPipelineFile(bad);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(std::string(p.status().message()),
              AllOf(StartsWith(bad), HasSubstr("not valid JSON")));

  const std::string bad_stage = Write(
      "stage.json", Doc("", R"([{"name": "analysis", "prompt": "{foo}"}])"));
  p = LoadPipelineFile(bad_stage);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().message(),
            absl::StrCat(bad_stage,
                         ": stage 'analysis': unknown placeholder {foo} in "
                         "prompt"));
}

TEST_F(PipelineFileTest, FileTypeSizeAndNestingAreBounded) {
  const std::string fifo = (dir_ / "fifo.json").string();
  testing::MakeFifo(fifo);
  EXPECT_EQ(LoadPipelineFile(fifo).status().message(),
            fifo + ": not a regular file (fifo)");
  EXPECT_EQ(LoadPipelineFile("/dev/zero").status().message(),
            "/dev/zero: not a regular file (character device)");
  EXPECT_EQ(LoadPipelineFile(dir_.string()).status().message(),
            dir_.string() + ": not a regular file (directory)");
  const std::string big = (dir_ / "big.json").string();
  testing::MakeSparseFile(big, kMaxSmallFileBytes + 1);
  EXPECT_THAT(std::string(LoadPipelineFile(big).status().message()),
              AllOf(StartsWith(big), HasSubstr("over the limit of 1048576")));
  const std::string deep =
      Write("deep.json", testing::NestedJsonArrays(100'000));
  EXPECT_THAT(std::string(LoadPipelineFile(deep).status().message()),
              AllOf(StartsWith(deep), HasSubstr("nesting deeper than 64")));
  const std::string at_bound =
      Write("at_bound.json", testing::NestedJsonArrays(kMaxJsonDepth));
  EXPECT_THAT(std::string(LoadPipelineFile(at_bound).status().message()),
              ::testing::Not(HasSubstr("nesting")));
  const std::string target =
      Write("target.json", PipelineToJson(TinyThinker()));
  std::filesystem::create_symlink(target, dir_ / "link.json");
  EXPECT_TRUE(LoadPipelineFile((dir_ / "link.json").string()).ok());
}

// docs/pipelines.md's example file must stay valid and do what it says.
TEST(DocsTest, ExampleFileParsesAndExtracts) {
  const std::string doc_path =
      std::string(LITESTAGE_TEST_DATA_DIR) + "/../docs/pipelines.md";
  std::ifstream in(doc_path);
  ASSERT_TRUE(in.good()) << doc_path;
  const std::string text((std::istreambuf_iterator<char>(in)),
                         std::istreambuf_iterator<char>());
  const size_t heading = text.find("## Example file");
  ASSERT_NE(heading, std::string::npos);
  const size_t start = text.find("```json\n", heading);
  ASSERT_NE(start, std::string::npos);
  const size_t end = text.find("```", start + 8);
  ASSERT_NE(end, std::string::npos);
  absl::StatusOr<Pipeline> p =
      ParsePipeline(text.substr(start + 8, end - start - 8), doc_path);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->name, "check-then-answer");
  const std::vector<std::string> choices = {"a marsh", "the plains"};
  EXPECT_EQ(ExtractAnswer(*p, " B.", choices), 1u);
  EXPECT_EQ(ExtractAnswer(*p, " b", choices), 1u);
  EXPECT_EQ(ExtractAnswer(*p, " the plains", choices), 1u);
  EXPECT_EQ(ExtractAnswer(*p, " a forest", choices), std::nullopt);

  PromptInputs inputs;
  inputs.question = "Fog?";
  inputs.choices = choices;
  absl::StatusOr<std::string> check = RenderStagePrompt(*p, 0, inputs, 1);
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(*check,
            "Question: Fog?\nA. a marsh\nB. the plains\n"
            "Is \"the plains\" (B) right? Explain briefly:");
  inputs.stage_outputs["check"] =
      JoinFanOutOutputs(p->stages[0], choices, {"No.", "Yes."});
  absl::StatusOr<std::string> answer = RenderStagePrompt(*p, 1, inputs, {});
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(*answer,
            "Question: Fog?\nA. a marsh\nB. the plains\n"
            "Notes:\nA: No.\nB: Yes.\nAnswer:");
}

}  // namespace
}  // namespace litestage
