// An Engine on the synthetic `tiny` model whose backend is the in-process
// EchoBackend (tests/common/echo_backend.h): the runtime above the backend
// (scheduler, stage runner) under test with no model computation, and with
// knobs to change the backend's capabilities or make its steps fail.
#ifndef LITESTAGE_TESTS_COMMON_ECHO_ENGINE_H_
#define LITESTAGE_TESTS_COMMON_ECHO_ENGINE_H_

#include <memory>

#include "engine/backend/registry.h"
#include "engine/runtime/engine.h"
#include "gtest/gtest.h"
#include "tests/common/echo_backend.h"

namespace litestage {

inline constexpr char kInProcessEchoDevice[] = "echo_in_process";

// Read by every in-process echo backend at each call; reset them per test.
inline EchoBackend::Knobs& InProcessEchoKnobs() {
  static EchoBackend::Knobs knobs;
  return knobs;
}

inline std::unique_ptr<Engine> MakeTinyEchoEngine() {
  // Once per test binary (a function-local static of an inline function).
  static const bool registered = RegisterBackend(
      kInProcessEchoDevice,
      [](const ModelWeights& weights, const BackendOptions& options)
          -> absl::StatusOr<std::unique_ptr<Backend>> {
        return std::make_unique<EchoBackend>(kInProcessEchoDevice, weights,
                                             options, &InProcessEchoKnobs());
      });
  (void)registered;
  EngineOptions options;
  options.model = "synthetic:tiny";
  options.device = kInProcessEchoDevice;
  auto engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

}  // namespace litestage

#endif  // LITESTAGE_TESTS_COMMON_ECHO_ENGINE_H_
