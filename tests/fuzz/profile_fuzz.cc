// libFuzzer target: arbitrary bytes as a profile file (--profiles). The
// parser must return a Status (never crash, hang or recurse without bound:
// deep nesting is rejected before nlohmann builds a DOM), and an accepted
// profile must survive the ProfileToJson round trip unchanged.
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "engine/stages/profile.h"
#include "engine/util/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<litestage::Profile> profile =
      litestage::ParseProfile(text, "fuzz.json");
  if (!profile.ok()) return 0;
  absl::StatusOr<litestage::Profile> again = litestage::ParseProfile(
      litestage::ProfileToJson(*profile), "round-trip.json");
  LS_CHECK(again.ok()) << again.status().ToString();
  return 0;
}
