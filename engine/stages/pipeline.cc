// Pipelines (pipeline.h): the JSON parser with a message naming the JSON
// path of every bad field, the built-in tinythinker, template checking and
// rendering, and answer extraction. ~760 lines because the template language
// is checked at parse time against every stage it may reference (so a bad
// pipeline fails at load, not mid-request), next to the renderer that must
// agree with those checks.
#include "engine/stages/pipeline.h"

#include <algorithm>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/util/check.h"
#include "engine/util/json_util.h"
#include "engine/util/mapped_file.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"
#include "re2/re2.h"

namespace litestage {
namespace {

using nlohmann::json;

constexpr int64_t kMaxStages = 64;
constexpr int64_t kMaxChoices = 26;
// Far above any real stage budget; keeps int arithmetic downstream safe.
constexpr int64_t kMaxNewTokensLimit = int64_t{1} << 20;
constexpr int64_t kDefaultMaxNewTokens = 200;

constexpr absl::string_view kStagePrefix = "stage.";

// ---------------------------------------------------------------------------
// Templates.

// Walks `text`, calling `on_literal(string_view)` for literal runs ("{{" and
// "}}" become single braces) and `on_placeholder(string_view name)` for each
// "{name}". `on_placeholder` returns a Status (its message a bare reason),
// which stops the walk. Unbalanced braces fail with a reason.
template <typename OnLiteral, typename OnPlaceholder>
absl::Status ScanTemplate(absl::string_view text, OnLiteral&& on_literal,
                          OnPlaceholder&& on_placeholder) {
  size_t literal_start = 0;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (c != '{' && c != '}') {
      ++i;
      continue;
    }
    const bool doubled = i + 1 < text.size() && text[i + 1] == c;
    if (doubled) {
      // Emit the literal run including one brace of the escape.
      on_literal(text.substr(literal_start, i + 1 - literal_start));
      i += 2;
      literal_start = i;
      continue;
    }
    if (c == '}') {
      return absl::InvalidArgumentError(
          absl::StrCat("lone '}' at offset ", i, " (write '}}' for a brace)"));
    }
    const size_t close = text.find('}', i + 1);
    const size_t next_open = text.find('{', i + 1);
    if (close == absl::string_view::npos || next_open < close) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unbalanced '{' at offset ", i, " (write '{{' for a brace)"));
    }
    if (i > literal_start) {
      on_literal(text.substr(literal_start, i - literal_start));
    }
    LS_RETURN_IF_ERROR(on_placeholder(text.substr(i + 1, close - i - 1)));
    i = close + 1;
    literal_start = i;
  }
  if (literal_start < text.size()) on_literal(text.substr(literal_start));
  return absl::OkStatus();
}

absl::Status UnknownPlaceholder(absl::string_view name) {
  return absl::InvalidArgumentError(
      absl::StrCat("unknown placeholder {", name, "}"));
}

// Checks that `text` only uses the placeholders in `allowed`.
absl::Status CheckSimpleTemplate(
    absl::string_view text, std::initializer_list<absl::string_view> allowed) {
  return ScanTemplate(
      text, [](absl::string_view) {},
      [&](absl::string_view name) -> absl::Status {
        for (absl::string_view a : allowed) {
          if (name == a) return absl::OkStatus();
        }
        return UnknownPlaceholder(name);
      });
}

// Renders a template whose placeholders all map to plain values; unknown
// placeholders fail.
absl::Status RenderSimpleTemplate(
    absl::string_view text,
    std::initializer_list<std::pair<absl::string_view, absl::string_view>>
        values,
    std::string* out) {
  return ScanTemplate(
      text, [&](absl::string_view literal) { absl::StrAppend(out, literal); },
      [&](absl::string_view name) -> absl::Status {
        for (const auto& [key, value] : values) {
          if (name == key) {
            absl::StrAppend(out, value);
            return absl::OkStatus();
          }
        }
        return UnknownPlaceholder(name);
      });
}

