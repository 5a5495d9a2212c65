// Profile evaluation: spec parsing, per-(profile, question) runs with
// teacher-forced fidelity, and per-profile aggregation (evaluation.h); the
// JSON forms live in evaluation_json.cc, the latency model in
// latency_model.cc. ~720 lines because the fidelity pass and the runs it
// scores share the per-question state and stay together.
#include "engine/stages/evaluation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/runtime/early_exit.h"
#include "engine/runtime/sampler.h"
#include "engine/runtime/scheduler.h"
#include "engine/util/check.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

constexpr char kEarlyExitMarker[] = "@ee=";

absl::Status SpecError(absl::string_view spec, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("profile spec '", spec, "': ", why));
}

bool IsFull(const Profile& profile, const Pipeline& pipeline) {
  for (const PipelineStage& stage : pipeline.stages) {
    const StageProfile& s = profile.ForStage(stage.name);
    const auto any = [](const std::vector<bool>& v) {
      return std::find(v.begin(), v.end(), true) != v.end();
    };
    if (any(s.skip.attention) || any(s.skip.mlp) || s.early_exit.enabled()) {
      return false;
    }
  }
  return true;
}

// Index of the largest logit; the first on ties, as greedy sampling picks.
int32_t Argmax(const float* row, int64_t vocab) {
  return static_cast<int32_t>(std::max_element(row, row + vocab) - row);
}

}  // namespace

Interval WilsonInterval(int64_t successes, int64_t n) {
  if (n <= 0) return {0, 1};
  constexpr double z = 1.959963984540054;  // 97.5% normal quantile.
  const double nn = static_cast<double>(n);
  const double p = static_cast<double>(successes) / nn;
  const double z2 = z * z;
  const double denominator = 1 + z2 / nn;
  const double center = (p + z2 / (2 * nn)) / denominator;
  const double half =
      z / denominator * std::sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn));
  return {std::max(0.0, center - half), std::min(1.0, center + half)};
}

double Mean(const std::vector<double>& values) {
  if (values.empty()) return 0;
  double sum = 0;
  for (double v : values) sum += v;
  return sum / static_cast<double>(values.size());
}

double Quantile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double position = q * static_cast<double>(values.size() - 1);
  const size_t below = static_cast<size_t>(std::floor(position));
  const size_t above = std::min(below + 1, values.size() - 1);
  const double fraction = position - static_cast<double>(below);
  return values[below] + fraction * (values[above] - values[below]);
}

absl::StatusOr<ProfileSpec> ParseProfileSpec(absl::string_view text) {
  ProfileSpec spec;
  spec.text = std::string(text);
  if (text.empty()) return SpecError(text, "empty");
  absl::string_view base = text;
  const size_t at = text.rfind(kEarlyExitMarker);
  if (at != absl::string_view::npos) {
    base = text.substr(0, at);
    const std::vector<std::string> parts =
        absl::StrSplit(text.substr(at + sizeof(kEarlyExitMarker) - 1), ',');
    if (parts.size() < 2 || parts.size() > 3) {
      return SpecError(text,
                       "early exit is @ee=WINDOW,THRESHOLD[,max_prob|"
                       "max_logit]");
    }
    EarlyExitConfig early_exit;
    double threshold = 0;
    if (!absl::SimpleAtoi(parts[0], &early_exit.window)) {
      return SpecError(text, absl::StrCat("early-exit window '", parts[0],
                                          "' is not an integer"));
    }
    if (!absl::SimpleAtod(parts[1], &threshold) || !std::isfinite(threshold)) {
      return SpecError(text, absl::StrCat("early-exit threshold '", parts[1],
                                          "' is not a finite number"));
    }
    early_exit.threshold = static_cast<float>(threshold);
    if (parts.size() == 3) {
      absl::StatusOr<ConfidenceKind> kind = ParseConfidenceKind(parts[2]);
      if (!kind.ok()) return SpecError(text, kind.status().message());
      early_exit.kind = *kind;
    }
    if (early_exit.window < 1) {
      return SpecError(text, "early-exit window must be >= 1");
    }
    if (absl::Status status = ValidateEarlyExitConfig(early_exit);
        !status.ok()) {
      return SpecError(text, status.message());
    }
    spec.early_exit = early_exit;
  }
  if (base.empty()) return SpecError(text, "no profile before @ee=");
  spec.base = std::string(base);
  if (absl::StartsWith(base, "adaskip:")) {
    int64_t k = 0;
    if (!absl::SimpleAtoi(base.substr(8), &k) || k < 0) {
      return SpecError(text, "adaskip:K needs an integer K >= 0");
    }
    spec.adaskip = k;
  } else if (absl::StartsWith(base, "even:") ||
             absl::StartsWith(base, "last:")) {
    int64_t k = 0;
    if (!absl::SimpleAtoi(base.substr(5), &k) || k < 0) {
      return SpecError(
          text, absl::StrCat(base.substr(0, 4), ":K needs an integer K >= 0"));
    }
  }
  return spec;
}

