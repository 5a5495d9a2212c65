// The dot products and the weighted sum are written lane-wise so that -O3
// vectorises them without -ffast-math (baseline SSE2; head_dim is 64-128, so
// wider vectors would gain little over the per-position overheads).
#include "engine/backends/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace litestage::cpu {
namespace {

constexpr int kLanes = 8;

inline const float* Row(const float* const* blocks, int64_t block_size,
                        int64_t head_dim, int64_t position) {
  return blocks[position / block_size] + (position % block_size) * head_dim;
}

inline float Dot(const float* a, const float* b, int64_t n) {
  float partial[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane)
      partial[lane] += a[i + lane] * b[i + lane];
  }
  for (; i < n; ++i) partial[0] += a[i] * b[i];
  float sum = 0.0f;
  for (int lane = 0; lane < kLanes; ++lane) sum += partial[lane];
  return sum;
}

}  // namespace

void AttentionHead(const float* q, const float* const* key_blocks,
                   const float* const* value_blocks, int64_t block_size,
                   int64_t begin_pos, int64_t end_pos, int64_t head_dim,
                   float scale, float* scores_scratch, float* out) {
  for (int64_t d = 0; d < head_dim; ++d) out[d] = 0.0f;
  if (begin_pos >= end_pos) return;
  float max_score = -INFINITY;
  for (int64_t p = begin_pos; p < end_pos; ++p) {
    const float score =
        scale * Dot(q, Row(key_blocks, block_size, head_dim, p), head_dim);
    scores_scratch[p] = score;
    max_score = score > max_score ? score : max_score;
  }
  float sum = 0.0f;
  for (int64_t p = begin_pos; p < end_pos; ++p) {
    scores_scratch[p] = std::exp(scores_scratch[p] - max_score);
    sum += scores_scratch[p];
  }
  const float inv_sum = 1.0f / sum;
  for (int64_t p = begin_pos; p < end_pos; ++p) {
    const float weight = scores_scratch[p] * inv_sum;
    const float* value = Row(value_blocks, block_size, head_dim, p);
    for (int64_t d = 0; d < head_dim; ++d) out[d] += weight * value[d];
  }
}

void AttentionHeadReference(const float* q, const float* const* key_blocks,
                            const float* const* value_blocks,
                            int64_t block_size, int64_t begin_pos,
                            int64_t end_pos, int64_t head_dim, float scale,
                            float* out) {
  for (int64_t d = 0; d < head_dim; ++d) out[d] = 0.0f;
  if (begin_pos >= end_pos) return;
  std::vector<double> scores(end_pos - begin_pos);
  double max_score = -INFINITY;
  for (int64_t p = begin_pos; p < end_pos; ++p) {
    const float* key = Row(key_blocks, block_size, head_dim, p);
    double dot = 0.0;
    for (int64_t d = 0; d < head_dim; ++d)
      dot += static_cast<double>(q[d]) * key[d];
    scores[p - begin_pos] = scale * dot;
    max_score = std::max(max_score, scores[p - begin_pos]);
  }
  double sum = 0.0;
  for (double& s : scores) {
    s = std::exp(s - max_score);
    sum += s;
  }
  std::vector<double> acc(head_dim, 0.0);
  for (int64_t p = begin_pos; p < end_pos; ++p) {
    const float* value = Row(value_blocks, block_size, head_dim, p);
    const double weight = scores[p - begin_pos] / sum;
    for (int64_t d = 0; d < head_dim; ++d) acc[d] += weight * value[d];
  }
  for (int64_t d = 0; d < head_dim; ++d) out[d] = static_cast<float>(acc[d]);
}

}  // namespace litestage::cpu
