// The backend registry: the CPU backend linked in, plugins loaded by name
// from LITESTAGE_BACKEND_PATH (the echo test plugin), clear errors for a
// missing plugin, a stale one and a bad name, and --device auto falling
// back to the CPU when no CUDA plugin loads.
#include <cstdlib>
#include <string>

#include "engine/backend/registry.h"
#include "engine/runtime/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace litestage {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<std::unique_ptr<Engine>> TinyOn(const std::string& device) {
  EngineOptions options;
  options.model = "synthetic:tiny";
  options.device = device;
  options.backend.num_threads = 1;
  return Engine::Create(options);
}

class BackendRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("LITESTAGE_BACKEND_PATH", LITESTAGE_TEST_PLUGIN_DIR, 1);
  }
  void TearDown() override { unsetenv("LITESTAGE_BACKEND_PATH"); }
};

TEST_F(BackendRegistryTest, CpuIsLinkedIn) {
  EXPECT_THAT(RegisteredBackends(), ::testing::Contains("cpu"));
  auto engine = TinyOn("cpu");
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->backend().name(), "cpu");
}

TEST_F(BackendRegistryTest, APluginRunsTheModelThroughTheRuntime) {
  auto engine = TinyOn("echo");
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->backend().name(), "echo");
  GenerationRequest request;
  request.prompt_tokens = {1, 40, 41};
  request.max_new_tokens = 5;
  auto result = (*engine)->Generate(request);
  ASSERT_TRUE(result.ok()) << result.status();
  // The plugin's logits, sampled and fed back by the runtime.
  EXPECT_EQ(result->tokens, (std::vector<int32_t>{42, 43, 44, 45, 46}));
  EXPECT_EQ((*engine)->kv_blocks().num_sequences(), 0);
}

TEST_F(BackendRegistryTest, AStalePluginIsRefusedNamingTheFile) {
  auto engine = TinyOn("echo_stale");
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(engine.status().message(),
              HasSubstr("liblitestage_backend_echo_stale.so"));
  EXPECT_THAT(engine.status().message(), HasSubstr("ABI version"));
}

TEST_F(BackendRegistryTest, AMissingPluginListsWhereItLooked) {
  auto engine = TinyOn("nosuch");
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(engine.status().message(),
              HasSubstr(std::string(LITESTAGE_TEST_PLUGIN_DIR) +
                        "/liblitestage_backend_nosuch.so"));
  EXPECT_THAT(engine.status().message(), HasSubstr("--device cpu"));
  const auto paths = BackendPluginPaths("nosuch");
  ASSERT_GE(paths.size(), 2u);
  EXPECT_EQ(paths[0], std::string(LITESTAGE_TEST_PLUGIN_DIR) +
                          "/liblitestage_backend_nosuch.so");
}

TEST_F(BackendRegistryTest, DeviceNamesCannotReachOtherFiles) {
  for (const char* bad : {"../echo", "echo/x", "", "e cho"}) {
    auto engine = TinyOn(bad);
    EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

TEST_F(BackendRegistryTest, AutoFallsBackToTheCpu) {
  // No CUDA plugin is on the path here (and this machine has no GPU).
  auto engine = TinyOn("auto");
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->backend().name(), "cpu");
}

}  // namespace
}  // namespace litestage
