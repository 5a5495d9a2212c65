#include "tests/golden/golden_util.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace litestage {

std::string GoldenDir() {
  return std::string(LITESTAGE_TEST_DATA_DIR) + "/golden";
}

absl::StatusOr<nlohmann::json> Member(const nlohmann::json& object,
                                      const char* key, absl::string_view what) {
  if (!object.is_object() || !object.contains(key)) {
    return absl::NotFoundError(absl::StrCat(what, ": no key \"", key, "\""));
  }
  return object[key];
}

absl::StatusOr<std::vector<float>> FloatList(const nlohmann::json& list,
                                             absl::string_view what) {
  if (!list.is_array())
    return absl::InvalidArgumentError(absl::StrCat(what, ": not a list"));
  std::vector<float> values;
  values.reserve(list.size());
  for (const nlohmann::json& value : list) {
    if (!value.is_number()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": non-number element"));
    }
    values.push_back(static_cast<float>(value.get<double>()));
  }
  return values;
}

absl::StatusOr<std::vector<float>> FloatRows(const nlohmann::json& rows,
                                             int64_t width,
                                             absl::string_view what) {
  if (!rows.is_array())
    return absl::InvalidArgumentError(absl::StrCat(what, ": not a list"));
  std::vector<float> flat;
  flat.reserve(rows.size() * width);
  for (size_t r = 0; r < rows.size(); ++r) {
    absl::StatusOr<std::vector<float>> row =
        FloatList(rows[r], absl::StrCat(what, " row ", r));
    if (!row.ok()) return row.status();
    if (static_cast<int64_t>(row->size()) != width) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " row ", r, ": ", row->size(), " values, want ", width));
    }
    flat.insert(flat.end(), row->begin(), row->end());
  }
  return flat;
}

absl::StatusOr<std::vector<int32_t>> IdList(const nlohmann::json& list,
                                            absl::string_view what) {
  if (!list.is_array())
    return absl::InvalidArgumentError(absl::StrCat(what, ": not a list"));
  std::vector<int32_t> ids;
  for (const nlohmann::json& value : list) {
    if (!value.is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": non-integer id"));
    }
    ids.push_back(static_cast<int32_t>(value.get<int64_t>()));
  }
  return ids;
}

testing::AssertionResult LogitsNear(const std::vector<float>& actual,
                                    const std::vector<float>& expected,
                                    int64_t vocab) {
  if (actual.size() != expected.size()) {
    return testing::AssertionFailure() << "logit count " << actual.size()
                                       << " != expected " << expected.size();
  }
  int64_t bad = 0;
  size_t worst = 0;
  double worst_excess = -1;
  double max_abs = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(actual[i]) - expected[i]);
    const double allowed = kLogitAbsTol + kLogitRelTol * std::fabs(expected[i]);
    max_abs = std::max(max_abs, diff);
    // NaN fails the comparison below too.
    if (!(diff <= allowed)) {
      ++bad;
      const double excess = std::isnan(diff)
                                ? std::numeric_limits<double>::infinity()
                                : diff - allowed;
      if (excess > worst_excess) {
        worst_excess = excess;
        worst = i;
      }
    }
  }
  if (bad == 0) return testing::AssertionSuccess() << "max |diff| " << max_abs;
  return testing::AssertionFailure()
         << bad << " of " << actual.size() << " logits outside tolerance (abs "
         << kLogitAbsTol << " + rel " << kLogitRelTol << "); worst at position "
         << worst / vocab << " token " << worst % vocab << ": got "
         << actual[worst] << ", want " << expected[worst] << "; max |diff| "
         << max_abs;
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double max_abs = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_abs = std::max(max_abs, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  return max_abs;
}

}  // namespace litestage
