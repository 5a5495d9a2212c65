#include "engine/util/check.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace litestage::internal {
namespace {

const char* Basename(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}

}  // namespace

CheckFailure::CheckFailure(const char* file, int line, const char* condition) {
  stream_ << "CHECK failed at " << Basename(file) << ":" << line << ": "
          << condition << " ";
}

CheckFailure::~CheckFailure() {
  std::fprintf(stderr, "%s\n", stream_.str().c_str());
  std::fflush(stderr);
  std::abort();
}

LogMessage::LogMessage(const char* file, int line, LogSeverity severity) {
  static constexpr char kLetters[] = {'I', 'W', 'E'};
  stream_ << kLetters[static_cast<int>(severity)] << " " << Basename(file)
          << ":" << line << "] ";
}

LogMessage::~LogMessage() {
  stream_ << "\n";
  std::fputs(stream_.str().c_str(), stderr);
}

LogSeverity MinLogSeverity() {
  static const LogSeverity severity = [] {
    const char* level = std::getenv("LITESTAGE_LOG_LEVEL");
    if (level == nullptr) return LogSeverity::kInfo;
    if (std::strcmp(level, "warning") == 0) return LogSeverity::kWarning;
    if (std::strcmp(level, "error") == 0) return LogSeverity::kError;
    return LogSeverity::kInfo;
  }();
  return severity;
}

}  // namespace litestage::internal
