// The one C entry point of a backend plugin: a shared library
// liblitestage_backend_<name>.so that defines
//
//   extern "C" const LitestageBackendPlugin* litestage_backend_plugin(void);
//
// The runtime dlopen()s it for --device <name> (engine/backend/registry.h)
// and checks the ABI before creating anything. Why plugins: a backend that
// links large device libraries (CUDA, cuBLASLt) must not be loaded with the
// server's own libraries (../shared/reference/toolchain.md: cuBLASLt's
// static TLS aborts the metrics server's threads), and a CPU-only build
// must run without them.
//
// The plugin and the runtime exchange C++ objects (Backend, ModelWeights),
// so both must be built from the same headers by the same compiler:
// abi_version is bumped whenever backend.h, weights.h or tensor.h change
// in a way that matters, and layout_hash catches what a bump forgot.
#ifndef LITESTAGE_ENGINE_BACKEND_PLUGIN_H_
#define LITESTAGE_ENGINE_BACKEND_PLUGIN_H_

#include <cstddef>
#include <cstdint>

#include "engine/backend/backend.h"
#include "engine/model/weights.h"

namespace litestage {

// Bumped whenever the meaning of the interface changes (sizes alone are
// caught by the layout hash). 2: chunks carry a TokenDraw and steps return
// sampled tokens (LogitsMode::kSample).
inline constexpr uint32_t kBackendAbiVersion = 2;

// Sizes of the types that cross the boundary, folded into one number.
constexpr uint64_t BackendLayoutHash() {
  uint64_t hash = 1469598103934665603ull;
  for (uint64_t size :
       {sizeof(Backend), sizeof(ForwardBatch), sizeof(SequenceChunk),
        sizeof(ForwardResult), sizeof(BackendOptions), sizeof(SkipSet),
        sizeof(TokenDraw), sizeof(SampledToken), sizeof(ModelWeights),
        sizeof(ModelConfig), sizeof(LayerWeights), sizeof(Tensor)}) {
    hash = (hash ^ size) * 1099511628211ull;
  }
  return hash;
}

}  // namespace litestage

extern "C" {

struct LitestageBackendPlugin {
  uint32_t abi_version;  // kBackendAbiVersion when the plugin was built.
  uint64_t layout_hash;  // BackendLayoutHash() when the plugin was built.
  const char* name;      // "cuda": what --device names.
  // A new backend over `weights` (which outlive it), owned by the caller;
  // null on failure, with a NUL-terminated reason written to `error`.
  litestage::Backend* (*create)(const litestage::ModelWeights* weights,
                                const litestage::BackendOptions* options,
                                char* error, size_t error_size);
};

// What a plugin exports (the symbol name is kBackendPluginSymbol).
typedef const LitestageBackendPlugin* (*LitestageBackendPluginEntry)(void);

}  // extern "C"

namespace litestage {
inline constexpr char kBackendPluginSymbol[] = "litestage_backend_plugin";
}  // namespace litestage

#endif  // LITESTAGE_ENGINE_BACKEND_PLUGIN_H_
