#include "engine/stages/dataset.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "engine/util/json_util.h"
#include "engine/util/mapped_file.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace litestage {
namespace {

using nlohmann::json;

// At most 26 choices: they are addressed by letters A-Z.
constexpr size_t kMaxChoices = 26;

// `where` is "<path>:<line>" or "<path>: item N"; `field` the JSON path.
absl::Status FieldError(absl::string_view where, absl::string_view field,
                        absl::string_view reason) {
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": ", field, ": ", reason));
}

absl::StatusOr<std::string> RequiredText(const json& object, const char* key,
                                         absl::string_view where,
                                         absl::string_view field) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    return FieldError(where, field, "missing");
  }
  if (!it->is_string()) {
    return FieldError(where, field,
                      absl::StrCat("must be a string, got ", it->type_name()));
  }
  std::string text = it->get<std::string>();
  if (absl::StripAsciiWhitespace(text).empty()) {
    return FieldError(where, field, "empty");
  }
  return text;
}

// The item's id: "id" or "qid" (string or integer), else `fallback`.
std::string ItemId(const json& object, std::string fallback) {
  for (const char* key : {"id", "qid"}) {
    auto it = object.find(key);
    if (it == object.end()) continue;
    if (it->is_string()) return it->get<std::string>();
    if (it->is_number_integer()) return it->dump();
  }
  return fallback;
}

// Letter `label` ("B") -> index among `num_choices`, or an error.
absl::StatusOr<size_t> LetterIndex(const json& value, size_t num_choices,
                                   absl::string_view where,
                                   absl::string_view field) {
  if (!value.is_string()) {
    return FieldError(where, field, "must be a choice letter");
  }
  const std::string letter = value.get<std::string>();
  const absl::string_view trimmed = absl::StripAsciiWhitespace(letter);
  if (trimmed.size() != 1 || !absl::ascii_isalpha(trimmed[0])) {
    return FieldError(where, field,
                      absl::StrCat("'", letter, "' is not a choice letter"));
  }
  const size_t index =
      static_cast<size_t>(absl::ascii_toupper(trimmed[0]) - 'A');
  if (index >= num_choices) {
    return FieldError(
        where, field,
        absl::StrCat("'", letter, "' is beyond the ", num_choices, " choices"));
  }
  return index;
}

// OBQA / CSQA: {"id", "question": {"stem", "choices": [{"label","text"}]},
// "answerKey"}.
absl::Status ParseNestedItem(const json& object, absl::string_view where,
                             QuestionItem* item) {
  const json& question = object["question"];
  LS_ASSIGN_OR_RETURN(item->question,
                      RequiredText(question, "stem", where, "question.stem"));
  auto choices_it = question.find("choices");
  if (choices_it == question.end() || !choices_it->is_array() ||
      choices_it->empty()) {
    return FieldError(where, "question.choices",
                      "must be a non-empty array of {label, text}");
  }
  if (choices_it->size() > kMaxChoices) {
    return FieldError(
        where, "question.choices",
        absl::StrCat(choices_it->size(), " choices, more than ", kMaxChoices));
  }
  std::vector<std::pair<char, std::string>> labelled;
  for (size_t i = 0; i < choices_it->size(); ++i) {
    const json& choice = (*choices_it)[i];
    const std::string field = absl::StrCat("question.choices[", i, "]");
    if (!choice.is_object()) {
      return FieldError(where, field, "must be an object {label, text}");
    }
    LS_ASSIGN_OR_RETURN(
        std::string text,
        RequiredText(choice, "text", where, absl::StrCat(field, ".text")));
    LS_ASSIGN_OR_RETURN(
        std::string label,
        RequiredText(choice, "label", where, absl::StrCat(field, ".label")));
    if (label.size() != 1 || !absl::ascii_isupper(label[0])) {
      return FieldError(where, absl::StrCat(field, ".label"),
                        absl::StrCat("'", label, "' is not a letter A-Z"));
    }
    labelled.emplace_back(label[0], std::move(text));
  }
  // Label order, which must then be exactly A, B, C, ...
  std::stable_sort(
      labelled.begin(), labelled.end(),
      [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 0; i < labelled.size(); ++i) {
    if (labelled[i].first != static_cast<char>('A' + i)) {
      return FieldError(where, "question.choices",
                        absl::StrCat("labels must be A, B, C, ... without "
                                     "gaps or repeats; label '",
                                     std::string(1, labelled[i].first),
                                     "' is at position ", i));
    }
    item->choices.push_back(std::move(labelled[i].second));
  }
  auto key_it = object.find("answerKey");
  if (key_it != object.end() && !key_it->is_null()) {
    LS_ASSIGN_OR_RETURN(item->answer, LetterIndex(*key_it, item->choices.size(),
                                                  where, "answerKey"));
  }
  return absl::OkStatus();
}

// Plain: {"question": str, "choices": [str], "answer": "B" | int}.
absl::Status ParsePlainItem(const json& object, absl::string_view where,
                            QuestionItem* item) {
  LS_ASSIGN_OR_RETURN(item->question,
                      RequiredText(object, "question", where, "question"));
  const json& choices = object["choices"];
  if (!choices.is_array() || choices.empty()) {
    return FieldError(where, "choices", "must be a non-empty array of strings");
  }
  if (choices.size() > kMaxChoices) {
    return FieldError(
        where, "choices",
        absl::StrCat(choices.size(), " choices, more than ", kMaxChoices));
  }
  for (size_t i = 0; i < choices.size(); ++i) {
    const std::string field = absl::StrCat("choices[", i, "]");
    if (!choices[i].is_string()) {
      return FieldError(
          where, field,
          absl::StrCat("must be a string, got ", choices[i].type_name()));
    }
    std::string text = choices[i].get<std::string>();
    if (absl::StripAsciiWhitespace(text).empty()) {
      return FieldError(where, field, "empty");
    }
    item->choices.push_back(std::move(text));
  }
  auto answer_it = object.find("answer");
  if (answer_it == object.end() || answer_it->is_null())
    return absl::OkStatus();
  if (answer_it->is_number_integer()) {
    const int64_t index = answer_it->get<int64_t>();
    if (index < 0 || index >= static_cast<int64_t>(item->choices.size())) {
      return FieldError(where, "answer",
                        absl::StrCat("index ", index, " is outside [0, ",
                                     item->choices.size(), ")"));
    }
    item->answer = static_cast<size_t>(index);
    return absl::OkStatus();
  }
  LS_ASSIGN_OR_RETURN(
      item->answer,
      LetterIndex(*answer_it, item->choices.size(), where, "answer"));
  return absl::OkStatus();
}

// StrategyQA: {"question": str, "answer": bool}; choices "yes", "no".
absl::Status ParseYesNoItem(const json& object, absl::string_view where,
                            QuestionItem* item) {
  LS_ASSIGN_OR_RETURN(item->question,
                      RequiredText(object, "question", where, "question"));
  item->choices = {"yes", "no"};
  auto answer_it = object.find("answer");
  if (answer_it == object.end() || answer_it->is_null())
    return absl::OkStatus();
  if (!answer_it->is_boolean()) {
    return FieldError(
        where, "answer",
        absl::StrCat("must be true or false, got ", answer_it->type_name()));
  }
  item->answer = answer_it->get<bool>() ? 0 : 1;
  return absl::OkStatus();
}

absl::StatusOr<QuestionItem> ParseItem(const json& object,
                                       absl::string_view where,
                                       std::string fallback_id) {
  if (!object.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": expected a JSON object, got ", object.type_name()));
  }
  QuestionItem item;
  item.id = ItemId(object, std::move(fallback_id));
  auto question_it = object.find("question");
  if (question_it == object.end() || question_it->is_null()) {
    return FieldError(where, "question", "missing");
  }
  if (question_it->is_object()) {
    LS_RETURN_IF_ERROR(ParseNestedItem(object, where, &item));
  } else if (object.contains("choices")) {
    LS_RETURN_IF_ERROR(ParsePlainItem(object, where, &item));
  } else {
    LS_RETURN_IF_ERROR(ParseYesNoItem(object, where, &item));
  }
  return item;
}

}  // namespace

