// The search's on-disk measurement cache and the measurers around it.
#include "engine/stages/search_cache.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "engine/util/check.h"
#include "engine/util/fnv1a.h"
#include "engine/util/json_util.h"
#include "engine/util/mapped_file.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

using nlohmann::json;

absl::Status ErrnoError(absl::string_view what, const std::string& path) {
  return absl::InternalError(
      absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// The sub-layers `skip` skips, attention by layer then MLP by layer (the
// canonical order of profile files, so equal sets give equal keys).
json SkipKey(const SkipSet& skip) {
  json refs = json::array();
  for (size_t layer = 0; layer < skip.attention.size(); ++layer) {
    if (skip.attention[layer]) {
      refs.push_back(SublayerRefName(
          {SublayerKind::kAttention, static_cast<int64_t>(layer)}));
    }
  }
  for (size_t layer = 0; layer < skip.mlp.size(); ++layer) {
    if (skip.mlp[layer]) {
      refs.push_back(
          SublayerRefName({SublayerKind::kMlp, static_cast<int64_t>(layer)}));
    }
  }
  return refs;
}

// A disabled early exit is null whatever its other fields: they change
// nothing at run time, so they must not split the cache.
json EarlyExitKey(const EarlyExitConfig& config) {
  if (!config.enabled()) return nullptr;
  return json{{"window", config.window},
              // Exact: %.9g round-trips every float.
              {"threshold", absl::StrFormat("%.9g", config.threshold)},
              {"confidence", ConfidenceKindName(config.kind)},
              {"min_tokens", config.min_tokens}};
}

absl::StatusOr<double> FiniteNumber(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat("question result: \"", key, "\" must be a number"));
  }
  const double value = it->get<double>();
  if (!std::isfinite(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("question result: \"", key, "\" must be finite"));
  }
  return value;
}

}  // namespace

absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view contents) {
  // Unique per process and call, so concurrent writers never share a
  // temporary file; the same directory, so rename is atomic.
  static std::atomic<uint64_t> counter{0};
  const std::string temporary =
      absl::StrCat(path, ".tmp.", ::getpid(), ".", counter++);
  const int fd =
      ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create", temporary);
  size_t written = 0;
  while (written < contents.size()) {
    const ssize_t n =
        ::write(fd, contents.data() + written, contents.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      absl::Status error = ErrnoError("cannot write", temporary);
      ::close(fd);
      ::unlink(temporary.c_str());
      return error;
    }
    written += static_cast<size_t>(n);
  }
  // Durable before it becomes visible: a crash after the rename must not
  // leave an empty entry under the final name.
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    absl::Status error = ErrnoError("cannot flush", temporary);
    ::unlink(temporary.c_str());
    return error;
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    absl::Status error = ErrnoError("cannot rename to", path);
    ::unlink(temporary.c_str());
    return error;
  }
  return absl::OkStatus();
}

absl::StatusOr<SearchCache> SearchCache::Open(const std::string& directory,
                                              SearchSpace space) {
  if (directory.empty()) {
    return absl::InvalidArgumentError("search cache: empty directory name");
  }
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error || !std::filesystem::is_directory(directory, error)) {
    return absl::InvalidArgumentError(
        absl::StrCat("search cache: cannot create directory ", directory, ": ",
                     error ? error.message() : "not a directory"));
  }
  return SearchCache(directory, std::move(space));
}

absl::StatusOr<json> SearchCache::Key(const Configuration& configuration,
                                      const std::string& question_id) const {
  LS_ASSIGN_OR_RETURN(std::vector<StageProfile> stages,
                      ResolveConfiguration(space_, configuration));
  json stage_keys = json::array();
  for (size_t s = 0; s < stages.size(); ++s) {
    stage_keys.push_back(
        json{{"name", space_.stage_names[s]},
             {"skip", SkipKey(stages[s].skip)},
             {"early_exit", EarlyExitKey(stages[s].early_exit)}});
  }
  return json{{"model", space_.model.ToString()},
              {"pipeline", space_.pipeline},
              {"stages", std::move(stage_keys)},
              {"question", question_id}};
}

