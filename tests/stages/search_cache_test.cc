// The search's disk cache (engine/stages/search_cache.h): keys, resume
// after an interruption, reuse by a second search, corrupt entries.
#include "engine/stages/search_cache.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/scoped_temp_dir.h"

namespace litestage {
namespace {

namespace fs = std::filesystem;
using ::litestage::testing::ScopedTempDir;
using nlohmann::json;

SearchSpace TwoStageSpace() {
  SearchSpace space;
  space.model.architecture = "LlamaForCausalLM";
  space.model.num_hidden_layers = 5;
  space.model.hidden_size = 64;
  space.model.config_hash = 0x3584d76594c89677ull;
  space.model.tensor_hash = 0x442c9650b3a706faull;
  space.pipeline = "tinythinker";
  space.stage_names = {"recall", "summary"};
  space.num_layers = 5;
  for (int64_t j = 4; j >= 0; --j) {
    space.ranking.push_back({SublayerKind::kMlp, j});
    space.ranking.push_back({SublayerKind::kAttention, j});
  }
  return space;
}

// A deterministic per-question "engine": recall tolerates k <= 2 on every
// question, summary k <= 1 on even questions only; each k saves 0.01 s.
// Fails with Unavailable once `fail_after` calls have succeeded.
class FakeEngine : public QuestionMeasurer {
 public:
  absl::StatusOr<json> MeasureQuestion(const Configuration& c,
                                       const std::string& id) override {
    if (fail_after >= 0 && static_cast<int>(measured.size()) >= fail_after) {
      return absl::UnavailableError("interrupted");
    }
    measured.push_back(absl::StrCat(ConfigurationName(c), "#", id));
    const int question = std::stoi(id.substr(1));
    const int64_t recall = c.stages[0].skip;
    const int64_t summary = c.stages[1].skip;
    const bool ok =
        recall <= 2 && (summary == 0 || (summary <= 1 && question % 2 == 0));
    const double recall_latency = 0.3 - 0.01 * recall + 0.001 * question;
    const double summary_latency = 0.2 - 0.01 * summary;
    return json{{"metric", ok ? 1.0 : 0.0},
                {"latency_seconds", recall_latency + summary_latency},
                {"stage_latency_seconds", {recall_latency, summary_latency}},
                {"answer", ok ? "A" : "B"}};
  }