// ---------------------------------------------------------------------------
// Names.

bool IsLowerAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

// [a-z][a-z0-9_]*
bool IsValidStageName(absl::string_view name) {
  if (name.empty() || !(name[0] >= 'a' && name[0] <= 'z')) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return IsLowerAlnum(c) || c == '_'; });
}

// [a-z0-9][a-z0-9_.-]*
bool IsValidPipelineName(absl::string_view name) {
  if (name.empty() || !IsLowerAlnum(name[0])) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return IsLowerAlnum(c) || c == '_' || c == '.' || c == '-';
  });
}

// ---------------------------------------------------------------------------
// JSON parsing helpers. `where` is "<source>" or "<source>: stage 'x'".

absl::Status InvalidAt(absl::string_view where, absl::string_view reason) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", reason));
}

absl::Status CheckKnownKeys(const json& object,
                            std::initializer_list<const char*> known,
                            absl::string_view where) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    const std::string& key = it.key();
    const bool is_known = std::any_of(known.begin(), known.end(),
                                      [&](const char* k) { return key == k; });
    if (is_known) continue;
    std::string hint;
    if (key == "answer_regex") {
      hint =
          " (answer_regex belongs at the pipeline level and applies to "
          "the final stage)";
    }
    return InvalidAt(
        where, absl::StrCat("unknown key '", TruncateForMessage(key), "'", hint,
                            "; known keys: ", absl::StrJoin(known, ", ")));
  }
  return absl::OkStatus();
}

// An optional array of strings under `key` (absent or null: empty).
// Empty strings are rejected: as stop strings or choices they are bugs.
absl::StatusOr<std::vector<std::string>> JsonNonEmptyStrings(
    const json& object, const char* key, absl::string_view where) {
  std::vector<std::string> result;
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return result;
  if (!it->is_array()) {
    return InvalidAt(
        where, absl::StrCat("key '", key, "' must be an array of strings, got ",
                            it->type_name()));
  }
  for (size_t i = 0; i < it->size(); ++i) {
    const json& item = (*it)[i];
    if (!item.is_string()) {
      return InvalidAt(where,
                       absl::StrCat(key, "[", i, "] must be a string, got ",
                                    item.type_name()));
    }
    std::string value = item.get<std::string>();
    if (value.empty()) {
      return InvalidAt(where, absl::StrCat(key, "[", i, "] is empty"));
    }
    result.push_back(std::move(value));
  }
  return result;
}

// Checks one stage prompt's placeholders. `stage_index` is the stage's
// position, for {stage.NAME} ordering.
absl::Status CheckStagePrompt(const Pipeline& pipeline, size_t stage_index) {
  const PipelineStage& stage = pipeline.stages[stage_index];
  return ScanTemplate(
      stage.prompt_template, [](absl::string_view) {},
      [&](absl::string_view name) -> absl::Status {
        if (name == "question" || name == "choices" || name == "few_shot") {
          return absl::OkStatus();
        }
        if (name == "option" || name == "option_text") {
          if (stage.fan_out) return absl::OkStatus();
          return absl::InvalidArgumentError(absl::StrCat(
              "placeholder {", name, "} is only allowed in fan-out stages"));
        }
        if (absl::StartsWith(name, kStagePrefix)) {
          const absl::string_view ref = name.substr(kStagePrefix.size());
          const int64_t ref_index = pipeline.StageIndex(ref);
          if (ref_index < 0) {
            return absl::InvalidArgumentError(absl::StrCat(
                "placeholder {", name, "} refers to no stage '", ref, "'"));
          }
          if (static_cast<size_t>(ref_index) == stage_index) {
            return absl::InvalidArgumentError(absl::StrCat(
                "placeholder {", name, "} refers to the stage itself"));
          }
          if (static_cast<size_t>(ref_index) > stage_index) {
            return absl::InvalidArgumentError(
                absl::StrCat("placeholder {", name, "} refers to stage '", ref,
                             "', which runs later"));
          }
          return absl::OkStatus();
        }
        return UnknownPlaceholder(name);
      });
}

