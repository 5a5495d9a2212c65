// libFuzzer target: arbitrary bytes as a pipeline file (--pipelines). The
// parser must return a Status (never crash, hang or recurse without bound:
// deep nesting is rejected before nlohmann builds a DOM), and an accepted
// pipeline must survive the PipelineToJson round trip unchanged.
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "engine/stages/pipeline.h"
#include "engine/util/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<litestage::Pipeline> pipeline =
      litestage::ParsePipeline(text, "fuzz.json");
  if (!pipeline.ok()) return 0;
  absl::StatusOr<litestage::Pipeline> again = litestage::ParsePipeline(
      litestage::PipelineToJson(*pipeline), "round-trip.json");
  LS_CHECK(again.ok()) << again.status().ToString();
  LS_CHECK(*again == *pipeline) << "round trip changed the pipeline";
  return 0;
}
