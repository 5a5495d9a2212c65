// Status propagation helpers. Abseil 20220623 (Debian 12) ships no
// RETURN_IF_ERROR / ASSIGN_OR_RETURN, so litestage brings its own.
#ifndef LITESTAGE_ENGINE_UTIL_STATUS_MACROS_H_
#define LITESTAGE_ENGINE_UTIL_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define LS_STATUS_CONCAT_INNER_(a, b) a##b
#define LS_STATUS_CONCAT_(a, b) LS_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define LS_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status ls_status_ = (expr);      \
    if (!ls_status_.ok()) return ls_status_; \
  } while (0)

// `LS_ASSIGN_OR_RETURN(auto x, MakeX());` unwraps an absl::StatusOr or returns
// its error from the enclosing function.
#define LS_ASSIGN_OR_RETURN(lhs, rexpr)                                     \
  LS_ASSIGN_OR_RETURN_IMPL_(LS_STATUS_CONCAT_(ls_statusor_, __LINE__), lhs, \
                            rexpr)

#define LS_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                              \
  if (!statusor.ok()) return statusor.status();         \
  lhs = std::move(statusor).value()

#endif  // LITESTAGE_ENGINE_UTIL_STATUS_MACROS_H_