absl::StatusOr<PipelineStage> ParseStage(const json& object, size_t index,
                                         absl::string_view source) {
  const std::string index_where = absl::StrCat(source, ": stages[", index, "]");
  if (!object.is_object()) {
    return InvalidAt(index_where, absl::StrCat("must be a JSON object, got ",
                                               object.type_name()));
  }
  PipelineStage stage;
  LS_ASSIGN_OR_RETURN(stage.name, JsonString(object, "name", index_where));
  if (!IsValidStageName(stage.name)) {
    return InvalidAt(index_where,
                     absl::StrCat("malformed stage name '", stage.name,
                                  "' (expected [a-z][a-z0-9_]*)"));
  }
  const std::string where = absl::StrCat(source, ": stage '", stage.name, "'");
  LS_RETURN_IF_ERROR(
      CheckKnownKeys(object,
                     {"name", "prompt", "max_new_tokens", "stop", "fan_out",
                      "fan_out_item", "fan_out_separator"},
                     where));
  LS_ASSIGN_OR_RETURN(stage.prompt_template,
                      JsonString(object, "prompt", where));
  if (stage.prompt_template.empty()) return InvalidAt(where, "empty prompt");
  LS_ASSIGN_OR_RETURN(
      stage.max_new_tokens,
      JsonInt(object, "max_new_tokens", where, kDefaultMaxNewTokens));
  if (stage.max_new_tokens < 1 || stage.max_new_tokens > kMaxNewTokensLimit) {
    return InvalidAt(where,
                     absl::StrCat("max_new_tokens ", stage.max_new_tokens,
                                  " is outside [1, ", kMaxNewTokensLimit, "]"));
  }
  LS_ASSIGN_OR_RETURN(stage.stop_strings,
                      JsonNonEmptyStrings(object, "stop", where));
  LS_ASSIGN_OR_RETURN(stage.fan_out, JsonBool(object, "fan_out", where, false));
  const PipelineStage defaults;
  for (const char* key : {"fan_out_item", "fan_out_separator"}) {
    if (!stage.fan_out && object.contains(key)) {
      return InvalidAt(where, absl::StrCat("key '", key,
                                           "' is only allowed when fan_out "
                                           "is true"));
    }
  }
  LS_ASSIGN_OR_RETURN(
      stage.fan_out_item,
      JsonString(object, "fan_out_item", where, defaults.fan_out_item));
  LS_ASSIGN_OR_RETURN(stage.fan_out_separator,
                      JsonString(object, "fan_out_separator", where,
                                 defaults.fan_out_separator));
  absl::Status item_status = CheckSimpleTemplate(
      stage.fan_out_item, {"option", "option_text", "output"});
  if (!item_status.ok()) {
    return InvalidAt(where,
                     absl::StrCat(item_status.message(), " in fan_out_item"));
  }
  return stage;
}

std::string RenderChoices(const Pipeline& pipeline,
                          const std::vector<std::string>& choices,
                          absl::Status* status) {
  std::string out;
  for (size_t i = 0; i < choices.size(); ++i) {
    if (i > 0) out.append(pipeline.choice_separator);
    const std::string letter = ChoiceLetter(i);
    absl::Status s =
        RenderSimpleTemplate(pipeline.choice_format,
                             {{"letter", letter}, {"text", choices[i]}}, &out);
    if (!s.ok()) {
      *status = s;
      return out;
    }
  }
  return out;
}

std::string TrimForCompare(absl::string_view text) {
  absl::string_view t = absl::StripAsciiWhitespace(text);
  while (!t.empty() && t.back() == '.') t.remove_suffix(1);
  t = absl::StripAsciiWhitespace(t);
  return absl::AsciiStrToLower(t);
}