  int fail_after = -1;
  std::vector<std::string> measured;
};

const std::vector<std::string> kQuestions = {"q0", "q1", "q2", "q3"};

SearchOptions Options() {
  SearchOptions options;
  options.stage_names = {"recall", "summary"};
  options.max_skip = 3;
  options.epsilon = 0.3;
  options.early_exit_grid = {
      {}, {EarlyExitConfig{4, 0.25f, ConfidenceKind::kMaxProb, 0}}};
  return options;
}

absl::StatusOr<SearchResult> Search(QuestionMeasurer* engine) {
  QuestionSetMeasurer measurer(engine, kQuestions, 2);
  return RunBudgetSearch(Options(), measurer);
}

absl::StatusOr<SearchResult> CachedSearch(const std::string& dir,
                                          QuestionMeasurer* engine,
                                          SearchCache** cache_out = nullptr) {
  static std::vector<std::unique_ptr<SearchCache>> caches;  // Kept alive.
  absl::StatusOr<SearchCache> cache = SearchCache::Open(dir, TwoStageSpace());
  if (!cache.ok()) return cache.status();
  caches.push_back(std::make_unique<SearchCache>(*std::move(cache)));
  if (cache_out != nullptr) *cache_out = caches.back().get();
  CachingQuestionMeasurer caching(caches.back().get(), engine);
  return Search(&caching);
}

std::vector<std::string> EntryFiles(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

void ExpectSameResult(const SearchResult& a, const SearchResult& b) {
  EXPECT_EQ(a.chosen, b.chosen);
  EXPECT_EQ(a.order, b.order);
  ASSERT_EQ(a.table.size(), b.table.size());
  for (size_t i = 0; i < a.table.size(); ++i) {
    EXPECT_EQ(a.table[i].configuration, b.table[i].configuration);
    EXPECT_EQ(a.table[i].measurement.metric, b.table[i].measurement.metric);
    EXPECT_EQ(a.table[i].measurement.latency_seconds,
              b.table[i].measurement.latency_seconds);
    EXPECT_EQ(a.table[i].chosen, b.table[i].chosen);
  }
}

TEST(SearchCacheTest, ResumeAfterInterruptionMatchesAnUninterruptedRun) {
  FakeEngine reference_engine;
  absl::StatusOr<SearchResult> reference = Search(&reference_engine);
  ASSERT_TRUE(reference.ok()) << reference.status();
  // Sanity of the fake: recall 2, summary 0 (k = 1 fails on odd questions).
  EXPECT_EQ(reference->chosen.stages[0].skip, 2);
  EXPECT_EQ(reference->chosen.stages[1].skip, 0);
  const size_t total = reference_engine.measured.size();

  ScopedTempDir dir("search_cache");
  FakeEngine first;
  first.fail_after = 7;  // Mid-way through the second configuration.
  absl::StatusOr<SearchResult> interrupted = CachedSearch(dir.path(), &first);
  EXPECT_EQ(interrupted.status().code(), absl::StatusCode::kUnavailable);
  ASSERT_EQ(first.measured.size(), 7u);
  EXPECT_EQ(EntryFiles(dir.path()).size(), 7u);  // Every result was kept.

  FakeEngine second;
  SearchCache* cache = nullptr;
  absl::StatusOr<SearchResult> resumed =
      CachedSearch(dir.path(), &second, &cache);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  ExpectSameResult(*reference, *resumed);
  // Nothing measured twice, nothing missing.
  const std::set<std::string> before(first.measured.begin(),
                                     first.measured.end());
  for (const std::string& key : second.measured) {
    EXPECT_FALSE(before.contains(key)) << "re-measured " << key;
  }
  EXPECT_EQ(first.measured.size() + second.measured.size(), total);
  EXPECT_EQ(cache->hits(), 7);
  EXPECT_EQ(cache->corrupt(), 0);

  // A second search over the same questions measures nothing.
  FakeEngine third;
  absl::StatusOr<SearchResult> again = CachedSearch(dir.path(), &third);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(third.measured.empty());
  ExpectSameResult(*reference, *again);
  // No temporary files left behind.
  for (const std::string& file : EntryFiles(dir.path())) {
    EXPECT_EQ(file.find(".tmp."), std::string::npos) << file;
  }
}

TEST(SearchCacheTest, CorruptTruncatedAndForeignEntriesAreRecomputed) {
  ScopedTempDir dir("search_cache");
  FakeEngine first;
  ASSERT_TRUE(CachedSearch(dir.path(), &first).ok());
  const std::vector<std::string> files = EntryFiles(dir.path());
  ASSERT_GE(files.size(), 3u);
  std::ofstream(files[0], std::ios::trunc) << "not json at all";
  {
    const std::string whole = [&] {
      std::ifstream in(files[1]);
      return std::string(std::istreambuf_iterator<char>(in), {});
    }();
    std::ofstream(files[1], std::ios::trunc)
        << whole.substr(0, whole.size() / 2);
  }
  // Valid JSON holding another key (as a hash collision would).
  std::ofstream(files[2], std::ios::trunc) << json{
      {"schema", kSearchCacheSchema},
      {"key", {{"question", "other"}}},
      {"result", {{"metric", 0.0}}}}.dump();

  FakeEngine second;
  SearchCache* cache = nullptr;
  absl::StatusOr<SearchResult> result =
      CachedSearch(dir.path(), &second, &cache);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(second.measured.size(), 3u);
  EXPECT_EQ(cache->corrupt(), 3);

  // Rewritten: a third run measures nothing.
  FakeEngine third;
  ASSERT_TRUE(CachedSearch(dir.path(), &third).ok());
  EXPECT_TRUE(third.measured.empty());
}

TEST(SearchCacheTest, KeyHoldsSkipSetsEarlyExitAndQuestion) {
  ScopedTempDir dir("search_cache");
  absl::StatusOr<SearchCache> cache =
      SearchCache::Open(dir.Child("a/b"), TwoStageSpace());
  ASSERT_TRUE(cache.ok()) << cache.status();
  Configuration config{{StageSetting{2, {}}, StageSetting{0, {}}}};
  absl::StatusOr<json> key = cache->Key(config, "q1");
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ((*key)["model"], TwoStageSpace().model.ToString());
  EXPECT_EQ((*key)["pipeline"], "tinythinker");
  EXPECT_EQ((*key)["question"], "q1");
  // The first two of the ranking (mlp.4, attention.4), canonical order.
  EXPECT_EQ((*key)["stages"][0]["skip"], json({"attention.4", "mlp.4"}));
  EXPECT_EQ((*key)["stages"][1]["skip"], json::array());
  EXPECT_TRUE((*key)["stages"][0]["early_exit"].is_null());

  // A disabled early exit keys like none, whatever its threshold.
  Configuration disabled = config;
  disabled.stages[0].early_exit.threshold = 0.5f;
  EXPECT_EQ(*cache->Key(disabled, "q1"), *key);
  Configuration exiting = config;
  exiting.stages[1].early_exit = {4, 0.25f, ConfidenceKind::kMaxProb, 0};
  EXPECT_NE(cache->EntryPath(*cache->Key(exiting, "q1")),
            cache->EntryPath(*key));
  EXPECT_NE(cache->EntryPath(*cache->Key(config, "q2")),
            cache->EntryPath(*key));

  // Another ranking, same k: other sub-layers, so another entry.
  SearchSpace reranked = TwoStageSpace();
  std::swap(reranked.ranking[1], reranked.ranking[2]);
  absl::StatusOr<SearchCache> other =
      SearchCache::Open(dir.Child("a/b"), reranked);
  ASSERT_TRUE(other.ok());
  EXPECT_NE(*other->Key(config, "q1"), *key);

  // A k past the ranking is an error, not a key.
  Configuration too_far{{StageSetting{11, {}}, StageSetting{0, {}}}};
  EXPECT_EQ(cache->Key(too_far, "q1").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SearchCacheTest, DecoderErrorsNameTheQuestion) {
  class BadEngine : public QuestionMeasurer {
   public:
    absl::StatusOr<json> MeasureQuestion(const Configuration&,
                                         const std::string&) override {
      return json{{"metric", 1.0}, {"latency_seconds", "fast"}};
    }
  } engine;
  QuestionSetMeasurer measurer(&engine, {"q7"}, 1);
  absl::StatusOr<Measurement> m = measurer.Measure(Configuration{{{}}});
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()),
              ::testing::HasSubstr("question q7"));
}

// A result that cannot be stored fails the search rather than being
// measured again on every resume.
TEST(SearchCacheTest, StoreFailuresStopTheSearch) {
  ScopedTempDir dir("search_cache");
  const std::string cache_dir = dir.Child("cache");
  absl::StatusOr<SearchCache> cache =
      SearchCache::Open(cache_dir, TwoStageSpace());
  ASSERT_TRUE(cache.ok()) << cache.status();
  fs::remove_all(cache_dir);
  FakeEngine engine;
  CachingQuestionMeasurer caching(&*cache, &engine);
  absl::StatusOr<SearchResult> result = Search(&caching);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInternal)
      << result.status();
  EXPECT_EQ(engine.measured.size(), 1u);

