// The skip profiles shipped with litestage (profiles/*.json at the top of
// the source tree), compiled into the binaries so that a server offers the
// ones made for its model without any flag or file on the host.
#ifndef LITESTAGE_ENGINE_STAGES_SHIPPED_PROFILES_H_
#define LITESTAGE_ENGINE_STAGES_SHIPPED_PROFILES_H_

#include <string>
#include <vector>

namespace litestage {

struct ShippedProfile {
  std::string source;  // "profiles/<file>.json", for messages.
  std::string json;    // The file's text, a litestage.profile/v1 document.
};

// Every shipped profile, in file-name order (possibly none).
const std::vector<ShippedProfile>& ShippedProfiles();

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_STAGES_SHIPPED_PROFILES_H_