// ---------------------------------------------------------------------------
// Built-in pipelines.

// TinyThinker's three stages (recall -> per-option analysis -> summary).
// The few-shot example is derived from TinyThinker's OBQA exemplar
// (github.com/shengminp/TinyThinker, MIT License, Copyright (c) 2024
// Shengmin Piao; ../shared/data/tinythinker_prompts/obqa_cot.json item 0),
// rewritten into exactly the layout the stage templates below produce, so
// the model sees the format it must continue.
constexpr char kTinyThinkerJson[] = R"json({
  "schema": "litestage.pipeline/v1",
  "name": "tinythinker",
  "description": "TinyThinker multi-stage reasoning: recall, per-option analysis, summary.",
  "few_shot": "What is the most likely to be an effect of acid rain on an aquatic environment?\n(A) decrease in plant life (B) increase in fish population (C) increase in plant growth (D) cleaner and clearer water\nRecall: Acid rain, containing harmful acidic compounds, detrimentally affects aquatic environments by altering water chemistry, harmful to aquatic life.\nAnalyze: For option A, acid rain reduces water pH, harming aquatic plants, so it is correct. For option B, acid rain decreases fish populations by introducing harmful chemicals, so it is incorrect. For option C, acid rain impedes plant growth due to its acidity, so it is incorrect. For option D, acid rain pollutes water, reducing clarity, so it is incorrect.\nSummarize: So the answer is option A.\n\n",
  "choice_format": "({letter}) {text}",
  "choice_separator": " ",
  "min_choices": 2,
  "max_choices": 5,
  "default_choices": ["yes", "no"],
  "answer_regex": "the answer is option ([A-Z])",
  "stages": [
    {
      "name": "recall",
      "prompt": "{few_shot}{question}\n{choices}\nRecall:",
      "max_new_tokens": 128,
      "stop": ["\n"]
    },
    {
      "name": "analysis",
      "prompt": "{few_shot}{question}\n{choices}\nRecall: {stage.recall}\nAnalyze: For option {option},",
      "max_new_tokens": 96,
      "stop": ["\n", "For option "],
      "fan_out": true,
      "fan_out_item": "For option {option}, {output}",
      "fan_out_separator": " "
    },
    {
      "name": "summary",
      "prompt": "{few_shot}{question}\n{choices}\nRecall: {stage.recall}\nAnalyze: {stage.analysis}\nSummarize:",
      "max_new_tokens": 48,
      "stop": ["\n"]
    }
  ]
})json";

struct BuiltinEntry {
  const char* name;
  const char* json_text;
};

constexpr BuiltinEntry kBuiltins[] = {
    {"tinythinker", kTinyThinkerJson},
};

}  // namespace

int64_t Pipeline::StageIndex(absl::string_view stage_name) const {
  for (size_t i = 0; i < stages.size(); ++i) {
    if (stages[i].name == stage_name) return static_cast<int64_t>(i);
  }
  return -1;
}

bool operator==(const Pipeline& a, const Pipeline& b) {
  return a.name == b.name && a.description == b.description &&
         a.few_shot == b.few_shot && a.choice_format == b.choice_format &&
         a.choice_separator == b.choice_separator &&
         a.min_choices == b.min_choices && a.max_choices == b.max_choices &&
         a.default_choices == b.default_choices && a.stages == b.stages &&
         a.answer_regex == b.answer_regex;
}

