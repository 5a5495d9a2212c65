// Multiple-choice question sets for calibration, search and benchmarks:
// OpenBookQA and CommonsenseQA JSONL, StrategyQA JSON (yes/no), and a plain
// JSONL of {"question", "choices", "answer"}.
#ifndef LITESTAGE_ENGINE_STAGES_DATASET_H_
#define LITESTAGE_ENGINE_STAGES_DATASET_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace litestage {

struct QuestionItem {
  // The dataset's id ("id" or "qid"), or "line N" ("item N" in a JSON
  // array, 1-based) when it has none.
  std::string id;
  std::string question;
  std::vector<std::string> choices;  // In label order (A, B, ...).
  std::optional<size_t> answer;      // Index into choices, when labelled.
};

// Reads `path`, detecting the layout from its content:
//  - JSONL with {"question": {"stem", "choices": [{"label","text"}]},
//    "answerKey"} (OBQA, CSQA);
//  - a JSON array of {"question", "answer": bool} (StrategyQA): choices
//    "yes", "no";
//  - JSONL with {"question": str, "choices": [str], "answer": "B" | int}.
// Errors name the path, the line (or array index) and the field.
// `limit` > 0 keeps the first `limit` items.
absl::StatusOr<std::vector<QuestionItem>> LoadQuestions(const std::string& path,
                                                        int64_t limit = 0);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_STAGES_DATASET_H_
