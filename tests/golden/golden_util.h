// Helpers shared by the golden tests: reading the reference JSON written by
// tests/reference/make_golden.py and comparing logits within tolerance.
#ifndef LITESTAGE_TESTS_GOLDEN_GOLDEN_UTIL_H_
#define LITESTAGE_TESTS_GOLDEN_GOLDEN_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace litestage {

// Logit tolerance |actual - expected| <= kLogitAbsTol +
// kLogitRelTol*|expected|. Both sides compute in fp32 (bf16-stored weights are
// widened exactly to fp32 by both transformers and the engine); they differ
// only in summation order (SIMD blocking, threading) and in the transcendental
// implementations. One dot product of length k <= 172 carries rounding error
// ~sqrt(k)*eps*|x| ~ 1e-6 relative; a few such ops over 2-5 layers stay near
// 1e-5, and the JSON keeps 6 significant digits (5e-7 relative). 1e-4 leaves
// ~10x headroom while real defects (wrong RoPE frequency, missing bias/norm,
// wrong GQA mapping) move logits by 1e-2 or more; the skip tests check the
// suite sees changes of that size.
inline constexpr double kLogitAbsTol = 1e-4;
inline constexpr double kLogitRelTol = 1e-4;
// A perturbation the tolerance must clearly resolve (100x the abs tolerance).
inline constexpr double kMustResolveDiff = 1e-2;

// <repo>/tests/golden.
std::string GoldenDir();

// Flattens a JSON list of `rows` lists of `width` numbers, row-major.
absl::StatusOr<std::vector<float>> FloatRows(const nlohmann::json& rows,
                                             int64_t width,
                                             absl::string_view what);
// A JSON list of numbers as floats.
absl::StatusOr<std::vector<float>> FloatList(const nlohmann::json& list,
                                             absl::string_view what);
// A JSON list of integer ids.
absl::StatusOr<std::vector<int32_t>> IdList(const nlohmann::json& list,
                                            absl::string_view what);
// `object[key]` or NotFound naming `what`.
absl::StatusOr<nlohmann::json> Member(const nlohmann::json& object,
                                      const char* key, absl::string_view what);

// Success when every element is within tolerance; otherwise names how many
// differ and the worst (position, token) with both values.
testing::AssertionResult LogitsNear(const std::vector<float>& actual,
                                    const std::vector<float>& expected,
                                    int64_t vocab);

// max |a - b| over equal-length vectors (infinity when the lengths differ).
double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace litestage

#endif  // LITESTAGE_TESTS_GOLDEN_GOLDEN_UTIL_H_