absl::StatusOr<std::vector<ProfileSpec>> ParseProfileList(
    absl::string_view list) {
  std::vector<std::string> pieces;
  for (absl::string_view piece : absl::StrSplit(list, ',')) {
    double number = 0;
    const bool continues = !pieces.empty() &&
                           absl::StrContains(pieces.back(), kEarlyExitMarker) &&
                           (absl::SimpleAtod(piece, &number) ||
                            piece == "max_prob" || piece == "max_logit");
    if (continues) {
      absl::StrAppend(&pieces.back(), ",", piece);
    } else {
      pieces.emplace_back(piece);
    }
  }
  std::vector<ProfileSpec> specs;
  for (const std::string& piece : pieces) {
    LS_ASSIGN_OR_RETURN(ProfileSpec spec, ParseProfileSpec(piece));
    for (const ProfileSpec& earlier : specs) {
      if (earlier.text == spec.text) {
        return SpecError(spec.text, "listed twice");
      }
    }
    specs.push_back(std::move(spec));
  }
  if (specs.empty()) return absl::InvalidArgumentError("no profiles given");
  return specs;
}

absl::StatusOr<Profile> ResolveProfileSpec(
    const ProfileSpec& spec, const Engine& engine, const Pipeline& pipeline,
    const std::vector<SublayerRef>& ranking) {
  const int64_t layers = engine.config().num_hidden_layers;
  std::vector<std::string> stage_names;
  for (const PipelineStage& stage : pipeline.stages) {
    stage_names.push_back(stage.name);
  }
  Profile profile;
  if (spec.adaskip.has_value()) {
    if (*spec.adaskip > 2 * layers) {
      return SpecError(
          spec.text,
          absl::StrCat("adaskip:K needs K <= 2 * layers = ", 2 * layers));
    }
    if (static_cast<int64_t>(ranking.size()) != 2 * layers) {
      return absl::FailedPreconditionError(
          absl::StrCat("profile spec '", spec.text,
                       "': adaskip needs the importance ranking of all ",
                       2 * layers, " sub-layers, got ", ranking.size()));
    }
    profile.builtin = true;
    profile.ranking = ranking;
    profile.every_stage.emplace();
    profile.every_stage->skip =
        SkipSetFromRanking(ranking, *spec.adaskip, layers);
    profile.provenance.method = "adaskip";
  } else {
    absl::StatusOr<Profile> resolved = ResolveProfile(
        spec.base, engine.fingerprint(), layers, pipeline.name, stage_names);
    if (!resolved.ok()) {
      return absl::Status(resolved.status().code(),
                          absl::StrCat("profile spec '", spec.text,
                                       "': ", resolved.status().message()));
    }
    profile = *std::move(resolved);
  }
  profile.name = spec.text;
  if (spec.early_exit.has_value()) {
    if (profile.every_stage.has_value()) {
      profile.every_stage->early_exit = *spec.early_exit;
    }
    for (auto& [name, stage] : profile.stages) {
      stage.early_exit = *spec.early_exit;
    }
  }
  return profile;
}

absl::StatusOr<ReferenceTokens> ReferenceTokensFromRun(
    const ReasoningResult& full) {
  ReferenceTokens tokens;
  for (const StageRecord& stage : full.stages) {
    std::vector<ReferenceTokens::Branch>& branches =
        tokens.stages.emplace_back();
    for (const BranchRecord& branch : stage.branches) {
      if (!branch.generated_token_ids.empty() &&
          branch.prompt_token_ids.empty()) {
        return absl::FailedPreconditionError(
            absl::StrCat("fidelity: stage '", stage.name,
                         "' of full's run kept no prompt token ids (run it "
                         "with RunReasoning)"));
      }
      branches.push_back({branch.prompt_token_ids, branch.generated_token_ids});
    }
  }
  return tokens;
}

