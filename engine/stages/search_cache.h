// The on-disk cache of per-question search measurements, and the measurers
// that connect it to the search (docs/search.md, "Cache"):
//   QuestionMeasurer            one configuration on one question -> the
//                               caller's result JSON (opaque here);
//   CachingQuestionMeasurer     a QuestionMeasurer that asks the cache
//                               first and stores what it measures;
//   QuestionSetMeasurer         a ConfigurationMeasurer over a question
//                               list, decoding each result into the
//                               metric and latencies.
// So an interrupted search resumes where it stopped, a second search (other
// epsilon, metric or K_max) reuses every entry, and RunBudgetSearch stays
// pure.
#ifndef LITESTAGE_ENGINE_STAGES_SEARCH_CACHE_H_
#define LITESTAGE_ENGINE_STAGES_SEARCH_CACHE_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/stages/search.h"
#include "nlohmann/json.hpp"

namespace litestage {

inline constexpr char kSearchCacheSchema[] = "litestage.search-cache/v2";
// Largest cache entry read or written: a per-question result is a few
// hundred bytes; anything near 1 MiB is not one.
inline constexpr uint64_t kMaxSearchCacheEntryBytes = uint64_t{1} << 20;

// Writes `contents` to `path` through a temporary file in the same
// directory and rename(2), so a reader sees the old file or the new one,
// never a part (an interrupted search leaves no truncated entry).
absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view contents);

// One configuration on one question. The result is the caller's own JSON
// (correctness, agreement, token fidelity, latencies, token counts...): the
// cache stores it as is, and QuestionSetMeasurer's decoder reads it.
class QuestionMeasurer {
 public:
  virtual ~QuestionMeasurer() = default;
  virtual absl::StatusOr<nlohmann::json> MeasureQuestion(
      const Configuration& configuration, const std::string& question_id) = 0;
  // Several questions at once, results in the order of `question_ids`
  // (a measurer that batches them overrides this; the default asks one by
  // one).
  virtual absl::StatusOr<std::vector<nlohmann::json>> MeasureQuestions(
      const Configuration& configuration,
      absl::Span<const std::string> question_ids);
};

// Directory of entries, one file per (model fingerprint, pipeline, per-stage
// skip set and early exit, question id). The key holds the resolved skip
// sets, not the counts k, so entries stay valid whatever ranking produced
// them and a new ranking never hits a stale entry.
class SearchCache {
 public:
  // Creates `directory` (and parents) when missing.
  static absl::StatusOr<SearchCache> Open(const std::string& directory,
                                          SearchSpace space);

  // The key of `configuration` on `question_id` (what an entry stores and
  // is compared against on reading):
  // {"model", "pipeline", "stages": [{"name", "skip": [...],
  //  "early_exit": {...} or null}], "question"}.
  absl::StatusOr<nlohmann::json> Key(const Configuration& configuration,
                                     const std::string& question_id) const;
  // <directory>/<16 hex digits of FNV-1a 64 of the key's compact dump>.json
  std::string EntryPath(const nlohmann::json& key) const;

  // The stored result, nullopt when there is none. An unreadable, corrupt,
  // truncated or foreign entry (another key under the same hash) is a miss
  // with a warning on stderr: the caller recomputes and Store overwrites it.
  std::optional<nlohmann::json> Lookup(const nlohmann::json& key);
  absl::Status Store(const nlohmann::json& key, const nlohmann::json& result);

  const std::string& directory() const { return directory_; }
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }
  int64_t corrupt() const { return corrupt_; }  // Counted among misses.

 private:
  SearchCache(std::string directory, SearchSpace space)
      : directory_(std::move(directory)), space_(std::move(space)) {}

  std::string directory_;
  SearchSpace space_;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
  int64_t corrupt_ = 0;
};

// Asks `cache` first; on a miss measures with `inner` and stores the result
// before returning it (so everything measured before an interruption is
// kept). Neither pointer is owned.
class CachingQuestionMeasurer : public QuestionMeasurer {
 public:
  CachingQuestionMeasurer(SearchCache* cache, QuestionMeasurer* inner)
      : cache_(cache), inner_(inner) {}
  absl::StatusOr<nlohmann::json> MeasureQuestion(
      const Configuration& configuration,
      const std::string& question_id) override;
  // The misses go to `inner` together; each is stored as soon as the batch
  // returns.
  absl::StatusOr<std::vector<nlohmann::json>> MeasureQuestions(
      const Configuration& configuration,
      absl::Span<const std::string> question_ids) override;
  // An entry `accept` refuses (e.g. one lacking what this run needs) is
  // measured again and overwritten. Default: every entry is accepted.
  using EntryFilter = std::function<bool(const std::string& question_id,
                                         const nlohmann::json& result)>;
  void set_accept(EntryFilter accept) { accept_ = std::move(accept); }

 private:
  SearchCache* cache_;
  QuestionMeasurer* inner_;
  EntryFilter accept_;
};

// What the search needs from one question's result.
struct QuestionValues {
  double metric = 0;  // In [0, 1].
  double latency_seconds = 0;
  std::vector<double> stage_latency_seconds;  // Pipeline order.
};
// Turns the caller's result JSON into QuestionValues; this is where the
// metric (accuracy or fidelity) is chosen, so cached results serve either.
using QuestionDecoder =
    std::function<absl::StatusOr<QuestionValues>(const nlohmann::json&)>;

// Reads {"metric": x, "latency_seconds": y, "stage_latency_seconds": [...]}
// (other keys ignored): for callers that store the metric directly.
absl::StatusOr<QuestionValues> DecodeStandardQuestionResult(
    const nlohmann::json& result);

// A ConfigurationMeasurer that measures every question of `question_ids`,
// in order, through `inner` (not owned) and decodes each result.
class QuestionSetMeasurer : public ConfigurationMeasurer {
 public:
  QuestionSetMeasurer(QuestionMeasurer* inner,
                      std::vector<std::string> question_ids, size_t num_stages,
                      QuestionDecoder decode = DecodeStandardQuestionResult)
      : inner_(inner),
        question_ids_(std::move(question_ids)),
        num_stages_(num_stages),
        decode_(std::move(decode)) {}

  absl::StatusOr<Measurement> Measure(
      const Configuration& configuration) override;

  // Told after every group of questions (not owned; may be null).
  void set_progress(SearchProgress* progress) { progress_ = progress; }
  // Questions handed to `inner` per MeasureQuestions call (default 1).
  void set_group_size(int64_t size) { group_size_ = size < 1 ? 1 : size; }
  // Runs on every question's result of a configuration (question order)
  // before decoding, for what needs the whole set: litestage-search
  // predicts batched questions' latency from the measured ones. Results
  // changed here are not written back to the cache.
  using ResultSetHook =
      std::function<absl::Status(std::vector<nlohmann::json>& results)>;
  void set_result_hook(ResultSetHook hook) { hook_ = std::move(hook); }

 private:
  QuestionMeasurer* inner_;
  SearchProgress* progress_ = nullptr;
  int64_t group_size_ = 1;
  ResultSetHook hook_;
  std::vector<std::string> question_ids_;
  size_t num_stages_;
  QuestionDecoder decode_;
};

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_STAGES_SEARCH_CACHE_H_