  // Over the entry limit: InvalidArgument, nothing written.
  ASSERT_TRUE(fs::create_directories(cache_dir));
  const json key = *cache->Key(Configuration{{{}, {}}}, "q0");
  EXPECT_EQ(
      cache->Store(key, std::string(kMaxSearchCacheEntryBytes, 'x')).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(EntryFiles(cache_dir).empty());
}

TEST(SearchCacheTest, QuestionSetMeasurerReportsEveryQuestion) {
  class Recorder : public SearchProgress {
   public:
    void Start(int64_t) override {}
    void Step(const std::string&) override {}
    void Question(int64_t done, int64_t total) override {
      seen.push_back(absl::StrCat(done, "/", total));
    }
    void StageDone(const std::string&) override {}
    void Finish() override {}
    std::vector<std::string> seen;
  } recorder;
  FakeEngine engine;
  QuestionSetMeasurer measurer(&engine, kQuestions, 2);
  measurer.set_progress(&recorder);
  absl::StatusOr<Measurement> m =
      measurer.Measure(Configuration{{StageSetting{1, {}}, StageSetting{}}});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_THAT(recorder.seen,
              ::testing::ElementsAre("1/4", "2/4", "3/4", "4/4"));
  EXPECT_THAT(m->metric, ::testing::ElementsAre(1, 1, 1, 1));
  EXPECT_EQ(m->stage_latency_seconds[0].size(), 4u);
}

// A measurer that records how questions are handed to it in groups.
class GroupRecorder : public FakeEngine {
 public:
  absl::StatusOr<std::vector<json>> MeasureQuestions(
      const Configuration& c, absl::Span<const std::string> ids) override {
    groups.push_back(absl::StrJoin(ids, ","));
    return QuestionMeasurer::MeasureQuestions(c, ids);
  }
  std::vector<std::string> groups;
};

// Groups of questions go to the measurer together, progress follows each
// group, and the result hook sees every result before decoding.
TEST(SearchCacheTest, QuestionSetMeasurerHandsOutGroupsAndRunsTheHook) {
  GroupRecorder engine;
  QuestionSetMeasurer measurer(&engine, kQuestions, 2);
  measurer.set_group_size(3);
  int hook_calls = 0;
  measurer.set_result_hook([&](std::vector<json>& results) {
    ++hook_calls;
    EXPECT_EQ(results.size(), kQuestions.size());
    results[1]["latency_seconds"] = 9.0;  // what a latency model would do
    return absl::OkStatus();
  });
  absl::StatusOr<Measurement> m =
      measurer.Measure(Configuration{{StageSetting{1, {}}, StageSetting{}}});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_THAT(engine.groups, ::testing::ElementsAre("q0,q1,q2", "q3"));
  EXPECT_EQ(hook_calls, 1);
  EXPECT_EQ(m->latency_seconds[1], 9.0);
  measurer.set_result_hook(
      [](std::vector<json>&) { return absl::InternalError("no model"); });
  EXPECT_EQ(measurer.Measure(Configuration{{StageSetting{}, StageSetting{}}})
                .status()
                .code(),
            absl::StatusCode::kInternal);
}

// Cache misses go to the inner measurer as one group; entries the filter
// refuses are measured again and overwritten.
TEST(SearchCacheTest, CachingMeasurerBatchesMissesAndFiltersEntries) {
  ScopedTempDir dir("search_cache");
  absl::StatusOr<SearchCache> cache =
      SearchCache::Open(dir.path(), TwoStageSpace());
  ASSERT_TRUE(cache.ok()) << cache.status();
  GroupRecorder engine;
  CachingQuestionMeasurer caching(&*cache, &engine);
  const Configuration c{{StageSetting{1, {}}, StageSetting{}}};
  ASSERT_TRUE(caching.MeasureQuestions(c, {kQuestions[1]}).ok());
  auto all = caching.MeasureQuestions(c, kQuestions);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_THAT(engine.groups, ::testing::ElementsAre("q1", "q0,q2,q3"));
  ASSERT_EQ(all->size(), 4u);
  EXPECT_EQ((*all)[1]["answer"], "A");
  caching.set_accept(
      [](const std::string& id, const json&) { return id != "q2"; });
  ASSERT_TRUE(caching.MeasureQuestions(c, kQuestions).ok());
  EXPECT_EQ(engine.groups.back(), "q2");
  EXPECT_EQ(engine.groups.size(), 3u);
}

TEST(SearchCacheTest, WriteFileAtomicallyReplaces) {
  ScopedTempDir dir("search_cache");
  const std::string path = dir.Child("entry.json");
  ASSERT_TRUE(WriteFileAtomically(path, "one").ok());
  ASSERT_TRUE(WriteFileAtomically(path, "two").ok());
  std::ifstream in(path);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "two");
  EXPECT_EQ(EntryFiles(dir.path()).size(), 1u);
  EXPECT_FALSE(WriteFileAtomically(dir.Child("missing/entry.json"), "x").ok());
}

}  // namespace
}  // namespace litestage