absl::StatusOr<Pipeline> ParsePipeline(absl::string_view json_text,
                                       absl::string_view source) {
  LS_ASSIGN_OR_RETURN(json doc, ParseJson(json_text, source));
  if (!doc.is_object()) {
    return InvalidAt(source, absl::StrCat("the document must be a JSON "
                                          "object, got ",
                                          doc.type_name()));
  }
  LS_RETURN_IF_ERROR(CheckKnownKeys(
      doc,
      {"schema", "name", "description", "few_shot", "choice_format",
       "choice_separator", "min_choices", "max_choices", "default_choices",
       "answer_regex", "stages"},
      source));

  LS_ASSIGN_OR_RETURN(std::string schema, JsonString(doc, "schema", source));
  if (schema != kPipelineSchema) {
    return InvalidAt(source, absl::StrCat("schema '", schema,
                                          "' is not supported (expected '",
                                          kPipelineSchema, "')"));
  }

  Pipeline pipeline;
  LS_ASSIGN_OR_RETURN(pipeline.name, JsonString(doc, "name", source));
  if (!IsValidPipelineName(pipeline.name)) {
    return InvalidAt(source,
                     absl::StrCat("malformed pipeline name '", pipeline.name,
                                  "' (expected [a-z0-9][a-z0-9_.-]*)"));
  }
  LS_ASSIGN_OR_RETURN(pipeline.description,
                      JsonString(doc, "description", source, ""));
  LS_ASSIGN_OR_RETURN(pipeline.few_shot,
                      JsonString(doc, "few_shot", source, ""));
  const Pipeline defaults;
  LS_ASSIGN_OR_RETURN(
      pipeline.choice_format,
      JsonString(doc, "choice_format", source, defaults.choice_format));
  absl::Status format_status =
      CheckSimpleTemplate(pipeline.choice_format, {"letter", "text"});
  if (!format_status.ok()) {
    return InvalidAt(
        source, absl::StrCat(format_status.message(), " in choice_format"));
  }
  LS_ASSIGN_OR_RETURN(
      pipeline.choice_separator,
      JsonString(doc, "choice_separator", source, defaults.choice_separator));

  LS_ASSIGN_OR_RETURN(pipeline.min_choices, JsonInt(doc, "min_choices", source,
                                                    defaults.min_choices));
  LS_ASSIGN_OR_RETURN(pipeline.max_choices, JsonInt(doc, "max_choices", source,
                                                    defaults.max_choices));
  if (pipeline.min_choices < 0 || pipeline.max_choices > kMaxChoices ||
      pipeline.min_choices > pipeline.max_choices) {
    return InvalidAt(source,
                     absl::StrCat("min_choices ", pipeline.min_choices,
                                  " and max_choices ", pipeline.max_choices,
                                  " must satisfy 0 <= min_choices <= "
                                  "max_choices <= ",
                                  kMaxChoices));
  }
  LS_ASSIGN_OR_RETURN(pipeline.default_choices,
                      JsonNonEmptyStrings(doc, "default_choices", source));
  const int64_t num_defaults =
      static_cast<int64_t>(pipeline.default_choices.size());
  if (num_defaults > 0 && (num_defaults < pipeline.min_choices ||
                           num_defaults > pipeline.max_choices)) {
    return InvalidAt(source, absl::StrCat("default_choices has ", num_defaults,
                                          " choices, outside [min_choices, "
                                          "max_choices] = [",
                                          pipeline.min_choices, ", ",
                                          pipeline.max_choices, "]"));
  }

  LS_ASSIGN_OR_RETURN(pipeline.answer_regex,
                      JsonString(doc, "answer_regex", source, ""));
  if (!pipeline.answer_regex.empty()) {
    RE2::Options options;
    options.set_log_errors(false);
    auto regex = std::make_shared<const RE2>(pipeline.answer_regex, options);
    if (!regex->ok()) {
      return InvalidAt(source,
                       absl::StrCat("answer_regex '", pipeline.answer_regex,
                                    "' does not compile: ", regex->error()));
    }
    if (regex->NumberOfCapturingGroups() < 1) {
      return InvalidAt(source,
                       absl::StrCat("answer_regex '", pipeline.answer_regex,
                                    "' has no capturing group (group 1 must "
                                    "capture the answer)"));
    }
    pipeline.compiled_answer_regex = std::move(regex);
  }

  auto stages_it = doc.find("stages");
  if (stages_it == doc.end() || stages_it->is_null()) {
    return absl::NotFoundError(
        absl::StrCat(source, ": missing required key 'stages'"));
  }
  if (!stages_it->is_array()) {
    return InvalidAt(source, absl::StrCat("key 'stages' must be an array, got ",
                                          stages_it->type_name()));
  }
  if (stages_it->empty()) return InvalidAt(source, "no stages");
  if (static_cast<int64_t>(stages_it->size()) > kMaxStages) {
    return InvalidAt(
        source, absl::StrCat(stages_it->size(),
                             " stages, more than the limit of ", kMaxStages));
  }
  for (size_t i = 0; i < stages_it->size(); ++i) {
    LS_ASSIGN_OR_RETURN(PipelineStage stage,
                        ParseStage((*stages_it)[i], i, source));
    const int64_t previous = pipeline.StageIndex(stage.name);
    if (previous >= 0) {
      return InvalidAt(source, absl::StrCat("stage '", stage.name,
                                            "': duplicate stage name (also "
                                            "stages[",
                                            previous, "])"));
    }
    pipeline.stages.push_back(std::move(stage));
  }
  // Placeholders once every stage name is known, so {stage.NAME} of a later
  // stage is reported as such rather than as unknown.
  for (size_t i = 0; i < pipeline.stages.size(); ++i) {
    const PipelineStage& stage = pipeline.stages[i];
    const std::string where =
        absl::StrCat(source, ": stage '", stage.name, "'");
    absl::Status status = CheckStagePrompt(pipeline, i);
    if (!status.ok()) {
      return InvalidAt(where, absl::StrCat(status.message(), " in prompt"));
    }
    if (stage.fan_out && pipeline.min_choices < 1) {
      return InvalidAt(where,
                       "a fan-out stage needs min_choices >= 1 (one "
                       "generation per choice)");
    }
  }
  return pipeline;
}

