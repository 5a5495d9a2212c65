// CHECK and LOG for broken invariants and diagnostics. Abseil 20220623 has no
// absl/log, so this is a deliberately small stand-in: LS_CHECK aborts with the
// file:line and a message; it is for programmer errors only, never for input
// (input failures are absl::Status).
#ifndef LITESTAGE_ENGINE_UTIL_CHECK_H_
#define LITESTAGE_ENGINE_UTIL_CHECK_H_

#include <sstream>
#include <string>

namespace litestage::internal {

// Collects a message and aborts the process when destroyed.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition);
  [[noreturn]] ~CheckFailure();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

enum class LogSeverity { kInfo, kWarning, kError };

// Writes one line to stderr when destroyed. Diagnostics never go to stdout:
// the CLIs keep stdout for their results.
class LogMessage {
 public:
  LogMessage(const char* file, int line, LogSeverity severity);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

// Swallows a stream expression so `cond ? (void)0 : Voidify() & stream` works.
struct Voidify {
  void operator&(std::ostream&) {}
};

// Minimum severity printed; set from LITESTAGE_LOG_LEVEL (info|warning|error).
LogSeverity MinLogSeverity();

}  // namespace litestage::internal

#define LS_CHECK(condition)                                                 \
  (condition) ? (void)0                                                     \
              : ::litestage::internal::Voidify() &                          \
                    ::litestage::internal::CheckFailure(__FILE__, __LINE__, \
                                                        #condition)         \
                        .stream()

#define LS_CHECK_EQ(a, b) \
  LS_CHECK((a) == (b)) << #a "=" << (a) << " " #b "=" << (b) << " "
#define LS_CHECK_LT(a, b) \
  LS_CHECK((a) < (b)) << #a "=" << (a) << " " #b "=" << (b) << " "
#define LS_CHECK_LE(a, b) \
  LS_CHECK((a) <= (b)) << #a "=" << (a) << " " #b "=" << (b) << " "
#define LS_CHECK_GE(a, b) \
  LS_CHECK((a) >= (b)) << #a "=" << (a) << " " #b "=" << (b) << " "

#define LS_LOG_SEVERITY_INFO ::litestage::internal::LogSeverity::kInfo
#define LS_LOG_SEVERITY_WARNING ::litestage::internal::LogSeverity::kWarning
#define LS_LOG_SEVERITY_ERROR ::litestage::internal::LogSeverity::kError

// LS_LOG(INFO) << "loaded " << n << " tensors";
#define LS_LOG(severity)                                                  \
  (LS_LOG_SEVERITY_##severity < ::litestage::internal::MinLogSeverity())  \
      ? (void)0                                                           \
      : ::litestage::internal::Voidify() &                                \
            ::litestage::internal::LogMessage(__FILE__, __LINE__,         \
                                              LS_LOG_SEVERITY_##severity) \
                .stream()

#endif  // LITESTAGE_ENGINE_UTIL_CHECK_H_
