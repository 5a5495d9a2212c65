// The machine's memory read bandwidth, measured by the benchmarks themselves
// in the same run as what they compare it with: batch-1 decode streams every
// weight once per token, so it cannot beat weight bytes / read bandwidth.
#ifndef LITESTAGE_BENCH_READ_BANDWIDTH_H_
#define LITESTAGE_BENCH_READ_BANDWIDTH_H_

#include <cstdint>
#include <vector>

namespace litestage {

// Read bandwidth in bytes/s of `threads` threads each summing an equal slice
// of a `megabytes` MiB buffer, one figure per pass (after one warm-up pass).
std::vector<double> MeasureReadBandwidth(int64_t megabytes, int threads,
                                         int passes);

// The vector width the probe reads with: "avx512", "avx2" or "sse".
const char* ReadBandwidthProbeIsa();

}  // namespace litestage

#endif  // LITESTAGE_BENCH_READ_BANDWIDTH_H_
