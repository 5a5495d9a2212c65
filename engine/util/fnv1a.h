// FNV-1a, 64-bit: tiny, dependency-free and fixed forever, which is what
// values stored on disk need (model fingerprints in profile files, search
// cache file names). Not collision resistant against an adversary: neither
// is a security boundary.
#ifndef LITESTAGE_ENGINE_UTIL_FNV1A_H_
#define LITESTAGE_ENGINE_UTIL_FNV1A_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace litestage {

inline uint64_t Fnv1a64(absl::string_view text) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 0x100000001b3ull;
  }
  return hash;
}

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_UTIL_FNV1A_H_