absl::StatusOr<std::vector<FidelityCount>> TeacherForcedFidelity(
    Engine& engine, const Pipeline& pipeline, const Profile& profile,
    const ReferenceTokens& full) {
  const ReferenceTokens* one = &full;
  LS_ASSIGN_OR_RETURN(
      std::vector<std::vector<FidelityCount>> counts,
      BatchTeacherForcedFidelity(engine, pipeline, profile, {&one, 1}));
  return std::move(counts[0]);
}

absl::StatusOr<std::vector<FidelityCount>> TeacherForcedFidelity(
    Engine& engine, const Pipeline& pipeline, const Profile& profile,
    const ReasoningResult& full) {
  LS_ASSIGN_OR_RETURN(ReferenceTokens tokens, ReferenceTokensFromRun(full));
  return TeacherForcedFidelity(engine, pipeline, profile, tokens);
}

absl::StatusOr<std::vector<std::vector<FidelityCount>>>
BatchTeacherForcedFidelity(Engine& engine, const Pipeline& pipeline,
                           const Profile& profile,
                           absl::Span<const ReferenceTokens* const> full) {
  const int64_t vocab = engine.config().vocab_size;
  std::vector<std::vector<FidelityCount>> counts(full.size());
  std::vector<Engine::ScoringRequest> requests;
  // Per request: which question and stage it counts for, and full's tokens.
  struct Scored {
    size_t question;
    size_t stage;
    const std::vector<int32_t>* generated;
  };
  std::vector<Scored> scored;
  // Stage-major, so a stage's prompts (one skip set) are adjacent and a
  // sequence is released soon after the last one forking from it.
  for (size_t s = 0; s < pipeline.stages.size(); ++s) {
    const SkipSet& skip = profile.ForStage(pipeline.stages[s].name).skip;
    for (size_t q = 0; q < full.size(); ++q) {
      if (full[q]->stages.size() != pipeline.stages.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("fidelity: full's run of question ", q, " has ",
                         full[q]->stages.size(), " stages, the pipeline ",
                         pipeline.stages.size()));
      }
      counts[q].resize(pipeline.stages.size());
      for (const ReferenceTokens::Branch& branch : full[q]->stages[s]) {
        if (branch.generated.empty()) continue;
        if (branch.prompt.empty()) {
          return absl::InvalidArgumentError(
              absl::StrCat("fidelity: stage '", pipeline.stages[s].name,
                           "' of question ", q, " has no prompt ids"));
        }
        Engine::ScoringRequest request;
        request.tokens = branch.prompt;
        request.tokens.insert(request.tokens.end(), branch.generated.begin(),
                              branch.generated.end());
        request.first_scored = static_cast<int64_t>(branch.prompt.size());
        request.skip = skip;
        requests.push_back(std::move(request));
        scored.push_back(Scored{q, s, &branch.generated});
      }
    }
  }
  LS_RETURN_IF_ERROR(engine.ScoreContinuations(
      requests, [&](size_t i, int64_t first_row, absl::Span<const float> rows) {
        const Scored& target = scored[i];
        const std::vector<int32_t>& generated = *target.generated;
        const size_t n = rows.size() / static_cast<size_t>(vocab);
        LS_CHECK_LE(static_cast<size_t>(first_row) + n, generated.size());
        FidelityCount& count = counts[target.question][target.stage];
        for (size_t t = 0; t < n; ++t) {
          count.hits += Argmax(rows.data() + t * vocab, vocab) ==
                        generated[first_row + t];
          ++count.total;
        }
      }));
  return counts;
}

int64_t AloneFillTokens(const StageRecord& record, bool fan_out,
                        int64_t block_size) {
  std::vector<absl::Span<const int32_t>> prompts;
  std::vector<int64_t> limits;
  int64_t total = 0;
  for (const BranchRecord& branch : record.branches) {
    prompts.push_back(branch.prompt_token_ids);
    limits.push_back(static_cast<int64_t>(branch.prompt_token_ids.size()) - 1);
    total += static_cast<int64_t>(branch.prompt_token_ids.size());
  }
  // RunReasoning shares prefixes only between a fan-out stage's branches
  // (one skip set per stage, so every pair may share).
  if (!fan_out) return total;
  for (const PrefixShare& share : PlanPrefixSharing(
           prompts, limits, block_size, [](size_t, size_t) { return true; })) {
    total -= share.tokens;
  }
  return total;
}

