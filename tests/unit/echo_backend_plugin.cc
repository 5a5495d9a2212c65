// The echo backend (tests/common/echo_backend.h) as a real plugin for the
// registry tests (backend_registry_test.cc): liblitestage_backend_echo.so.
// Built a second time with LITESTAGE_ECHO_STALE_ABI as
// liblitestage_backend_echo_stale.so, a plugin from another release.
#include <cstdio>

#include "engine/backend/plugin.h"
#include "tests/common/echo_backend.h"

namespace {

#ifdef LITESTAGE_ECHO_STALE_ABI
constexpr char kName[] = "echo_stale";
constexpr uint32_t kAbi = litestage::kBackendAbiVersion + 1000;
#else
constexpr char kName[] = "echo";
constexpr uint32_t kAbi = litestage::kBackendAbiVersion;
#endif

litestage::Backend* Create(const litestage::ModelWeights* weights,
                           const litestage::BackendOptions* options,
                           char* error, size_t error_size) {
  if (weights->config.vocab_size <= 0) {
    std::snprintf(error, error_size, "echo: the model has no vocabulary");
    return nullptr;
  }
  return new litestage::EchoBackend(kName, *weights, *options);
}

const LitestageBackendPlugin kPlugin = {kAbi, litestage::BackendLayoutHash(),
                                        kName, &Create};

}  // namespace

extern "C" __attribute__((visibility("default"))) const LitestageBackendPlugin*
litestage_backend_plugin(void) {
  return &kPlugin;
}
