// This process's resident memory, as Linux reports it, for benchmarks and
// load statistics (e.g. the weights' footprint after load).
#ifndef LITESTAGE_ENGINE_UTIL_PROCESS_MEMORY_H_
#define LITESTAGE_ENGINE_UTIL_PROCESS_MEMORY_H_

#include <cstdint>
#include <optional>

namespace litestage {

// Resident set size now (VmRSS of /proc/self/status), in bytes; nullopt
// where /proc is unavailable.
std::optional<int64_t> ResidentBytes();

// The peak resident set size so far (VmHWM), in bytes; nullopt likewise.
std::optional<int64_t> PeakResidentBytes();

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_UTIL_PROCESS_MEMORY_H_