absl::StatusOr<Pipeline> LoadPipelineFile(const std::string& path) {
  LS_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParsePipeline(text, path);
}

absl::StatusOr<Pipeline> BuiltinPipeline(absl::string_view name) {
  for (const BuiltinEntry& entry : kBuiltins) {
    if (name == entry.name) {
      return ParsePipeline(entry.json_text,
                           absl::StrCat("builtin:", entry.name));
    }
  }
  return absl::NotFoundError(absl::StrCat(
      "no built-in pipeline '", name,
      "' (built-ins: ", absl::StrJoin(BuiltinPipelineNames(), ", "), ")"));
}

std::vector<std::string> BuiltinPipelineNames() {
  std::vector<std::string> names;
  for (const BuiltinEntry& entry : kBuiltins) names.push_back(entry.name);
  return names;
}

absl::StatusOr<Pipeline> ResolvePipeline(const std::string& name_or_path) {
  for (const BuiltinEntry& entry : kBuiltins) {
    if (name_or_path == entry.name) return BuiltinPipeline(name_or_path);
  }
  absl::StatusOr<Pipeline> loaded = LoadPipelineFile(name_or_path);
  if (absl::IsNotFound(loaded.status()) &&
      name_or_path.find('/') == std::string::npos &&
      !absl::EndsWith(name_or_path, ".json")) {
    // Looks like a mistyped built-in name rather than a path.
    return absl::NotFoundError(
        absl::StrCat("'", name_or_path, "' is neither a built-in pipeline (",
                     absl::StrJoin(BuiltinPipelineNames(), ", "),
                     ") nor a file: ", loaded.status().message()));
  }
  return loaded;
}

