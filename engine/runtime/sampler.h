// Token selection from logits (greedy, temperature, top-k, top-p, seeded) and
// the per-token confidence signals LiteStage's early exit reads.
#ifndef LITESTAGE_ENGINE_RUNTIME_SAMPLER_H_
#define LITESTAGE_ENGINE_RUNTIME_SAMPLER_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace litestage {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax).
  int32_t top_k = 0;         // 0: no limit.
  float top_p = 1.0f;        // 1: no nucleus cut.
  uint64_t seed = 0;

  bool greedy() const { return temperature <= 0.0f; }
};

// InvalidArgument naming the field for negative temperature, top_k < 0,
// top_p outside (0, 1].
absl::Status ValidateSamplingParams(const SamplingParams& params);

// Confidence of one generated token, from the raw logits (before
// temperature): all three come from one pass over the vocabulary.
struct TokenConfidence {
  float max_prob = 0;   // max softmax probability
  float max_logit = 0;  // max raw logit
  float entropy = 0;    // softmax entropy in nats
};

// Which confidence signal early exit averages.
enum class ConfidenceKind : uint8_t {
  kMaxProb,   // max softmax probability, in [0, 1] (default)
  kMaxLogit,  // max raw logit (the paper's definition)
};
const char* ConfidenceKindName(ConfidenceKind kind);  // "max_prob"
// "max_prob" | "max_logit"; InvalidArgument otherwise.
absl::StatusOr<ConfidenceKind> ParseConfidenceKind(absl::string_view name);
float ConfidenceValue(const TokenConfidence& confidence, ConfidenceKind kind);
// Mean max_prob over `confidences` (0 when empty): a generation's mean
// confidence as the server and the stage records report it.
double MeanMaxProb(absl::Span<const TokenConfidence> confidences);

// How one token is picked, as a forward step carries it to the backend
// (SequenceChunk::draw): the sequence's parameters and this token's uniform
// variate, drawn on the host from the sequence's seeded stream (Sampler).
// Keeping the generator on the host keeps a step stateless: a backend holds
// no per-sequence state, a failed or speculative step cannot put the stream
// out of step, and every backend sees the same variates.
struct TokenDraw {
  float temperature = 0.0f;  // 0: greedy (argmax).
  int32_t top_k = 0;         // 0: no limit.
  float top_p = 1.0f;        // 1: no nucleus cut.
  double uniform = 0.0;      // In [0, 1); unused when greedy.

  bool greedy() const { return temperature <= 0.0f; }
};

// Reusable buffers of SampleToken, so a step allocates nothing.
struct SamplingScratch {
  std::vector<int32_t> candidates;  // [vocab] ids sorted by logit.
  std::vector<double> weights;      // [candidates] unnormalised probs.
};

// The reference token selection: greedy is the argmax (lowest id among
// ties); otherwise softmax at the temperature over the top_k candidates,
// cut to the smallest prefix reaching top_p, and the candidate where
// `uniform` times their total mass falls. `logits` [vocab] f32 is read only.
// `confidence` (may be null) comes from the raw logits. The CPU backend
// samples with this; other backends are tested against it.
int32_t SampleToken(const float* logits, int64_t vocab_size,
                    const TokenDraw& draw, TokenConfidence* confidence,
                    SamplingScratch* scratch);

// One sequence's seeded stream of draws (the host side of sampling).
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // The next token's draw; takes one variate from the stream unless greedy.
  TokenDraw Next();
  // Next() applied to `logits` ([vocab] f32) on the host.
  int32_t Sample(const float* logits, int64_t vocab_size,
                 TokenConfidence* confidence);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  SamplingScratch scratch_;
};

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_RUNTIME_SAMPLER_H_
