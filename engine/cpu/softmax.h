// Softmax and the logit summaries the sampler reports.
#ifndef LITESTAGE_ENGINE_CPU_SOFTMAX_H_
#define LITESTAGE_ENGINE_CPU_SOFTMAX_H_

#include <cstdint>

namespace litestage::cpu {

// x[i] = exp(x[i] - max) / sum_j exp(x[j] - max); x: [n] f32, n >= 1.
// -inf entries become 0 (at least one entry must be finite).
void SoftmaxInPlace(float* x, int64_t n);

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

}  // namespace litestage::cpu

#endif  // LITESTAGE_ENGINE_CPU_SOFTMAX_H_
