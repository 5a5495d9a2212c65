// Helpers for kernel tests that run every ISA level this CPU has.
#ifndef LITESTAGE_TESTS_CPU_ISA_TEST_UTIL_H_
#define LITESTAGE_TESTS_CPU_ISA_TEST_UTIL_H_

#include <vector>

#include "engine/backends/cpu/cpu_features.h"

namespace litestage::cpu {

// Every level from scalar up to DetectedIsa().
inline std::vector<Isa> AvailableIsas() {
  std::vector<Isa> isas;
  for (int level = 0; level <= static_cast<int>(DetectedIsa()); ++level) {
    isas.push_back(static_cast<Isa>(level));
  }
  return isas;
}

// Restores the ISA that was active before the test.
class IsaRestorer {
 public:
  IsaRestorer() : saved_(ActiveIsa()) {}
  ~IsaRestorer() { SetActiveIsaForTesting(saved_); }

 private:
  Isa saved_;
};

}  // namespace litestage::cpu

#endif  // LITESTAGE_TESTS_CPU_ISA_TEST_UTIL_H_
