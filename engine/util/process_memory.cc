#include "engine/util/process_memory.h"

#include <cstdio>
#include <cstring>

namespace litestage {
namespace {

// The "<key>:   <n> kB" line of /proc/self/status, in bytes.
std::optional<int64_t> StatusKilobytes(const char* key) {
  std::FILE* file = std::fopen("/proc/self/status", "r");
  if (file == nullptr) return std::nullopt;
  std::optional<int64_t> bytes;
  char line[256];
  const size_t key_length = std::strlen(key);
  while (std::fgets(line, sizeof(line), file) != nullptr) {
    if (std::strncmp(line, key, key_length) == 0 && line[key_length] == ':') {
      long long kilobytes = 0;
      if (std::sscanf(line + key_length + 1, "%lld", &kilobytes) == 1) {
        bytes = static_cast<int64_t>(kilobytes) * 1024;
      }
      break;
    }
  }
  std::fclose(file);
  return bytes;
}

}  // namespace

std::optional<int64_t> ResidentBytes() { return StatusKilobytes("VmRSS"); }

std::optional<int64_t> PeakResidentBytes() { return StatusKilobytes("VmHWM"); }

}  // namespace litestage