absl::Status AddFidelity(Engine& engine, const Pipeline& pipeline,
                         const Profile& profile, const ReferenceTokens& full,
                         QuestionEval* row) {
  const auto start = std::chrono::steady_clock::now();
  LS_ASSIGN_OR_RETURN(std::vector<FidelityCount> fidelity,
                      TeacherForcedFidelity(engine, pipeline, profile, full));
  if (fidelity.size() != row->stages.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("fidelity: row has ", row->stages.size(), " stages, ",
                     fidelity.size(), " measured"));
  }
  for (size_t s = 0; s < fidelity.size(); ++s) {
    row->stages[s].fidelity = fidelity[s];
  }
  row->fidelity_measured = true;
  row->fidelity_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  return absl::OkStatus();
}

QuestionEval MakeQuestionEval(const std::string& profile,
                              const QuestionItem& item,
                              const ReasoningResult& result,
                              const std::vector<FidelityCount>& fidelity) {
  QuestionEval row;
  row.profile = profile;
  row.question_id = item.id;
  row.answer_index = result.answer_index;
  row.label = item.answer;
  row.seconds = result.seconds;
  row.fidelity_measured = !fidelity.empty();
  for (size_t s = 0; s < result.stages.size(); ++s) {
    const StageRecord& record = result.stages[s];
    StageEval stage;
    stage.name = record.name;
    stage.prompt_tokens = record.prompt_tokens;
    stage.generated_tokens = record.generated_tokens;
    stage.prefill_tokens = record.prompt_tokens - record.cached_prompt_tokens;
    for (const BranchRecord& branch : record.branches) {
      stage.decode_tokens += std::max<int64_t>(0, branch.generated_tokens - 1);
    }
    stage.seconds = record.seconds;
    stage.prefill_seconds = record.prefill_seconds;
    stage.decode_seconds = record.decode_seconds;
    stage.early_exit_fired = record.early_exit_fired;
    stage.branches = static_cast<int64_t>(record.branches.size());
    if (s < fidelity.size()) stage.fidelity = fidelity[s];
    row.stages.push_back(std::move(stage));
  }
  return row;
}

ReasoningRequest RequestForItem(const QuestionItem& item,
                                const ReasoningRequest& base) {
  ReasoningRequest request = base;
  request.question = item.question;
  request.choices = item.choices;
  return request;
}

absl::StatusOr<QuestionEval> EvaluateQuestion(
    Engine& engine, const Pipeline& pipeline, const Profile& profile,
    const std::string& profile_name, const QuestionItem& item,
    const ReasoningRequest& base, const ReasoningResult* full_run,
    ReasoningResult* run) {
  absl::StatusOr<ReasoningResult> result =
      RunReasoning(engine, pipeline, profile, RequestForItem(item, base));
  if (!result.ok()) {
    return absl::Status(
        result.status().code(),
        absl::StrCat("question ", item.id, ", profile ", profile_name, ": ",
                     result.status().message()));
  }
  QuestionEval row = MakeQuestionEval(profile_name, item, *result, {});
  if (full_run != nullptr) {
    // The same run when evaluating full itself: its fidelity is then
    // against its own tokens (1.0 unless prefill and decode disagree on a
    // near-tie).
    LS_ASSIGN_OR_RETURN(
        ReferenceTokens reference,
        ReferenceTokensFromRun(full_run == run ? *result : *full_run));
    LS_RETURN_IF_ERROR(AddFidelity(engine, pipeline, profile, reference, &row));
  }
  if (run != nullptr) *run = *std::move(result);
  return row;
}