std::string PipelineToJson(const Pipeline& pipeline) {
  nlohmann::ordered_json doc;
  doc["schema"] = kPipelineSchema;
  doc["name"] = pipeline.name;
  doc["description"] = pipeline.description;
  doc["few_shot"] = pipeline.few_shot;
  doc["choice_format"] = pipeline.choice_format;
  doc["choice_separator"] = pipeline.choice_separator;
  doc["min_choices"] = pipeline.min_choices;
  doc["max_choices"] = pipeline.max_choices;
  doc["default_choices"] = pipeline.default_choices;
  doc["answer_regex"] = pipeline.answer_regex;
  nlohmann::ordered_json stages = nlohmann::ordered_json::array();
  for (const PipelineStage& stage : pipeline.stages) {
    nlohmann::ordered_json s;
    s["name"] = stage.name;
    s["prompt"] = stage.prompt_template;
    s["max_new_tokens"] = stage.max_new_tokens;
    s["stop"] = stage.stop_strings;
    s["fan_out"] = stage.fan_out;
    if (stage.fan_out) {
      s["fan_out_item"] = stage.fan_out_item;
      s["fan_out_separator"] = stage.fan_out_separator;
    }
    stages.push_back(std::move(s));
  }
  doc["stages"] = std::move(stages);
  // `replace`: a hand-built pipeline with invalid UTF-8 must not throw.
  return doc.dump(2, ' ', /*ensure_ascii=*/false,
                  nlohmann::ordered_json::error_handler_t::replace) +
         "\n";
}

std::vector<std::string> EffectiveChoices(
    const Pipeline& pipeline, const std::vector<std::string>& requested) {
  if (!requested.empty()) return requested;
  return pipeline.default_choices;
}

absl::Status ValidatePromptInputs(const Pipeline& pipeline,
                                  const PromptInputs& inputs) {
  if (absl::StripAsciiWhitespace(inputs.question).empty()) {
    return absl::InvalidArgumentError("question: empty");
  }
  const int64_t count = static_cast<int64_t>(inputs.choices.size());
  if (count == 0 && !pipeline.default_choices.empty()) {
    return absl::OkStatus();  // The caller runs with the defaults.
  }
  if (count < pipeline.min_choices || count > pipeline.max_choices) {
    return absl::InvalidArgumentError(absl::StrCat(
        "choices: ", count, " given, pipeline '", pipeline.name, "' takes ",
        pipeline.min_choices, " to ", pipeline.max_choices));
  }
  for (size_t i = 0; i < inputs.choices.size(); ++i) {
    if (absl::StripAsciiWhitespace(inputs.choices[i]).empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("choices[", i, "]: empty"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RenderStagePrompt(
    const Pipeline& pipeline, size_t stage_index, const PromptInputs& inputs,
    std::optional<size_t> option, std::vector<TextRange>* user_text) {
  if (stage_index >= pipeline.stages.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline '", pipeline.name, "': no stage ", stage_index,
                     " (it has ", pipeline.stages.size(), ")"));
  }
  const PipelineStage& stage = pipeline.stages[stage_index];
  const std::string where =
      absl::StrCat("pipeline '", pipeline.name, "': stage '", stage.name, "'");
  if (stage.fan_out != option.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, stage.fan_out ? ": a fan-out stage needs an option"
                             : ": an option is only for fan-out stages"));
  }
  if (option.has_value() && *option >= inputs.choices.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": option ", *option, " is out of range (",
                     inputs.choices.size(), " choices)"));
  }

  std::string out;
  out.reserve(stage.prompt_template.size() + pipeline.few_shot.size() +
              inputs.question.size() + 256);
  absl::Status status = ScanTemplate(
      stage.prompt_template,
      [&](absl::string_view literal) { absl::StrAppend(&out, literal); },
      [&](absl::string_view name) -> absl::Status {
        // Appends text that did not come from the pipeline.
        auto untrusted = [&](absl::string_view text) {
          if (user_text != nullptr && !text.empty()) {
            user_text->push_back({out.size(), out.size() + text.size()});
          }
          out.append(text.data(), text.size());
        };
        if (name == "question") {
          untrusted(inputs.question);
        } else if (name == "choices") {
          // The whole block: its letters and separators hold no special
          // token text, and the choices interleave with them.
          absl::Status choices_status;
          untrusted(RenderChoices(pipeline, inputs.choices, &choices_status));
          return choices_status;
        } else if (name == "few_shot") {
          out.append(pipeline.few_shot);
        } else if (name == "option" && option.has_value()) {
          out.append(ChoiceLetter(*option));
        } else if (name == "option_text" && option.has_value()) {
          untrusted(inputs.choices[*option]);
        } else if (absl::StartsWith(name, kStagePrefix)) {
          const std::string ref(name.substr(kStagePrefix.size()));
          auto it = inputs.stage_outputs.find(ref);
          if (it == inputs.stage_outputs.end()) {
            return absl::FailedPreconditionError(
                absl::StrCat("no output of stage '", ref, "' in the inputs"));
          }
          untrusted(it->second);
        } else {
          return UnknownPlaceholder(name);
        }
        return absl::OkStatus();
      });
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat(where, ": ", status.message()));
  }
  return out;
}