absl::StatusOr<std::vector<QuestionItem>> LoadQuestions(const std::string& path,
                                                        int64_t limit) {
  LS_ASSIGN_OR_RETURN(std::string text,
                      ReadFileToString(path, kMaxDatasetFileBytes));
  absl::string_view content = text;
  if (content.substr(0, 3) == "\xEF\xBB\xBF") content.remove_prefix(3);  // BOM

  std::vector<QuestionItem> items;
  const auto full = [&] {
    return limit > 0 && static_cast<int64_t>(items.size()) >= limit;
  };
  const absl::string_view stripped = absl::StripLeadingAsciiWhitespace(content);
  if (!stripped.empty() && stripped.front() == '[') {
    // One JSON array (StrategyQA's dev.json, or plain items).
    LS_RETURN_IF_ERROR(CheckJsonLimits(stripped, path));
    json doc = json::parse(stripped.begin(), stripped.end(), nullptr,
                           /*allow_exceptions=*/false);
    if (doc.is_discarded() || !doc.is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": not a valid JSON array"));
    }
    for (size_t i = 0; i < doc.size() && !full(); ++i) {
      const std::string where = absl::StrCat(path, ": item ", i + 1);
      LS_ASSIGN_OR_RETURN(
          QuestionItem item,
          ParseItem(doc[i], where, absl::StrCat("item ", i + 1)));
      items.push_back(std::move(item));
    }
  } else {
    // JSONL: one object per line; blank lines are skipped.
    size_t line_start = 0;
    int64_t line_number = 0;
    while (line_start < content.size() && !full()) {
      size_t line_end = content.find('\n', line_start);
      if (line_end == absl::string_view::npos) line_end = content.size();
      const absl::string_view line = absl::StripAsciiWhitespace(
          content.substr(line_start, line_end - line_start));
      line_start = line_end + 1;
      ++line_number;
      if (line.empty()) continue;
      const std::string where = absl::StrCat(path, ":", line_number);
      LS_RETURN_IF_ERROR(CheckJsonLimits(line, where));
      json object = json::parse(line.begin(), line.end(), nullptr,
                                /*allow_exceptions=*/false);
      if (object.is_discarded()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": not valid JSON"));
      }
      LS_ASSIGN_OR_RETURN(
          QuestionItem item,
          ParseItem(object, where, absl::StrCat("line ", line_number)));
      items.push_back(std::move(item));
    }
  }
  if (items.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": no questions in the file"));
  }
  return items;
}

}  // namespace litestage