absl::StatusOr<std::vector<QuestionEval>> EvaluateQuestionsBatched(
    Engine& engine, const Pipeline& pipeline, const Profile& profile,
    const std::string& profile_name,
    absl::Span<const QuestionItem* const> items, const ReasoningRequest& base,
    int64_t batch, std::vector<ReasoningResult>* runs) {
  if (batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch must be >= 1, got ", batch));
  }
  const int64_t block_size = engine.kv_blocks().block_size();
  std::vector<QuestionEval> rows;
  if (runs != nullptr) runs->clear();
  for (size_t begin = 0; begin < items.size();
       begin += static_cast<size_t>(batch)) {
    const size_t end =
        std::min(items.size(), begin + static_cast<size_t>(batch));
    std::vector<ReasoningRequest> requests;
    for (size_t q = begin; q < end; ++q) {
      requests.push_back(RequestForItem(*items[q], base));
    }
    absl::StatusOr<std::vector<ReasoningResult>> results =
        RunReasoningBatch(engine, pipeline, profile, requests);
    if (!results.ok()) {
      return absl::Status(
          results.status().code(),
          absl::StrCat("profile ", profile_name, ", questions ",
                       items[begin]->id, "..", items[end - 1]->id, ": ",
                       results.status().message()));
    }
    for (size_t q = begin; q < end; ++q) {
      ReasoningResult& result = (*results)[q - begin];
      QuestionEval row = MakeQuestionEval(profile_name, *items[q], result, {});
      row.latency_measured = false;
      for (size_t s = 0; s < row.stages.size(); ++s) {
        row.stages[s].prefill_tokens = AloneFillTokens(
            result.stages[s], pipeline.stages[s].fan_out, block_size);
      }
      rows.push_back(std::move(row));
      if (runs != nullptr) runs->push_back(std::move(result));
    }
  }
  return rows;
}

bool AnswersAgree(const QuestionEval& a, const QuestionEval& b) {
  return a.answer_index == b.answer_index;
}

absl::StatusOr<ProfileSummary> SummarizeProfile(
    const std::vector<QuestionEval>& rows,
    const std::vector<QuestionEval>& full_rows) {
  ProfileSummary summary;
  if (rows.empty()) return absl::InvalidArgumentError("summary: no rows");
  summary.profile = rows[0].profile;
  std::map<std::string, const QuestionEval*> full_by_id;
  for (const QuestionEval& row : full_rows) full_by_id[row.question_id] = &row;
  std::vector<double> seconds;
  std::vector<double> full_seconds;
  const size_t num_stages = rows[0].stages.size();
  std::vector<std::vector<double>> stage_seconds(num_stages);
  std::vector<std::vector<double>> stage_fidelity(num_stages);
  std::vector<const QuestionEval*> measured;
  summary.stages.resize(num_stages);
  for (const QuestionEval& row : rows) {
    if (row.profile != summary.profile) {
      return absl::InvalidArgumentError(absl::StrCat(
          "summary: rows of profiles ", summary.profile, " and ", row.profile));
    }
    if (row.stages.size() != num_stages) {
      return absl::InvalidArgumentError(
          absl::StrCat("summary: question ", row.question_id, " has ",
                       row.stages.size(), " stages, expected ", num_stages));
    }
    auto full = full_by_id.find(row.question_id);
    if (full == full_by_id.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "summary: question ", row.question_id, " has no full row"));
    }
    ++summary.n;
    if (row.label.has_value()) ++summary.labelled;
    if (row.correct()) ++summary.correct;
    if (row.answered()) ++summary.answered;
    if (AnswersAgree(row, *full->second)) ++summary.agree;
    seconds.push_back(row.seconds);
    if (row.latency_measured) {
      ++summary.latency_measured;
      measured.push_back(&row);
    }
    summary.mean_fidelity_seconds += row.fidelity_seconds;
    full_seconds.push_back(full->second->seconds);
    for (size_t s = 0; s < num_stages; ++s) {
      const StageEval& stage = row.stages[s];
      StageSummary& out = summary.stages[s];
      out.name = stage.name;
      if (row.fidelity_measured) {
        out.fidelity_hits += stage.fidelity.hits;
        out.fidelity_total += stage.fidelity.total;
        stage_fidelity[s].push_back(stage.fidelity.fidelity());
      }
      stage_seconds[s].push_back(stage.seconds);
      out.mean_prefill_seconds += stage.prefill_seconds;
      out.mean_decode_seconds += stage.decode_seconds;
      out.mean_prompt_tokens += static_cast<double>(stage.prompt_tokens);
      out.mean_generated_tokens += static_cast<double>(stage.generated_tokens);
      out.early_exit_rate += stage.early_exit_fired ? 1 : 0;
    }
  }
  const double n = static_cast<double>(summary.n);
  summary.accuracy =
      summary.labelled > 0
          ? static_cast<double>(summary.correct) / summary.labelled
          : 0;
  summary.accuracy_ci = WilsonInterval(summary.correct, summary.labelled);
  summary.answered_rate = summary.answered / n;
  summary.agreement = summary.agree / n;
  summary.agreement_ci = WilsonInterval(summary.agree, summary.n);
  summary.mean_seconds = Mean(seconds);
  summary.mean_fidelity_seconds /= n;
  summary.p90_seconds = Quantile(seconds, 0.9);
  if (summary.latency_measured < summary.n) {
    LS_ASSIGN_OR_RETURN(summary.latency_check,
                        CrossValidateLatencyModel(measured));
  }
  summary.speedup =
      summary.mean_seconds > 0 ? Mean(full_seconds) / summary.mean_seconds : 0;
  for (size_t s = 0; s < num_stages; ++s) {
    StageSummary& out = summary.stages[s];
    if (!stage_fidelity[s].empty()) out.fidelity = Mean(stage_fidelity[s]);
    out.mean_seconds = Mean(stage_seconds[s]);
    out.p90_seconds = Quantile(stage_seconds[s], 0.9);
    out.mean_prefill_seconds /= n;
    out.mean_decode_seconds /= n;
    out.mean_prompt_tokens /= n;
    out.mean_generated_tokens /= n;
    out.early_exit_rate /= n;
  }
  return summary;
}

