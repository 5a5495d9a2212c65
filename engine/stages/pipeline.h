// Multi-stage reasoning pipelines as data: ordered stages, each a prompt
// template, a token budget and stop strings; optionally one generation per
// answer choice (fan-out); on the final stage an answer-extraction regex.
//
// File format (JSON, schema "litestage.pipeline/v1"): docs/pipelines.md.
// Template placeholders:
//   {question}        the question text
//   {choices}         the lettered choices, "(A) red (B) blue"
//   {few_shot}        the pipeline's few-shot prefix (may be empty)
//   {stage.NAME}      the output of an earlier stage NAME
//   {option}          fan-out stages only: this branch's letter ("A")
//   {option_text}     fan-out stages only: this branch's choice text
//   {{ and }}         literal braces
#ifndef LITESTAGE_ENGINE_STAGES_PIPELINE_H_
#define LITESTAGE_ENGINE_STAGES_PIPELINE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/tokenizer/tokenizer.h"

namespace re2 {
class RE2;
}

namespace litestage {

inline constexpr char kPipelineSchema[] = "litestage.pipeline/v1";

struct PipelineStage {
  std::string name;             // Unique in the pipeline, [a-z][a-z0-9_]*.
  std::string prompt_template;  // Non-empty; placeholders above.
  int64_t max_new_tokens = 200;
  std::vector<std::string> stop_strings;
  // One generation per choice, run as one batch; the stage's output is the
  // branches' outputs, each rendered with `fan_out_item` ({option},
  // {option_text}, {output}) and joined with `fan_out_separator`.
  bool fan_out = false;
  std::string fan_out_item = "For option {option}, {output}";
  std::string fan_out_separator = " ";  // Literal text, no placeholders.

  // Field-wise equality (used by the PipelineToJson round trip).
  friend bool operator==(const PipelineStage&, const PipelineStage&) = default;
};

struct Pipeline {
  std::string name;  // [a-z0-9][a-z0-9_.-]*
  std::string description;
  std::string few_shot;  // Value of {few_shot}.
  // How {choices} is rendered: each choice with `choice_format` ({letter},
  // {text}), joined with `choice_separator` (literal text).
  std::string choice_format = "({letter}) {text}";
  std::string choice_separator = " ";
  int64_t min_choices = 0;   // Requests with fewer choices are rejected.
  int64_t max_choices = 26;  // At most 26 (letters A-Z).
  // Used when a request gives no choices (StrategyQA: "yes", "no"); see
  // EffectiveChoices. Empty: a request must bring its own choices whenever
  // min_choices > 0.
  std::vector<std::string> default_choices;
  std::vector<PipelineStage> stages;  // Non-empty, run in order.
  // Final stage's output -> answer. Group 1 captures a choice letter or a
  // choice's text (case-insensitive). Empty: no answer extraction.
  std::string answer_regex;
  std::shared_ptr<const re2::RE2> compiled_answer_regex;  // Of answer_regex.

  // Index of stage `name`, or -1.
  int64_t StageIndex(absl::string_view name) const;

  // Equality of every field but `compiled_answer_regex` (which is derived
  // from `answer_regex`).
  friend bool operator==(const Pipeline& a, const Pipeline& b);
};

// What a request fills the placeholders with.
struct PromptInputs {
  std::string question;
  std::vector<std::string> choices;
  // Outputs of the stages already run, by stage name.
  std::map<std::string, std::string> stage_outputs;
};

// Parses and validates a pipeline document. `source` (a file path or
// "builtin:NAME") starts every error message, followed by the stage and the
// reason. Rejects unknown fields, other schema versions, unknown
// placeholders, references to the same or later stages, {option} outside
// fan-out stages, empty templates, duplicate or malformed stage names, bad
// regexes (or ones without a capturing group), non-positive max_new_tokens.
absl::StatusOr<Pipeline> ParsePipeline(absl::string_view json_text,
                                       absl::string_view source);
absl::StatusOr<Pipeline> LoadPipelineFile(const std::string& path);

// Built-in pipelines by name ("tinythinker"); NotFound for others.
absl::StatusOr<Pipeline> BuiltinPipeline(absl::string_view name);
std::vector<std::string> BuiltinPipelineNames();
// A built-in name or else a file path.
absl::StatusOr<Pipeline> ResolvePipeline(const std::string& name_or_path);

// The JSON document of `pipeline` (ParsePipeline(ToJson(p)) == p).
std::string PipelineToJson(const Pipeline& pipeline);

// Checks a request's question and choices against the pipeline:
// InvalidArgument naming the field ("question", "choices[2]") for an empty
// question, empty choices, or a count outside [min_choices, max_choices].
// No choices at all is accepted when the pipeline has default_choices (the
// caller then runs with EffectiveChoices).
absl::Status ValidatePromptInputs(const Pipeline& pipeline,
                                  const PromptInputs& inputs);

// The choices a request runs with: `requested` when non-empty, else the
// pipeline's default_choices. Callers set PromptInputs::choices to this
// before RenderStagePrompt / JoinFanOutOutputs / ExtractAnswer, which use
// the choices they are given as they are.
std::vector<std::string> EffectiveChoices(
    const Pipeline& pipeline, const std::vector<std::string>& requested);

// The prompt of stage `stage_index`; for a fan-out stage, of the branch for
// choice `option` (required there, must be nullopt elsewhere). Fails if a
// referenced stage has no output in `inputs`. `user_text`, when given,
// receives where text from the request and from earlier stages' outputs
// lies in the prompt ({question}, {choices}, {option_text}, {stage.*}), so
// that it is encoded as plain text: special-token text a user writes must
// never become control tokens (Tokenizer::Encode). The pipeline's own text
// (templates, few-shot) stays trusted.
absl::StatusOr<std::string> RenderStagePrompt(
    const Pipeline& pipeline, size_t stage_index, const PromptInputs& inputs,
    std::optional<size_t> option, std::vector<TextRange>* user_text = nullptr);

// A fan-out stage's output from its branches' outputs ([num_choices], one
// per choice, same order; a size mismatch is a programmer error).
std::string JoinFanOutOutputs(const PipelineStage& stage,
                              const std::vector<std::string>& choices,
                              const std::vector<std::string>& outputs);

// Letter of choice `index` ("A" for 0).
std::string ChoiceLetter(size_t index);

// The answer in the final stage's output: the index of the chosen choice,
// or nullopt when the regex does not match or names no choice.
std::optional<size_t> ExtractAnswer(const Pipeline& pipeline,
                                    absl::string_view final_output,
                                    const std::vector<std::string>& choices);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_STAGES_PIPELINE_H_
