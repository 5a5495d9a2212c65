#include "engine/backends/cpu/cpu_features.h"

#include <atomic>
#include <cstdlib>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "engine/util/check.h"

namespace litestage::cpu {
namespace {

#if defined(__x86_64__) || defined(__i386__)
// F16C from CPUID leaf 1 (ECX bit 29): clang before 15 rejects
// __builtin_cpu_supports("f16c"), which broke the clang (fuzz) build. The OS
// state check is covered by the avx2 test it is combined with (same YMM
// state).
bool HasF16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return false;
  return (ecx & bit_F16C) != 0;
}
#endif

Isa Detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // libgcc also checks XCR0, so these are false when the OS does not save
  // the wider register state.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      HasF16c()) {
    return Isa::kAvx2;
  }
#endif
  return Isa::kScalar;
}

Isa InitialActiveIsa() {
  const Isa detected = DetectedIsa();
  const char* override_value = std::getenv("LITESTAGE_CPU_ISA");
  if (override_value == nullptr || *override_value == '\0') return detected;
  const std::optional<Isa> requested = ParseIsa(override_value);
  if (!requested.has_value()) {
    LS_LOG(WARNING) << "LITESTAGE_CPU_ISA=" << override_value
                    << " is not one of scalar|avx2|avx512; using "
                    << IsaName(detected);
    return detected;
  }
  if (static_cast<int>(*requested) > static_cast<int>(detected)) {
    LS_LOG(WARNING) << "LITESTAGE_CPU_ISA=" << override_value
                    << " is not supported by this CPU; using "
                    << IsaName(detected);
    return detected;
  }
  return *requested;
}

std::atomic<int>& ActiveIsaStorage() {
  static std::atomic<int> active{static_cast<int>(InitialActiveIsa())};
  return active;
}

}  // namespace

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "?";
}

std::optional<Isa> ParseIsa(std::string_view name) {
  if (name == "scalar") return Isa::kScalar;
  if (name == "avx2") return Isa::kAvx2;
  if (name == "avx512") return Isa::kAvx512;
  return std::nullopt;
}

Isa DetectedIsa() {
  static const Isa detected = Detect();
  return detected;
}

bool HasAvx512Bf16() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has =
      DetectedIsa() == Isa::kAvx512 && __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

Isa ActiveIsa() {
  return static_cast<Isa>(ActiveIsaStorage().load(std::memory_order_relaxed));
}

Isa SetActiveIsaForTesting(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(DetectedIsa()))
    isa = DetectedIsa();
  ActiveIsaStorage().store(static_cast<int>(isa), std::memory_order_relaxed);
  return isa;
}

}  // namespace litestage::cpu