std::string JoinFanOutOutputs(const PipelineStage& stage,
                              const std::vector<std::string>& choices,
                              const std::vector<std::string>& outputs) {
  LS_CHECK_EQ(choices.size(), outputs.size())
      << "stage '" << stage.name << "': one output per choice";
  std::string out;
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (i > 0) out.append(stage.fan_out_separator);
    const std::string letter = ChoiceLetter(i);
    const size_t start = out.size();
    absl::Status status = RenderSimpleTemplate(stage.fan_out_item,
                                               {{"option", letter},
                                                {"option_text", choices[i]},
                                                {"output", outputs[i]}},
                                               &out);
    if (!status.ok()) {
      // Only a stage that never went through ParsePipeline gets here; fall
      // back to the default item rather than lose the branch's output.
      out.resize(start);
      absl::StrAppend(&out, "For option ", letter, ", ", outputs[i]);
    }
  }
  return out;
}

std::string ChoiceLetter(size_t index) {
  LS_CHECK_LT(index, static_cast<size_t>(kMaxChoices));
  return std::string(1, static_cast<char>('A' + index));
}

std::optional<size_t> ExtractAnswer(const Pipeline& pipeline,
                                    absl::string_view final_output,
                                    const std::vector<std::string>& choices) {
  if (pipeline.answer_regex.empty()) return std::nullopt;
  std::shared_ptr<const RE2> regex = pipeline.compiled_answer_regex;
  if (regex == nullptr) {  // A hand-built pipeline: compile here.
    RE2::Options options;
    options.set_log_errors(false);
    regex = std::make_shared<const RE2>(pipeline.answer_regex, options);
  }
  if (!regex->ok() || regex->NumberOfCapturingGroups() < 1) return std::nullopt;
  re2::StringPiece group;
  if (!RE2::PartialMatch(
          re2::StringPiece(final_output.data(), final_output.size()), *regex,
          &group)) {
    return std::nullopt;
  }
  const absl::string_view captured(group.data(), group.size());
  // "B", " b", "B." all name choice B.
  absl::string_view letter = absl::StripAsciiWhitespace(captured);
  if (!letter.empty() && letter.back() == '.') letter.remove_suffix(1);
  if (letter.size() == 1 && absl::ascii_isalpha(letter[0])) {
    const size_t index =
        static_cast<size_t>(absl::ascii_toupper(letter[0]) - 'A');
    if (index < choices.size()) return index;
  }
  const std::string wanted = TrimForCompare(captured);
  if (wanted.empty()) return std::nullopt;
  for (size_t i = 0; i < choices.size(); ++i) {
    if (TrimForCompare(choices[i]) == wanted) return i;
  }
  return std::nullopt;
}

}  // namespace litestage
