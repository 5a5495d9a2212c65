// Run-time detection of the x86 vector extensions the CPU kernels can use.
// Kernels are compiled once per ISA level in separate translation units and
// the dispatchers pick one per call with ActiveIsa().
#ifndef LITESTAGE_ENGINE_BACKENDS_CPU_CPU_FEATURES_H_
#define LITESTAGE_ENGINE_BACKENDS_CPU_CPU_FEATURES_H_

#include <optional>
#include <string_view>

namespace litestage::cpu {

// Ordered: a higher level implies every lower one is usable.
enum class Isa : int {
  kScalar = 0,  // Portable C++; always available.
  kAvx2 = 1,    // AVX2 + FMA + F16C.
  kAvx512 = 2,  // AVX-512 F + BW + VL (+ FMA).
};

const char* IsaName(Isa isa);

// "scalar" | "avx2" | "avx512" -> Isa; nullopt for anything else.
std::optional<Isa> ParseIsa(std::string_view name);

// The best level this CPU and OS support (ignores any override).
Isa DetectedIsa();

// True when the CPU also has AVX512_BF16 (vdpbf16ps).
bool HasAvx512Bf16();

// The level the kernels use: DetectedIsa(), lowered by the environment
// variable LITESTAGE_CPU_ISA=scalar|avx2|avx512 (read once, at first use).
// An override above DetectedIsa() is clamped with a warning, never honoured,
// because it would crash with SIGILL.
Isa ActiveIsa();

// Tests: makes `isa` active (clamped to DetectedIsa()) and returns the level
// now active. Not synchronised with kernels running on other threads.
Isa SetActiveIsaForTesting(Isa isa);

}  // namespace litestage::cpu

#endif  // LITESTAGE_ENGINE_BACKENDS_CPU_CPU_FEATURES_H_
