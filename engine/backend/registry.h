// Which backend runs a model: the ones linked into the binary (the CPU
// backend registers itself) and plugins loaded at run time
// (engine/backend/plugin.h). The runtime core links no backend.
//
// --device:
//   cpu     the CPU backend (always linked).
//   auto    the CUDA plugin when it loads and finds a GPU, else the CPU
//           backend, with one log line saying why.
//   <name>  a registered backend, else the plugin
//           liblitestage_backend_<name>.so from, in order: each directory of
//           $LITESTAGE_BACKEND_PATH (colon-separated), the directory of the
//           running executable, and <that directory>/../lib/litestage.
//           A missing or incompatible plugin is an error naming the files.
#ifndef LITESTAGE_ENGINE_BACKEND_REGISTRY_H_
#define LITESTAGE_ENGINE_BACKEND_REGISTRY_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/backend/backend.h"
#include "engine/model/weights.h"

namespace litestage {

// The --device flag's help, for every binary that has one.
inline constexpr char kDeviceFlagHelp[] =
    "Compute device: cpu; auto (the CUDA plugin when it loads and finds a "
    "GPU, else cpu); or a backend plugin's name (cuda), loaded from "
    "liblitestage_backend_<name>.so on $LITESTAGE_BACKEND_PATH, next to the "
    "binary or in ../lib/litestage";

using BackendFactory = absl::StatusOr<std::unique_ptr<Backend>> (*)(
    const ModelWeights& weights, const BackendOptions& options);

// Makes `name` create backends with `factory`; for static registration
// (returns true). A second registration of a name is a broken invariant.
bool RegisterBackend(const std::string& name, BackendFactory factory);
// Registered names, sorted.
std::vector<std::string> RegisteredBackends();

// Creates the backend for `device` over weights that must outlive it.
// Options are checked first (InvalidArgument naming them); the CPU backend
// also rejects a KV cache larger than AvailableMemoryBytes. Plugin errors:
// NotFound (no file: the paths tried), FailedPrecondition (ABI or layout
// mismatch, missing entry point, dlopen failure: the file and why), or the
// plugin's own error.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(
    const std::string& device, const ModelWeights& weights,
    const BackendOptions& options);

// Where CreateBackend looks for liblitestage_backend_<name>.so, in order.
std::vector<std::string> BackendPluginPaths(absl::string_view name);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_BACKEND_REGISTRY_H_
