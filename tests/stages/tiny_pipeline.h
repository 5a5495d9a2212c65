// Pipelines and engines shared by the stages tests: the synthetic `tiny`
// engine and a short three-stage pipeline with a fan-out and no stop strings
// or few-shot (session and evaluation tests), and tinythinker without its
// few-shot (the CLI tests on stories260K). For the short pipeline, stage
// lengths are set by max_new_tokens (or EOS) alone, so a test's independent
// computation needs nothing but the prompts and greedy decoding.
#ifndef LITESTAGE_TESTS_STAGES_TINY_PIPELINE_H_
#define LITESTAGE_TESTS_STAGES_TINY_PIPELINE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/runtime/engine.h"
#include "engine/stages/pipeline.h"
#include "engine/stages/profile.h"
#include "gtest/gtest.h"

namespace litestage {

inline std::unique_ptr<Engine> MakeTinyEngine() {
  EngineOptions options;
  options.model = "synthetic:tiny";
  options.matrix_dtype = DType::kF32;
  options.backend.num_threads = 2;
  auto engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

// recall -> analysis (one branch per choice) -> summary, 2 to 5 choices,
// with the given max_new_tokens per stage.
inline Pipeline ShortPipeline(int64_t recall_tokens, int64_t analysis_tokens,
                              int64_t summary_tokens) {
  const std::string json = absl::StrCat(R"json({
  "schema": "litestage.pipeline/v1",
  "name": "short",
  "min_choices": 2,
  "max_choices": 5,
  "answer_regex": "([A-E])",
  "stages": [
    {"name": "recall", "prompt": "{question}\n{choices}\nRecall:",
     "max_new_tokens": )json",
                                        recall_tokens, R"json(},
    {"name": "analysis", "fan_out": true,
     "prompt": "{question}\nRecall: {stage.recall}\nFor option {option},",
     "max_new_tokens": )json",
                                        analysis_tokens, R"json(},
    {"name": "summary",
     "prompt": "{question}\n{stage.recall}\n{stage.analysis}\nSo:",
     "max_new_tokens": )json",
                                        summary_tokens, R"json(}
  ]
})json");
  auto pipeline = ParsePipeline(json, "test:short");
  EXPECT_TRUE(pipeline.ok()) << pipeline.status();
  return pipeline.ok() ? *pipeline : Pipeline{};
}

// A built-in profile ("full", "even:K", "last:K") for a model of `layers`.
inline Profile Builtin(const std::string& spec, int64_t layers) {
  auto profile = BuiltinProfile(spec, layers);
  EXPECT_TRUE(profile.ok()) << profile.status();
  return profile.ok() ? *profile : Profile{};
}

// The built-in tinythinker without its few-shot example: stories260K's
// 512-token context cannot hold it. Named "tinythinker-zero-shot".
inline Pipeline ZeroShotTinyThinker() {
  absl::StatusOr<Pipeline> pipeline = BuiltinPipeline("tinythinker");
  EXPECT_TRUE(pipeline.ok()) << pipeline.status();
  if (!pipeline.ok()) return Pipeline{};
  pipeline->few_shot.clear();
  pipeline->name = "tinythinker-zero-shot";
  return *std::move(pipeline);
}

}  // namespace litestage

#endif  // LITESTAGE_TESTS_STAGES_TINY_PIPELINE_H_