std::string SearchCache::EntryPath(const json& key) const {
  // Replace, not throw: a question id is the caller's and may be any bytes.
  const std::string text =
      key.dump(-1, ' ', false, json::error_handler_t::replace);
  return (std::filesystem::path(directory_) /
          absl::StrFormat("%016x.json", Fnv1a64(text)))
      .string();
}

std::optional<json> SearchCache::Lookup(const json& key) {
  const std::string path = EntryPath(key);
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    ++misses_;
    return std::nullopt;
  }
  const auto corrupt = [&](absl::string_view why) -> std::optional<json> {
    LS_LOG(WARNING) << "search cache: ignoring entry " << path << " (" << why
                    << "); measuring again";
    ++misses_;
    ++corrupt_;
    return std::nullopt;
  };
  absl::StatusOr<json> entry = ReadJsonFile(path, kMaxSearchCacheEntryBytes);
  if (!entry.ok()) {
    // The reader's message already starts with the path.
    absl::string_view why = entry.status().message();
    absl::ConsumePrefix(&why, absl::StrCat(path, ": "));
    return corrupt(why);
  }
  if (!entry->is_object()) return corrupt("not a JSON object");
  auto schema = entry->find("schema");
  if (schema == entry->end() || *schema != kSearchCacheSchema) {
    return corrupt(absl::StrCat("schema is not ", kSearchCacheSchema));
  }
  auto stored_key = entry->find("key");
  if (stored_key == entry->end() || *stored_key != key) {
    // Another key with the same hash (or a damaged key): never serve it.
    return corrupt("stored key differs");
  }
  auto result = entry->find("result");
  if (result == entry->end()) return corrupt("no result");
  ++hits_;
  return *result;
}

absl::Status SearchCache::Store(const json& key, const json& result) {
  const json entry = {
      {"schema", kSearchCacheSchema}, {"key", key}, {"result", result}};
  const std::string text =
      entry.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  if (text.size() > kMaxSearchCacheEntryBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "search cache: result of ", text.size(),
        " bytes is over the entry limit of ", kMaxSearchCacheEntryBytes));
  }
  return WriteFileAtomically(EntryPath(key), text);
}

absl::StatusOr<json> CachingQuestionMeasurer::MeasureQuestion(
    const Configuration& configuration, const std::string& question_id) {
  LS_ASSIGN_OR_RETURN(json key, cache_->Key(configuration, question_id));
  std::optional<json> cached = cache_->Lookup(key);
  if (cached.has_value() && (!accept_ || accept_(question_id, *cached))) {
    return *std::move(cached);
  }
  LS_ASSIGN_OR_RETURN(json result,
                      inner_->MeasureQuestion(configuration, question_id));
  LS_RETURN_IF_ERROR(cache_->Store(key, result));
  return result;
}

absl::StatusOr<std::vector<json>> QuestionMeasurer::MeasureQuestions(
    const Configuration& configuration,
    absl::Span<const std::string> question_ids) {
  std::vector<json> results;
  for (const std::string& id : question_ids) {
    LS_ASSIGN_OR_RETURN(json result, MeasureQuestion(configuration, id));
    results.push_back(std::move(result));
  }
  return results;
}

