// The logit summaries the sampler and LiteStage's early exit read (argmax,
// max probability, max logit, entropy), computed on the host: the runtime's
// reference that a backend's fused sampling is tested against.
#ifndef LITESTAGE_ENGINE_RUNTIME_LOGIT_STATS_H_
#define LITESTAGE_ENGINE_RUNTIME_LOGIT_STATS_H_

#include <cstdint>

namespace litestage {

struct LogitStats {
  float max_logit = 0.0f;
  int32_t argmax = 0;     // Lowest index among ties, like torch.argmax.
  float max_prob = 0.0f;  // softmax(logits)[argmax].
  float entropy = 0.0f;   // -sum p log p of softmax(logits), in nats.
};

// Two passes over logits [n] f32 (n >= 1): max/argmax, then the partition
// function Z = sum exp(l - max) and sum exp(l - max) * (l - max), giving
// entropy = log Z - sum p (l - max) (= max + log Z - sum p l, without the
// cancellation). Sums accumulate in double: vocabularies reach 150k entries.
// -inf logits contribute nothing; NaN logits give unspecified results.
LogitStats ComputeLogitStats(const float* logits, int64_t n);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_RUNTIME_LOGIT_STATS_H_