absl::StatusOr<Evaluation> EvaluateProfiles(
    Engine& engine, const Pipeline& pipeline,
    const std::vector<Profile>& profiles, const std::vector<std::string>& names,
    const std::vector<QuestionItem>& questions,
    const EvaluationOptions& options, const EvaluationProgress& progress) {
  if (profiles.empty() || !IsFull(profiles[0], pipeline)) {
    return absl::InvalidArgumentError(
        "evaluation: the first profile must be full (no skip, no early "
        "exit): agreement, fidelity and speedup are relative to it");
  }
  if (names.size() != profiles.size()) {
    return absl::InvalidArgumentError("evaluation: one name per profile");
  }
  if (questions.empty()) {
    return absl::InvalidArgumentError("evaluation: no questions");
  }
  if (options.batch < 0 ||
      (options.batch > 0 && options.latency_questions < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("evaluation: batch must be >= 0 (got ", options.batch,
                     ") and, batched, latency_questions >= 1 (got ",
                     options.latency_questions, ")"));
  }
  Evaluation evaluation;
  evaluation.profiles = names;
  evaluation.rows.resize(profiles.size());
  for (const QuestionItem& item : questions) {
    evaluation.question_ids.push_back(item.id);
  }
  const size_t alone =
      options.batch == 0
          ? questions.size()
          : std::min<size_t>(questions.size(), options.latency_questions);
  const int64_t total =
      static_cast<int64_t>(profiles.size() * questions.size());
  int64_t done = 0;
  // Batched, the teacher-forced passes of every question (those run alone
  // too) go through BatchTeacherForcedFidelity afterwards; alone, each
  // runs right after its question.
  const bool batched = options.batch > 0;
  std::vector<ReferenceTokens> references;  // [questions], batched only
  for (size_t q = 0; q < alone; ++q) {
    const QuestionItem& item = questions[q];
    ReasoningResult full_run;
    for (size_t p = 0; p < profiles.size(); ++p) {
      ReasoningResult* keep = p == 0 ? &full_run : nullptr;
      const ReasoningResult* reference =
          options.fidelity && !batched ? &full_run : nullptr;
      LS_ASSIGN_OR_RETURN(
          QuestionEval row,
          EvaluateQuestion(engine, pipeline, profiles[p], names[p], item,
                           options.base, reference, keep));
      evaluation.rows[p].push_back(std::move(row));
      if (progress) progress(++done, total);
    }
    if (batched) {
      LS_ASSIGN_OR_RETURN(ReferenceTokens tokens,
                          ReferenceTokensFromRun(full_run));
      references.push_back(std::move(tokens));
    }
  }
  if (batched) {
    // The rest: full first (its tokens are everyone's reference), then each
    // profile.
    std::vector<const QuestionItem*> rest;
    for (size_t q = alone; q < questions.size(); ++q) {
      rest.push_back(&questions[q]);
    }
    for (size_t p = 0; p < profiles.size(); ++p) {
      // One call per batch, so progress moves as batches finish.
      for (size_t begin = 0; begin < rest.size();
           begin += static_cast<size_t>(options.batch)) {
        const size_t count =
            std::min(rest.size() - begin, static_cast<size_t>(options.batch));
        std::vector<ReasoningResult> runs;
        LS_ASSIGN_OR_RETURN(
            std::vector<QuestionEval> rows,
            EvaluateQuestionsBatched(
                engine, pipeline, profiles[p], names[p],
                absl::MakeConstSpan(rest).subspan(begin, count), options.base,
                options.batch, p == 0 ? &runs : nullptr));
        for (size_t i = 0; i < rows.size(); ++i) {
          if (p == 0) {
            LS_ASSIGN_OR_RETURN(ReferenceTokens reference,
                                ReferenceTokensFromRun(runs[i]));
            references.push_back(std::move(reference));
          }
          evaluation.rows[p].push_back(std::move(rows[i]));
          if (progress) progress(++done, total);
        }
      }
      // Teacher forcing depends on the skip sets only: a profile skipping
      // what an earlier one skips (full with early exit, a searched profile
      // that kept no skips) takes that profile's counts.
      std::optional<size_t> same_skips;
      for (size_t e = 0; e < p && !same_skips.has_value(); ++e) {
        bool same = true;
        for (const PipelineStage& stage : pipeline.stages) {
          same = same &&
                 profiles[p]
                     .ForStage(stage.name)
                     .skip.SkipsSameAs(profiles[e].ForStage(stage.name).skip,
                                       engine.config().num_hidden_layers);
        }
        if (same) same_skips = e;
      }
      if (options.fidelity && same_skips.has_value()) {
        for (size_t q = 0; q < questions.size(); ++q) {
          QuestionEval& row = evaluation.rows[p][q];
          const QuestionEval& source = evaluation.rows[*same_skips][q];
          for (size_t s = 0; s < row.stages.size(); ++s) {
            row.stages[s].fidelity = source.stages[s].fidelity;
          }
          row.fidelity_measured = true;
          row.fidelity_seconds = 0;
        }
      } else if (options.fidelity) {
        for (size_t begin = 0; begin < questions.size();
             begin += options.batch) {
          const size_t end =
              std::min<size_t>(questions.size(), begin + options.batch);
          std::vector<const ReferenceTokens*> chunk;
          for (size_t q = begin; q < end; ++q) chunk.push_back(&references[q]);
          const auto start = std::chrono::steady_clock::now();
          LS_ASSIGN_OR_RETURN(
              std::vector<std::vector<FidelityCount>> fidelity,
              BatchTeacherForcedFidelity(engine, pipeline, profiles[p], chunk));
          const double seconds = std::chrono::duration<double>(
                                     std::chrono::steady_clock::now() - start)
                                     .count();
          for (size_t q = begin; q < end; ++q) {
            QuestionEval& row = evaluation.rows[p][q];
            for (size_t s = 0; s < row.stages.size(); ++s) {
              row.stages[s].fidelity = fidelity[q - begin][s];
            }
            row.fidelity_measured = true;
            row.fidelity_seconds = seconds / static_cast<double>(end - begin);
          }
        }
      }
      // Latency of the batched rows from this profile's measured ones.
      std::vector<const QuestionEval*> measured;
      for (size_t q = 0; q < alone; ++q) {
        measured.push_back(&evaluation.rows[p][q]);
      }
      LS_ASSIGN_OR_RETURN(LatencyModel model, FitLatencyModel(measured));
      for (size_t q = alone; q < questions.size(); ++q) {
        LS_RETURN_IF_ERROR(ApplyLatencyModel(model, &evaluation.rows[p][q]));
      }
    }
  }
  for (size_t p = 0; p < profiles.size(); ++p) {
    LS_ASSIGN_OR_RETURN(
        ProfileSummary summary,
        SummarizeProfile(evaluation.rows[p], evaluation.rows[0]));
    evaluation.summaries.push_back(std::move(summary));
  }
  return evaluation;
}

}  // namespace litestage