absl::StatusOr<std::vector<json>> CachingQuestionMeasurer::MeasureQuestions(
    const Configuration& configuration,
    absl::Span<const std::string> question_ids) {
  std::vector<json> results(question_ids.size());
  std::vector<json> keys(question_ids.size());
  std::vector<size_t> misses;
  std::vector<std::string> miss_ids;
  for (size_t i = 0; i < question_ids.size(); ++i) {
    LS_ASSIGN_OR_RETURN(keys[i], cache_->Key(configuration, question_ids[i]));
    std::optional<json> cached = cache_->Lookup(keys[i]);
    if (cached.has_value() && (!accept_ || accept_(question_ids[i], *cached))) {
      results[i] = *std::move(cached);
    } else {
      misses.push_back(i);
      miss_ids.push_back(question_ids[i]);
    }
  }
  if (misses.empty()) return results;
  LS_ASSIGN_OR_RETURN(std::vector<json> measured,
                      inner_->MeasureQuestions(configuration, miss_ids));
  if (measured.size() != misses.size()) {
    return absl::InternalError(absl::StrCat("measurer returned ",
                                            measured.size(), " results for ",
                                            misses.size(), " questions"));
  }
  for (size_t m = 0; m < misses.size(); ++m) {
    LS_RETURN_IF_ERROR(cache_->Store(keys[misses[m]], measured[m]));
    results[misses[m]] = std::move(measured[m]);
  }
  return results;
}

absl::StatusOr<QuestionValues> DecodeStandardQuestionResult(
    const json& result) {
  if (!result.is_object()) {
    return absl::InvalidArgumentError("question result: not a JSON object");
  }
  QuestionValues values;
  LS_ASSIGN_OR_RETURN(values.metric, FiniteNumber(result, "metric"));
  LS_ASSIGN_OR_RETURN(values.latency_seconds,
                      FiniteNumber(result, "latency_seconds"));
  auto stages = result.find("stage_latency_seconds");
  if (stages == result.end() || !stages->is_array()) {
    return absl::InvalidArgumentError(
        "question result: \"stage_latency_seconds\" must be an array");
  }
  for (const json& value : *stages) {
    if (!value.is_number() || !std::isfinite(value.get<double>())) {
      return absl::InvalidArgumentError(
          "question result: \"stage_latency_seconds\" must hold finite "
          "numbers");
    }
    values.stage_latency_seconds.push_back(value.get<double>());
  }
  return values;
}

absl::StatusOr<Measurement> QuestionSetMeasurer::Measure(
    const Configuration& configuration) {
  if (question_ids_.empty()) {
    return absl::InvalidArgumentError("no search questions");
  }
  std::vector<json> results;
  for (size_t begin = 0; begin < question_ids_.size();
       begin += static_cast<size_t>(group_size_)) {
    const size_t end = std::min(question_ids_.size(),
                                begin + static_cast<size_t>(group_size_));
    LS_ASSIGN_OR_RETURN(
        std::vector<json> group,
        inner_->MeasureQuestions(
            configuration,
            absl::MakeConstSpan(question_ids_).subspan(begin, end - begin)));
    for (json& result : group) results.push_back(std::move(result));
    if (progress_ != nullptr) {
      progress_->Question(static_cast<int64_t>(end),
                          static_cast<int64_t>(question_ids_.size()));
    }
  }
  if (hook_) LS_RETURN_IF_ERROR(hook_(results));
  Measurement measurement;
  measurement.stage_latency_seconds.resize(num_stages_);
  for (size_t q = 0; q < question_ids_.size(); ++q) {
    const std::string& id = question_ids_[q];
    absl::StatusOr<QuestionValues> values = decode_(results[q]);
    if (!values.ok()) {
      return absl::Status(values.status().code(),
                          absl::StrCat("question ", TruncateForMessage(id),
                                       ": ", values.status().message()));
    }
    if (values->stage_latency_seconds.size() != num_stages_) {
      return absl::InvalidArgumentError(
          absl::StrCat("question ", TruncateForMessage(id), ": ",
                       values->stage_latency_seconds.size(),
                       " stage latencies for ", num_stages_, " stages"));
    }
    measurement.metric.push_back(values->metric);
    measurement.latency_seconds.push_back(values->latency_seconds);
    for (size_t s = 0; s < num_stages_; ++s) {
      measurement.stage_latency_seconds[s].push_back(
          values->stage_latency_seconds[s]);
    }
  }
  return measurement;
}

}  // namespace litestage
